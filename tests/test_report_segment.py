"""Step 1 contract: Finding rows, sections, sentence segmentation, input errors, huge reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyslice.errors import EmptyReportError, InputError, UnsupportedLanguageError
from keyslice.report import ORGAN_TS_LABELS, Finding, ReportConfig, segment_report, ts_labels_for
from keyslice.corpus.schemas import table_schema, to_table

REPO = Path(__file__).resolve().parents[1]


def texts(report: str, **cfg) -> list[str]:
    return [f.text for f in segment_report(report, ReportConfig(**cfg) if cfg else None)]


# ----------------------------------------------------------------------------- contract
def test_finding_row_matches_the_findings_schema():
    findings = segment_report("FINDINGS: 2.3 x 1.5 cm cyst in the left kidney (series 3, image 45).")
    assert len(findings) == 1
    f = findings[0]
    assert isinstance(f, Finding) and f.segmenter == "rules-v2" and f.language == "en"
    row = f.to_row()
    spec = json.loads((REPO / "schemas/tables/findings.v2.json").read_text())
    # the stage adds the study's keys, the time and what de-identification masked in the whole report
    declared = {fld["name"] for fld in spec["fields"]} - {"study_id", "finding_id", "created_at", "deid_version",
                                                          "report_phi_masked"}
    assert set(row) == declared
    assert row["image_refs"] == [{"series_number": 3, "instance_number": 45}]
    assert row["measurements_mm"] == [23.0, 15.0] and all(isinstance(m, float) for m in row["measurements_mm"])
    assert row["ts_labels"] == ["kidney_left"] and row["laterality"] == "left"
    # the row goes through the project's strict table writer once the caller adds its keys
    import datetime as dt

    full = {**row, "study_id": "s1", "finding_id": "s1:0", "created_at": dt.datetime.now(dt.timezone.utc)}
    table = to_table("findings", [full])
    assert table.schema.equals(table_schema("findings").schema, check_metadata=False)


def test_finding_indices_are_consecutive_across_sections():
    rep = "FINDINGS: Liver normal. Spleen enlarged.\nIMPRESSION: Splenomegaly."
    got = segment_report(rep)
    assert [f.finding_index for f in got] == [0, 1, 2]
    assert [f.section for f in got] == ["findings", "findings", "impression"]


def test_report_config_rejects_bad_options():
    with pytest.raises(ValueError):
        ReportConfig(segmenter="magic")
    with pytest.raises(ValueError):
        ReportConfig(max_chunk_chars=10)


# ----------------------------------------------------------------------------- sections
REPORT = """CT ABDOMEN AND PELVIS WITH CONTRAST

CLINICAL INFORMATION: Abdominal pain, history of colon cancer.
COMPARISON: None.
TECHNIQUE: Axial images of the abdomen in the portal venous phase.

FINDINGS:
The liver is normal in size. There is a 2.3 cm hypodense lesion in segment 7.
The spleen is unremarkable.

