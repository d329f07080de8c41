"""Organ masks on real TotalSegmentator / DICOM-SEG data, resampled by world coordinates, and the
organ restriction of the selection (checked against ranges computed independently here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from keyslice.errors import MaskError
from keyslice.selector import (
    OrganMasks,
    Query,
    SelectorConfig,
    find_masks,
    load_model,
    load_volume,
    save_tiny_checkpoint,
    select_key_slices,
    volume_from_nifti,
)
from keyslice.selector.ts_labels import TOTAL_LABELS
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SIEMENS_J2K = REF / "example_ct_dicom"
SEG_DICOM = REF / "example_seg_dicom.nii.gz"
CT3 = DATA / "dcmqi_ct3slice" / "ct-3slice"
LIVER_SEG = DATA / "dcmqi_ct3slice" / "liver.dcm"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")
LABEL_OF = {v: k for k, v in TOTAL_LABELS.items()}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_model(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=7)), device="cpu")


@pytest.fixture(scope="module")
def siemens():
    return load_volume(sorted(SIEMENS_J2K.iterdir()))


def independent_z_range(mask_path: Path, value: int | None, volume) -> tuple[float, float] | None:
    """z (mm along the series normal) of the mask's voxels of one label, straight from nibabel:
    voxel centres -> RAS -> LPS -> dot normal, then the series slices nearest to those."""
    img = nib.load(str(mask_path))
    data = np.asanyarray(img.dataobj)
    ks = np.nonzero((data == value if value is not None else data > 0).any(axis=(0, 1)))[0]
    if len(ks) == 0:
        return None
    ras = np.c_[np.zeros((len(ks), 2)), ks, np.ones(len(ks))] @ img.affine.T
    ras[:, :2] = (img.affine[:2, :2] @ (np.array(data.shape[:2]) / 2))[None, :] + img.affine[:2, 3]
    lps = ras[:, :3] * [-1, -1, 1]
    z = lps @ volume.normal
    lo, hi = z.min(), z.max()
    zs = np.asarray(volume.z_mm)
    inside = zs[(zs >= lo - 1e-3) & (zs <= hi + 1e-3)]
    return (float(inside.min()), float(inside.max())) if len(inside) else None


# --------------------------------------------------------------------------- TotalSegmentator multi-label on DICOM


@pytest.mark.parametrize("label", ["pancreas", "adrenal_gland_right", "colon", "rib_left_6", "portal_vein_and_splenic_vein"])
def test_multilabel_nifti_on_jpeg2000_dicom_series(siemens, label):
    masks = OrganMasks.from_nifti(SEG_DICOM)
    expect = independent_z_range(SEG_DICOM, LABEL_OF[label], siemens)
    assert expect is not None and expect != (siemens.z_mm[0], siemens.z_mm[-1])  # a partial range
    assert masks.z_range([label], siemens) == pytest.approx(expect)


def test_resampled_mask_equals_the_mask_voxels_on_the_same_grid(siemens):
    """example_seg_dicom is on the series' own grid but stored flipped (RAS, rows reversed): the
    world resampling must put every voxel back exactly, not just the z range."""
    masks = OrganMasks.from_nifti(SEG_DICOM)
    res = masks.resample(["liver"], siemens)
    data = np.asanyarray(nib.load(str(SEG_DICOM)).dataobj) == LABEL_OF["liver"]
    aff = nib.load(str(SEG_DICOM)).affine
    assert aff[1, 1] > 0  # RAS +y = anterior: row order reversed against DICOM's posterior-pointing rows
    expect = np.transpose(data, (2, 1, 0))[:, ::-1, :]
    assert np.array_equal(res, expect)


def test_restricted_top1_lies_in_organ_range_dicom(siemens, encoder):
    masks = OrganMasks.from_nifti(SEG_DICOM)
    labels = ["pancreas", "adrenal_gland_right", "colon", "rib_left_6", "portal_vein_and_splenic_vein"]
    queries = [Query(f"f{i}", f"Finding in the {lab.replace('_', ' ')}.", [lab], [lab]) for i, lab in enumerate(labels)]
    queries.append(Query("nolabel", "Lesion of the urinary bladder.", ["urinary bladder"], ["urinary_bladder"]))
    choices = select_key_slices(siemens, queries, encoder, SelectorConfig(top_k=3), masks)
    for q, c in zip(queries[:-1], choices[:-1]):
        lo, hi = independent_z_range(SEG_DICOM, LABEL_OF[q.ts_labels[0]], siemens)
        assert c.restricted_to == q.ts_labels[0] and c.z_range_mm == pytest.approx((lo, hi))
        for k in c.topk_indices:
            assert lo - 1e-3 <= siemens.z_mm[k] <= hi + 1e-3
    # Bladder is not in this 20-slice upper-abdomen mask: unrestricted, said so.
    assert choices[-1].restricted_to is None and choices[-1].z_range_mm is None


# --------------------------------------------------------------------------- NIfTI CT + masks


def test_per_structure_folder_on_its_own_ct():
    """example_seg_fast/ holds 30-slice masks: they belong to example_ct_sm.nii.gz (same grid, same
    affine), i.e. to slices 82-111 of example_ct.nii.gz."""
    vol = volume_from_nifti(REF / "example_ct_sm.nii.gz")
    masks = OrganMasks.from_folder(REF / "example_seg_fast")
    assert {"liver", "spleen", "kidney_left", "lung_lower_lobe_left"} <= masks.labels()
    for label in ("kidney_left", "gallbladder", "lung_lower_lobe_left", "adrenal_gland_right"):
        assert masks.z_range([label], vol) == pytest.approx(independent_z_range(REF / "example_seg_fast" / f"{label}.nii.gz", None, vol))


def test_restricted_top1_lies_in_organ_range_nifti(encoder):
    vol = volume_from_nifti(REF / "example_ct.nii.gz")
    mask_file = REF / "example_seg_fast_force_split.nii.gz"
    masks = OrganMasks.from_nifti(mask_file)
    labels = ["urinary_bladder", "gallbladder", "lung_lower_lobe_left", "femur_left", "kidney_right"]
    queries = [Query(lab, f"Abnormality of the {lab.replace('_', ' ')}.", [lab], [lab]) for lab in labels]
    choices = select_key_slices(vol, queries, encoder, SelectorConfig(top_k=5, smooth_sigma=1.5), masks)
    for lab, c in zip(labels, choices):
        lo, hi = independent_z_range(mask_file, LABEL_OF[lab], vol)
        assert c.restricted_to == lab and c.z_range_mm == pytest.approx((lo, hi))
        assert all(lo <= vol.z_mm[k] <= hi for k in c.topk_indices), lab
    # Without masks, at least one of these would leave its organ (the tiny model is random).
    free = select_key_slices(vol, queries, encoder, SelectorConfig(top_k=1, smooth_sigma=1.5))
    assert any(not (c.z_range_mm[0] <= vol.z_mm[f.top1_index] <= c.z_range_mm[1]) for c, f in zip(choices, free))


def test_world_coordinates_trap_example_ct_sm():
    """The folder masks paired with the FULL example_ct land on slices 0-29 (the affine of
    example_ct_sm was never moved), where the 61-label mask of example_ct says there is no
    liver at all: world coordinates tell the truth about a wrong affine, indices would hide it."""
    full = volume_from_nifti(REF / "example_ct.nii.gz")
    folder = OrganMasks.from_folder(REF / "example_seg_fast")
    truth = OrganMasks.from_nifti(REF / "example_seg_fast_force_split.nii.gz")
    wrong = folder.presence(["liver"], full)
    right = truth.presence(["liver"], full)
    assert np.nonzero(wrong)[0].max() <= 29
    assert np.nonzero(right)[0].min() >= 60
    assert not (wrong & right).any()


# --------------------------------------------------------------------------- DICOM-SEG


def test_dicom_seg_liver_on_three_slices(encoder):
    vol = load_volume(sorted(CT3.iterdir()))
    masks = OrganMasks.from_dicom_seg(LIVER_SEG)
    assert "liver" in masks.labels()
    res = masks.resample(["liver"], vol)
    seg = pydicom.dcmread(LIVER_SEG)
    frames = seg.pixel_array
    # Independent: match each SEG frame to the CT slice at the same position.
    for f, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        z = float(np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float) @ vol.normal)
        k = int(np.argmin(np.abs(vol.z_mm - z)))
        assert abs(vol.z_mm[k] - z) < 1e-3
        assert np.array_equal(res[k], frames[f] > 0)
    rng = masks.z_range(["liver"], vol)
    assert rng == pytest.approx((vol.z_mm.min(), vol.z_mm.max()))
    c = select_key_slices(vol, [Query("l", "Liver lesion.", ["liver"], ["liver"])], encoder, SelectorConfig(), masks)[0]
    assert c.restricted_to == "liver" and rng[0] <= vol.z_mm[c.top1_index] <= rng[1]


def test_dicom_seg_partial_range(tmp_path, encoder):
    """Drop the SEG's first frame: the liver range shrinks to 2 slices and the selection follows."""
    seg = pydicom.dcmread(LIVER_SEG)
    frames = seg.pixel_array
    frames[0] = 0  # the most inferior frame holds no liver now
    from pydicom.pixels import pack_bits

    seg.PixelData = pack_bits(frames.astype(np.uint8))
    seg.save_as(tmp_path / "seg.dcm")
    vol = load_volume(sorted(CT3.iterdir()))
    masks = OrganMasks.from_dicom_seg(tmp_path / "seg.dcm")
    z0 = float(np.asarray(seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient, float) @ vol.normal)
    rng = masks.z_range(["liver"], vol)
    assert rng is not None and not (rng[0] <= z0 <= rng[1])
    for _ in range(3):
        c = select_key_slices(vol, [Query("l", "Liver lesion.", ["liver"], ["liver"])], encoder,
                              SelectorConfig(top_k=3), masks)[0]
        assert abs(vol.z_mm[c.top1_index] - z0) > 0.5 and len(c.topk_indices) == 2


