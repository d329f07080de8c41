"""Rule-based VQA generation: real caption sentences, negatives, balance, determinism."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from keyslice.corpus.schemas import to_table
from keyslice.vqa import RULES_VERSION, generate_rule_vqa
from keyslice.vqa.lexicon import find_organs, split_side
from keyslice.vqa.rows import qa_id
from tests.real_data import DATA
from tests.vqa_corpus import check_tables, finding, selection_for

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vqa_rule_expected.json"
CAPTIONS = DATA / "roco_ct_captions" / "captions.json"
SPEC = json.loads(FIXTURE.read_text(encoding="utf-8"))
NEG_Q = re.compile(r"^Is there an abnormality in (?:the |both )?(?P<organ>.+)\?$")

# Yes/no balance tolerance: |yes - no| <= 5 % of all yes/no answers.
BALANCE_TOLERANCE = 0.05


def fixture_inputs(items=SPEC["items"]):
    findings, selections, series = [], [], []
    for it in items:
        study = f"roco-{it['roco_id']}"
        fid = f"{study}:0"
        findings.append({"study_id": study, "finding_id": fid, "finding_index": 0, "section": "findings",
                         "text": it["sentence"], "phase_hint": None, **it["finding"]})
        selections.append({"finding_id": fid, "series_id": f"ser-{it['roco_id']}", "top1_index": 0,
                           "image_path": it["pmc_image"]})
        series.append({"series_id": f"ser-{it['roco_id']}", **it["series"]})
    return findings, selections, series


def key(r):
    return (r["question_type"], r["answer_type"], r["question"], r["answer"])


def organ_of_question(question: str) -> tuple[str, str | None]:
    m = NEG_Q.match(question)
    assert m, question
    return split_side(m.group("organ"))


@pytest.mark.skipif(not CAPTIONS.is_file(), reason=f"real captions not found at {CAPTIONS}")
def test_fixture_sentences_are_real_roco_captions():
    captions = {c["roco_id"]: c for c in json.loads(CAPTIONS.read_text(encoding="utf-8"))}
    assert len(SPEC["items"]) >= 20
    for it in SPEC["items"]:
        cap = captions[it["roco_id"]]
        assert it["sentence"] in cap["caption"], it["roco_id"]
        assert (it["pmc_image"], it["source"], it["license"]) == (cap["pmc_image"], cap["source"], cap["license"])


def test_rule_vqa_on_real_caption_sentences():
    findings, selections, series = fixture_inputs()
    rows = generate_rule_vqa(findings, selections, series, seed=SPEC["seed"])
    by_finding: dict[str, list[dict]] = {}
    for r in rows:
        by_finding.setdefault(r["finding_id"], []).append(r)
    problems = []
    for it, f in zip(SPEC["items"], findings):
        got = by_finding.get(f["finding_id"], [])
        positives = Counter(key(r) for r in got if r["answer"] != "no")
        expected = Counter(tuple(e[k] for k in ("question_type", "answer_type", "question", "answer"))
                           for e in it["expected"])
        if positives != expected:
            problems.append(f"{it['roco_id']}: missing {sorted(expected - positives)}; "
                            f"unexpected {sorted(positives - expected)}")
        # each caption is a report of its own: a 'no' may only come from a type the sentence negates
        yes = [r for r in got if r["answer"] == "yes"]
        no = [r for r in got if r["answer"] == "no"]
        assert len(no) <= len(yes), (it["roco_id"], [r["question"] for r in no])
        for r in no:
            assert r["abnormality"] in it["finding"]["negated_abnormalities"], (it["roco_id"], r["question"])
            assert r["evidence_finding_id"] == f["finding_id"] and r["answer_source"] == "finding"
        named = set(find_organs(it["sentence"])) | {split_side(o)[0] for o in it["finding"]["organs"]}
        for r in got:
            assert r["generator"] == "rule" and r["prompt_version"] == RULES_VERSION
            assert (r["series_id"], r["slice_index"], r["image_path"]) == (f"ser-{it['roco_id']}", 0, it["pmc_image"])
            if r["answer_type"] == "choice":
                assert r["answer"] in r["options"] and len(set(r["options"])) == len(r["options"]) >= 2, r
                if r["question_type"] in ("organ", "location"):
                    wrong = [o for o in r["options"] if o != r["answer"]]
                    assert not {split_side(o)[0] for o in wrong} & named, (it["roco_id"], r)
            else:
                assert r["options"] == []
        if it["series"]["phase"] == "unknown":
            assert not [r for r in got if r["question_type"] == "phase"]
    assert not problems, "\n".join(problems)


def test_rows_fit_the_vqa_table_schema():
    findings, selections, series = fixture_inputs()
    rows = generate_rule_vqa(findings, selections, series)
    now = dt.datetime.now(dt.timezone.utc)
    table = to_table("vqa", [{"study_id": r["finding_id"].rsplit(":", 1)[0], "created_at": now, **r} for r in rows])
    assert table.num_rows == len(rows) > 100
    assert set(table.column("answer_type").to_pylist()) == {"closed", "open", "choice"}
    assert {"plane", "phase", "organ", "abnormality", "location", "laterality"} <= set(
        table.column("question_type").to_pylist())


def test_deterministic_for_a_seed_and_independent_of_input_order():
    findings, selections, series = fixture_inputs()
    a = generate_rule_vqa(findings, selections, series, seed=7)
    b = generate_rule_vqa(list(reversed(findings)), list(reversed(selections)), series[::-1], seed=7)
    assert a == b
    c = generate_rule_vqa(findings, selections, series, seed=8)
    assert {key(r) for r in a if r["answer"] != "no"} == {key(r) for r in c if r["answer"] != "no"}
    assert [r["options"] for r in a] != [r["options"] for r in c]  # the seed drives option order


def test_qa_id_is_a_hash_of_finding_and_question():
    findings, selections, series = fixture_inputs()
    rows = generate_rule_vqa(findings, selections, series)
    assert len({r["qa_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["qa_id"] == qa_id(r["finding_id"], r["question"], r["answer_type"], "rule")


def _report_study():
    """A multi-finding study built from real caption sentences (ROCO) plus normal statements."""
    F = [
        ("CT scan showing hypovascular lesion in left lobe of liver.", ["liver"], "abnormal", None),
        ("The spleen is normal in size.", ["spleen"], "normal", None),
        ("CT scan showing right renal hematoma", ["kidney"], "abnormal", "right"),
        ("The pancreas is unremarkable.", ["pancreas"], "normal", None),
        ("Possible small lesion in the left adrenal gland.", ["adrenal gland"], "uncertain", "left"),
        ("Gallbladder wall thickening.", ["gallbladder"], "abnormal", None),
        ("The left kidney is normal.", ["kidney"], "normal", "left"),
    ]
    findings = [{"study_id": "rep1", "finding_id": f"rep1:{i}", "finding_index": i, "text": t, "organs": o,
                 "status": s, "laterality": lat, "section": "findings"} for i, (t, o, s, lat) in enumerate(F)]
    selections = [{"finding_id": f["finding_id"], "series_id": "ser-pv", "top1_index": 30 + 5 * i,
                   "image_path": f"images/rep1/{i}.png"} for i, f in enumerate(findings)]
    series = [{"series_id": "ser-pv", "phase": "portal_venous", "orientation": "axial"}]
    return findings, selections, series


def test_negatives_never_claim_no_for_abnormal_or_uncertain_organs():
    findings, selections, series = _report_study()
    for seed in range(20):
        rows = generate_rule_vqa(findings, selections, series, seed=seed)
        no = [organ_of_question(r["question"]) for r in rows if r["answer"] == "no"]
        yes = [r for r in rows if r["answer"] == "yes"]
        assert len(no) == len(yes) == 3
        for organ, side in no:
            assert organ not in ("liver", "gallbladder", "adrenal gland"), (seed, organ)
            if organ == "kidney":
                assert side == "left", (seed, organ, side)  # the right one is abnormal
        # normal-stated organs are preferred to organs the report never mentions
        assert {o for o, _ in no} <= {"spleen", "pancreas", "kidney"}, (seed, no)


def test_normal_finding_slices_take_the_leftover_no_quota():
    findings = [
        {"finding_id": "s:0", "text": "Mass in the scrotum and the testis.", "organs": ["scrotum", "testis"],
         "status": "abnormal", "laterality": None},
        {"finding_id": "s:1", "text": "The liver is normal.", "organs": ["liver"], "status": "normal", "laterality": None},
    ]
    selections = [{"finding_id": "s:0", "series_id": "x", "top1_index": 1, "image_path": "a.png"},
                  {"finding_id": "s:1", "series_id": "x", "top1_index": 9, "image_path": "b.png"}]
    rows = generate_rule_vqa(findings, selections, [{"series_id": "x", "phase": "unknown", "orientation": "axial"}])
    yes = [(r["finding_id"], r["question"]) for r in rows if r["answer"] == "yes"]
    no = [(r["finding_id"], r["question"]) for r in rows if r["answer"] == "no"]
    assert len(yes) == 2
    assert no == [("s:0", "Is there an abnormality in the liver?"), ("s:1", "Is there an abnormality in the liver?")]


def test_slice_questions_once_per_slice_and_only_when_known():
    findings = [{"finding_id": f"s:{i}", "text": "Splenic infarct.", "organs": ["spleen"], "status": "abnormal",
                 "laterality": None} for i in range(2)]
    same = [{"finding_id": f"s:{i}", "series_id": "x", "top1_index": 4, "image_path": "a.png"} for i in range(2)]
    rows = generate_rule_vqa(findings, same, [{"series_id": "x", "phase": "arterial", "orientation": "axial"}])
    assert Counter(r["question_type"] for r in rows if r["question_type"] in ("plane", "phase")) == \
        {"plane": 2, "phase": 2}  # closed + choice, once for the shared slice
    rows = generate_rule_vqa(findings, same, [{"series_id": "x", "phase": "unknown", "orientation": "unknown"}])
    assert not [r for r in rows if r["question_type"] in ("plane", "phase")]
    phase = [r for r in generate_rule_vqa(findings, same, [{"series_id": "x", "phase": "arterial_late",
                                                            "orientation": "oblique"}])
             if r["answer_type"] == "choice" and r["question_type"] == "phase"][0]
    assert phase["answer"] == "late arterial" and "arterial" not in phase["options"]
    assert "unknown" not in phase["options"]


def test_findings_without_a_key_slice_get_no_rows():
    findings, selections, series = _report_study()
    rows = generate_rule_vqa(findings, selections[:1], series)
    assert {r["finding_id"] for r in rows} == {"rep1:0"}


def test_yes_no_balance():
    """A report with normal statements gets one 'no' per 'yes' (within BALANCE_TOLERANCE); the
    single-caption reports of the fixture state nothing normal, so their only 'no' is the
    negated pancreatitis: the balance shows the deficit instead of inventing negatives."""
    f2, s2, se2 = _report_study()
    for seed in range(10):
        counts = Counter(r["answer"] for r in generate_rule_vqa(f2, s2, se2, seed=seed) if r["answer"] in ("yes", "no"))
        assert abs(counts["yes"] - counts["no"]) <= BALANCE_TOLERANCE * (counts["yes"] + counts["no"]), counts
    f1, s1, se1 = fixture_inputs()
    rows = generate_rule_vqa(f1, s1, se1, seed=3)
    assert [r["question"] for r in rows if r["answer"] == "no"] == ["Is there inflammation in the pancreas?"]
    assert sum(r["answer"] == "yes" for r in rows) >= 25


def test_duckdb_report_queries(tmp_path):
    """The two README queries (yes/no balance, question-type distribution) run on a vqa view."""
    import duckdb
    import pyarrow.parquet as pq

    f1, s1, se1 = fixture_inputs()
    f2, s2, se2 = _report_study()
    rows = generate_rule_vqa(f1 + f2, s1 + s2, se1 + se2)
    now = dt.datetime.now(dt.timezone.utc)
    table = to_table("vqa", [{"study_id": r["finding_id"].rsplit(":", 1)[0], "created_at": now, **r} for r in rows])
    pq.write_table(table, tmp_path / "vqa.parquet")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW vqa AS SELECT * FROM read_parquet('{tmp_path}/*.parquet')")
    balance = con.execute(BALANCE_SQL).fetchall()
    assert {r[0] for r in balance} == {"rule"}
    (gen, yes, no, share, no_mask) = balance[0]
    assert no_mask == 0  # masks are off by default
    counts = Counter(r["answer"] for r in rows if r["answer"] in ("yes", "no") and r["answer_type"] == "closed")
    assert (yes, no) == (counts["yes"], counts["no"]) and 0 < no < yes
    assert share == pytest.approx(round(yes / (yes + no), 3))
    dist = con.execute(DISTRIBUTION_SQL).fetchall()
    assert {r[1] for r in dist} >= {"plane", "phase", "organ", "abnormality", "location", "laterality"}
    assert sum(r[3] for r in dist) == len(rows)


BALANCE_SQL = """
SELECT generator,
       count(*) FILTER (WHERE lower(answer) = 'yes') AS n_yes,
       count(*) FILTER (WHERE lower(answer) = 'no')  AS n_no,
       round(n_yes / nullif(n_yes + n_no, 0), 3)     AS yes_share,
       count(*) FILTER (WHERE lower(answer) = 'no' AND answer_source = 'mask') AS n_no_mask