IMPRESSION:
1. Hypodense liver lesion, possibly a cyst.
2. No lymphadenopathy.
"""


def test_only_findings_and_impression_give_units():
    got = segment_report(REPORT)
    assert [f.section for f in got] == ["findings"] * 3 + ["impression"] * 2
    assert got[0].text == "The liver is normal in size."
    assert got[3].text == "Hypodense liver lesion, possibly a cyst."  # list marker removed
    assert not any("colon cancer" in f.text or "portal venous phase" in f.text for f in got)


@pytest.mark.parametrize("header", ["FINDINGS:", "Findings:", "findings -", "**FINDINGS**:", "FINDINGS", "Finding:",
                                    "Findings and impression:"])
def test_findings_header_spellings(header):
    rep = f"HISTORY: Pain.\n{header}\nThe spleen is enlarged.\n"
    got = segment_report(rep)
    assert [(f.section, f.text) for f in got] == [("findings", "The spleen is enlarged.")]


@pytest.mark.parametrize("header,section", [("IMPRESSION:", "impression"), ("Impressions:", "impression"),
                                            ("CONCLUSION:", "impression"), ("Conclusions -", "impression"),
                                            ("Technique:", None), ("Clinical information:", None),
                                            ("CLINICAL HISTORY:", None), ("Comparison:", None),
                                            ("Indication:", None)])
def test_other_headers(header, section):
    rep = f"FINDINGS: Liver normal.\n{header} Splenomegaly.\n"
    got = segment_report(rep)
    assert got[0].section == "findings"
    if section is None:
        assert len(got) == 1
    else:
        assert [f.section for f in got] == ["findings", section] and got[1].text == "Splenomegaly."


def test_inline_headers_after_a_sentence():
    got = segment_report("Findings: The liver is enlarged. Impression: Hepatomegaly.")
    assert [(f.section, f.text) for f in got] == [("findings", "The liver is enlarged."),
                                                 ("impression", "Hepatomegaly.")]


def test_no_headers_is_all_findings_and_a_sentence_starting_with_findings_is_no_header():
    got = segment_report("Findings suggest cirrhosis. The spleen is enlarged.")
    assert [f.section for f in got] == ["findings", "findings"]
    assert got[0].text == "Findings suggest cirrhosis."


def test_title_before_findings_header_is_dropped_but_kept_without_one():
    assert texts("CT CHEST\nFINDINGS: Right lung nodule.") == ["Right lung nodule."]
    got = segment_report("Axial CT of the chest.\nIMPRESSION: Right lung nodule.")
    assert [(f.section, f.text) for f in got] == [("findings", "Axial CT of the chest."),
                                                 ("impression", "Right lung nodule.")]


def test_sections_option():
    got = segment_report(REPORT, ReportConfig(sections=("impression",)))
    assert [f.section for f in got] == ["impression", "impression"]


# ----------------------------------------------------------------------------- sentences
def test_abbreviation_after_measurement_stays_one_sentence():
    assert texts("2.3 cm. cyst in the kidney.") == ["2.3 cm. cyst in the kidney."]
    assert texts("Lesion of 2.3 cm. Cyst in the kidney.") == ["Lesion of 2.3 cm.", "Cyst in the kidney."]


@pytest.mark.parametrize("sentence", [
    "There is an approx. 2 cm mass in the liver.",
    "Small lesions, e.g. in the liver, are seen.",
    "Cyst vs. abscess in the right kidney.",
    "S/P cholecystectomy. ",
    "CT w/o contrast shows a renal stone.",
    "Findings i.e. a Bosniak 2 cyst are stable.",
    "See Fig. 2 for the liver lesion.",
    "Mass in the liver, approx. 3 cm, with calcifications.",
])
def test_abbreviations_do_not_split(sentence):
    assert texts(sentence) == [sentence.strip()]


def test_numbered_lists_bullets_semicolons_and_wrapping():
    rep = ("1. Fatty liver.\n2. Splenomegaly measuring 15 cm.\n"
           "- Small hiatal hernia\n- No ascites\n"
           "* Bilateral renal cysts; no hydronephrosis.\n"
           "• Gallbladder normal • Pancreas normal\n"
           "There is a large mass in the right\nupper lobe of the lung extending\nto the hilum.\n\n"
           "Blank line separated paragraph without period\n\nAnother paragraph.")
    assert texts(rep) == [
        "Fatty liver.", "Splenomegaly measuring 15 cm.", "Small hiatal hernia", "No ascites",
        "Bilateral renal cysts", "no hydronephrosis.", "Gallbladder normal", "Pancreas normal",
        "There is a large mass in the right upper lobe of the lung extending to the hilum.",
        "Blank line separated paragraph without period", "Another paragraph.",
    ]


def test_inline_numbered_list_and_structured_lines():
    assert texts("IMPRESSION: 1. Splenomegaly. 2. Cyst in the liver and kidney.") == [
        "Splenomegaly.", "Cyst in the liver and kidney."]
    assert texts("LIVER: Normal\nSPLEEN: Enlarged\nKIDNEYS: Normal") == [
        "LIVER: Normal", "SPLEEN: Enlarged", "KIDNEYS: Normal"]


def test_pipeline_is_inspectable_as_spacy_spans():
    """The components keep tuples for speed; doc.sents and to_spans give spaCy's own view (displaCy)."""
    from keyslice.report.pipeline import get_nlp, to_spans

    doc = to_spans(get_nlp()("No ascites; the left kidney is enlarged and the liver shows a 2 cm cyst."))
    assert [s.text for s in doc.sents] == ["No ascites;", "the left kidney is enlarged and the liver shows a 2 cm cyst."]
    assert [(s.text, s.label_) for s in doc.spans["ks_units"]] == [
        ("No ascites;", "normal"), ("the left kidney is enlarged", "abnormal"), ("the liver shows a 2 cm cyst.", "abnormal")]
    assert [(s.text, s.label_) for s in doc.spans["ks_organs"]] == [("kidney", "kidney"), ("liver", "liver")]
    assert [(s.text, s.label_) for s in doc.spans["ks_laterality"]] == [("left", "left")]
    assert [(s.text, s.label_) for s in doc.spans["ks_targets"]] == [
        ("ascites", "negated"), ("enlarged", "affirmed"), ("cyst", "affirmed")]
    assert ("No", "NEGATED_EXISTENCE/FORWARD") in [(s.text, s.label_) for s in doc.spans["ks_triggers"]]


def test_glued_sentences_are_split():
    assert texts("Pancreatic mass.Regions with high uptake are red.") == [
        "Pancreatic mass.", "Regions with high uptake are red."]


def test_min_chars_drops_markers_only():
    assert texts("-\n\n1.\n\nLiver normal.") == ["Liver normal."]


