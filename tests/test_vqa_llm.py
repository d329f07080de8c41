"""LLM VQA generator against a scripted OpenAI-compatible server over real HTTP.

The real ``openai`` client talks to ``tests/llm_server.py`` on 127.0.0.1; nothing in the
client is patched. Each test scripts the server's replies and checks what the generator
returns and what the server received.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.llm_server import Reply, ScriptedLLMServer
except ImportError:  # tests/ run without being a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llm_server import Reply, ScriptedLLMServer  # noqa: E402

from keyslice.llm_client import ResponseCache, load_prompt  # noqa: E402
from keyslice.llm_endpoint import LLMEndpoint  # noqa: E402
from keyslice.vqa import LLMFailure, LLMGenerator  # noqa: E402
from keyslice.vqa.llm import FindingFacts, check_answer  # noqa: E402

MODEL = "test-model"
# A real caption sentence (ROCO_03303, CC BY, PMC image in tests/fixtures/vqa_rule_expected.json).
SENTENCE = "CT scan showing hypovascular lesion in left lobe of liver."

VALID = {"qa_pairs": [
    {"question": "Which organ contains the lesion?", "answer": "liver",
     "answer_type": "open", "question_type": "organ"},
    {"question": "Is the lesion in the left lobe of the liver?", "answer": "yes",
     "answer_type": "closed", "question_type": "location"},
    {"question": "What kind of lesion is seen in the liver?", "answer": "hypovascular lesion",
     "answer_type": "choice", "question_type": "abnormality",
     "options": ["calcified lesion", "hypovascular lesion", "fat-containing lesion"]},
]}
SCHEMA_BAD = {"qa_pairs": [{"question": "Which organ contains the lesion?", "answer": "liver",
                            "answer_type": "short", "question_type": "organ"}]}
HALLUCINATED = copy.deepcopy(VALID)
HALLUCINATED["qa_pairs"].append({"question": "Is there an abnormality in the spleen?", "answer": "no",
                                 "answer_type": "closed", "question_type": "organ"})


def finding(fid: str = "st1:0", text: str = SENTENCE) -> dict:
    return {"finding_id": fid, "study_id": fid.split(":")[0], "finding_index": int(fid.split(":")[1]),
            "text": text, "organs": ["liver"], "status": "abnormal", "laterality": None,
            "phase_hint": None, "section": "findings", "abnormalities": ["lesion"], "negated_abnormalities": [],
            "measurements_mm": []}


def selection(fid: str = "st1:0", index: int = 42) -> dict:
    return {"finding_id": fid, "series_id": "ser-a", "top1_index": index,
            "image_path": f"images/{fid.split(':')[0]}/{fid.split(':')[1]}.png"}


class SleepRecorder:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def server():
    with ScriptedLLMServer() as srv:
        yield srv


GENERATOR_SETTINGS = ("prompt_version", "max_repairs", "cache_dir", "sleep")


def make_gen(server: ScriptedLLMServer, **kw) -> LLMGenerator:
    """A generator for ``server``; ``kw`` sets endpoint fields and the generator's own settings."""
    own = {k: kw.pop(k) for k in GENERATOR_SETTINGS if k in kw}
    endpoint = dict(base_url=server.base_url, model=MODEL, timeout_s=5, max_retries=3, backoff_base_s=0.01,
                    backoff_max_s=0.05)
    endpoint.update(kw)
    return LLMGenerator(LLMEndpoint(**endpoint), **{"max_repairs": 2, **own})


