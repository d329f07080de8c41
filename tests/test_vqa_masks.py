"""Opt-in mask-based "no" answers: organs the real TotalSegmentator mask shows on a key slice."""

from __future__ import annotations

import hashlib

import pytest

from keyslice.vqa import generate_rule_vqa
from tests.vqa_corpus import check_tables, finding


def _pseudonymize(kind: str, value: str) -> str:
    return f"{kind}-{hashlib.sha256(value.encode()).hexdigest()[:12]}"


@pytest.mark.slow
def test_mask_visible_organs_of_a_real_ct_slice_by_slice(sample_studies):
    """The TotalSegmentator example CT (real DICOM) with its real multi-label mask."""
    from keyslice.dicom import index_study
    from keyslice.vqa.masks import study_mask_organs

    study = sample_studies / "abdomen_siemens_j2k"
    (series,) = [rec for rec in index_study(study, _pseudonymize, image_phase=False).series if rec.row["kept"]]
    sid, n = series.row["series_id"], len(series.files)
    selections = [{"finding_id": f"m:{k}", "series_id": sid, "top1_index": k, "image_path": f"{k}.png"}
                  for k in (0, n - 1)]
    visible = study_mask_organs(study, selections, _pseudonymize)
    first, last = visible[(sid, 0)], visible[(sid, n - 1)]
    assert {"liver", "aorta", "spleen"} <= first & last
    assert first != last  # per slice, not per study: the mask's organs end at different heights
    assert study_mask_organs(sample_studies / "head_ge_tilt", selections, _pseudonymize) == {}

    findings = [finding("m", 0, "Splenic infarct.", ["spleen"], "abnormal", abnormalities=["infarction"])]
    series_rows = [{"series_id": sid, "phase": "unknown", "orientation": "axial"}]
    assert not [r for r in generate_rule_vqa(findings, selections, series_rows) if r["answer"] == "no"]
    rows = generate_rule_vqa(findings, selections, series_rows, mask_organs=visible)
    (no,) = [r for r in rows if r["answer"] == "no"]
    assert no["answer_source"] == "mask" and no["organ"] in first - {"spleen"} and no["evidence_finding_id"] is None
    assert check_tables(findings, rows).total == 0
