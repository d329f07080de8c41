"""Contrast-phase inference from headers, and the TotalSegmentator fallback when it cannot run."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from keyslice.dicom import PhaseCall, infer_phase, totalsegmentator_phase
from keyslice.dicom.phase import TS_UNKNOWN, keyword_phase, timing_phase, totalsegmentator_available

CASES = json.loads((Path(__file__).parent / "fixtures" / "phase_cases.json").read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_phase_cases(case):
    call = infer_phase(case["fields"])
    expect = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
    msg = f"{case['id']}: got {call.phase} {call.confidence} {call.evidence}"
    assert call.phase in expect, msg
    if "min_conf" in case:
        assert call.confidence >= case["min_conf"], msg
    if "max_conf" in case:
        assert call.confidence <= case["max_conf"], msg
    if case.get("conflict"):
        assert any(e.startswith("conflict:") for e in call.evidence), msg
    assert call.evidence, "every call says why"
    assert 0.0 <= call.confidence <= 1.0


def test_conflict_lists_both_evidences():
    call = infer_phase({"description": "Nativ 5.0", "contrast_agent": "OMNIPAQUE"})
    joined = " | ".join(call.evidence)
    assert "ContrastBolusAgent='OMNIPAQUE'" in joined and "nativ" in joined.lower()
    plain = infer_phase({"description": "Nativ 5.0"})
    assert call.confidence < plain.confidence  # the conflict lowers confidence


@pytest.mark.parametrize("delay,phase", [(10, "arterial_early"), (24.9, "arterial_early"), (30, "arterial_late"),
                                         (44, "arterial_late"), (65, "portal_venous"), (89, "portal_venous"),
                                         (120, "portal_venous"), (151, "delayed"), (600, "delayed"),
                                         (-30, "non_contrast")])
def test_timing_windows(delay, phase):
    assert timing_phase(delay)[0] == phase


def test_timing_silent_near_zero_and_absurd():
    assert timing_phase(-2) is None
    assert timing_phase(10 * 3600) is None


def test_keyword_phase_returns_label():
    ph, label = keyword_phase("Abdomen venös 3.0")
    assert ph == "portal_venous" and "ven" in label


def test_phasecall_rejects_unknown_phase():
    with pytest.raises(ValueError):
        PhaseCall("venous", 0.5)


def test_infer_phase_accepts_a_dataset_like_object():
    ds = types.SimpleNamespace(SeriesDescription="Arterial 1mm", ProtocolName=None, ContrastBolusAgent="APPLIED",
                               ContrastBolusRoute="IV", ContrastBolusStartTime="120000",
                               AcquisitionTime="120020")
    call = infer_phase(ds)
    assert call.phase == "arterial_early", call
    assert any("20 s" in e for e in call.evidence)


def test_totalsegmentator_missing_gives_clear_unknown(monkeypatch):
    # TotalSegmentator is not installed in this environment; make sure of it even where it is
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "totalsegmentator" else real(name, *a, **k))
    ok, why = totalsegmentator_available()
    assert not ok and "totalsegmentator" in why
    call = totalsegmentator_phase([Path("/nonexistent/slice.dcm")])
    assert call.phase == "unknown" and call.confidence == 0.0
    assert call.evidence[0].startswith(TS_UNKNOWN)


def test_totalsegmentator_weights_missing(monkeypatch, tmp_path):
    """Installed but without weights -> the same clear unknown (fake package, empty weights dir)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name in (
        "totalsegmentator", "xgboost") else real(name, *a, **k))
    cfg = types.ModuleType("totalsegmentator.config")
    cfg.get_weights_dir = lambda: tmp_path
    monkeypatch.setitem(sys.modules, "totalsegmentator", types.ModuleType("totalsegmentator"))
    monkeypatch.setitem(sys.modules, "totalsegmentator.config", cfg)
    call = totalsegmentator_phase([])
    assert call.phase == "unknown" and "weights" in call.evidence[0] and call.evidence[0].startswith(TS_UNKNOWN)


def test_totalsegmentator_result_is_mapped(monkeypatch, tmp_path):
    """With TotalSegmentator and weights present, its 'native' answer maps to non_contrast."""
    import importlib.util

    (tmp_path / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name in (
        "totalsegmentator", "xgboost") else real(name, *a, **k))
    cfg = types.ModuleType("totalsegmentator.config")
    cfg.get_weights_dir = lambda: tmp_path
    getp = types.ModuleType("totalsegmentator.bin.totalseg_get_phase")
    getp.get_ct_contrast_phase = lambda img: {"pi_time": -0.04, "phase": "native", "probability": 1.0, "stddev": 0.1}
    for name, mod in {"totalsegmentator": types.ModuleType("totalsegmentator"), "totalsegmentator.config": cfg,
                      "totalsegmentator.bin": types.ModuleType("totalsegmentator.bin"),
                      "totalsegmentator.bin.totalseg_get_phase": getp}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    call = totalsegmentator_phase([Path("x")], loader=lambda files: "image")
    assert call.phase == "non_contrast" and call.confidence > 0
    assert "TotalSegmentator phase: native" in call.evidence[0]