# ----------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("text", ["", "   ", "\n\n\t ", None])
def test_empty_and_whitespace_reports_raise(text):
    with pytest.raises(EmptyReportError) as err:
        segment_report(text)
    assert isinstance(err.value, InputError) and "empty" in str(err.value)


@pytest.mark.parametrize("text,lang", [
    ("Die Leber ist unauffällig. In der linken Niere zeigt sich eine Zyste von 2 cm ohne Kontrastmittel.", "de"),
    ("Le foie est de taille normale. Il y a un kyste dans le rein gauche sans prise de contraste.", "fr"),
    ("El hígado es de tamaño normal. Hay un quiste en el riñón izquierdo sin realce con el contraste.", "es"),
    ("Il fegato è di dimensioni normali. Si osserva una cisti nel rene sinistro senza enhancement.", "it"),
    ("Печень обычных размеров. В левой почке киста размером 2 см.", "non-latin"),
    ("肝脏大小正常。左肾可见一个2厘米的囊肿。", "non-latin"),
])
def test_non_english_raises_with_a_clear_message(text, lang):
    with pytest.raises(UnsupportedLanguageError) as err:
        segment_report(text)
    msg = str(err.value)
    assert "English" in msg and repr(lang) in msg and "check_language=False" in msg


def test_english_with_foreign_words_and_telegraphic_reports_pass():
    assert segment_report("Liver: normal. Spleen: 12 cm. Kidneys: normal. Pancreas: normal. Aorta: normal.")
    assert segment_report("Hepatomegaly.")  # too short to judge: accepted
    assert segment_report("The patient from Bogotá had a mass in the liver; la masa was 3 cm in size.")
    assert segment_report("Die Leber ist unauffällig und die Niere ist normal.", ReportConfig(check_language=False))


# ----------------------------------------------------------------------------- huge reports
def test_100k_char_synthetic_report_is_cut_at_sentence_ends():
    para = ("The liver is normal in size. There is a 2.3 x 1.5 cm cyst in the left kidney (series 3, image 45). "
            "No ascites; the spleen is enlarged. ")
    lines = []
    while sum(map(len, lines)) < 100_000:
        lines.append(para)
    text = "FINDINGS:\n" + "\n".join(lines)  # one single 100k-char paragraph with line wraps
    assert len(text) >= 100_000
    got = segment_report(text)  # (cut into <= 20,000-char chunks at sentence ends before spaCy sees it)
    assert len(got) == 4 * len(lines)  # "No ascites;" ends a unit; no sentence is lost or split at a cut
    assert [f.finding_index for f in got] == list(range(len(got)))
    assert [f.text for f in got[-4:]] == ["The liver is normal in size.",
                                         "There is a 2.3 x 1.5 cm cyst in the left kidney (series 3, image 45).",
                                         "No ascites", "the spleen is enlarged."]
    assert all(f.measurements_mm == [23.0, 15.0] and f.image_refs == [(3, 45)] for f in got[1::4])
    assert [f.status for f in got[:4]] == ["normal", "abnormal", "normal", "abnormal"]


def test_100k_synthetic_report_without_any_punctuation_is_chunked():
    text = ("liver " * 20_000) + "x" * 5_000
    got = segment_report(text, ReportConfig(check_language=False))
    assert got and all(len(f.text) <= 20_000 for f in got)


def test_organ_labels_are_totalsegmentator_names(data_dir):
    labels = set(json.loads((data_dir / "totalsegmentator_reference/totalsegmentator_total_labels.json")
                            .read_text()).values())
    used = {lab for v in ORGAN_TS_LABELS.values() for lab in v}
    assert used <= labels, used - labels
    for organ in ("aorta", "colon", "duodenum", "esophagus", "gallbladder", "heart", "kidney", "liver", "pancreas",
                  "stomach", "spleen", "thyroid gland", "urinary bladder", "trachea", "lung", "adrenal gland",
                  "lymph node", "spine", "small bowel", "portal vein", "inferior vena cava", "pulmonary artery"):
        assert organ in ORGAN_TS_LABELS
    assert ts_labels_for("kidney", "left") == ["kidney_left"]
    assert ts_labels_for("kidney", "bilateral") == ["kidney_left", "kidney_right"]
    assert ts_labels_for("lung", "right") == ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]
    assert ts_labels_for("liver", "left") == ["liver"]
    assert ts_labels_for("nonsense", None) == []


def test_threads_share_the_pipeline_safely():
    """The build segments studies in worker threads sharing one cached pipeline."""
    from concurrent.futures import ThreadPoolExecutor

    reports = [f"FINDINGS: There is a {k}.{k % 10} cm cyst in the left kidney (series {k}, image {k + 1}). "
               f"No ascites; the spleen is enlarged.\nIMPRESSION: Possible hepatic lesion {k}." for k in range(60)]
    serial = [[f.to_row() for f in segment_report(r)] for r in reports]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda r: [f.to_row() for f in segment_report(r)], reports))
    assert threaded == serial
