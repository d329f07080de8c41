"""Header indexing on every real DICOM set in ../shared/data (see its README)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keyslice.dicom import index_study, series_files
from keyslice.errors import DicomReadError
from keyslice.pseudonym import Pseudonymizer
from keyslice.schemas import to_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIEMENS = DATA / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom"
PHILIPS = DATA / "philips_phantom_study"
GE_TILT = DATA / "ge_head_ct_tilt"
DCMQI = DATA / "dcmqi_ct3slice"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")

PS = Pseudonymizer(b"test-key", "env")


def _only(idx, **match):
    found = [s for s in idx.series if all(s.row.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [s.row for s in idx.series])
    return found[0]


def _schema_ok(idx):
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{**s.row, "study_id": "st-test", "created_at": now} for s in idx.series]
    table = to_table("series", rows)
    assert table.num_rows == len(idx.series)


@pytest.fixture(scope="module", params=["fast", "pydicom"])
def reader(request):
    return request.param


def test_siemens_empty_uids_fallback_one_series(reader):
    idx = index_study(SIEMENS, PS, reader=reader)
    assert idx.n_files == 20 and idx.n_dicom == 20 and not idx.skipped_files
    assert len(idx.series) == 1
    s = idx.series[0]
    r = s.row
    assert r["grouping"] == "fallback" and r["kept"] and r["drop_reason"] is None
    assert r["series_number"] is None and r["modality"] == "CT" and r["manufacturer"] == "SIEMENS"
    assert r["transfer_syntax"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert r["n_instances"] == 20 and r["n_slices"] == 20
    assert r["slice_thickness_mm"] == 3.0 and r["slice_spacing_mm"] == pytest.approx(2.0)
    assert r["spacing_uniform"] is True and r["orientation"] == "axial"
    assert any("thickness 3 mm != position step 2.00 mm" in w for w in r["warnings"])
    assert r["z_min_mm"] == pytest.approx(-804.5) and r["z_max_mm"] == pytest.approx(-766.5)
    # phase from its tags (agent APPLIED, 96 s after bolus start) and protocol 'FDG_TK_KM'
    assert r["contrast_agent"] == "APPLIED" and r["bolus_delay_s"] == pytest.approx(95.763, abs=0.01)
    assert r["phase"] == "portal_venous" and r["phase_confidence"] >= 0.5
    assert any("ContrastBolusAgent" in e for e in r["phase_evidence"])
    assert any("96 s" in e for e in r["phase_evidence"])
    # geometry: sorted along the normal, ascending
    assert s.positions_mm == sorted(s.positions_mm) and len(s.files) == 20
    assert all(b - a == pytest.approx(2.0) for a, b in zip(s.positions_mm, s.positions_mm[1:]))
    assert idx.patient_key is None  # PatientID is empty
    _schema_ok(idx)


def test_philips_study(reader):
    idx = index_study(PHILIPS, PS, reader=reader)
    skipped = dict(idx.skipped_files)
    dirfiles = [p for p in skipped if p.endswith("DIRFILE")]
    assert len(dirfiles) == 4 and all("DICOMDIR" in skipped[p] for p in dirfiles)
    assert idx.patient_key == "PLASTIC" and idx.modalities == ["CT"]
    loc = _only(idx, series_number=100)
    assert not loc.row["kept"] and loc.row["drop_reason"] == "localizer"
    ax = _only(idx, series_number=201)
    assert ax.row["kept"] and ax.row["n_slices"] == 28 and ax.row["slice_thickness_mm"] == 5.0
    assert ax.row["slice_spacing_mm"] == pytest.approx(5.0) and ax.row["spacing_uniform"]
    assert ax.row["orientation"] == "axial" and ax.row["description"] == "STD BRAIN 5MM"
    assert [int(p.name[1:]) for p in ax.files] == sorted(int(p.name[1:]) for p in ax.files)
    sc = _only(idx, series_number=401)
    assert not sc.row["kept"] and sc.row["drop_reason"] == "secondary_capture" and sc.row["n_instances"] == 6
    assert [s.row["series_number"] for s in idx.kept()] == [201]
    _schema_ok(idx)


def test_ge_tilt_and_uneven_spacing(reader):
    idx = index_study(GE_TILT, PS, reader=reader)
    assert len(idx.series) == 1
    s = idx.series[0]
    r = s.row
    assert r["kept"], r["drop_reason"]  # a tilted axial is still axial (normal 18.5 deg from z)
    assert r["orientation"] == "axial" and r["gantry_tilt_deg"] == pytest.approx(18.5)
    assert any("gantry tilt 18.5" in w for w in r["warnings"])
    assert r["spacing_uniform"] is False and any("uneven slice spacing" in w for w in r["warnings"])
    steps = [round(b - a, 2) for a, b in zip(s.positions_mm, s.positions_mm[1:])]
    assert set(steps) == {4.0, 1.08, 7.0}
    assert r["slice_spacing_mm"] == pytest.approx(4.0, abs=0.01)
    assert r["description"] is None and r["phase"] == "unknown"
    assert any("TotalSegmentator not installed" in e for e in r["phase_evidence"])
    # sorted by position, which here agrees with InstanceNumber
    assert s.instance_numbers == list(range(1, 29))
    _schema_ok(idx)


def test_dcmqi_3slice_kept_seg_dropped(reader):
    idx = index_study(DCMQI, PS, reader=reader)
    ct = _only(idx, modality="CT")
    assert ct.row["kept"] and ct.row["n_slices"] == 3 and ct.row["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert ct.row["transfer_syntax"] == "1.2.840.10008.1.2"  # implicit VR
    seg = _only(idx, modality="SEG")
    assert not seg.row["kept"] and seg.row["drop_reason"] == "non_ct"
    assert idx.modalities == ["CT", "SEG"]
    assert all(p.endswith(".nrrd") or p == "LICENSE.txt" for p, _ in idx.skipped_files)
    _schema_ok(idx)


def test_readers_agree_on_every_real_series():
    for folder in (SIEMENS, PHILIPS, GE_TILT, DCMQI):
        a = index_study(folder, PS, reader="fast")
        b = index_study(folder, PS, reader="pydicom")
        assert [s.row for s in a.series] == [s.row for s in b.series], folder.name
        assert [s.files for s in a.series] == [s.files for s in b.series]


def test_series_ids_stable_and_keyed():
    a = index_study(PHILIPS, PS)
    b = index_study(PHILIPS, PS, workers=1)
    assert [s.row["series_id"] for s in a.series] == [s.row["series_id"] for s in b.series]
    other = index_study(PHILIPS, Pseudonymizer(b"other-key", "env"))
    assert not {s.row["series_id"] for s in a.series} & {s.row["series_id"] for s in other.series}
    for s in a.series:  # raw UIDs never reach the row
        assert "1.3.46.670589" not in str(s.row)


def test_series_files_returns_the_same_series():
    idx = index_study(GE_TILT, PS)
    sid = idx.series[0].row["series_id"]
    rec = series_files(GE_TILT, sid, PS)
    assert rec.files == idx.series[0].files and rec.positions_mm == idx.series[0].positions_mm
    with pytest.raises(DicomReadError, match="not found"):
        series_files(GE_TILT, "se-doesnotexist", PS)


def test_repr_hides_paths():
    idx = index_study(GE_TILT, PS)
    assert "ge_head_ct_tilt" not in repr(idx) and "ge_head_ct_tilt" not in repr(idx.series[0])