FROM vqa
WHERE answer_type = 'closed' AND lower(answer) IN ('yes', 'no')
GROUP BY generator
ORDER BY generator
"""

DISTRIBUTION_SQL = """
SELECT generator, question_type, answer_type, count(*) AS n,
       round(100.0 * n / sum(n) OVER (PARTITION BY generator), 1) AS pct
FROM vqa
GROUP BY generator, question_type, answer_type
ORDER BY generator, n DESC
"""


def test_rule_vqa_on_segmenter_output_of_all_real_captions():
    """End to end with the report segmenter (when importable) on all real ROCO captions: every
    caption is a study whose findings each get a synthetic key slice. Checks the invariants
    on output we did not hand-label: schema, never 'no' for an abnormal/uncertain organ,
    choice answers among their options, unique ids, yes/no balance."""
    report = pytest.importorskip("keyslice.report")
    if not CAPTIONS.is_file():
        pytest.skip(f"real captions not found at {CAPTIONS}")
    findings, selections, series = [], [], []
    for cap in json.loads(CAPTIONS.read_text(encoding="utf-8")):
        try:
            units = report.segment_report(cap["caption"])
        except Exception:  # noqa: BLE001 - the segmenter's own tests cover its errors
            continue
        for u in units:
            row = {**u.to_row(), "study_id": cap["roco_id"], "finding_id": f"{cap['roco_id']}:{u.finding_index}"}
            findings.append(row)
            selections.append({"finding_id": row["finding_id"], "series_id": cap["roco_id"],
                               "top1_index": u.finding_index, "image_path": cap["pmc_image"]})
        series.append({"series_id": cap["roco_id"], "phase": "portal_venous", "orientation": "axial"})
    if len(series) < 50:
        pytest.skip(f"the segmenter handled only {len(series)} captions")
    rows = generate_rule_vqa(findings, selections, series, seed=1)
    now = dt.datetime.now(dt.timezone.utc)
    to_table("vqa", [{"study_id": r["finding_id"].rsplit(":", 1)[0], "created_at": now, **r} for r in rows])
    assert len({r["qa_id"] for r in rows}) == len(rows)
    for r in rows:
        if r["answer_type"] == "choice":
            assert r["answer"] in r["options"] and len(set(r["options"])) == len(r["options"]) >= 2, r
    # every answer agrees with the finding rows it rests on (in particular: every 'no' rests on a
    # statement of the same caption, and no organ a caption flags is ever answered 'no')
    result = check_tables(findings, rows)
    assert result.total == 0, result.rows.to_pylist()[:5]


# ------------------------------------------------------------------ answers from the structured fields
# The sentences quoted in the bug report (a build of real DICOM with written reports, not ROCO).
DIVERTICULA = "Multiple diverticula are seen in the sigmoid colon without signs of diverticulitis."
DISCUSSED = "Discussed with Dr. X on <date>."
SERIES_1 = [{"series_id": "ser-1", "phase": "portal_venous", "orientation": "axial"}]


def _issue_report(**colon) -> list[dict]:
    return [
        finding("iss", 0, DIVERTICULA, ["colon"], "abnormal", negated=["inflammation"], **colon),
        finding("iss", 1, DISCUSSED, [], "non_finding", statement="communication"),
        finding("iss", 2, "The liver is normal.", ["liver"], "normal"),
    ]


@pytest.mark.parametrize("asserted", [[], ["wall thickening"]])
def test_a_negated_disease_is_never_an_answer(asserted):
    findings = _issue_report(abnormalities=asserted)
    selections = [selection_for(f) for f in findings]
    for seed in range(10):
        rows = generate_rule_vqa(findings, selections, SERIES_1, seed=seed)
        colon = [r for r in rows if r["finding_id"] == "iss:0"]
        assert not [r for r in colon if r["answer"] == "inflammation"]
        types = [r["answer"] for r in colon if r["question"] == "What type of abnormality is seen in the colon?"]
        assert types == asserted * (2 if asserted else 0)  # open and choice, or no type question at all
        assert ("Is there inflammation in the colon?", "no") in {(r["question"], r["answer"]) for r in colon}
        assert check_tables(findings, rows).total == 0


def test_a_silent_organ_is_never_answered_no():
    findings = _issue_report()
    selections = [selection_for(f) for f in findings]
    for seed in range(20):
        rows = generate_rule_vqa(findings, selections, SERIES_1, seed=seed)
        assert not [r for r in rows if "aorta" in r["question"].lower()]
        no = {(r["organ"], r["abnormality"], r["evidence_finding_id"]) for r in rows if r["answer"] == "no"}
        assert no <= {("liver", None, "iss:2"), ("colon", "inflammation", "iss:0")}, no
    # with nothing stated normal or negated, there is no 'no' at all
    alone = [finding("s", 0, "CT scan showing right renal hematoma", ["kidney"], "abnormal", laterality="right",
                     abnormalities=["hematoma"])]
    rows = generate_rule_vqa(alone, [selection_for(alone[0])], SERIES_1)
    assert [r["answer"] for r in rows if r["answer"] in ("yes", "no")] == ["yes"]


def test_a_non_finding_sentence_is_never_asked_about():
    findings = _issue_report() + [finding("iss", 3, "CT pulmonary arteriography with venous phase imaging.",
                                          ["pulmonary artery"], "non_finding", statement="technique")]
    selections = [selection_for(f) for f in findings]   # each on its own slice
    rows = generate_rule_vqa(findings, selections, SERIES_1)
    assert {r["finding_id"] for r in rows} == {"iss:0", "iss:2"}
    assert not [r for r in rows if r["evidence_finding_id"] in ("iss:1", "iss:3")]


def test_an_uncertain_finding_gets_no_presence_answer_and_blocks_no():
    findings = [
        finding("u", 0, "Possible small lesion in the left adrenal gland.", ["adrenal gland"], "uncertain",
                laterality="left", abnormalities=["lesion"], modifiers=["possible"]),
        finding("u", 1, "The adrenal glands are normal.", ["adrenal gland"], "normal"),
        finding("u", 2, "Splenic infarct.", ["spleen"], "abnormal", abnormalities=["infarction"]),
    ]
    rows = generate_rule_vqa(findings, [selection_for(f) for f in findings], SERIES_1)
    assert {r["question_type"] for r in rows if r["finding_id"] == "u:0"} == {"plane", "phase"}
    assert not [r for r in rows if r["organ"] == "adrenal gland"]  # neither yes nor no, nor a type
    assert check_tables(findings, rows).total == 0


def test_rows_of_older_corpora_get_no_type_question():
    """Findings rows written before the structured fields: nothing is guessed from the text."""
    old = [{k: v for k, v in f.items() if k not in ("abnormalities", "negated_abnormalities", "statement", "modifiers")}
           for f in _issue_report()]
    rows = generate_rule_vqa(old, [selection_for(f) for f in old], SERIES_1)
    assert not [r for r in rows if r["abnormality"] is not None]
    assert not [r for r in rows if "type of abnormality" in r["question"]]
    assert ("Is there an abnormality in the colon?", "yes") in {(r["question"], r["answer"]) for r in rows}
    assert not [r for r in rows if r["finding_id"] == "iss:1"]  # no organ, no type: nothing


def test_mask_visible_unmentioned_organs_only_on_request_and_marked():
    findings = [finding("m", 0, "Splenic infarct.", ["spleen"], "abnormal", abnormalities=["infarction"]),
                finding("m", 1, "Possible hepatic cyst.", ["liver"], "uncertain", abnormalities=["cyst"])]
    selections = [selection_for(f) for f in findings]
    assert not [r for r in generate_rule_vqa(findings, selections, SERIES_1) if r["answer"] == "no"]
    visible = {("ser-1", 10): {"spleen", "liver", "aorta", "stomach"}}
    for seed in range(10):
        rows = generate_rule_vqa(findings, selections, SERIES_1, seed=seed, mask_organs=visible)
        (no,) = [r for r in rows if r["answer"] == "no"]
        assert no["organ"] in ("aorta", "stomach") and no["answer_source"] == "mask"
        assert no["evidence_finding_id"] is None and no["slice_index"] == 10
        assert check_tables(findings, rows).total == 0
