"""The build without Prefect: one stage registry everything derives from, and ``keyslice.build``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyslice.errors import InputError, TransientError
from keyslice.pipeline import registry
from tests.corpus_utils import BUILD_KEY, corpus_fingerprint

REPO = Path(__file__).resolve().parents[1]


def test_checkpoints_tasks_and_deployment_phases_derive_from_the_registry():
    from flows.deploy import CPU_STAGES_AFTER, CPU_STAGES_BEFORE, GPU_STAGES
    from tasks import STAGE_TASKS

    assert registry.STAGES == tuple(s.name for s in registry.REGISTRY)
    assert registry.STAGE_TABLES["series"] == ("studies", "series", "assignments")
    assert {t for s in registry.REGISTRY for t in s.tables} == set(registry.TABLE_STAGE)
    for stage in registry.REGISTRY:
        task = STAGE_TASKS[stage.name]
        assert set(task.tags) == set(stage.resources) and task.retries == stage.retries
    gpu = [s.name for s in registry.REGISTRY if s.uses_gpu]
    assert GPU_STAGES == gpu == ["keyslice"]
    assert CPU_STAGES_BEFORE + GPU_STAGES + CPU_STAGES_AFTER == list(registry.STAGES)
    assert registry.downstream("keyslice") == ("keyslice", "vqa")
    with pytest.raises(ValueError, match="unknown stage 'segmnt'; choose from segment, series, keyslice, vqa"):
        registry.select_stages(["segmnt"])


def _failing_registry(monkeypatch, error: Exception, calls: list[int]):
    def boom(study, ctx):
        calls.append(1)
        raise error

    stages = tuple(dataclasses.replace(s, function=boom, retry_delays_s=(0.0,)) if s.name == "segment" else s
                   for s in registry.REGISTRY)
    monkeypatch.setattr(registry, "REGISTRY", stages)


@pytest.mark.parametrize("retries, error, expected_calls", [
    (None, TransientError("endpoint timed out"), 3),   # the stage's own 2 retries
    (0, TransientError("endpoint timed out"), 1),      # the build config overrides every stage
    (5, TransientError("endpoint timed out"), 6),      # ...also upwards
    (5, InputError("report is empty"), 1),             # bad input is never retried
])
def test_plain_runners_retry_transient_errors_as_the_stage_declares(tmp_path, monkeypatch, retries, error,
                                                                    expected_calls):
    from keyslice.config import BuildConfig
    from keyslice.corpus.sql import query
    from keyslice.pipeline.context import make_context
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import Study

    calls: list[int] = []
    _failing_registry(monkeypatch, error, calls)
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    ctx = make_context(BuildConfig(input_dir=tmp_path, out_dir=tmp_path / "corpus", retries=retries))
    outcomes = process_study(Study("s1", "s1", tmp_path, "Liver cyst."), ctx, ["segment", "series"])
    assert len(calls) == expected_calls
    assert [o.status for o in outcomes] == ["failed", "blocked"]
    failures = query(ctx.store.root, "select stage, error_type, attempt from failures").to_pylist()
    assert failures == [{"stage": "segment", "error_type": type(error).__name__, "attempt": expected_calls}]


def test_unknown_runner_is_a_clear_error(tmp_path):
    import keyslice

    with pytest.raises(ValueError, match="unknown runner 'prefect'"):
        keyslice.build(tmp_path, tmp_path / "corpus", runner="prefect")


@pytest.mark.slow
def test_python_api_builds_the_same_corpus_as_the_prefect_flow_without_importing_prefect(
        tmp_path, sample_studies, tiny_model_dir, reference_corpus):
    """``keyslice.build`` (sequential and threads) writes the reference corpus byte for byte, and never
    imports Prefect (run in a fresh interpreter, where nothing else could have imported it)."""
    script = """
import json, sys
import keyslice
results = [keyslice.build(sys.argv[1], sys.argv[2] + "/" + runner, model=sys.argv[3], max_workers=2,
                          runner=runner) for runner in ("sequential", "threads")]
print(json.dumps({"prefect_imported": any(m == "prefect" or m.startswith("prefect.") for m in sys.modules),
                  "studies": [r["n_studies"] for r in results]}))
"""
    env = {**os.environ, "KEYSLICE_PSEUDONYM_KEY": BUILD_KEY, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(sample_studies), str(tmp_path), str(tiny_model_dir)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["prefect_imported"] is False and summary["studies"] == [4, 4]
    reference = corpus_fingerprint(reference_corpus)
    for runner in ("sequential", "threads"):
        assert corpus_fingerprint(tmp_path / runner) == reference, runner


def test_a_build_refuses_a_discovery_made_for_another_key_or_input(tmp_path, sample_studies, monkeypatch):
    """A discovery handed to the build (from preflight) must be of its input with its key: another key's
    study ids would add every study again under new ids."""
    from keyslice.pipeline.api import build
    from keyslice.pipeline.studies import discover_studies
    from keyslice.pseudonym import Pseudonymizer

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    ours = Pseudonymizer(BUILD_KEY.encode(), "env")
    empty = tmp_path / "empty"
    empty.mkdir()
    for found in (discover_studies(sample_studies, Pseudonymizer(b"another key", "env")),
                  discover_studies(empty, ours)):
        with pytest.raises(ValueError, match="another input folder, manifest or pseudonym key"):
            build(sample_studies, tmp_path / "corpus", runner="sequential", discovery=found)
    assert not list((tmp_path / "corpus").glob("tables/*/*.parquet"))
