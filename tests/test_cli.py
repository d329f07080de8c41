"""Command-line wiring: flags reach the build configuration and the task runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyslice.cli import app


def _message(result) -> str:
    """The command's output on one line: rich wraps its error panel at the terminal width."""
    return " ".join(result.output.replace("│", " ").split())


def test_build_flags_reach_run_build(tmp_path, monkeypatch):
    import contextlib

    import flows.build
    import flows.server

    seen = {}

    def fake_run_build(cfg, task_runner="threads", *, dask_address=None, **kw):
        seen.update(cfg=cfg, task_runner=task_runner, dask_address=dask_address)
        return {"run_id": "r", "n_studies": 1, "n_done": 4, "n_skipped": 0, "n_failed": 0, "n_blocked": 0,
                "outcomes": []}

    monkeypatch.setattr(flows.build, "run_build", fake_run_build)
    monkeypatch.setattr(flows.server, "build_api_server", contextlib.nullcontext)  # no Prefect server for a fake
    result = CliRunner().invoke(app, ["build", "--input", str(tmp_path), "--out", str(tmp_path / "c"),
                                      "--runner", "dask", "--dask-address", "tcp://10.0.0.1:8786",
                                      "--force-stage", "keyslice", "--workers", "3", "--model", "m",
                                      "--masks", str(tmp_path / "masks")])
    assert result.exit_code == 0, result.output
    assert seen["task_runner"] == "dask" and seen["dask_address"] == "tcp://10.0.0.1:8786"
    cfg = seen["cfg"]
    assert cfg.force_stages == ("keyslice",) and cfg.max_workers == 3 and cfg.model == "m"
    assert cfg.masks_dir == tmp_path / "masks"


def test_segment_flags_reach_the_runner_and_failures_set_the_exit_status(tmp_path, monkeypatch):
    import keyslice.pipeline.organ_masks as organ_masks
    import keyslice.selector as selector
    from keyslice.pipeline.organ_masks import SegmentOutcome

    seen = {}

    def fake_segmenter(**kwargs):
        seen["segmenter_options"] = kwargs
        return "SEGMENTER"

    def fake_segment_studies(input_dir, masks_dir, segmenter, *, config, overwrite, progress, check):
        seen.update(input_dir=input_dir, masks_dir=masks_dir, segmenter=segmenter, overwrite=overwrite, check=check)
        outcomes = [SegmentOutcome("a", "segmented", "3 labels on ..."), SegmentOutcome("b", "failed", "[red]x[/red]")]
        for o in outcomes:
            progress(o)
        return outcomes

    monkeypatch.setattr(selector, "totalsegmentator_segmenter", fake_segmenter)
    monkeypatch.setattr(organ_masks, "segment_studies", fake_segment_studies)
    result = CliRunner().invoke(app, ["segment", "--input", str(tmp_path), "--masks", str(tmp_path / "m"),
                                      "--full", "--device", "cpu", "--overwrite"])
    assert result.exit_code == 1, result.output
    assert seen["segmenter_options"] == {"fast": False, "device": "cpu"} and seen["segmenter"] == "SEGMENTER"
    assert seen["overwrite"] is True and seen["masks_dir"] == tmp_path / "m"
    assert "a\tsegmented\t3 labels on ...\n" in result.output
    assert "b\tfailed\t[red]x[/red]\n" in result.output  # printed as given: no markup in a pipe
    assert "2 studies: 1 segmented, 0 already had masks, 1 failed" in result.output
    missing = CliRunner().invoke(app, ["segment", "--input", str(tmp_path / "nope"), "--masks", str(tmp_path)])
    assert missing.exit_code == 2 and "does not exist" in _message(missing)


def test_sql_refuses_a_corpus_folder_that_does_not_exist(tmp_path):
    """A mistyped --out must not look like an empty corpus."""
    result = CliRunner().invoke(app, ["sql", "--out", str(tmp_path / "typo"), "select count(*) from findings"])
    assert result.exit_code == 2
    assert "typo does not exist; build a corpus first with `keyslice build`" in _message(result)


def test_sql_on_an_empty_corpus_has_typed_empty_views(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    dest = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["sql", "--out", str(out), "select organ, count(*) as n from findings group by 1",
                                      "--format", "json", "--output", str(dest)])
    assert result.exit_code == 0, result.output
    assert dest.read_text().strip() in ("", "[]")
    bad = CliRunner().invoke(app, ["sql", "--out", str(out), "select no_such_column from findings"])
    assert bad.exit_code == 2 and "query failed" in bad.output


