"""The classes of miss found on unseen report text, each pinned by a sentence.

Real sentences are quoted verbatim from shared/data/roco_ct_captions/captions.json (cited by
roco_id; the test checks they are in the caption). Only captions outside the held-out
labelling sample (index 3 or 5 mod 6) are used. Where no caption shows a class, the
sentence is SYNTHETIC and named so.
"""

from __future__ import annotations

import json

import pytest

from keyslice.report import ReportConfig, segment_report


def one(text: str):
    got = segment_report(text, ReportConfig(split_compound=False))
    assert len(got) == 1, [f.text for f in got]
    return got[0]


@pytest.fixture(scope="module")
def captions(data_dir):
    caps = json.loads((data_dir / "roco_ct_captions/captions.json").read_text())
    return {c["roco_id"]: (i, c["caption"]) for i, c in enumerate(caps)}


def real(captions, roco_id: str, sentence: str) -> str:
    index, caption = captions[roco_id]
    assert sentence in caption, roco_id
    assert index % 6 not in (3, 5), "held-out captions are not used for tests"
    return sentence


# ----------------------------------------------------------------------------- ambiguous tokens
@pytest.mark.parametrize("text,organs", [
    ("SYNTHETIC: T2-weighted MRI shows a T2 tumour of the left kidney.", ["kidney"]),
    ("SYNTHETIC: Renal cell carcinoma staged T2N0M0, T2 on imaging.", ["kidney"]),
    ("SYNTHETIC: T1 hypointense lesion in the liver.", ["liver"]),
    ("SYNTHETIC: Compression fracture of T12.", ["spine"]),
    ("SYNTHETIC: Disc protrusion at L4-L5.", ["spine"]),
    ("SYNTHETIC: Right femoral hernia containing small bowel loops.", ["small bowel"]),
    ("SYNTHETIC: Fracture of the left femoral neck.", ["femur"]),
    ("SYNTHETIC: There are enlarged para-aortic lymph nodes on the left.", ["lymph node"]),
    ("SYNTHETIC: Retro-aortic left renal vein.", []),
])
def test_vertebral_levels_femoral_and_para_locations(text, organs):
    """A level names the spine only in a spinal context; 'femoral hernia' is no femur; para- is no organ."""
    assert one(text).organs == organs


def test_real_para_locations_are_not_the_organ(captions):
    f = one(real(captions, "ROCO_66920",
                 "The CT scan also demonstrated marked paraaortic lymphadenopathy but no visceral or CNS metastases."))
    assert f.organs == ["lymph node"] and f.status == "abnormal"
    assert f.abnormalities == ["lymphadenopathy"] and f.negated_abnormalities == ["metastasis"]
    f = one(real(captions, "ROCO_00332", "CT scan of the thorax demonstrating necrotic paratracheal node."))
    assert f.organs == ["lymph node"]


# ----------------------------------------------------------------------------- glued and compound words
@pytest.mark.parametrize("text,organs", [
    ("SYNTHETIC: Cyst in the left kidney(K) and enlarged nodes(L).", ["kidney", "lymph node"]),
    ("SYNTHETIC: Entero-pancreatic fistula.", ["small bowel", "pancreas"]),
    ("SYNTHETIC: Broncho-pleural fistula on the right.", ["lung", "pleura"]),
    ("SYNTHETIC: Bronchopleural fistula on the right.", ["lung", "pleura"]),
    ("SYNTHETIC: Reduced aorto-mesenteric distance.", ["aorta"]),
    ("SYNTHETIC: Status after left nephro-ureterectomy.", ["kidney"]),
    ("SYNTHETIC: Status after left nephroureterectomy.", ["kidney"]),
    ("SYNTHETIC: Pneumo-pericardium after trauma.", ["heart"]),
    ("SYNTHETIC: Enlarged lymph nodes at the porta hepatis.", ["lymph node", "liver"]),
])
def test_glued_brackets_and_compound_words(text, organs):
    assert one(text).organs == organs


def test_real_compound_word(captions):
    f = one(real(captions, "ROCO_72373", "esophagojejunal anastomotic fistula (arrow)."))
    assert f.organs == ["esophagus", "small bowel"] and f.status == "abnormal"


