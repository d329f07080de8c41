"""Per-finding series choice. There is no real multi-phase study in the shared data, so the
multi-phase tests build one from the real series rows (real headers, then phase/kernel/thickness
changed as a second reconstruction or phase of the same scan would have them) and say so in
their names."""

from __future__ import annotations

import copy

import pytest

from keyslice.dicom import assign_series, index_study, kernel_family, normalise_phase_hint
from keyslice.errors import NoUsableSeriesError
from keyslice.pseudonym import Pseudonymizer
from tests.real_data import DATA

SIEMENS = DATA / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom"
PS = Pseudonymizer(b"test-key", "env")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


def _finding(fid, organs=("liver",), phase_hint=None, status="abnormal"):
    return {"finding_id": fid, "organs": list(organs), "phase_hint": phase_hint, "status": status,
            "text": "A 2 cm hypodense lesion."}


@pytest.fixture(scope="module")
def real_row():
    return index_study(SIEMENS, PS).series[0].row


def _variant(row, sid, number, **changes):
    r = copy.deepcopy(row)
    r.update(series_id=sid, series_number=number, **changes)
    return r


@pytest.fixture(scope="module")
def multiphase_rows_built_from_real_siemens_row(real_row):
    return [
        _variant(real_row, "se-nat", 2, phase="non_contrast", phase_confidence=0.75, description="Nativ 5.0 Br38f",
                 slice_thickness_mm=5.0),
        _variant(real_row, "se-art", 3, phase="arterial_late", phase_confidence=0.85, description="Arteriell 3.0 Br38f"),
        _variant(real_row, "se-pv-thin", 4, phase="portal_venous", phase_confidence=0.85, slice_thickness_mm=0.6,
                 description="Venoes 0.6 Br38f"),
        _variant(real_row, "se-pv", 5, phase="portal_venous", phase_confidence=0.85, description="Venoes 3.0 Br38f"),
        _variant(real_row, "se-pv-lung", 6, phase="portal_venous", phase_confidence=0.85, kernel="Bl57d\\3",
                 description="Venoes 3.0 Bl57 Lunge"),
        _variant(real_row, "se-pv-bone", 7, phase="portal_venous", phase_confidence=0.85, kernel="Br64d\\3",
                 description="Venoes 3.0 Br64"),
        _variant(real_row, "se-topo", 1, kept=False, drop_reason="localizer"),
    ]


@needs_data
def test_single_real_series_is_assigned(real_row):
    out = assign_series([_finding("st:0"), _finding("st:1", phase_hint="arterial")], [real_row])
    assert [o["series_id"] for o in out] == [real_row["series_id"]] * 2
    assert set(out[0]) == {"finding_id", "series_id", "phase", "reason"}
    assert out[0]["phase"] == "portal_venous"
    assert "portal venous preferred" in out[0]["reason"]
    assert "asks for arterial but no such series" in out[1]["reason"]


@needs_data
def test_multiphase_built_from_real_rows_prefers_asked_phase(multiphase_rows_built_from_real_siemens_row):
    rows = multiphase_rows_built_from_real_siemens_row
    out = {o["finding_id"]: o for o in assign_series([
        _finding("f:art", phase_hint="arterial"),
        _finding("f:nat", organs=["kidney"], phase_hint="non_contrast"),
        _finding("f:default"),
        _finding("f:lung", organs=["lung"]),
        _finding("f:pv", phase_hint="portal venous"),
        _finding("f:delayed", phase_hint="delayed"),
    ], rows)}
    assert out["f:art"]["series_id"] == "se-art" and out["f:art"]["phase"] == "arterial_late"
    assert out["f:nat"]["series_id"] == "se-nat"
    # default: portal venous, soft-tissue kernel, 1-5 mm over 0.6 mm
    assert out["f:default"]["series_id"] == "se-pv"
    assert out["f:pv"]["series_id"] == "se-pv"
    assert out["f:lung"]["series_id"] == "se-pv-lung" and "lung finding" in out["f:lung"]["reason"]
    assert out["f:delayed"]["series_id"] == "se-pv" and "no such series" in out["f:delayed"]["reason"]
    for o in out.values():
        assert o["reason"] and "/" not in o["reason"].split(":")[0]  # no paths
    # the reason names what each other series lost on
    why = out["f:default"]["reason"]
    assert "portal venous preferred by default" in why and "soft kernel Br38f" in why and "3 mm slices" in why
    assert "series 4 'Venoes 0.6 Br38f' (0.6 mm slices, 1-5 mm preferred)" in why
    assert "series 6 'Venoes 3.0 Bl57 Lunge' (lung kernel)" in why and "series 7 'Venoes 3.0 Br64' (bone kernel)" in why
    assert "series 2 'Nativ 5.0 Br38f' (phase non_contrast)" in why
    assert "series 1" not in why  # dropped series are not candidates
    assert "series 5 'Venoes 3.0 Br38f' (soft kernel)" in out["f:lung"]["reason"]
    assert "finding asks for arterial; arterial_late series available" in out["f:art"]["reason"]


