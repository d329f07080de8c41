"""Spatial normalisation on REAL CTs of different pixel sizes and fields of view: physical size preserved, body
centred, masks transformed exactly like the HU, and the selector's optional call of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keyslice.selector.spatial import SpatialConfig, body_box, body_mask, plan_for_volume, plan_spatial
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
LABELS = DATA / "totalsegmentator_reference" / "totalsegmentator_total_labels.json"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


@pytest.fixture(scope="module")
def ct3mm():
    from keyslice.selector.volume import volume_from_nifti

    return volume_from_nifti(REF / "example_ct.nii.gz")


@pytest.fixture(scope="module")
def ct1mm():
    from keyslice.selector.volume import load_volume

    return load_volume(sorted((REF / "example_ct_dicom").iterdir()), decode="eager")


def test_body_mask_keeps_the_largest_component_only():
    # SYNTHETIC: a 'body' disc and a separate 'table' bar below it, air elsewhere
    hu = np.full((64, 64), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:64, :64]
    hu[(yy - 28) ** 2 + (xx - 32) ** 2 < 20 ** 2] = 40.0
    hu[58:61, 4:60] = 200.0
    m = body_mask(hu)
    assert m[28, 32] and not m[59, 30]
    assert body_box(hu) == (9, 48, 13, 52)
    assert body_box(np.full((8, 8), -1000.0)) == (0, 8, 0, 8)          # no body: the whole image


def test_two_real_cts_of_different_pixel_size_come_out_at_the_same_scale(ct3mm, ct1mm):
    # 520 mm: wider than either body (example_ct_dicom with its arms is 417 mm wide, a 400 mm square cuts them)
    cfg = SpatialConfig(enabled=True, pixel_mm=1.5, fov_mm=520)
    widths = []
    for vol in (ct3mm, ct1mm):
        plan = plan_for_volume(vol, cfg)
        k = vol.n_slices // 2
        out = plan.apply_numpy(vol.hu[k])
        assert out.shape == (347, 347)                                   # 520 mm / 1.5 mm, whatever the input grid
        # the body's width in mm is the same before (input pixels x spacing) and after (output pixels x 1.5 mm)
        r0, r1, c0, c1 = body_box(vol.hu[k])
        s0, s1, t0, t1 = body_box(out)
        assert abs((s1 - s0) * 1.5 - (r1 - r0) * vol.pixel_spacing[0]) <= 2 * 1.5 + vol.pixel_spacing[0]
        assert abs((t1 - t0) * 1.5 - (c1 - c0) * vol.pixel_spacing[1]) <= 2 * 1.5 + vol.pixel_spacing[1]
        widths.append((t1 - t0) * 1.5)
        # the body is centred in the square (the plan's box is the union over slices, so allow its spread)
        assert abs((s0 + s1) / 2 - 347 / 2) < 347 / 4 and abs((t0 + t1) / 2 - 347 / 2) < 347 / 4
    # without normalisation the encoder would see these bodies at 64/303 vs 64/500 px per mm (x1.65); with it the
    # pixel size is equal, so their widths compare in mm directly
    assert all(200 < w < 460 for w in widths)


def test_organ_masks_follow_the_same_transform_as_the_hu(ct1mm):
    from keyslice.selector.masks import OrganMasks

    masks = OrganMasks.from_nifti(REF / "example_seg_dicom.nii.gz", LABELS)
    liver = masks.resample(["liver"], ct1mm)                            # [n, 512, 512] bool on the CT grid
    k = int(np.argmax(liver.sum((1, 2))))
    plan = plan_for_volume(ct1mm, SpatialConfig(enabled=True, pixel_mm=1.5, fov_mm=400))
    hu = plan.apply_numpy(ct1mm.hu[k])
    m = plan.apply_numpy(liver[k], fill=0, mode="nearest")
    assert m.dtype == bool and m.any()
    # same area in mm^2 (nearest resampling: within 5 %) and the same tissue under the mask (liver ~ 60-160 HU
    # in this contrast-enhanced series): HU and mask were moved together
    area_in = liver[k].sum() * ct1mm.pixel_spacing[0] * ct1mm.pixel_spacing[1]
    assert abs(m.sum() * 1.5 ** 2 - area_in) / area_in < 0.05
    assert abs(np.median(hu[m]) - np.median(ct1mm.hu[k][liver[k]])) < 15


def test_batched_torch_and_numpy_agree_and_fov_none_fits_the_body(ct3mm):
    plan = plan_for_volume(ct3mm, SpatialConfig(enabled=True, pixel_mm=2.0, fov_mm=None))
    r0, r1, c0, c1 = plan.box
    assert plan.out_size == round(max(r1 - r0, c1 - c0) * 3.0 / 2.0)
    batch = torch.from_numpy(ct3mm.hu[40:44].copy())
    out = plan.apply(batch)
    assert out.shape == (4, plan.out_size, plan.out_size)
    assert np.allclose(out[1].numpy(), plan.apply_numpy(ct3mm.hu[41]), atol=1e-3)
    with pytest.raises(ValueError, match="expected"):
        plan.apply(batch[:, :10])
    with pytest.raises(ValueError, match="pixel_mm"):
        SpatialConfig(pixel_mm=0)


def test_selector_uses_spatial_normalisation_only_when_asked(ct1mm, tiny_model_dir):
    from keyslice.selector import Query, SelectorConfig, load_model, select_key_slices

    enc = load_model(str(tiny_model_dir), device="cpu")
    q = [Query("f1", "The liver is normal.", ["liver"], ["liver"])]
    off = select_key_slices(ct1mm, q, enc, SelectorConfig(restrict_to_organ=False))[0]
    on_cfg = SelectorConfig(restrict_to_organ=False, spatial=SpatialConfig(enabled=True))
    on = select_key_slices(ct1mm, q, enc, on_cfg)[0]
    assert len(off.curve) == len(on.curve) == ct1mm.n_slices
    # different pixels reach the encoder (the curves differ), and both settings are memoised separately
    assert not np.allclose(off.curve, on.curve)
    keys = [k for k in ct1mm._emb_memo if k[0] == enc.model_id]
    assert len({k[-1] for k in keys}) == 2
    # the plan is the same transform applied to every slice of the series
    direct = plan_spatial(ct1mm.hu[::4], ct1mm.pixel_spacing, SpatialConfig(enabled=True))
    assert direct.out_size == plan_for_volume(ct1mm, SpatialConfig(enabled=True)).out_size
