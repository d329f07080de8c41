"""One LLM endpoint for every LLM use of a build, against the loopback OpenAI-compatible server.

The build's ``llm`` settings must reach VQA generation and the LLM segmenter alike: the same
key variable, model, temperature and JSON mode in the requests, the same timeout and the same
number of retries. Nothing in the ``openai`` client is patched.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from keyslice.config import BuildConfig
from keyslice.deid import deidentify
from keyslice.llm_client import LLMTransportError
from keyslice.llm_endpoint import LLMEndpoint
from keyslice.pipeline.stage_functions import segment_step, vqa_step
from tests.llm_server import Reply, ScriptedLLMServer
from tests.test_report_llm import CANNED, REPORT


class RowsStore:
    """The two CheckpointStore methods vqa_step uses, over rows held in memory."""

    def __init__(self, tables: dict[str, list[dict]]):
        self.tables = tables
        self.failures: list[tuple[str, str, BaseException]] = []

    def read_rows(self, table: str, study_id: str) -> list[dict]:
        return [r for r in self.tables.get(table, []) if r["study_id"] == study_id]

    def record_failure(self, study_id: str, stage: str, error: BaseException, attempt: int, run_id: str) -> None:
        self.failures.append((study_id, stage, error))


def _is_vqa(request: dict) -> bool:
    return request["body"]["messages"][1]["content"].startswith("Finding sentence:")


def test_the_build_endpoint_reaches_both_llm_uses_alike(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYSLICE_SHARED_TEST_KEY", "sk-shared-endpoint")
    study = SimpleNamespace(study_id="s1", path=tmp_path, read_report_deid=lambda max_bytes=None: deidentify(REPORT))
    with ScriptedLLMServer() as server:
        config_file = tmp_path / "build.yaml"
        config_file.write_text(
            f"segmenter: llm\nllm:\n  base_url: {server.base_url}\n  model: shared-model\n"
            "  api_key_env: KEYSLICE_SHARED_TEST_KEY\n  timeout_s: 0.4\n  max_retries: 1\n  backoff_base_s: 0.01\n"
            "  temperature: 0.2\n  prompt_version: vqa_generate.v2\n")
        cfg = BuildConfig.from_yaml(config_file, input_dir=str(tmp_path), out_dir=str(tmp_path / "out"))

        server.push(Reply.ok(CANNED))
        findings = segment_step(study, SimpleNamespace(config=cfg))["findings"]
        assert {r["segmenter"] for r in findings} == {"llm-v1:segment_report.v1:shared-model"}

        # a server that answers later than timeout_s: each use gives up after max_retries + 1 timed-out tries
        server.fallback = lambda request: Reply.ok("{}", delay_s=1.5)
        with pytest.raises(LLMTransportError) as segmenter_error:
            segment_step(study, SimpleNamespace(config=cfg))
        selections = [{"study_id": "s1", "finding_id": r["finding_id"], "series_id": "ser-a", "top1_index": 7,
                       "image_path": f"images/s1/{r['finding_index']}.png"} for r in findings]
        store = RowsStore({"findings": findings, "selections": selections})
        vqa_step(study, SimpleNamespace(config=cfg, store=store, cache_dir=tmp_path / "cache", run_id="run-1"))
        requests = list(server.requests)

    assert (segmenter_error.value.error_type, segmenter_error.value.attempts) == ("timeout", 2)
    vqa_errors = [error for _, stage, error in store.failures if stage == "vqa-llm"]
    assert vqa_errors and {(e.error_type, e.attempts) for e in vqa_errors} == {("timeout", 2)}

    segmenter_requests = [r for r in requests if not _is_vqa(r)]
    vqa_requests = [r for r in requests if _is_vqa(r)]
    assert len(segmenter_requests) == 1 + 2 and len(vqa_requests) == 2 * len(vqa_errors)
    sent = {(r["authorization"], r["body"]["model"], r["body"]["temperature"], str(r["body"].get("response_format")))
            for r in requests}
    assert sent == {("Bearer sk-shared-endpoint", "shared-model", 0.2, "{'type': 'json_object'}")}


def test_client_is_the_endpoints_and_an_unset_endpoint_builds_none(monkeypatch):
    monkeypatch.delenv("KEYSLICE_UNSET_TEST_KEY", raising=False)
    endpoint = LLMEndpoint(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="KEYSLICE_UNSET_TEST_KEY",
                           timeout_s=12.5)
    client = endpoint.client()
    assert (str(client.base_url), client.api_key, client.timeout, client.max_retries) == \
        ("http://127.0.0.1:9/v1/", "EMPTY", 12.5, 0)       # the retries are keyslice.llm_client's
    with pytest.raises(ValueError, match="llm.base_url and llm.model"):
        LLMEndpoint(model="m").client()                     # never the openai client's default (a remote) URL


def test_backoff_doubles_up_to_its_cap():
    endpoint = LLMEndpoint(backoff_base_s=0.5, backoff_max_s=3.0)
    waits = [endpoint.backoff(n) for n in range(5)]
    for wait, expected in zip(waits, [0.5, 1.0, 2.0, 3.0, 3.0]):
        assert expected <= wait <= expected * 1.1