def test_build_refuses_a_missing_input_folder_before_touching_the_corpus(tmp_path):
    out = tmp_path / "corpus"
    result = CliRunner().invoke(app, ["build", "--input", str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code == 2
    message = _message(result)
    assert "nope does not exist" in message and "input contract" in message
    assert not out.exists()


def test_config_mistakes_are_reported_not_raised(tmp_path):
    """A missing file, broken YAML, a non-mapping and a misspelt key each give a usage error, for the
    build and for fine-tuning, before anything is written."""
    studies = tmp_path / "studies"
    studies.mkdir()
    (tmp_path / "broken.yaml").write_text("input_dir: [1\n")
    (tmp_path / "list.yaml").write_text("- model\n")
    (tmp_path / "typo.yaml").write_text("model: tiny\nmax_wrkers: 3\n")
    build = {"missing.yaml": "does not exist", "broken.yaml": "build config", "list.yaml": "must be a YAML mapping",
             "typo.yaml": "unknown build config key(s): ['max_wrkers']"}
    finetune = {"missing.yaml": "does not exist", "broken.yaml": "fine-tuning config",
                "list.yaml": "must be a YAML mapping"}
    runs = [(["build", "--input", str(studies), "--out", str(tmp_path / "c"), "--config"], build),
            (["finetune", "--out", str(tmp_path / "c")], finetune), (["eval", "--out", str(tmp_path / "c")], finetune)]
    for args, expected in runs:
        for name, text in expected.items():
            result = CliRunner().invoke(app, [*args, str(tmp_path / name)])
            message = _message(result)
            assert result.exit_code == 2, (args[0], name, result.output)
            assert message.startswith("Usage:") and text in message, (args[0], name, message)
    assert not (tmp_path / "c").exists()


def _corpus_with_findings(tmp_path):
    import datetime as dt

    from keyslice.corpus.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "corpus")
    row = {"study_id": "s1", "finding_id": "s1:0", "finding_index": 0, "section": "findings",
           "text": 'Cyst, "simple".', "organ": "liver", "organs": ["liver", "kidney"], "ts_labels": ["liver"],
           "status": "abnormal", "abnormalities": ["cyst"], "negated_abnormalities": [], "modifiers": [],
           "laterality": None, "measurements_mm": [12.0], "phase_hint": None,
           "image_refs": [], "language": "en", "segmenter": "rules", "created_at": dt.datetime.now(dt.timezone.utc)}
    store.commit_stage("segment", "s1", {"findings": [row]}, "run1")
    return store.root


def test_sql_csv_and_json_go_to_standard_output_for_a_pipe(tmp_path):
    """Without -o, csv and json print the rows (not a message) so `keyslice sql ... | other` works;
    list columns become JSON cells in CSV instead of an Arrow error."""
    import csv
    import io
    import json

    out = _corpus_with_findings(tmp_path)
    query = "select finding_id, text, organs, measurements_mm from findings"
    as_csv = CliRunner().invoke(app, ["sql", "--out", str(out), query, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert rows == [{"finding_id": "s1:0", "text": 'Cyst, "simple".', "organs": '["liver", "kidney"]',
                     "measurements_mm": "[12.0]"}]
    as_json = CliRunner().invoke(app, ["sql", "--out", str(out), query, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [
        {"finding_id": "s1:0", "text": 'Cyst, "simple".', "organs": ["liver", "kidney"], "measurements_mm": [12.0]}]
    parquet = CliRunner().invoke(app, ["sql", "--out", str(out), query, "--format", "parquet"])
    assert parquet.exit_code == 2 and "--output" in _message(parquet)


def test_help_sql_and_status_import_no_heavy_library(tmp_path):
    """`keyslice --help`, `sql` and `status` answer in a second only while every command keeps its heavy
    imports (Prefect, torch, datasets, spaCy) inside itself; one module-level import would load them all."""
    import json
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    script = f"""
import json, sys
from typer.testing import CliRunner
from keyslice.cli import app
for args in (["--help"], ["sql", "--out", {str(corpus)!r}, "select 1"], ["status", "--out", {str(corpus)!r}]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "prefect", "datasets", "spacy"}})))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("runner", ["local", "threads"])
def test_build_walks_the_input_folder_once(runner, tmp_path, sample_studies, tiny_model_dir, monkeypatch, request):
    """The preflight's discovery is the build's (and names the skipped folders in the status it prints):
    on network storage with thousands of study folders, walking the input is the slowest part of start-up."""
    import os

    from tests.corpus_utils import BUILD_KEY

    if runner == "threads":
        request.getfixturevalue("prefect_harness")
    for name, value in (("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY), ("PREFECT_LOGGING_LEVEL", "WARNING"),
                        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")):
        monkeypatch.setenv(name, value)   # the build's own environment settings, undone after the test
    inp = tmp_path / "studies"
    inp.mkdir()
    study = sorted(p for p in sample_studies.iterdir() if (p / "report.txt").exists())[0]
    (inp / "study_a").symlink_to(study, target_is_directory=True)
    (inp / "notes_not_a_study").mkdir()
    (inp / "notes_not_a_study" / "notes.txt").write_text("SYNTHETIC: a folder without a report")
    walks = []
    walk = os.walk

    def counting_walk(top, *args, **kwargs):
        if Path(top) == inp:
            walks.append(top)
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", counting_walk)
    result = CliRunner().invoke(app, ["build", "--input", str(inp), "--out", str(tmp_path / "corpus"), "--quiet",
                                      "--model", str(tiny_model_dir), "--workers", "1", "--runner", runner])
    assert result.exit_code == 0, result.output
    assert "1 studies" in _message(result) and "notes_not_a_study" in _message(result)
    assert len(walks) == 1
