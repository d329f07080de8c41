"""Keep/drop rules and geometry helpers on rows and orientations (pure functions)."""

from __future__ import annotations

import math

import pytest

from keyslice.dicom.headers import Header
from keyslice.dicom.index import time_offsets
from keyslice.dicom.series import bolus_delay_s, classify_orientation, drop_reason, first_time, tm_seconds

CT = "1.2.840.10008.5.1.4.1.1.2"
BASE = {"modality": "CT", "sop_class": CT, "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"], "description": "Abdomen 3.0",
        "orientation": "axial", "n_slices": 40, "burned_in_annotation": False}


@pytest.mark.parametrize("changes,reason", [
    ({}, None),
    ({"description": "Low Dose Thorax 1.0"}, None),               # 'dose' alone is not a dose report
    ({"description": "Abdomen ax/cor 3mm"}, None),                # geometry decides orientation, not words
    ({"image_type": ["DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]}, None),  # iterative/dual-energy recon stays
    ({"sop_class": "", "description": "CT Body 3.0"}, None),     # empty SOPClassUID (the Siemens example)
    ({"modality": None}, None),                                    # no Modality but CT Image Storage
    ({"image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "localizer"),
    ({"description": "Topogram 0.6 T20f"}, "localizer"),
    ({"description": "Scout"}, "localizer"),
    ({"sop_class": "1.2.840.10008.5.1.4.1.1.7"}, "secondary_capture"),
    ({"image_type": ["DERIVED", "SECONDARY", "OTHER"]}, "secondary_capture"),
    ({"description": "Dose Report"}, "secondary_capture"),
    ({"description": "Patient Protocol"}, "secondary_capture"),
    ({"modality": "SR", "sop_class": "1.2.840.10008.5.1.4.1.1.88.67"}, "secondary_capture"),  # X-ray dose SR
    ({"modality": "SEG", "sop_class": "1.2.840.10008.5.1.4.1.1.66.4"}, "non_ct"),
    ({"modality": "SR", "sop_class": "1.2.840.10008.5.1.4.1.1.88.33"}, "non_ct"),
    ({"modality": "PR", "sop_class": "1.2.840.10008.5.1.4.1.1.11.1"}, "non_ct"),
    ({"modality": "MR", "sop_class": "1.2.840.10008.5.1.4.1.1.4"}, "non_ct"),
    ({"image_type": ["DERIVED", "PRIMARY", "MIP"]}, "reformat"),
    ({"image_type": ["ORIGINAL", "PRIMARY", "AXIAL"], "description": "MIP 10mm"}, "reformat"),
    ({"image_type": ["DERIVED", "PRIMARY", "VOLUME"]}, "reformat"),
    ({"image_type": ["DERIVED", "PRIMARY", "OTHER"]}, "derived"),
    ({"sop_class": "1.2.840.10008.5.1.4.1.1.2.1"}, "multiframe"),
    ({"burned_in_annotation": True}, "burned_in"),
    ({"orientation": "unknown"}, "no_geometry"),
    ({"orientation": "coronal"}, "non_axial"),
    ({"orientation": "oblique"}, "non_axial"),
    ({"n_slices": 2}, "too_few_slices"),
    ({"n_slices": 3}, None),
])
def test_drop_reason(changes, reason):
    assert drop_reason({**BASE, **changes}) == reason


def _iop_tilted(deg, axis="x"):
    a = math.radians(deg)
    if axis == "x":  # gantry tilt: the column direction tips towards z
        return (1, 0, 0, 0, math.cos(a), -math.sin(a))
    return (math.cos(a), 0, -math.sin(a), 0, 1, 0)


@pytest.mark.parametrize("iop,expect", [
    ((1, 0, 0, 0, 1, 0), "axial"), ((-1, 0, 0, 0, 1, 0), "axial"),
    (_iop_tilted(18.5), "axial"), (_iop_tilted(29), "axial"), (_iop_tilted(40), "oblique"),
    ((1, 0, 0, 0, 0, -1), "coronal"), ((0, 1, 0, 0, 0, -1), "sagittal"), (None, "unknown"), ((0, 0, 0, 0, 0, 0), "unknown"),
])
def test_orientation(iop, expect):
    assert classify_orientation(iop)[0] == expect


def test_time_helpers():
    assert tm_seconds("140352.457") == pytest.approx(14 * 3600 + 3 * 60 + 52.457)
    assert tm_seconds("14:03:52") == 14 * 3600 + 3 * 60 + 52
    assert tm_seconds("1050") == 10 * 3600 + 50 * 60
    assert tm_seconds("") is None and tm_seconds("garbage") is None
    assert bolus_delay_s("140352.457000", "140216.694022") == pytest.approx(95.763, abs=1e-3)
    assert bolus_delay_s("000030", "235950") == pytest.approx(40)  # over midnight
    assert bolus_delay_s(None, "120000") is None


def _hdr(**values):
    return Header(values, None, True)


def test_first_time_uses_dates_when_every_instance_has_one():
    hs = [_hdr(AcquisitionDate="20240101", AcquisitionTime="235950"), _hdr(AcquisitionDate="20240102", AcquisitionTime="000010")]
    dated, first = first_time(hs, "AcquisitionDate", "AcquisitionTime")
    assert dated and first % 86400 == pytest.approx(23 * 3600 + 59 * 60 + 50)
    # AcquisitionDateTime stands in for a missing AcquisitionTime
    dated, first = first_time([_hdr(AcquisitionDateTime="20221208140352.457")], "AcquisitionDate", "AcquisitionTime",
                              "AcquisitionDateTime")
    assert dated and first % 86400 == pytest.approx(14 * 3600 + 3 * 60 + 52.457)
    assert first_time([_hdr(SeriesTime="")], "SeriesDate", "SeriesTime") is None


def test_time_offsets_between_series():
    day = 738000 * 86400.0
    # across midnight with dates: the next-day series is 30 s later, not 24 h earlier
    assert time_offsets([(True, day + 86390), (True, day + 86420), None]) == [0.0, 30.0, None]
    # without dates (or mixed): times of day on one day
    assert time_offsets([(False, 100.0), (True, day + 130.0)]) == [0.0, 30.0]
    assert time_offsets([None, None]) == [None, None]