def test_valid_json_answer_becomes_rows(server):
    server.push(Reply.ok(VALID))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert failures == []
    assert len(rows) == 3 and len(server.requests) == 1
    for r in rows:
        assert r["generator"] == f"llm:{MODEL}"
        assert r["prompt_version"] == "vqa_generate.v2"
        assert r["answer_source"] == "finding" and r["evidence_finding_id"] == "st1:0"
        assert (r["finding_id"], r["series_id"], r["slice_index"], r["image_path"]) == \
            ("st1:0", "ser-a", 42, "images/st1/0.png")
        assert len(r["qa_id"]) == 20
    by_type = {r["answer_type"]: r for r in rows}
    assert by_type["choice"]["options"] == VALID["qa_pairs"][2]["options"]
    assert by_type["open"]["options"] == [] and by_type["closed"]["answer"] == "yes"
    body = server.requests[0]["body"]
    assert body["model"] == MODEL and body["temperature"] == 0.0
    system, user = body["messages"]
    assert system["role"] == "system" and '"qa_pairs"' in system["content"]  # schema embedded
    assert user["role"] == "user" and user["content"].splitlines() == [
        f"Finding sentence: {SENTENCE}", "Status: abnormal", "Organs: liver", "Side: none",
        "Abnormalities present: lesion", "Abnormalities negated: none", "Sizes (mm): none"]
    assert [(r["organ"], r["abnormality"]) for r in rows] == [("liver", None), ("liver", "lesion"), ("liver", "lesion")]


def test_invalid_json_then_valid_feeds_error_back(server):
    server.push(Reply.invalid_json(), Reply.ok(VALID))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3
    assert len(server.requests) == 2
    retry = server.requests[1]["body"]["messages"]
    assert retry[-2]["role"] == "assistant" and retry[-2]["content"].startswith("Sure!")
    assert retry[-1]["role"] == "user" and "not valid JSON" in retry[-1]["content"]


def test_schema_violation_is_retried_then_recorded_as_failure(server):
    server.push(Reply.ok(SCHEMA_BAD), Reply.ok(SCHEMA_BAD), Reply.ok(SCHEMA_BAD))
    rows, failures = make_gen(server, max_repairs=2).generate([finding()], [selection()])
    assert rows == []
    assert len(server.requests) == 3
    assert failures == [LLMFailure("st1:0", "schema", failures[0].message, 3)]
    assert "answer_type" in failures[0].message and "'short' is not one of" in failures[0].message
    # the validation error was fed back in the conversation
    assert "$.qa_pairs[0].answer_type" in server.user_texts()[1]


def test_schema_violation_then_valid(server):
    server.push(Reply.ok(SCHEMA_BAD), Reply.ok(VALID))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3 and len(server.requests) == 2


def test_timeout_then_success(server):
    server.push(Reply.ok(VALID, delay_s=2.5), Reply.ok(VALID))
    t0 = time.monotonic()
    rows, failures = make_gen(server, timeout_s=0.5).generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3
    assert len(server.requests) == 2
    assert time.monotonic() - t0 < 2.4  # gave up on the slow reply instead of waiting for it


def test_timeouts_exhaust_retries(server):
    server.push(*[Reply.ok(VALID, delay_s=1.5) for _ in range(2)])
    rows, failures = make_gen(server, timeout_s=0.3, max_retries=1).generate([finding()], [selection()])
    assert rows == [] and [f.error_type for f in failures] == ["timeout"]
    assert failures[0].transient and failures[0].attempts == 2
    from keyslice.errors import is_transient
    assert is_transient(failures[0].as_exception())
    assert len(server.requests) == 2


def test_429_retry_after_is_honoured(server):
    server.push(Reply.rate_limited(retry_after=1), Reply.ok(VALID))
    sleeps = SleepRecorder()
    gen = LLMGenerator(LLMEndpoint(base_url=server.base_url, model=MODEL, timeout_s=5, backoff_base_s=0.01,
                                   backoff_max_s=0.05), sleep=sleeps)
    t0 = time.monotonic()
    rows, failures = gen.generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3
    assert len(server.requests) == 2
    assert sleeps.calls and sleeps.calls[0] >= 1.0  # Retry-After: 1, not the 0.01 s backoff
    gap = server.requests[1]["received_at"] - server.requests[0]["received_at"]
    assert gap >= 0.95 and time.monotonic() - t0 >= 1.0


def test_server_errors_are_retried(server):
    server.push(Reply.error(503), Reply.error(502), Reply.ok(VALID))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3 and len(server.requests) == 3


def test_client_error_is_not_retried(server):
    server.push(Reply.error(400, "bad request: unknown parameter"))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert rows == [] and len(server.requests) == 1
    assert failures[0].error_type == "http_400"