@pytest.mark.parametrize("roco_id,sentence,phase", [
    ("ROCO_00676", "Axial section of CECT abdomen showing enlarged left psoas muscle with ill-defined hypodense "
                   "areas (star) and retroperitoneal fat stranding (solid arrow).", "portal_venous"),
    ("ROCO_03923", "Axial CECT image showing collaterals in the pancreatic parenchyma (arrow) in a patient with "
                   "portal vein thrombosis", "portal_venous"),
])
def test_real_cect_is_portal_venous(captions, roco_id, sentence, phase):
    assert one(real(captions, roco_id, sentence)).phase_hint == phase


@pytest.mark.parametrize("text,phase", [
    ("SYNTHETIC: CT with oral contrast medium shows a thickened jejunal loop.", None),
    ("SYNTHETIC: CT with and without contrast shows a renal mass.", None),           # two phases named
    ("SYNTHETIC: CT pulmonary arteriography with venous phase imaging.", None),     # two phases named
    ("SYNTHETIC: Delayed diagnosis of splenic rupture.", None),
    ("SYNTHETIC: The delayed phase shows washout of the liver lesion.", "delayed"),
    ("SYNTHETIC: Plain axial CT shows a hematoma.", "non_contrast"),
    ("SYNTHETIC: Contrast-enhanced CT shows an arterially enhancing mass.", "portal_venous"),  # named beats inferred
])
def test_phase_words_that_ask_for_no_or_another_phase(text, phase):
    assert one(text).phase_hint == phase


def test_noncontrasted_is_non_contrast():
    assert one("SYNTHETIC: Noncontrasted CT shows a stone in the left kidney.").phase_hint == "non_contrast"


# ----------------------------------------------------------------------------- pseudo-negation, pseudo-normal
def test_figure_note_not_shown_negates_nothing(captions):
    text = real(captions, "ROCO_15620", "some clots were central and marginated within the right main pulmonary "
                                        "artery (not shown)")
    f = one(text)
    assert f.status == "abnormal" and "pseudo_negation" in f.modifiers
    assert one("SYNTHETIC: Liver metastases (not shown).").status == "abnormal"


def test_reference_range_is_no_normality_statement():
    f = one("SYNTHETIC: Acetabular anteversion of 12 degrees (normal > 22 degrees).")
    assert f.status == "abnormal" and "pseudo_normal" in f.modifiers
    f = one("SYNTHETIC: Dilated common bile duct of 11 mm (normal < 6 mm).")
    assert f.status == "abnormal" and f.abnormalities == ["dilatation"]


# ----------------------------------------------------------------------------- negation scope
def test_negation_scope_ends_at_the_verb_after_its_target():
    f = one("SYNTHETIC: No tumour could be detected around the stenosis.")
    assert f.status == "abnormal" and f.negated_abnormalities == ["mass"]
    assert one("SYNTHETIC: No mass is seen in the pancreas.").status == "normal"
    assert one("SYNTHETIC: The liver does not show any mass.").status == "normal"  # verb before the target


def test_real_negation_does_not_cross_but(captions):
    f = one(real(captions, "ROCO_44698", "There's no evidence of pulmonary artery embolus but there is a thrombus "
                                         "seen in the right lower lobe pulmonary vein."))
    assert f.status == "abnormal" and f.abnormalities == ["thrombosis"]


def test_negation_inside_brackets_stays_inside():
    assert one("SYNTHETIC: Hepatic cyst (no enhancement) in segment 7.").status == "abnormal"


# ----------------------------------------------------------------------------- absence of an organ
def test_real_absence_of_organ_parts_is_an_anomaly(captions):
    f = one(real(captions, "ROCO_81407", "Axial contrast-enhanced CT image shows absence of neck, body, and tail "
                                         "of the pancreas"))
    assert f.status == "abnormal" and f.organs == ["pancreas"] and "negated" not in f.modifiers
    f = one(real(captions, "ROCO_43637", "contrast-enhanced CT scan of the liver done in May 2004 shows absence of "
                                         "focal hepatic lesions"))
    assert f.status == "normal"