# --------------------------------------------------------------------------- mismatch, discovery, TotalSegmentator


def test_mask_that_does_not_overlap_the_series(siemens, encoder):
    ct3 = load_volume(sorted(CT3.iterdir()))
    masks = OrganMasks.from_nifti(SEG_DICOM)       # another patient, 600 mm away
    with pytest.raises(MaskError, match="no organ mask overlaps the series"):
        masks.check_overlap(ct3)
    assert masks.z_range(["liver"], ct3) is None
    q = [Query("a", "Liver lesion.", ["liver"], ["liver"])]
    with pytest.raises(MaskError):
        select_key_slices(ct3, q, encoder, SelectorConfig(on_mask_mismatch="raise"), masks)
    # Default: another series of the study may lie outside the masks: select unrestricted, say so.
    c = select_key_slices(ct3, q, encoder, SelectorConfig(), masks)[0]
    assert c.restricted_to is None and c.z_range_mm is None
    masks.check_overlap(siemens)  # the right series passes


def test_unreadable_mask_raises(tmp_path):
    bad = tmp_path / "bad_seg.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(MaskError):
        OrganMasks.from_nifti(bad)


def test_find_masks_conventions(tmp_path, siemens):
    assert find_masks(tmp_path) is None
    # 1. per-structure folder
    study = tmp_path / "s1"
    (study / "segmentations").mkdir(parents=True)
    for name in ("liver", "gallbladder"):
        shutil.copy(REF / "example_seg_fast" / f"{name}.nii.gz", study / "segmentations" / f"{name}.nii.gz")
    m = find_masks(study)
    assert m is not None and m.labels() == {"liver", "gallbladder"}
    # 2. multi-label file with default TotalSegmentator labels, and with its own labels JSON
    study2 = tmp_path / "s2"
    study2.mkdir()
    shutil.copy(SEG_DICOM, study2 / "example_seg_dicom.nii.gz")
    for f in sorted(SIEMENS_J2K.iterdir())[:2]:
        shutil.copy(f, study2 / f.name)  # DICOM images beside it are not masks
    m2 = find_masks(study2)
    assert "liver" in m2.labels() and len(m2.sources) == 1
    assert m2.z_range(["liver"], siemens) == (siemens.z_mm[0], siemens.z_mm[-1])
    (study2 / "example_seg_dicom.json").write_text(json.dumps({"5": "Leber"}))
    m3 = find_masks(study2)
    assert m3.labels() == {"leber"} and m3.z_range(["Leber"], siemens) is not None
    # 3. DICOM-SEG anywhere, with no suffix
    study3 = tmp_path / "s3" / "deep" / "er"
    study3.mkdir(parents=True)
    shutil.copy(LIVER_SEG, study3 / "SEG0001")
    m4 = find_masks(tmp_path / "s3")
    assert m4 is not None and "liver" in m4.labels()