@needs_data
def test_stone_finding_reads_the_native_series_even_if_thicker(multiphase_rows_built_from_real_siemens_row):
    """Calcifications and stones get a non_contrast hint in step 1; that phase beats thickness."""
    rows = multiphase_rows_built_from_real_siemens_row
    (out,) = assign_series([_finding("f:stone", organs=["kidney"], phase_hint="non_contrast")], rows)
    assert out["series_id"] == "se-nat" and "5 mm slices" in out["reason"]


@needs_data
def test_no_portal_venous_falls_back_to_best_technical_series(multiphase_rows_built_from_real_siemens_row):
    rows = [r for r in multiphase_rows_built_from_real_siemens_row if r["phase"] != "portal_venous"]
    (out,) = assign_series([_finding("f")], rows)
    # native 5 mm vs arterial 3 mm, both soft tissue: same thickness band, higher phase confidence wins
    assert out["series_id"] == "se-art"
    assert "no portal venous series" in out["reason"]


def test_no_usable_series_lists_reasons():
    rows = [{"series_id": "se-a", "series_number": 1, "description": "Topogram", "kept": False,
             "drop_reason": "localizer", "phase": "unknown"},
            {"series_id": "se-b", "series_number": 2, "description": "Dose Report", "kept": False,
             "drop_reason": "secondary_capture", "phase": "unknown"}]
    with pytest.raises(NoUsableSeriesError, match=r"series 1 'Topogram': localizer; series 2 'Dose Report': secondary_capture"):
        assign_series([_finding("f")], rows)


@pytest.mark.parametrize("kernel,desc,family", [
    ("Br38f\\3", None, "soft"), ("B30f", None, "soft"), ("Bl57d", None, "lung"), ("B70f", None, "bone"),
    ("I70f\\2", None, "bone"), ("STANDARD", None, "soft"), ("LUNG", None, "lung"), ("BONE", None, "bone"),
    ("BONEPLUS", None, "bone"), ("SOFT", None, "soft"), ("UB", None, "soft"), ("L", None, "lung"),
    ("FC08", None, "soft"), ("FC52", None, "lung"), ("Hr40f", None, "soft"), ("H70h", None, "bone"),
    ("STD+", None, "soft"), (None, "Thorax Lunge 1.0", "lung"), (None, "Weichteil 3mm", "soft"), (None, None, "unknown"),
])
def test_kernel_family(kernel, desc, family):
    assert kernel_family(kernel, desc) == family


@pytest.mark.parametrize("hint,norm", [("arterial", "arterial"), ("Portal venous", "portal_venous"),
                                       ("venous", "portal_venous"), ("native", "non_contrast"),
                                       ("late arterial", "arterial_late"), ("delayed phase", "delayed"),
                                       (None, None), ("banana", None)])
def test_phase_hint_normalisation(hint, norm):
    assert normalise_phase_hint(hint) == norm


@needs_data
def test_non_finding_rows_get_no_series(multiphase_rows_built_from_real_siemens_row):
    """A sentence that states no finding ("Discussed with Dr. X.") is never assigned a series, so it
    never gets a key slice or questions; rows of findings schema v1 (no non_finding status) still are."""
    rows = multiphase_rows_built_from_real_siemens_row
    findings = [_finding("f0"), {**_finding("f1", organs=()), "status": "non_finding", "statement": "communication"},
                _finding("f2", status="normal")]
    got = assign_series(findings, rows)
    assert [a["finding_id"] for a in got] == ["f0", "f2"]
    assert assign_series([findings[1]], rows) == []
    with pytest.raises(NoUsableSeriesError):  # an unusable study still fails, whatever its sentences
        assign_series([findings[1]], [r for r in rows if not r.get("kept")])
