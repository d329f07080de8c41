"""The optional LLM segmenter against a local OpenAI-compatible HTTP server (no patching of the client)."""

from __future__ import annotations

import pytest

from keyslice.errors import EmptyReportError
from keyslice.llm_client import LLMAnswerError
from keyslice.report import Finding, ReportConfig, segment_report
from keyslice.llm_endpoint import LLMEndpoint
from tests.llm_server import Reply, ScriptedLLMServer

REPORT = ("TECHNIQUE: Portal venous phase.\nFINDINGS: The liver is normal and the spleen is enlarged. "
          "There is a 2.3 x 1.5 cm cyst in the left kidney (series 3, image 45).\nIMPRESSION: Splenomegaly.")

CANNED = {"findings": [
    {"section": "findings", "text": "The liver is normal", "organs": ["liver"], "status": "normal",
     "laterality": None, "phase_hint": None},
    {"section": "findings", "text": "the spleen is enlarged.", "organs": ["spleen", "not-an-organ"],
     "status": "abnormal", "laterality": None, "phase_hint": None},
    {"section": "findings", "text": "There is a 2.3 x 1.5 cm cyst in the left kidney (series 3, image 45).",
     "organs": ["kidney"], "status": "abnormal", "laterality": "left", "phase_hint": "portal_venous"},
    {"section": "impression", "text": "Splenomegaly.", "organs": ["spleen"], "status": "abnormal",
     "laterality": None, "phase_hint": None},
]}


def config(server: ScriptedLLMServer, **kw) -> ReportConfig:
    return ReportConfig(segmenter="llm", llm=LLMEndpoint(base_url=server.base_url, model="test-model", timeout_s=10),
                        **kw)


def test_llm_segmenter_returns_the_same_finding_objects():
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(CANNED))
        got = segment_report(REPORT, config(server))
        body = server.requests[0]["body"]
    assert all(isinstance(f, Finding) for f in got)
    assert [f.finding_index for f in got] == [0, 1, 2, 3]
    assert [f.section for f in got] == ["findings", "findings", "findings", "impression"]
    assert got[1].organs == ["spleen"]                      # unknown organ names are dropped
    kidney = got[2]
    assert kidney.ts_labels == ["kidney_left"]              # derived by the code, not the model
    assert kidney.measurements_mm == [23.0, 15.0] and kidney.image_refs == [(3, 45)]
    assert kidney.segmenter == "llm-v1:segment_report.v1:test-model" and kidney.language == "en"
    assert set(kidney.to_row()) == set(segment_report(REPORT)[0].to_row())
    # the prompt file was used: canonical organ list and the report are in the messages
    assert body["model"] == "test-model"
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert "thyroid gland" in system and "urinary bladder" in system and REPORT in user


def test_llm_segmenter_keeps_only_requested_sections():
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(CANNED))
        got = segment_report(REPORT, ReportConfig(segmenter="llm", sections=("impression",),
                                                  llm=LLMEndpoint(base_url=server.base_url, model="m")))
    assert [f.text for f in got] == ["Splenomegaly."]


def test_llm_segmenter_repairs_an_ungrounded_answer_then_gives_up():
    bad = {"findings": [{"section": "findings", "text": "The kidneys are invented.", "organs": [],
                         "status": "normal"}]}
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(bad), Reply.ok(CANNED))
        got = segment_report(REPORT, config(server))
        assert len(server.requests) == 2
        assert "not copied verbatim" in server.user_texts()[1]
    assert len(got) == 4
    with ScriptedLLMServer() as server:
        server.push(Reply.invalid_json(), Reply.invalid_json())
        with pytest.raises(LLMAnswerError):
            segment_report(REPORT, config(server))


def test_llm_segmenter_checks_input_first_and_needs_settings():
    with ScriptedLLMServer() as server:
        with pytest.raises(EmptyReportError):
            segment_report("  ", config(server))
        assert server.requests == []
    with pytest.raises(ValueError):
        segment_report(REPORT, ReportConfig(segmenter="llm"))


# A German report (written for this test, i.e. synthetic) that the rules refuse; the LLM path is for such reports.
GERMAN = ("Befund: Die Leber ist unauffällig. In der linken Niere zeigt sich eine Zyste von 2,3 cm "
          "(Serie 3, Bild 45).\nBeurteilung: Nierenzyste links.")
GERMAN_ANSWER = {"language": "de", "findings": [
    {"section": "findings", "text": "Die Leber ist unauffällig.", "organs": ["liver"], "status": "normal",
     "laterality": None, "phase_hint": None},
    {"section": "findings", "text": "In der linken Niere zeigt sich eine Zyste von 2,3 cm (Serie 3, Bild 45).",
     "organs": ["kidney"], "status": "abnormal", "laterality": "left", "phase_hint": None},
    {"section": "impression", "text": "Nierenzyste links.", "organs": ["kidney"], "status": "abnormal",
     "laterality": "left", "phase_hint": None},
]}


def test_llm_segmenter_takes_a_language_the_rules_refuse():
    from keyslice.errors import UnsupportedLanguageError

    with pytest.raises(UnsupportedLanguageError):
        segment_report(GERMAN)                                     # the rules: a clear refusal
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(GERMAN_ANSWER))
        got = segment_report(GERMAN, config(server))
    assert [(f.section, f.text, f.organs, f.status) for f in got] == [
        ("findings", "Die Leber ist unauffällig.", ["liver"], "normal"),
        ("findings", "In der linken Niere zeigt sich eine Zyste von 2,3 cm (Serie 3, Bild 45).", ["kidney"], "abnormal"),
        ("impression", "Nierenzyste links.", ["kidney"], "abnormal"),
    ]
    assert {f.language for f in got} == {"de"}
    assert got[1].ts_labels == ["kidney_left"] and got[1].measurements_mm == [23.0]
    # without the model's code the stopword heuristic names the language
    no_code = {"findings": GERMAN_ANSWER["findings"][:1]}
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(no_code))
        assert segment_report(GERMAN, config(server))[0].language == "de"


def test_a_build_with_segmenter_llm_uses_the_endpoint_of_its_config(tmp_path):
    """steps.segment_step -> report_config_for_build -> the LLM segmenter, against the loopback server."""
    from types import SimpleNamespace

    from keyslice.config import BuildConfig
    from keyslice.report import report_config_for_build
    from keyslice.pipeline.stage_functions import segment_step

    from keyslice.deid import deidentify

    study = SimpleNamespace(study_id="s1", read_report_deid=lambda max_bytes=None: deidentify(REPORT))
    with ScriptedLLMServer() as server:
        server.push(Reply.ok(CANNED))
        cfg = BuildConfig(input_dir=tmp_path, out_dir=tmp_path, segmenter="llm",
                          llm=LLMEndpoint(base_url=server.base_url, model="build-model"))
        rows = segment_step(study, SimpleNamespace(config=cfg))["findings"]
        assert server.requests[0]["body"]["model"] == "build-model"
    assert [r["finding_id"] for r in rows] == ["s1:0", "s1:1", "s1:2", "s1:3"]
    assert {r["segmenter"] for r in rows} == {"llm-v1:segment_report.v1:build-model"}
    rules_rows = segment_step(study, SimpleNamespace(config=BuildConfig(input_dir=tmp_path, out_dir=tmp_path)))
    assert {r["segmenter"] for r in rules_rows["findings"]} == {"rules-v2"}
    with pytest.raises(ValueError, match="llm.base_url"):
        report_config_for_build("llm", LLMEndpoint())               # no endpoint configured
    with pytest.raises(ValueError, match="'rules' or 'llm'"):
        report_config_for_build("gpt", LLMEndpoint())