def test_hallucinated_organ_rejected_then_fixed(server):
    server.push(Reply.ok(HALLUCINATED), Reply.ok(VALID))
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert failures == [] and len(rows) == 3
    assert not any("spleen" in r["question"].lower() for r in rows)
    assert "spleen" in server.user_texts()[1] and "does not mention" in server.user_texts()[1]


def test_hallucinated_organ_every_time_is_a_grounding_failure(server):
    server.push(*[Reply.ok(HALLUCINATED) for _ in range(3)])
    rows, failures = make_gen(server).generate([finding()], [selection()])
    assert rows == [] and [f.error_type for f in failures] == ["grounding"]
    assert "spleen" in failures[0].message and not failures[0].transient
    exc = failures[0].as_exception()  # what the pipeline records in the failures table
    assert type(exc).__name__ == "LLMAnswerError" and str(exc).startswith("grounding: finding st1:0: ")


def test_grounding_check_numbers_and_organs():
    text = "Abdominal CT shows hypodense nodular lesion next to the jejunum in the left flank, measuring 2.5 × 1.8 cm."
    ok = {"qa_pairs": [{"question": "How large is the lesion?", "answer": "2.5 × 1.8 cm",
                        "answer_type": "open", "question_type": "size"}]}
    assert check_answer(ok, text) == []
    bad_number = {"qa_pairs": [{"question": "How large is the lesion?", "answer": "3.5 × 1.8 cm",
                                "answer_type": "open", "question_type": "size"}]}
    assert [p[0] for p in check_answer(bad_number, text)] == ["grounding"]
    bad_organ = {"qa_pairs": [{"question": "Is the lesion next to the colon?", "answer": "no",
                               "answer_type": "closed", "question_type": "location"}]}
    assert [p[0] for p in check_answer(bad_organ, text)] == ["grounding"]
    # a synonym of an organ the sentence names is not a new organ ("small bowel" ~ "jejunum")
    syn = {"qa_pairs": [{"question": "Which part of the small bowel is the lesion next to?",
                         "answer": "jejunum", "answer_type": "open", "question_type": "location"}]}
    assert check_answer(syn, text) == []
    # distractor organs in a choice question's options are allowed
    choice = {"qa_pairs": [{"question": "Next to which organ is the lesion?", "answer": "jejunum",
                            "answer_type": "choice", "question_type": "location",
                            "options": ["jejunum", "spleen", "stomach"]}]}
    assert check_answer(choice, text) == []
    not_in_options = copy.deepcopy(choice)
    not_in_options["qa_pairs"][0]["answer"] = "small bowel"
    assert [p[0] for p in check_answer(not_in_options, text)] == ["schema"]


def test_cache_hit_on_rerun_sends_no_request(server, tmp_path):
    server.push(Reply.ok(VALID))
    cache = tmp_path / "llm-cache"
    rows1, f1 = make_gen(server, cache_dir=cache).generate([finding()], [selection()])
    assert f1 == [] and len(server.requests) == 1
    rows2, f2 = make_gen(server, cache_dir=cache).generate([finding()], [selection()])
    assert f2 == [] and rows2 == rows1
    assert len(server.requests) == 1  # the server saw no second request
    files = list(cache.rglob("*"))
    facts = FindingFacts.from_row(finding())
    assert [p.name for p in files if p.is_file()] == [
        f"{ResponseCache.key('vqa_generate.v2', MODEL, SENTENCE, facts.key())}.json"]
    assert not [p for p in files if p.name.endswith(".tmp")]
    cached = json.loads(next(p for p in files if p.is_file()).read_text())
    assert cached["answer"] == VALID and cached["model"] == MODEL
    # another model or prompt version is another key: it asks again
    server.push(Reply.ok(VALID))
    make_gen(server, cache_dir=cache, model="other-model").generate([finding()], [selection()])
    assert len(server.requests) == 2