# ----------------------------------------------------------------------------- history, indication, hypothesis
@pytest.mark.parametrize("text,modifier", [
    ("SYNTHETIC: Biopsy revealed a poorly differentiated adenocarcinoma.", "historical"),
    ("SYNTHETIC: After repeat colonoscopy negative for malignancy, a colonic stent was considered.", "historical"),
    ("SYNTHETIC: The diagnosis can be suggested when a fat-containing mass is seen.", "hypothetical"),
    ("SYNTHETIC: Known history of pancreatic cancer.", "historical"),
    ("SYNTHETIC: A 63-year-old man presented with abdominal pain, fever and weight loss.", "indication"),
])
def test_history_outcome_and_conditionals_are_uncertain(text, modifier):
    f = one(text)
    assert f.status == "uncertain" and modifier in f.modifiers, (f.status, f.modifiers)


def test_real_history_sentences(captions):
    """A past procedure alone states no finding; an indication or outcome line is uncertain."""
    f = one(real(captions, "ROCO_59132", "She underwent cytoreductive nephrectomy, specimen 1850 g."))
    assert (f.status, f.statement) == ("non_finding", "history")
    f = one(real(captions, "ROCO_37495", "The CT scan was obtained to evaluate abdominal pain."))
    assert f.status == "uncertain" and f.modifiers == ["indication"]
    f = one(real(captions, "ROCO_59132", "She died in 3 months."))
    assert f.status == "uncertain"


# ----------------------------------------------------------------------------- unknown findings vs normal cues
@pytest.mark.parametrize("text", [
    "SYNTHETIC: The left ureter is of smaller calibre, with a normal wall.",
    "SYNTHETIC: Narrow angle between the superior mesenteric artery and the aorta, otherwise normal.",
    "SYNTHETIC: Normal liver with a 2 cm hypodense focus in segment 6.",
])
def test_a_finding_beside_a_normal_cue_is_abnormal(text):
    assert one(text).status == "abnormal"


def test_normal_cue_over_the_next_finding_word():
    f = one("SYNTHETIC: Normal uptake of the radiotracer in the liver.")
    assert f.status == "normal" and "normal" in f.modifiers


# ----------------------------------------------------------------------------- non-finding sentences
@pytest.mark.parametrize("text,statement", [
    ("SYNTHETIC: Discussed with Dr. Miller on 03/04/2021.", "communication"),
    ("SYNTHETIC: Findings were communicated to the referring physician by telephone.", "communication"),
    ("SYNTHETIC: Comparison is made with the prior CT.", "comparison"),
    ("SYNTHETIC: Follow-up CT in 3 months is recommended.", "recommendation"),
    ("SYNTHETIC: The patient underwent a right hemicolectomy in 2015.", "history"),
    ("SYNTHETIC: Axial images were acquired after intravenous contrast administration.", "technique"),
])
def test_non_finding_statements(text, statement):
    f = one(text)
    assert (f.status, f.statement) == ("non_finding", statement)
    assert f.abnormalities == [] and f.negated_abnormalities == []


def test_communication_naming_a_finding_is_still_no_finding():
    f = one("SYNTHETIC: The pneumothorax was discussed with Dr. Miller at 14:00.")
    assert (f.status, f.statement) == ("non_finding", "communication")


@pytest.mark.parametrize("roco_id,sentence,statement", [
    ("ROCO_61276", "CT abdomen without contrast", "technique"),
    ("ROCO_22336", "Abdominal CT.", "technique"),
])
def test_real_non_finding_sentences(captions, roco_id, sentence, statement):
    f = one(real(captions, roco_id, sentence))
    assert (f.status, f.statement) == ("non_finding", statement)


def test_synthetic_report_communication_gets_no_series(data_dir):
    """The build case: the communication line of a written report is kept, marked, and never assigned."""
    from keyslice.dicom import assign_series

    report = ("FINDINGS: 2 cm hypodense lesion in the right hepatic lobe.\n"
              "IMPRESSION: Liver lesion, likely a cyst. Discussed with Dr. Miller on 03/04/2021.")
    got = segment_report(report)
    assert [(f.status, f.statement) for f in got] == [("abnormal", None), ("abnormal", None),
                                                     ("non_finding", "communication")]
    rows = [{**f.to_row(), "finding_id": f"s:{f.finding_index}"} for f in got]
    series = [{"series_id": "se1", "series_number": 2, "kept": True, "phase": "portal_venous", "kernel": "B30f",
               "slice_thickness_mm": 3.0, "spacing_uniform": True, "gantry_tilt_deg": 0.0}]
    assert [a["finding_id"] for a in assign_series(rows, series)] == ["s:0", "s:1"]
