"""Header indexing on every real DICOM set in ../shared/data (see its README)."""

from __future__ import annotations

import datetime as dt

import pytest

from keyslice.dicom import index_study
from keyslice.errors import DicomReadError
from keyslice.pseudonym import Pseudonymizer
from keyslice.corpus.schemas import to_table
from tests.real_data import DATA

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
    # header facts step 3 relies on
    assert r["has_rescale"] is True and r["gantry_tilt_deg"] == 0.0 and r["pixel_spacing_mm"] == [0.9765625, 0.9765625]
    assert r["kernel"] == "Br38f\\3" and r["image_type"][:3] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert r["body_part"] == "PARTIALBODY" and r["protocol"] == "FDG_TK_KM"
    # sorted by position, not by InstanceNumber (which runs the other way in this series)
    assert s.instance_numbers == list(range(286, 266, -1))
    assert r["acquisition_offset_s"] == 0.0 and r["series_offset_s"] == 0.0  # the only series
    _schema_ok(idx)


def test_whole_totalsegmentator_folder_finds_only_the_dicom_series():
    """The full reference folder: NIfTI masks, JSON and the LICENSE are skipped, one series found."""
    idx = index_study(SIEMENS.parents[2], PS)
    assert idx.n_dicom == 20 and len(idx.series) == 1 and idx.series[0].row["kept"]
    reasons = dict(idx.skipped_files)
    assert len(reasons) == idx.n_files - 20
    assert all(why.startswith("not DICOM") for why in reasons.values()), set(reasons.values())


def test_folder_without_dicom_is_an_input_error():
    with pytest.raises(DicomReadError, match="no readable DICOM"):
        index_study(DATA / "roco_ct_captions", PS)


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
    # geometry facts of the kept series
    assert ax.row["has_rescale"] is True and ax.row["gantry_tilt_deg"] == 0.0 and ax.row["kernel"] == "UB"
    assert ax.row["z_min_mm"] == pytest.approx(696.21) and ax.row["z_max_mm"] == pytest.approx(831.21)
    assert all(b - a == pytest.approx(5.0) for a, b in zip(ax.positions_mm, ax.positions_mm[1:]))
    assert ax.instance_numbers == list(range(1, 29)) and not ax.row["warnings"]
    assert "LOCALIZER" in loc.row["image_type"] and loc.row["n_slices"] == 1
    # the exam summary: no rescale (RGB/text images) and burned-in text
    assert sc.row["has_rescale"] is False and sc.row["burned_in_annotation"] is True
    assert any("RescaleSlope/RescaleIntercept missing" in w for w in sc.row["warnings"])
    # times as offsets from the study's first series: localizer, then the axial scan, then the summary
    assert loc.row["acquisition_offset_s"] == 0.0 and ax.row["acquisition_offset_s"] == pytest.approx(37.0)
    assert ax.row["series_offset_s"] == pytest.approx(74.689) and sc.row["series_offset_s"] == pytest.approx(217.457)
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
    assert all(b > a for a, b in zip(s.positions_mm, s.positions_mm[1:]))
    assert r["has_rescale"] is True and r["kernel"] == "STD+" and r["body_part"] == "HEAD"
    assert r["z_min_mm"] == pytest.approx(5.8361) and r["z_max_mm"] == pytest.approx(157.7761)
    assert r["acquisition_offset_s"] is None and r["series_offset_s"] is None  # no times in these headers
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
    r = ct.row
    assert ct.positions_mm == pytest.approx([-128.69, -127.69, -126.69]) and ct.instance_numbers == [3, 2, 1]
    assert [p.name for p in ct.files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert r["slice_thickness_mm"] == 1.25 and r["slice_spacing_mm"] == pytest.approx(1.0) and r["spacing_uniform"]
    assert any("thickness 1.25 mm != position step 1.00 mm (overlapping slices)" in w for w in r["warnings"])
    assert r["has_rescale"] is True and r["gantry_tilt_deg"] == 0.0 and r["orientation"] == "axial"
    assert r["z_min_mm"] == pytest.approx(-128.69) and r["z_max_mm"] == pytest.approx(-126.69)
    assert r["phase"] == "unknown" and r["contrast_agent"] is None  # no contrast tags
    assert seg.row["orientation"] == "unknown" and seg.row["n_instances"] == 1
    assert r["acquisition_offset_s"] == 0.0 and seg.row["acquisition_offset_s"] is None
    _schema_ok(idx)


def test_readers_agree_on_every_real_series():
    for folder in (SIEMENS, PHILIPS, GE_TILT, DCMQI):
        a = index_study(folder, PS, reader="fast")
        b = index_study(folder, PS, reader="pydicom")
        assert [s.row for s in a.series] == [s.row for s in b.series], folder.name
        assert [s.files for s in a.series] == [s.files for s in b.series]


def test_series_ids_stable_and_keyed():
    a = index_study(PHILIPS, PS)
    b = index_study(PHILIPS, PS)
    assert [s.row["series_id"] for s in a.series] == [s.row["series_id"] for s in b.series]
    other = index_study(PHILIPS, Pseudonymizer(b"other-key", "env"))
    assert not {s.row["series_id"] for s in a.series} & {s.row["series_id"] for s in other.series}
    for s in a.series:  # raw UIDs never reach the row
        assert "1.3.46.670589" not in str(s.row)


def test_series_files_find_each_series_again_by_pseudonym():
    """What the stages after step 2 use to find a series' files (paths are never checkpointed): a re-index
    without the image phase gives step 2's series ids and files."""
    idx = index_study(PHILIPS, PS)
    lists = index_study(PHILIPS, PS, image_phase=False).series_files()
    assert lists == {rec.row["series_id"]: rec.files for rec in idx.series} and len(lists) >= 2
    assert all(files for files in lists.values())


def test_repr_hides_paths():
    idx = index_study(GE_TILT, PS)
    assert "ge_head_ct_tilt" not in repr(idx) and "ge_head_ct_tilt" not in repr(idx.series[0])
