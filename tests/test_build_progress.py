"""Builds you can watch: progress per finished study, input folders accounted for, `status --watch`,
and the run summary the Prefect flow publishes as artifacts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyslice.cli import app
from keyslice.pipeline.progress import BuildProgress, LogLines
from keyslice.pipeline.run import StageOutcome
from keyslice.pipeline.studies import discover_studies
from keyslice.pseudonym import Pseudonymizer

REPO = Path(__file__).resolve().parents[1]
PSEUDO = Pseudonymizer(b"k", "env")
PATIENT_FOLDER = "Doe_John"       # SYNTHETIC name standing in for a patient-named folder
STUDY_LINE = re.compile(r"^study (st-[0-9a-f]+) (done|failed|blocked)\b.*; (\d+)/(\d+) studies \(.*\); "
                        r"[\d,?]+ studies/h; [\d:?]+ left$")


def _input_tree(root: Path, sample_studies: Path, data_dir: Path, studies: list[str]) -> Path:
    """Real sample studies plus folders that are not studies: a patient-named folder of real DICOM
    without a report, a folder of notes, and a README at the root (not a folder: not counted)."""
    root.mkdir()
    for name in studies:
        (root / name).symlink_to(sample_studies / name, target_is_directory=True)
    (root / PATIENT_FOLDER).mkdir()
    (root / PATIENT_FOLDER / "ct").symlink_to(data_dir / "dcmqi_ct3slice" / "ct-3slice", target_is_directory=True)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("ask for the missing reports\n")
    (root / "empty_container").mkdir()           # holds nothing: not an input folder
    (root / "README.txt").write_text("studies delivered on Monday\n")
    return root


def test_every_input_folder_is_a_study_or_skipped_with_its_reason(tmp_path, sample_studies, data_dir):
    root = _input_tree(tmp_path / "in", sample_studies, data_dir, ["head_ge_tilt", "colonography_ge_3slice"])
    found = discover_studies(root, PSEUDO)
    assert sorted(s.source_key for s in found) == ["colonography_ge_3slice", "head_ge_tilt"]
    assert {f.source_key: f.reason for f in found.skipped} == {
        f"{PATIENT_FOLDER}/ct": "no report.txt",             # real DICOM, no report
        "notes": "no report.txt, no DICOM",
    }
    assert found.n_folders == 4 == len(found) + len(found.skipped)
    for f in found.skipped:
        assert f.folder_id == PSEUDO("folder", f.source_key) and PATIENT_FOLDER not in f.folder_id + f.reason


def test_a_folder_that_cannot_be_listed_is_skipped_as_unreadable(tmp_path, monkeypatch):
    """Root reads every folder, so the refusal of the operating system is made here."""
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "report.txt").write_text("FINDINGS: liver normal.")
    (tmp_path / "locked").mkdir()
    scandir = os.scandir

    def refusing(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    found = discover_studies(tmp_path, PSEUDO)
    assert [s.source_key for s in found] == ["study"]
    assert [(f.source_key, f.reason) for f in found.skipped] == [("locked", "unreadable (PermissionError)")]
    assert found.n_folders == 2


def _outcome(study: str, stage: str, status: str = "done") -> StageOutcome:
    return StageOutcome(study, stage, status, "ValueError: bad" if status == "failed" else "")


def test_progress_counts_studies_rate_and_time_left():
    now = [0.0]
    progress = BuildProgress(3, ["segment", "series"], clock=lambda: now[0])
    assert progress.add(_outcome("st-a", "segment")) is None           # not its last stage yet
    now[0] = 360.0
    a = progress.add(_outcome("st-a", "series"))
    assert (a.result, a.n_finished, a.studies_per_hour, a.seconds_left) == ("done", 1, 10.0, 720.0)
    progress.add(_outcome("st-b", "segment", "failed"))
    now[0] = 720.0
    b = progress.add(_outcome("st-b", "series", "blocked"))
    assert b.result == "failed" and b.message == "segment: ValueError: bad"   # the failure, not its consequence
    assert b.counts == {"done": 1, "failed": 1, "blocked": 0} and b.seconds_left == 360.0
    assert dict(progress.per_stage["series"]) == {"done": 1, "blocked": 1}
    lines: list[str] = []
    observer = LogLines(lines.append)
    observer.started(1, ["segment"])
    observer.outcome(_outcome("st-c", "segment"))
    assert STUDY_LINE.match(lines[-1]) and len(lines) == 2


def test_terminal_display_shows_each_stage_and_the_studies():
    import io

    from rich.console import Console

    from keyslice.pipeline.progress import RichProgress

    screen = io.StringIO()
    display = RichProgress(Console(file=screen, force_terminal=True, width=150))
    display.started(2, ["segment", "series"])
    for outcome in (_outcome("st-a", "segment"), _outcome("st-a", "series"),
                    _outcome("st-b", "segment", "failed"), _outcome("st-b", "series", "blocked")):
        display.outcome(outcome)
    display.finished()
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert re.search(r"segment .* 2/2 done 1 failed 1", last) and re.search(r"series .* 2/2 done 1 blocked 1", last)
    assert re.search(r"studies .* 2/2 done 1 failed 1 blocked 0 \| [\d,]+/h \| 0:00:00 left", last)


def _keyslice(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keyslice.cli", *args], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_piped_build_prints_a_line_per_study_and_status_follows_it(tmp_path, sample_studies, data_dir,
                                                                   tiny_model_dir, monkeypatch):
    """A real `keyslice build` with its output in pipes (not a terminal), watched from here by
    `keyslice status --watch`; then the input accounting in the runs table and in `keyslice status`."""
    from keyslice.corpus.sql import query

    studies = ["head_ge_tilt", "colonography_ge_3slice", "phantom_philips_mixed"]
    root = _input_tree(tmp_path / "in", sample_studies, data_dir, studies)
    out = tmp_path / "corpus"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "KEYSLICE_PSEUDONYM_KEY": "test-key-not-a-secret"}
    build = _keyslice("build", "--input", str(root), "--out", str(out), "--model", str(tiny_model_dir),
                      "--runner", "local", "--workers", "1", env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".keyslice").exists() and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        watched = CliRunner().invoke(app, ["status", "--out", str(out), "--watch", "--interval", "0.3"])
        stdout, stderr = build.communicate(timeout=600)
    finally:
        build.kill()
    assert build.returncode == 0, stderr
    assert "\x1b[" not in stderr                                   # no live display when not a terminal
    lines = [line for line in stderr.splitlines() if line.startswith("study ")]
    assert len(lines) == len(studies), stderr                      # one line per finished study
    parsed = [STUDY_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(3)) for m in parsed] == [1, 2, 3] and {m.group(4) for m in parsed} == {"3"}
    assert "input: 5 folders found, 3 taken as studies, 2 skipped" in stdout

    # status --watch followed the build from another process until it recorded its run
    assert watched.exit_code == 0, watched.output
    run_id = query(out, "select run_id from runs").to_pylist()[0]["run_id"]
    assert f"build finished: run {run_id}" in watched.output
    done_counts = [int(m) for m in re.findall(r"studies done per stage: segment (\d+)", watched.output)]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 3 and len(done_counts) >= 2

    # the runs table: counts and reasons, folder pseudonyms only
    run = query(out, "select n_studies, n_input_folders, skipped_inputs from runs").to_pylist()[0]
    assert run["n_studies"] == 3 and run["n_input_folders"] == 5
    assert sorted(f["reason"] for f in run["skipped_inputs"]) == ["no report.txt", "no report.txt, no DICOM"]
    assert all(re.fullmatch(r"fo-[0-9a-f]{16}", f["folder_id"]) for f in run["skipped_inputs"])
    for f in (out / "tables").rglob("*.parquet"):
        assert PATIENT_FOLDER.encode() not in f.read_bytes(), f

    status = CliRunner().invoke(app, ["status", "--out", str(out)])
    assert status.exit_code == 0
    text = " ".join(status.output.split())
    assert "5 folders found, 3 studies, 2 skipped" in text and PATIENT_FOLDER not in status.output
    for f in run["skipped_inputs"]:
        assert f["folder_id"] in status.output
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", env["KEYSLICE_PSEUDONYM_KEY"])
    named = CliRunner().invoke(app, ["status", "--out", str(out), "--input", str(root)])
    assert f"{PATIENT_FOLDER}/ct" in named.output                  # on this terminal only, with --input

    quiet = _keyslice("build", "--input", str(root), "--out", str(out), "--model", str(tiny_model_dir),
                      "--runner", "local", "--quiet", env=env)
    q_out, q_err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0 and not [line for line in q_err.splitlines() if line.startswith("study ")]


@pytest.mark.slow
def test_flow_run_publishes_its_summary_as_artifacts(reference_corpus):
    """The reference build is a real flow run on the sample corpus: its artifacts hold its result."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from keyslice.corpus.sql import query
    from keyslice.pipeline.summary import artifact_key

    run_id = query(reference_corpus, "select run_id from runs").to_pylist()[0]["run_id"]
    key = artifact_key(reference_corpus)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key, f"{key}-numbers"])))
    ours = [a for a in artifacts if run_id in (a.description or "")]
    markdown = next(a for a in ours if a.type == "markdown")
    table = next(a for a in ours if a.type == "table")
    assert markdown.flow_run_id is not None and markdown.flow_run_id == table.flow_run_id

    counts = {t: query(reference_corpus, f"select count(*) as n from {t}").to_pylist()[0]["n"]
              for t in ("studies", "series", "findings", "assignments", "selections", "vqa")}
    text = markdown.data
    assert "**4 studies** processed in" in text and "studies/hour" in text
    assert "4 done, 0 failed, 0 blocked, 0 unchanged" in text
    for t, n in counts.items():                                     # a fresh build: it added every row
        assert f"| {t} | {n} |" in text
    balance = query(reference_corpus, "select generator, n_yes, n_no from ("
                    "select generator, count(*) filter (where lower(answer)='yes') as n_yes, "
                    "count(*) filter (where lower(answer)='no') as n_no from vqa "
                    "where answer_type='closed' and lower(answer) in ('yes','no') group by 1)").to_pylist()
    for b in balance:
        assert f"| {b['generator']} | {b['n_yes']} | {b['n_no']} |" in text
    kept = query(reference_corpus, "select coalesce(phase, 'unknown') as phase, count(*) as n from series "
                                   "where kept group by 1").to_pylist()
    for p in kept:
        assert f"| {p['phase']} | {p['n']} |" in text
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    metrics = {r["metric"]: r["value"] for r in rows}
    assert metrics["studies processed"] == 4 and metrics["rows added: vqa"] == counts["vqa"]
    assert metrics["studies per hour"] > 0
