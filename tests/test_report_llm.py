"""The optional LLM segmenter against a local OpenAI-compatible HTTP server (no patching of the client)."""

from __future__ import annotations

import pytest

from keyslice.errors import EmptyReportError
from keyslice.llm_client import LLMAnswerError
from keyslice.report import Finding, ReportConfig, segment_report
from keyslice.report.llm_segmenter import LLMSegmenterSettings
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
    return ReportConfig(segmenter="llm", llm=LLMSegmenterSettings(base_url=server.base_url, model="test-model",
                                                                   timeout_s=10, **kw))


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
                                                  llm=LLMSegmenterSettings(base_url=server.base_url, model="m")))
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