# --------------------------------------------------------------------------- per-structure folder found in a study


@pytest.mark.parametrize("ct", ["example_ct_sm.nii.gz", "example_ct.nii.gz"])
def test_restricted_top1_lies_in_organ_range_per_structure_folder(tmp_path, encoder, ct):
    """TotalSegmentator's per-structure masks (``example_seg_fast/``) found by ``find_masks`` in a
    study's ``segmentations/`` folder. On ``example_ct_sm`` (their own grid) and on the full
    ``example_ct`` (another grid: 112 slices), the restriction follows the masks' world
    coordinates; on the full CT that is slices 0-29, where their never-moved affine puts them
    (see test_world_coordinates_trap_example_ct_sm)."""
    labels = ["adrenal_gland_right", "gallbladder", "lung_lower_lobe_left", "pancreas", "kidney_left"]
    (tmp_path / "study" / "segmentations").mkdir(parents=True)
    for lab in labels:
        shutil.copy(REF / "example_seg_fast" / f"{lab}.nii.gz", tmp_path / "study" / "segmentations")
    masks = find_masks(tmp_path / "study")
    assert masks is not None and masks.labels() == set(labels)
    vol = volume_from_nifti(REF / ct)
    queries = [Query(lab, f"Abnormality of the {lab.replace('_', ' ')}.", [lab], [lab]) for lab in labels]
    queries.append(Query("heart", "Pericardial effusion.", ["heart"], ["heart"]))  # no mask for it here
    choices = select_key_slices(vol, queries, encoder, SelectorConfig(top_k=4, smooth_sigma=1.0), masks)
    for lab, c in zip(labels, choices):
        lo, hi = independent_z_range(REF / "example_seg_fast" / f"{lab}.nii.gz", None, vol)
        assert c.restricted_to == lab and c.z_range_mm == pytest.approx((lo, hi))
        assert all(lo <= vol.z_mm[k] <= hi for k in c.topk_indices), lab
        if ct == "example_ct.nii.gz":
            assert c.top1_index <= 29
    assert choices[-1].restricted_to is None
    free = select_key_slices(vol, queries[:-1], encoder, SelectorConfig(top_k=1, smooth_sigma=1.0))
    assert any(not (c.z_range_mm[0] <= vol.z_mm[f.top1_index] <= c.z_range_mm[1]) for c, f in zip(choices, free))


