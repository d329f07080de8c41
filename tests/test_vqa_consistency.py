"""The VQA consistency check: answers against the structured findings they rest on.

The test corpus is made of REAL ROCO CT caption sentences with negations (CC BY; each cited
by roco_id), grouped into reports. The grouping is ASSEMBLED (sentences of different
patients in one report). Their structured fields (findings v2: status, organs, laterality,
abnormalities asserted and negated, measurements) are hand-labelled here as step 1 should
record them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from keyslice.vqa import generate_rule_vqa
from keyslice.vqa.consistency import KINDS, VQA_CONTRADICTIONS, check_corpus, contradictions_sql
from keyslice.vqa.rows import make_row
from tests.real_data import DATA
from tests.vqa_corpus import as_stored, check_tables, finding, selection_for, write_corpus

CAPTIONS = DATA / "roco_ct_captions" / "captions.json"
SERIES = [{"series_id": "ser-1", "phase": "portal_venous", "orientation": "axial"}]

# report -> [(roco_id, sentence, structured fields)]
NEGATION_REPORTS: dict[str, list[tuple[str, str, dict]]] = {
    "neg-abdomen": [
        ("ROCO_08629", "CT scan of the abdomen shows a 5.3 × 4.4 cm cystic lesion (arrow) in the body/tail of the "
                       "pancreas without any changes in acute or chronic pancreatitis",
         dict(organs=["pancreas"], status="abnormal", abnormalities=["cyst"], negated=["inflammation"],
              measurements_mm=[53, 44])),
        ("ROCO_11891", "CT image of abdomen showing marked colonic dilation without any evidence of obstruction.",
         dict(organs=["colon"], status="abnormal", abnormalities=["dilatation"])),
        ("ROCO_43637", "Axial contrast-enhanced CT scan of the liver done in May 2004 shows absence of focal "
                       "hepatic lesions",
         dict(organs=["liver"], status="normal", negated=["lesion"])),
        ("ROCO_21924", "Axial section of contrast-enhanced CT of his left kidney after RFA shows the treated region "
                       "(white arrow) with no evidence of residual or recurrent disease at two years after RFA.",
         dict(organs=["kidney"], status="normal", laterality="left")),
        ("ROCO_48831", "Abdominal CT finding.", dict(organs=[], status="non_finding", statement="title")),
        ("ROCO_48831", "The pancreatic duct was diffusely dilated without a definite obstructive mass lesion.",
         dict(organs=["pancreatic duct"], status="abnormal", abnormalities=["dilatation"],
              negated=["mass", "lesion"])),
        ("ROCO_64048", "CT of the abdomen (portalvenous phase) at the initial presentation shows a dilated pancreatic "
                       "duct without evidence of an obstructive process or cholelithiasis",
         dict(organs=["pancreatic duct", "gallbladder"], status="abnormal", abnormalities=["dilatation"],
              negated=["calculus"])),
    ],
    "neg-bowel": [
        ("ROCO_26567", "Invaginated into a proximal bowel loop, indicating small bowel intussusception (arrow).",
         dict(organs=["small bowel"], status="abnormal", abnormalities=["intussusception"])),
        ("ROCO_26567", "There were no signs of bowel ischemia nor obstruction.",
         dict(organs=["small bowel"], status="normal", negated=["infarction"])),
        ("ROCO_32324", "Further CT scan of the abdomen showing gall stone in the small bowel lumen with no signs of "
                       "bowel obstruction.",
         dict(organs=["small bowel"], status="abnormal", abnormalities=["calculus"])),
        ("ROCO_32324", "The bowel wall showing proximal edema to the gall stone.",
         dict(organs=["small bowel"], status="abnormal", abnormalities=["inflammation", "calculus"])),
    ],
    "neg-chest": [
        ("ROCO_44698", "CT pulmonary arteriography with venous phase imaging.",
         dict(organs=["pulmonary artery"], status="non_finding", statement="technique")),
        ("ROCO_44698", "There's no evidence of pulmonary artery embolus but there is a thrombus seen in the right "
                       "lower lobe pulmonary vein.",
         dict(organs=["pulmonary artery", "pulmonary vein"], status="abnormal", laterality="right",
              abnormalities=["thrombosis"], negated=["thrombosis"])),
        ("ROCO_44698", "There's evidence of a background of extensive right lung fibrosis and volume loss.",
         dict(organs=["lung"], status="abnormal", laterality="right", abnormalities=["fibrosis"])),
        ("ROCO_66083", "Chest computed tomography (CT) scan demonstrated an 4 cm pulmonary mass in the left lower "
                       "lobe, without enlargement of intrapulmonary or mediastinal lymph nodes.",
         dict(organs=["lung", "lymph node"], status="abnormal", laterality="left", abnormalities=["mass"],
              negated=["lymphadenopathy"], measurements_mm=[40])),
        ("ROCO_50516", "Six-month follow-up CTA shows the thoracic aorta without false lumen.",
         dict(organs=["aorta"], status="normal", negated=["dissection"])),
        ("ROCO_56184", "CT scan showing a large, thoracic aortic aneurysm (TAA) in the ascending aorta with a small "
                       "aortic dissection that did not reach the sinus of Valsalva.",
         dict(organs=["aorta"], status="abnormal", abnormalities=["aneurysm", "dissection"])),
        ("ROCO_56184", "The descending aorta was intact.", dict(organs=["aorta"], status="normal")),
        ("ROCO_56184", "There were no signs of rupture, such as pericardial effusion or hemothorax.",
         dict(organs=["heart", "pleura"], status="normal", negated=["laceration", "hematoma"])),
    ],
    "neg-neck": [
        ("ROCO_80176", "CT scan of the neck with intravenous contrast revealing a large mass originating from the "
                       "thyroid gland with compression of surrounding structures.",
         dict(organs=["thyroid gland"], status="abnormal", abnormalities=["mass"])),
        ("ROCO_80176", "No obvious lymphadenopathy, satellite lesions, or bony lesions.",
         dict(organs=["lymph node", "bone"], status="normal", negated=["lymphadenopathy", "lesion"])),
        ("ROCO_03538", "CT scan.", dict(organs=[], status="non_finding", statement="title")),
        ("ROCO_03538", "No evidence of tumor activity is demonstrated.",
         dict(organs=[], status="normal", negated=["mass"])),
    ],
}


def negation_corpus() -> tuple[list[dict], list[dict]]:
    findings = [finding(study, i, text, **fields)
                for study, items in NEGATION_REPORTS.items() for i, (_, text, fields) in enumerate(items)]
    return findings, [selection_for(f) for f in findings]


@pytest.mark.skipif(not CAPTIONS.is_file(), reason=f"real captions not found at {CAPTIONS}")
def test_negation_corpus_sentences_are_real_roco_captions():
    captions = {c["roco_id"]: c["caption"] for c in json.loads(CAPTIONS.read_text(encoding="utf-8"))}
    for items in NEGATION_REPORTS.values():
        for roco_id, sentence, _ in items:
            assert sentence in captions[roco_id], roco_id


def test_rules_on_real_negation_sentences_contradict_nothing():
    findings, selections = negation_corpus()
    by_id = {f["finding_id"]: f for f in findings}
    for seed in range(5):
        rows = generate_rule_vqa(findings, selections, SERIES, seed=seed)
        result = check_tables(findings, rows)
        assert result.total == 0, result.rows.to_pylist()
        assert result.n_answers == len(rows) > 40 and result.n_unchecked == 0
        for r in rows:
            f = by_id[r["finding_id"]]
            assert f["status"] != "non_finding", r
            # a negated type is never an answer, and never the 'yes' of a question
            if r["answer"] != "no":
                assert r["answer"] not in f["negated_abnormalities"], r
                assert r["abnormality"] is None or r["abnormality"] in f["abnormalities"], r
            if r["answer"] == "no":
                evidence = by_id[r["evidence_finding_id"]]
                assert evidence["study_id"] == f["study_id"]
                assert evidence["status"] == "normal" or r["abnormality"] in evidence["negated_abnormalities"], r
        answers = {(r["finding_id"], r["question"], r["answer"]) for r in rows}
        # the negated pancreatitis is asked, and answered no, on its own sentence's slice
        assert ("neg-abdomen:0", "Is there inflammation in the pancreas?", "no") in answers
        assert ("neg-abdomen:0", "What type of abnormality is seen in the pancreas?", "cyst") in answers
        # "no pulmonary artery embolus but a thrombus in the pulmonary vein": no organ is asserted
        # abnormal, and thrombosis (asserted and negated) is no answer
        assert not [r for r in rows if r["finding_id"] == "neg-chest:1" and r["question_type"] != "laterality"
                    and r["question_type"] not in ("plane", "phase")]
        # "pulmonary mass ... without enlarged lymph nodes": the lymph nodes are never abnormal
        assert not [r for r in rows if r["organ"] == "lymph node" and r["answer"] == "yes"]
        # the aorta has an aneurysm in one sentence and is 'intact' in another: never 'no'
        assert not [r for r in rows if r["organ"] == "aorta" and r["answer"] == "no"]


def test_segmenter_rows_of_the_same_captions_contradict_nothing():
    """The same real captions through this checkout's report segmenter, stored as the corpus
    stores them (structured columns as the findings schema has them), then rules, then check."""
    report = pytest.importorskip("keyslice.report")
    if not CAPTIONS.is_file():
        pytest.skip(f"real captions not found at {CAPTIONS}")
    captions = {c["roco_id"]: c["caption"] for c in json.loads(CAPTIONS.read_text(encoding="utf-8"))}
    findings = []
    for study, items in NEGATION_REPORTS.items():
        text = " ".join(dict.fromkeys(captions[roco_id] for roco_id, _, _ in items))
        for unit in report.segment_report(text):
            row = {**unit.to_row(), "study_id": study, "finding_id": f"{study}:{unit.finding_index}",
                   "created_at": None}
            findings.append(as_stored(row))
    rows = generate_rule_vqa(findings, [selection_for(f) for f in findings], SERIES)
    assert len(findings) >= 15 and rows
    result = check_tables(findings, rows)
    assert result.total == 0, result.rows.to_pylist()


def _plant(kind: str, base_finding: str, question: str, answer: str, answer_type: str = "closed",
           question_type: str = "organ", options=(), **what) -> dict:
    row = make_row(finding_id=base_finding, question=question, answer=answer, answer_type=answer_type,
                   question_type=question_type, options=options, generator="planted", prompt_version=kind,
                   ref={"series_id": "ser-1", "slice_index": 99, "image_path": "images/x.png"}, **what)
    return row


def test_check_counts_each_planted_contradiction_once():
    findings, selections = negation_corpus()
    clean = generate_rule_vqa(findings, selections, SERIES)
    planted = {
        "question_on_non_finding": _plant("question_on_non_finding", "neg-abdomen:4",
                                          "In which plane is this image shown?", "axial", question_type="plane",
                                          answer_source="series"),
        # "The descending aorta was intact.", but the ascending aorta has an aneurysm
        "no_but_abnormal": _plant("no_but_abnormal", "neg-chest:4", "Is there an abnormality in the aorta?",
                                  "no", organ="aorta", evidence_finding_id="neg-chest:6"),
        # the abdominal report never mentions the aorta
        "no_not_stated_normal": _plant("no_not_stated_normal", "neg-abdomen:0",
                                       "Is there an abnormality in the aorta?", "no", organ="aorta"),
        # the left kidney is stated normal
        "yes_not_abnormal": _plant("yes_not_abnormal", "neg-abdomen:3",
                                   "Is there an abnormality in the left kidney?", "yes",
                                   organ="kidney", organ_side="left"),
        # diverticulitis-like: the pancreatitis is negated
        "yes_but_negated": _plant("yes_but_negated", "neg-abdomen:0", "Is there inflammation in the pancreas?",
                                  "yes", question_type="abnormality", organ="pancreas", abnormality="inflammation"),
        "type_answer_negated": _plant("type_answer_negated", "neg-abdomen:0",
                                      "What type of abnormality is seen in the pancreas?", "inflammation",
                                      answer_type="open", question_type="abnormality", organ="pancreas",
                                      abnormality="inflammation"),
        "type_answer_not_asserted": _plant("type_answer_not_asserted", "neg-abdomen:1",
                                           "What type of abnormality is seen in the colon?", "mass",
                                           answer_type="open", question_type="abnormality", organ="colon",
                                           abnormality="mass"),
        "laterality_mismatch": _plant("laterality_mismatch", "neg-chest:3", "On which side is the mass?", "right",
                                      question_type="laterality", organ="lung", organ_side="right"),
        "size_mismatch": _plant("size_mismatch", "neg-abdomen:0", "What is the size of the cyst?", "5.3 × 4.2 cm",
                                answer_type="open", question_type="size", organ="pancreas", abnormality="cyst"),
    }
    assert set(planted) == set(KINDS)
    result = check_tables(findings, clean + list(planted.values()))
    assert result.counts == dict.fromkeys(KINDS, 1), result.rows.to_pylist()
    found = {(r["kind"], r["qa_id"]) for r in result.rows.to_pylist()}
    assert found == {(kind, row["qa_id"]) for kind, row in planted.items()}
    # the same answers that agree with their finding are not counted
    fixed = [
        _plant("ok", "neg-abdomen:3", "Is there an abnormality in the liver?", "no", organ="liver",
               evidence_finding_id="neg-abdomen:2"),
        _plant("ok", "neg-abdomen:0", "What is the size of the cyst?", "5.3 × 4.4 cm", answer_type="open",
               question_type="size", organ="pancreas", abnormality="cyst"),
        _plant("ok", "neg-chest:3", "On which side is the mass?", "left", question_type="laterality", organ="lung"),
        _plant("ok", "neg-abdomen:0", "Is there an abnormality in the spleen?", "no", organ="spleen",
               answer_source="mask"),
    ]
    assert check_tables(findings, clean + fixed).total == 0


def test_rows_without_answer_source_are_counted_unchecked():
    findings, selections = negation_corpus()
    rows = generate_rule_vqa(findings, selections, SERIES)
    old = [{**r, "organ": None, "organ_side": None, "abnormality": None, "evidence_finding_id": None,
            "answer_source": None} for r in rows]
    result = check_tables(findings, old)
    assert result.n_unchecked == len(rows)
    # an old rule row answering a type question is still checked: its answer is the type
    bad = dict(old[0], qa_id="x" * 20, question="What type of abnormality is seen in the pancreas?",
               answer="inflammation", answer_type="open", question_type="abnormality", finding_id="neg-abdomen:0",
               options=[])
    assert check_tables(findings, old + [bad]).counts["type_answer_negated"] == 1


def test_documented_query_is_the_check_for_v2_findings():
    assert "negated_abnormalities" in VQA_CONTRADICTIONS
    assert VQA_CONTRADICTIONS == contradictions_sql()
    # a findings view without the v2 columns reads them as empty lists
    old = contradictions_sql({"study_id", "finding_id", "status", "laterality", "organs", "measurements_mm"})
    assert "[]::VARCHAR[] AS negated_abnormalities" in old


def _corpus(tmp_path, extra=()):
    findings, selections = negation_corpus()
    # as stored by this checkout: without findings v2 the types are gone, and the rules ask none
    stored = [as_stored(f) for f in findings]
    rows = generate_rule_vqa(stored, selections, SERIES) + list(extra)
    return write_corpus(tmp_path / "corpus", stored, rows)


def test_check_corpus_on_a_written_corpus(tmp_path):
    root = _corpus(tmp_path)
    result = check_corpus(root)
    assert result.total == 0 and result.n_answers > 20, result.rows.to_pylist()


def test_cli_check_exit_codes_and_pipe_output(tmp_path):
    from keyslice.cli import app

    clean = _corpus(tmp_path / "a")
    res = CliRunner().invoke(app, ["check", "--out", str(clean)])
    assert res.exit_code == 0, res.output
    assert "no_not_stated_normal" in res.output and "total" in res.output

    silent_organ = _plant("x", "neg-abdomen:0", "Is there an abnormality in the aorta?", "no", organ="aorta")
    bad = _corpus(tmp_path / "b", [silent_organ])
    csv_path = tmp_path / "contradictions.csv"
    # a real process with stdout piped: no terminal codes, exit status 1
    proc = subprocess.run([sys.executable, "-m", "keyslice.cli", "check", "--out", str(bad), "-o", str(csv_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "\x1b[" not in proc.stdout
    assert "aorta" in proc.stdout and "no_not_stated_normal" in proc.stdout
    assert "no_not_stated_normal" in csv_path.read_text()

    res = CliRunner().invoke(app, ["check", "--out", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "missing does not exist" in " ".join(res.output.replace("│", " ").split())
