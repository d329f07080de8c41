"""Organ tagging (synonyms, adjectives, multi-organ sentences), compound split, laterality."""

from __future__ import annotations

import pytest

from keyslice.report import ReportConfig, segment_report


def organs(text: str) -> list[list[str]]:
    return [f.organs for f in segment_report(text)]


@pytest.mark.parametrize("text,expected", [
    ("Hepatic steatosis.", ["liver"]),
    ("Renal cyst.", ["kidney"]),
    ("Splenic infarct.", ["spleen"]),
    ("Pulmonary nodule.", ["lung"]),
    ("Biliary dilatation.", ["bile duct"]),
    ("Cardiac enlargement.", ["heart"]),
    ("Gastric wall thickening.", ["stomach"]),
    ("Colonic diverticulosis.", ["colon"]),
    ("Oesophageal thickening.", ["esophagus"]),
    ("Esophageal varices.", ["esophagus"]),
    ("Thyroid nodule.", ["thyroid gland"]),
    ("Vesical calculus.", ["urinary bladder"]),
    ("Duodenal diverticulum.", ["duodenum"]),
    ("Pancreatic mass.", ["pancreas"]),
    ("Tracheal deviation.", ["trachea"]),
    ("Aortic aneurysm.", ["aorta"]),
    ("Small bowel obstruction.", ["small bowel"]),
    ("Adrenal adenoma.", ["adrenal gland"]),
    ("Mediastinal lymphadenopathy.", ["lymph node"]),
    ("Lytic lesion in the L3 vertebral body.", ["spine"]),
    ("Thrombus in the portal vein.", ["portal vein"]),
    ("IVC filter in place.", ["inferior vena cava"]),
    ("Embolus in the right pulmonary artery.", ["pulmonary artery"]),
    ("Hepatosplenomegaly.", ["liver", "spleen"]),
    ("Cholelithiasis.", ["gallbladder"]),
    ("Stone in the gall bladder.", ["gallbladder"]),      # not the urinary bladder
    ("Thrombus in the splenic vein.", ["splenic vein"]),  # not the spleen
    ("Rib fractures.", ["rib"]),
    ("Enlarged prostate.", ["prostate"]),
])
def test_synonyms_and_adjectives(text, expected):
    assert organs(text) == [expected]


def test_multi_organ_sentence_stays_one_unit():
    got = segment_report("Cyst in the liver and kidney.")
    assert len(got) == 1 and got[0].organs == ["liver", "kidney"]
    got = segment_report("The liver, spleen and pancreas are normal.")
    assert len(got) == 1 and got[0].organs == ["liver", "spleen", "pancreas"] and got[0].status == "normal"


def test_compound_sentence_about_two_organs_is_split():
    got = segment_report("The liver is normal and the spleen is enlarged.")
    assert [(f.text, f.organs, f.status) for f in got] == [
        ("The liver is normal", ["liver"], "normal"),
        ("the spleen is enlarged.", ["spleen"], "abnormal"),
    ]
    got = segment_report("A cyst is seen in the liver, and a mass is seen in the left kidney.")
    assert [f.organs for f in got] == [["liver"], ["kidney"]]
    got = segment_report("The pancreas is atrophic but the bile ducts are not dilated.")
    assert [f.status for f in got] == ["abnormal", "normal"]


def test_compound_split_can_be_switched_off_and_needs_a_clause_on_each_side():
    got = segment_report("The liver is normal and the spleen is enlarged.", ReportConfig(split_compound=False))
    assert len(got) == 1 and got[0].organs == ["liver", "spleen"]
    assert len(segment_report("The liver is enlarged and shows a mass.")) == 1  # no organ after "and"
    assert len(segment_report("The liver and spleen are enlarged.")) == 1       # no verb before "and"


def test_split_clause_inherits_the_sentence_phase():
    got = segment_report("On the arterial phase the liver shows a hypervascular mass and the spleen is normal.")
    assert [f.phase_hint for f in got] == ["arterial", "arterial"]


def test_laterality_and_ts_labels():
    f = segment_report("Cyst in the left kidney.")[0]
    assert (f.laterality, f.ts_labels) == ("left", ["kidney_left"])
    f = segment_report("Bilateral adrenal nodules.")[0]
    assert f.laterality == "bilateral" and f.ts_labels == ["adrenal_gland_left", "adrenal_gland_right"]
    f = segment_report("Stones in both kidneys.")[0]
    assert f.laterality == "bilateral" and f.ts_labels == ["kidney_left", "kidney_right"]
    f = segment_report("Nodules in the left and right lower lobes.")[0]
    assert f.laterality == "bilateral"
    f = segment_report("Right upper lobe nodule.")[0]
    assert f.ts_labels == ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]
    f = segment_report("Hypodense lesion in the right hepatic lobe and a cyst in the left kidney.")[0]
    assert f.organs == ["liver", "kidney"] and f.ts_labels == ["liver", "kidney_left"]
    f = segment_report("Renal cysts.")[0]
    assert f.laterality is None and f.ts_labels == ["kidney_left", "kidney_right"]


def test_heart_chambers_are_not_a_side():
    f = segment_report("Thrombus in the left ventricle.")[0]
    assert f.organs == ["heart"] and f.laterality is None and f.ts_labels == ["heart"]


def test_window_settings_and_organ_named_vessels_are_not_organs():
    assert organs("Axial CT in lung window.") == [[]]
    assert organs("Thrombus in the right renal vein and the hepatic artery.") == [[]]
    assert organs("T2-weighted image.") == [[]]
