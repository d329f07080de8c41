"""The key-slice stage as a build runs it (keyslice.pipeline.stage_functions through process_study, no Prefect): a real
JPEG 2000 series with one corrupt slice, its real TotalSegmentator mask, and a WRITTEN (synthetic)
report whose sentences name organs of that mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from keyslice.config import BuildConfig
from keyslice.pipeline.context import make_context
from keyslice.selector import OrganMasks, load_model, load_volume
from keyslice.selector.model import file_sha256
from keyslice.corpus.sql import query
from keyslice.pipeline.run import process_study
from keyslice.pipeline.studies import discover_studies
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SIEMENS_J2K = REF / "example_ct_dicom"
SEG_DICOM = REF / "example_seg_dicom.nii.gz"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")

WRITTEN_REPORT = """FINDINGS:
There is a hypodense lesion in the liver. The pancreas is enlarged. The right adrenal gland is thickened.
The left kidney is unremarkable. No abnormality of the urinary bladder.
"""


def _break_j2k(path: Path) -> None:
    """Keep the header, destroy the JPEG 2000 codestream."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    ds = pydicom.dcmread(path)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame[:16] + bytes(len(frame) - 16)])
    ds.save_as(path)


def test_keyslice_stage_rows_masks_corrupt_slice_and_curves(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", "test-key-not-a-secret")
    study = tmp_path / "in" / "study_a"
    study.mkdir(parents=True)
    for f in sorted(SIEMENS_J2K.iterdir()):
        shutil.copy(f, study / f.name)
    shutil.copy(SEG_DICOM, study / SEG_DICOM.name)
    (study / "report.txt").write_text(WRITTEN_REPORT)
    ref = load_volume(sorted(SIEMENS_J2K.iterdir()))
    victim = 7
    _break_j2k(study / ref.files[victim].name)

    cfg = BuildConfig(input_dir=tmp_path / "in", out_dir=tmp_path / "corpus", model=str(tiny_model_dir),
                      device="cpu", save_curves=True, max_workers=1)
    ctx = make_context(cfg)
    [s] = discover_studies(cfg.input_dir, ctx.pseudonymize)
    assert [o.status for o in process_study(s, ctx)] == ["done"] * 4

    rows = {r["finding_id"]: r for r in ctx.store.read_rows("selections", s.study_id)}
    findings = {f["finding_id"]: f for f in ctx.store.read_rows("findings", s.study_id)}
    assert len(rows) == 5
    encoder = load_model(str(tiny_model_dir), device="cpu")
    masks = OrganMasks.from_nifti(SEG_DICOM)
    restricted = {}
    for fid, r in rows.items():
        # Every row says which model chose the slice and which exact weights file it had.
        assert r["model_id"] == encoder.model_id == "local:tiny-clip"
        assert r["weights_sha256"] == file_sha256(tiny_model_dir / "tiny-clip.pt")
        assert victim not in r["topk_indices"] and r["n_slices"] == 20
        labels = findings[fid]["ts_labels"]
        restricted[labels[0]] = r["restricted_to"]
        if r["restricted_to"] is not None:
            lo, hi = masks.z_range(labels, ref)
            assert r["z_range_mm"] == pytest.approx([lo, hi])
            assert all(lo <= ref.z_mm[k] <= hi for k in r["topk_indices"])
        png = tmp_path / "corpus" / r["image_path"]
        assert png.read_bytes().startswith(b"\x89PNG")
        assert png.with_name(png.stem + "_curve.png").read_bytes().startswith(b"\x89PNG")
    # Neither kidney nor bladder is in this 20-slice upper-abdomen mask: searched unrestricted.
    assert restricted == {"liver": "liver", "pancreas": "pancreas", "adrenal_gland_right": "adrenal_gland_right",
                          "kidney_left": None, "urinary_bladder": None}

    # The corrupt slice is on record, by slice index and reason, never by file name (a raw UID).
    fails = query(tmp_path / "corpus", "select stage, error_type, message from failures").to_pylist()
    assert [(f["stage"], f["error_type"]) for f in fails] == [("keyslice-slices", "DicomReadError")]
    message = fails[0]["message"]
    assert "1 x pixel data cannot be decoded" in message and f"never selected: [{victim}]" in message
    assert not any(name.name in message for name in ref.files) and "1.3.12.2" not in message
    assert np.isfinite([r["top1_score"] for r in rows.values()]).all()
