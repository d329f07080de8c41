"""Measurements, image references and phase hints."""

from __future__ import annotations

import pytest

from keyslice.report import segment_report
from keyslice.report.extract import image_refs, measurements_mm


@pytest.mark.parametrize("text,expected", [
    ("2.3 x 1.5 cm cyst", [23.0, 15.0]),
    ("a 15 × 12-mm tumor", [15.0, 12.0]),
    ("mass of 6 cm × 5 cm × 4 cm", [60.0, 50.0, 40.0]),
    ("lesion measuring 4.1∗3.6 cms", [41.0, 36.0]),
    ("8,5 × 7,6 cm", [85.0, 76.0]),
    ("a 10mm nodule and a 2-cm cyst", [10.0, 20.0]),
    ("diameter 22.1 mm below 25.4 mm", [22.1, 25.4]),
    ("3 millimeters", [3.0]),
    ("area of 10mm2 and 393.8 cm3", []),  # areas and volumes are not lengths
    ("37 HU, SUV 9.0", []),
])
def test_measurements(text, expected):
    assert measurements_mm(text) == expected


def test_measurements_on_findings():
    f = segment_report("There is a 2.3 x 1.5 cm hypodense lesion in the liver.")[0]
    assert f.measurements_mm == [23.0, 15.0]
    assert segment_report("2.3 cm. cyst in the kidney.")[0].measurements_mm == [23.0]


@pytest.mark.parametrize("text,expected", [
    ("nodule (series 3, image 45)", [(3, 45)]),
    ("Series 3 Image 45", [(3, 45)]),
    ("mass (8:63)", [(8, 63)]),
    ("mass [8:63]", [(8, 63)]),
    ("image 112 of series 4", [(4, 112)]),
    ("se 2 im 40", [(2, 40)]),
    ("Se:2 Im:40", [(2, 40)]),
    ("series 5, images 10 and 12", [(5, 10), (5, 12)]),
    ("series 2, image 40; also (3:7)", [(2, 40), (3, 7)]),
    ("at 10:30 the patient", []),
    ("2.3 x 1.5 cm", []),
])
def test_image_refs(text, expected):
    assert image_refs(text) == expected


def test_image_refs_on_findings():
    got = segment_report("Nodule in the right lung (series 3, image 45). Cyst in the liver (8:63).")
    assert [f.image_refs for f in got] == [[(3, 45)], [(8, 63)]]


@pytest.mark.parametrize("text,phase", [
    ("Arterial phase images show a lesion in the liver.", "arterial"),
    ("Late arterial phase shows enhancement.", "arterial"),
    ("Hypervascular lesion in the liver.", "arterial"),
    ("Arterially enhancing lesion in segment 7.", "arterial"),
    ("CT angiography shows an aortic dissection.", "arterial"),
    ("Portal venous phase shows a hypodense lesion.", "portal_venous"),
    ("In the venous phase the splenic vein is patent.", "portal_venous"),
    ("CECT abdomen shows a mass.", "portal_venous"),
    ("Enhancing mass in the pancreas.", "portal_venous"),    # enhancement implies contrast: the routine phase
    ("Contrast-enhanced CT shows a renal mass.", "portal_venous"),
    ("Delayed images show washout.", "delayed"),
    ("Excretory phase shows a filling defect in the renal pelvis.", "delayed"),
    ("Non-contrast CT shows a renal stone.", "non_contrast"),
    ("Unenhanced CT of the abdomen.", "non_contrast"),
    ("CT without contrast shows hepatomegaly.", "non_contrast"),
    ("Calcification in the pancreas.", "non_contrast"),     # no phase named: stones/calcium -> non_contrast
    ("Stone in the left kidney.", "non_contrast"),
    ("CECT shows a calcified mass.", "portal_venous"),     # a named phase wins over the calcium rule
    ("Hepatic portal venous gas.", None),                  # "portal venous" gas is not a phase
    ("The liver is normal.", None),
])
def test_phase_hints(text, phase):
    assert [f.phase_hint for f in segment_report(text)] == [phase]