def test_failures_are_not_cached(server, tmp_path):
    server.push(*[Reply.ok(SCHEMA_BAD) for _ in range(3)], Reply.ok(VALID))
    _, f1 = make_gen(server, cache_dir=tmp_path).generate([finding()], [selection()])
    assert f1 and len(server.requests) == 3
    rows, f2 = make_gen(server, cache_dir=tmp_path).generate([finding()], [selection()])
    assert f2 == [] and len(rows) == 3 and len(server.requests) == 4


def test_concurrency_limit_respected():
    texts = [SENTENCE.replace("left lobe", f"{w} lobe") for w in ("left", "right", "caudate")] + [
        "CT abdomen showing right hepatic lobe mass.",
        "CT scan of the liver demonstrating mass concerning for abscess and tumor.",
        "CT abdomen showing splenic hypointense homogenous lesion.",
        "Pelvic CT scan showing the rectal lesion",
        "CT Scan of the Pelvis showing prostatic mass.",
    ]
    answers = {t: {"qa_pairs": [{"question": "Is there an abnormality in this image?", "answer": "yes",
                                 "answer_type": "closed", "question_type": "abnormality"}]} for t in texts}

    def fallback(request: dict) -> Reply:
        user = request["messages"][-1]["content"].splitlines()[0].removeprefix("Finding sentence: ")
        return Reply.ok(answers[user], delay_s=0.3)

    findings = [finding(f"st{i}:0", t) for i, t in enumerate(texts)]
    sels = [selection(f"st{i}:0") for i in range(len(texts))]
    with ScriptedLLMServer(fallback=fallback) as server:
        rows, failures = make_gen(server, max_concurrency=3).generate(findings, sels)
    assert failures == [] and len(rows) == len(texts)
    assert len(server.requests) == len(texts)
    assert 2 <= server.max_in_flight <= 3


def test_same_sentence_is_asked_once_and_findings_without_slice_skipped(server):
    server.push(Reply.ok(VALID))
    findings = [finding("a:0"), finding("b:3"), finding("c:1")]
    rows, failures = make_gen(server).generate(findings, [selection("a:0"), selection("b:3")])
    assert failures == [] and len(server.requests) == 1
    assert sorted({r["finding_id"] for r in rows}) == ["a:0", "b:3"]
    assert len({r["qa_id"] for r in rows}) == 6


def test_prompt_file_is_versioned():
    prompt = load_prompt("vqa_generate.v1")
    assert prompt.version == "vqa_generate.v1"
    assert "$text" in prompt.user and "$schema" in prompt.system
    v2 = load_prompt("vqa_generate.v2")
    assert all(f"${name}" in v2.user for name in FindingFacts().prompt_values())
    with pytest.raises(FileNotFoundError):
        load_prompt("vqa_generate.v999")