# --------------------------------------------------------------------------- a mask on another grid


def test_mask_on_a_coarser_grid_maps_by_world_coordinates(tmp_path, siemens, encoder):
    """Mismatched mask grid: example_seg_dicom resampled to every other slice and every other
    pixel (4 mm x 1.95 mm x 1.95 mm, shape 256x256x10, a DERIVED copy of the real mask). Each
    coarse voxel covers +-2 mm along z, so a kept slice k that holds the label marks series
    slices k-1..k+1: computed here by index arithmetic, found by the code in world space."""
    img = nib.load(str(SEG_DICOM))
    coarse = np.asanyarray(img.dataobj)[::2, ::2, ::2]
    aff = img.affine.copy()
    aff[:3, :3] = aff[:3, :3] * 2
    path = tmp_path / "coarse_seg.nii.gz"
    nib.save(nib.Nifti1Image(coarse, aff), str(path))
    masks = OrganMasks.from_nifti(path)
    masks.check_overlap(siemens)
    z_nifti_k = (np.c_[np.zeros((20, 2)), np.arange(20), np.ones(20)] @ img.affine.T)[:, 2]
    assert np.allclose(z_nifti_k, siemens.z_mm)  # NIfTI slice k is series slice k here
    for label in ("pancreas", "adrenal_gland_right", "rib_left_6", "liver"):
        kept = np.nonzero((coarse == LABEL_OF[label]).any(axis=(0, 1)))[0] * 2   # original slice index
        hit = sorted({k + d for k in kept for d in (-1, 0, 1) if 0 <= k + d < 20})
        expect = (siemens.z_mm[hit[0]], siemens.z_mm[hit[-1]])
        assert masks.z_range([label], siemens) == pytest.approx(expect), label
    q = [Query("p", "Pancreatic head mass.", ["pancreas"], ["pancreas"])]
    c = select_key_slices(siemens, q, encoder, SelectorConfig(top_k=3), masks)[0]
    lo, hi = masks.z_range(["pancreas"], siemens)
    assert c.restricted_to == "pancreas" and all(lo <= siemens.z_mm[k] <= hi for k in c.topk_indices)
