"""Status of finding units: ConText-style negation, normality, uncertainty, history, scope ends."""

from __future__ import annotations

import pytest

from keyslice.report import segment_report


def status(text: str) -> list[str]:
    return [f.status for f in segment_report(text)]


@pytest.mark.parametrize("text", [
    "No focal liver lesion.",
    "There is no ascites.",
    "The liver is not enlarged.",
    "Kidneys without hydronephrosis.",
    "Negative for pulmonary embolism.",
    "The gallbladder is free of stones.",
    "No evidence of metastatic disease in the liver.",
    "No ascites or lymphadenopathy.",
    "Absence of focal hepatic lesions.",
    "Hydronephrosis is not seen.",
    "The previously seen splenic lesion has resolved.",
    "Neither pleural effusion nor pneumothorax.",
    "No abnormality.",
])
def test_negated_findings_are_normal(text):
    assert status(text) == ["normal"]


@pytest.mark.parametrize("text", [
    "The spleen is unremarkable.",
    "The pancreas is within normal limits.",
    "Normal appearance of the adrenal glands.",
    "The liver is normal in size and attenuation.",
    "The portal vein is patent.",
    "Liver: normal.",
])
def test_normal_statements_are_normal(text):
    assert status(text) == ["normal"]


@pytest.mark.parametrize("text", [
    "Possible small hepatic cyst.",
    "Probable hemangioma in the liver.",
    "Appendicitis cannot be excluded.",
    "Cannot exclude a small renal calculus.",
    "Findings suspicious for pancreatic carcinoma.",
    "Likely metastasis in the right adrenal gland.",
    "Questionable nodule in the left lung.",
    "Cyst versus abscess in the spleen.",
    "Concerning for malignancy.",
])
def test_hedged_findings_are_uncertain(text):
    assert status(text) == ["uncertain"]


@pytest.mark.parametrize("text", [
    "History of colon cancer.",
    "A patient who presented with abdominal pain.",
    "If symptoms persist, appendicitis should be excluded.",
])
def test_historical_or_hypothetical_only_is_uncertain(text):
    assert status(text) == ["uncertain"]


@pytest.mark.parametrize("text", [
    "Status post cholecystectomy.",
    "S/P right nephrectomy.",
])
def test_a_past_procedure_alone_states_no_finding(text):
    """Labelling decision of split dev2: procedure-only history -> no finding."""
    assert [(f.status, f.statement) for f in segment_report(text)] == [("non_finding", "history")]


@pytest.mark.parametrize("text", [
    "There is a 2 cm cyst in the liver.",
    "Splenomegaly.",
    "Enlarged left adrenal gland.",
    "No significant change in the size of the liver mass.",  # pseudo-negation
    "CT without contrast shows a renal stone.",             # "without contrast" is not a negation
    "Hypodensity in the liver likely representing a cyst.",  # the hypodensity itself is certain
    "History of colon cancer, now with new liver metastases.",
    "Absence of the inferior vena cava.",                    # an organ that is absent is an anomaly
])
def test_affirmed_findings_are_abnormal(text):
    assert status(text) == ["abnormal"]


def test_negation_scope_ends_at_but_and_however():
    assert status("No ascites, but there is a 2 cm cyst in the liver.") == ["abnormal"]
    assert status("No hydronephrosis, however a small stone is present in the left kidney.") == ["abnormal"]
    assert status("No mass in the pancreas although the duct is dilated.") == ["abnormal"]
    # with the scope ended, a negation after the terminator still applies
    assert status("The liver is enlarged but no focal lesion is seen.") == ["abnormal"]


def test_negation_does_not_cross_units():
    got = segment_report("No focal liver lesion; the spleen is enlarged.")
    assert [f.status for f in got] == ["normal", "abnormal"]
    got = segment_report("There is no evidence of metastasis. A small nodule in the right lung is noted.")
    assert [f.status for f in got] == ["normal", "abnormal"]


def test_mixed_sentence_is_abnormal():
    assert status("There is a mass in the liver and no ascites.") == ["abnormal"]
    assert status("Enlarged lymph nodes without necrosis.") == ["abnormal"]