def test_retry_after_parsing_and_json_fences():
    import email.utils

    import httpx
    import openai

    from keyslice.llm_client import parse_json_content, retry_after_s

    def err(headers):
        req = httpx.Request("POST", "http://x/v1/chat/completions")
        return openai.RateLimitError("429", response=httpx.Response(429, headers=headers, request=req), body=None)

    assert retry_after_s(err({"Retry-After": "2"})) == 2.0
    assert retry_after_s(err({"retry-after-ms": "1500", "Retry-After": "9"})) == 1.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_s(err({"Retry-After": future})) <= 31
    assert retry_after_s(err({})) is None
    assert parse_json_content('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError):
        parse_json_content("Sure! {")


def test_api_key_is_read_from_the_configured_variable(server, monkeypatch):
    monkeypatch.setenv("KEYSLICE_TEST_KEY", "sk-test-123")
    server.push(Reply.ok(VALID))
    make_gen(server, api_key_env="KEYSLICE_TEST_KEY").generate([finding()], [selection()])
    assert server.requests[0]["authorization"] == "Bearer sk-test-123"


def test_json_mode_sends_response_format(server):
    server.push(Reply.ok(VALID), Reply.ok(VALID))
    make_gen(server).generate([finding()], [selection()])                          # the endpoint's default
    make_gen(server, json_mode=False).generate([finding()], [selection()])
    assert server.requests[0]["body"]["response_format"] == {"type": "json_object"}
    assert "response_format" not in server.requests[1]["body"]


def test_a_refused_response_format_says_what_to_set(server):
    server.push(Reply.error(400, "response_format json_object is not supported by this model"))
    _, failures = make_gen(server).generate([finding()], [selection()])
    assert failures[0].error_type == "http_400" and "set llm.json_mode: false" in failures[0].message
    server.push(Reply.error(400, "unknown parameter"))
    _, failures = make_gen(server, json_mode=False).generate([finding()], [selection()])
    assert "json_mode" not in failures[0].message


def test_llm_rows_fit_the_vqa_table_beside_rule_rows(server):
    import datetime as dt

    from keyslice.corpus.schemas import to_table
    from keyslice.vqa import generate_rule_vqa

    same_as_rules = copy.deepcopy(VALID)
    same_as_rules["qa_pairs"].append({"question": "Which organ is abnormal in this image?", "answer": "liver",
                                      "answer_type": "open", "question_type": "organ"})
    server.push(Reply.ok(same_as_rules))
    llm_rows, failures = make_gen(server).generate([finding()], [selection()])
    rule_rows = generate_rule_vqa([finding()], [selection()], [{"series_id": "ser-a", "phase": "arterial",
                                                                "orientation": "axial"}])
    rows = rule_rows + llm_rows
    assert failures == [] and len(llm_rows) == 4
    assert len({r["qa_id"] for r in rows}) == len(rows)  # same question, other generator: other id
    now = dt.datetime.now(dt.timezone.utc)
    table = to_table("vqa", [{"study_id": "st1", "created_at": now, **r} for r in rows])
    assert set(table.column("generator").to_pylist()) == {"rule", f"llm:{MODEL}"}


# ------------------------------------------------------------------ answers checked against the structured fields
# The sentence of the bug report (a build of real DICOM with written reports), with what step 1 records for it.
DIVERTICULA = "Multiple diverticula are seen in the sigmoid colon without signs of diverticulitis."
NEGATED_ANSWER = {"qa_pairs": [
    {"question": "What type of abnormality is seen in the colon?", "answer": "diverticulitis",
     "answer_type": "open", "question_type": "abnormality"},
    {"question": "Which organ is abnormal in this image?", "answer": "colon", "answer_type": "open",
     "question_type": "organ"}]}
COLON_OK = {"qa_pairs": [
    {"question": "Which organ is abnormal in this image?", "answer": "colon", "answer_type": "open",
     "question_type": "organ"},
    {"question": "Is there diverticulitis in the sigmoid colon?", "answer": "no", "answer_type": "closed",
     "question_type": "abnormality"},
    {"question": "Is there an abnormality in the colon?", "answer": "yes", "answer_type": "closed",
     "question_type": "organ"}]}


def colon_finding(fid: str = "c1:0", **fields) -> dict:
    return {**finding(fid, DIVERTICULA), "organs": ["colon"], "abnormalities": [],
            "negated_abnormalities": ["inflammation"], **fields}


def test_negated_abnormality_answer_rejected_then_fixed(server):
    from tests.vqa_corpus import check_tables

    server.push(Reply.ok(NEGATED_ANSWER), Reply.ok(COLON_OK))
    rows, failures = make_gen(server).generate([colon_finding()], [selection("c1:0")])
    assert failures == [] and len(rows) == 3 and len(server.requests) == 2
    assert "Abnormalities negated: inflammation" in server.user_texts()[0]
    repair = server.user_texts()[1]
    assert "names inflammation, which the finding negates" in repair
    assert not [r for r in rows if r["answer"] == "diverticulitis"]
    no = [r for r in rows if r["answer"] == "no"]
    assert [(r["organ"], r["abnormality"]) for r in no] == [("colon", "inflammation")]
    assert check_tables([colon_finding()], rows).total == 0


def test_contradicting_answers_every_time_are_a_contradiction_failure(server):
    server.push(*[Reply.ok(NEGATED_ANSWER) for _ in range(3)])
    rows, failures = make_gen(server).generate([colon_finding()], [selection("c1:0")])
    assert rows == [] and [f.error_type for f in failures] == ["contradiction"]
    assert type(failures[0].as_exception()).__name__ == "LLMAnswerError" and not failures[0].transient


def _closed(question: str, answer: str, question_type: str = "organ") -> dict:
    return {"qa_pairs": [{"question": question, "answer": answer, "answer_type": "closed",
                          "question_type": question_type}]}


@pytest.mark.parametrize("text,row,question,answer,expected", [
    ("The liver is normal.", {"organs": ["liver"], "status": "normal"},
     "Is there an abnormality in the liver?", "no", []),
    ("The liver is normal.", {"organs": ["liver"], "status": "normal"},
     "Is there an abnormality in the liver?", "yes", ["contradiction"]),
    (DIVERTICULA, {"organs": ["colon"], "negated_abnormalities": ["inflammation"]},
     "Is there an abnormality in the colon?", "no", ["contradiction"]),
    (DIVERTICULA, {"organs": ["colon"], "negated_abnormalities": ["inflammation"]},
     "Is there diverticulitis in the colon?", "yes", ["contradiction"]),
    # a report silent about the aorta says nothing about it
    (DIVERTICULA, {"organs": ["colon"], "negated_abnormalities": ["inflammation"]},
     "Is there an abnormality in the aorta?", "no", ["grounding", "contradiction", "contradiction"]),
    ("Possible small lesion in the left adrenal gland.",
     {"organs": ["adrenal gland"], "status": "uncertain", "laterality": "left", "abnormalities": ["lesion"]},
     "Is there a lesion in the left adrenal gland?", "yes", ["contradiction"]),
    ("Possible small lesion in the left adrenal gland.",
     {"organs": ["adrenal gland"], "status": "uncertain", "laterality": "left", "abnormalities": ["lesion"]},
     "On which side is the lesion?", "right", ["contradiction"]),
    ("Possible small lesion in the left adrenal gland.",
     {"organs": ["adrenal gland"], "status": "uncertain", "laterality": "left", "abnormalities": ["lesion"]},
     "On which side is the lesion?", "left", []),
])
def test_answers_are_checked_against_the_structured_fields(text, row, question, answer, expected):
    facts = FindingFacts.from_row({"status": "abnormal", **row})
    qtype = "laterality" if answer in ("left", "right") else "organ"
    assert [p[0] for p in check_answer(_closed(question, answer, qtype), text, facts)] == expected


def test_non_finding_and_unreadable_findings_are_not_sent(server):
    server.push(Reply.ok(COLON_OK))
    discussed = {**finding("c1:1", "Discussed with Dr. X on <date>."), "organs": [], "status": "non_finding",
                 "abnormalities": []}
    technique = {**finding("c1:2", "CT pulmonary arteriography with venous phase imaging."),
                 "organs": ["pulmonary artery"], "status": "non_finding"}
    rows, failures = make_gen(server).generate([colon_finding(), discussed, technique],
                                               [selection("c1:0"), selection("c1:1", 3), selection("c1:2", 5)])
    assert failures == [] and len(server.requests) == 1
    assert {r["finding_id"] for r in rows} == {"c1:0"}


def test_sizes_and_multi_organ_negations_are_checked_against_the_fields():
    text = ("Chest computed tomography (CT) scan demonstrated an 4 cm pulmonary mass in the left lower lobe, "
            "without enlargement of intrapulmonary or mediastinal lymph nodes.")  # ROCO_66083 (CC BY)
    facts = FindingFacts.from_row({"status": "abnormal", "organs": ["lung", "lymph node"], "laterality": "left",
                                   "abnormalities": ["mass"], "negated_abnormalities": ["lymphadenopathy"],
                                   "measurements_mm": [40.0]})
    size = {"qa_pairs": [{"question": "What is the size of the mass?", "answer": "4 cm", "answer_type": "open",
                          "question_type": "size"}]}
    assert check_answer(size, text, facts) == []
    assert [p[0] for p in check_answer(size, text, dataclasses.replace(facts, measurements_mm=()))] == \
        ["contradiction"]
    # which of the two organs is abnormal the row does not say: no yes about either
    nodes = _closed("Is there an abnormality in the lymph nodes?", "yes")
    assert [p[0] for p in check_answer(nodes, text, facts)] == ["contradiction"]
