"""End-to-end builds through the Prefect flow on the real sample data (slow: one Prefect harness per session)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyslice.pipeline.registry import STAGES
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY, build_config, corpus_fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fixed_key(monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)


def test_sample_build_produces_findings_selections_and_vqa(reference_corpus):
    counts = {t: query(reference_corpus, f"select count(*) as n from {t}").to_pylist()[0]["n"]
              for t in ("studies", "findings", "selections", "vqa")}
    assert counts["studies"] >= 3 and counts["findings"] >= 10
    assert counts["selections"] > 0 and counts["vqa"] > 0
    # every selection points at a PNG that exists and at a finding of the same study
    rows = query(reference_corpus, "select s.image_path, f.study_id = s.study_id as same from selections s "
                                   "join findings f using (finding_id)").to_pylist()
    assert rows and all(r["same"] and (reference_corpus / r["image_path"]).exists() for r in rows)
    organs = query(reference_corpus, "select organ, count(*) as n from findings group by 1").to_pylist()
    assert {"liver", "kidney", "pancreas"} <= {r["organ"] for r in organs}


def test_documented_vqa_reports_show_balanced_yes_no(reference_corpus):
    """The README's SQL reports run on a real corpus, and rule-based yes/no stays balanced."""
    from keyslice.corpus.sql import VQA_QUESTION_TYPES, VQA_YES_NO_BALANCE

    (balance,) = query(reference_corpus, VQA_YES_NO_BALANCE).to_pylist()
    assert balance["generator"] == "rule" and balance["n_yes"] >= 5
    assert 0.4 <= balance["yes_share"] <= 0.6
    types = query(reference_corpus, VQA_QUESTION_TYPES).to_pylist()
    assert {"organ", "abnormality", "phase", "plane"} <= {r["question_type"] for r in types}
    assert abs(sum(r["pct"] for r in types) - 100.0) < 0.5


def test_vqa_answers_agree_with_their_findings(reference_corpus):
    """`keyslice check` on the sample corpus: no answer contradicts the finding it rests on."""
    from keyslice.cli import app
    from keyslice.vqa.consistency import check_corpus

    result = check_corpus(reference_corpus)
    assert result.n_answers > 50 and result.n_unchecked == 0
    assert result.total == 0, result.rows.to_pylist()
    no = query(reference_corpus, "select v.answer_source, f.status from vqa v join findings f "
                                 "on f.finding_id = v.evidence_finding_id where v.answer = 'no'").to_pylist()
    assert no and all(r["answer_source"] == "finding" for r in no)
    res = CliRunner().invoke(app, ["check", "--out", str(reference_corpus)])
    assert res.exit_code == 0, res.output


def test_no_raw_identifiers_reach_the_corpus(reference_corpus, sample_studies):
    names = [p.name for p in sample_studies.iterdir()]
    for table in ("studies", "series", "findings", "selections", "vqa"):
        text = str(query(reference_corpus, f"select * from {table}").to_pylist())
        assert not any(name in text for name in names), f"study folder name leaked into {table}"
        assert "1.3.12.2.1107" not in text  # the Siemens series' raw UID prefix


def test_rerun_skips_everything_and_force_stage_recomputes_without_duplicates(reference_corpus, sample_studies,
                                                                               tiny_model_dir, tmp_path):
    from flows.build import run_build

    out = tmp_path / "corpus"
    shutil.copytree(reference_corpus, out)
    before = corpus_fingerprint(out)
    again = run_build(build_config(sample_studies, out, tiny_model_dir))
    assert again["n_done"] == 0 and again["n_skipped"] + again["n_failed"] + again["n_blocked"] > 0
    forced = run_build(build_config(sample_studies, out, tiny_model_dir, force_stages=("keyslice",)))
    done = {o["stage"] for o in forced["outcomes"] if o["status"] == "done"}
    assert done == {"keyslice", "vqa"}
    assert corpus_fingerprint(out) == before


def _write_study(folder: Path, report: str, dicoms: list[Path] = (), raw: dict[str, bytes] | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "report.txt").write_text(report)
    for src in dicoms:
        shutil.copy(src, folder / src.name)
    for name, data in (raw or {}).items():
        (folder / name).write_bytes(data)


def test_corrupt_studies_fail_alone_with_their_reason(data_dir, tiny_model_dir, tmp_path, prefect_harness):
    from flows.build import run_build
    from keyslice.cli import app

    good = sorted((data_dir / "dcmqi_ct3slice" / "ct-3slice").glob("*.dcm"))
    studies = tmp_path / "in"
    _write_study(studies / "good", "FINDINGS:\nMarked colonic dilation.\nThe liver is normal.", good)
    _write_study(studies / "empty_report", "   \n\n", good)
    truncated = good[0].read_bytes()[:700]
    _write_study(studies / "bad_dicom", "FINDINGS:\nThe liver is normal.",
                 raw={"a.dcm": truncated, "b.dcm": b"this is not DICOM at all\n" * 20})
    out = tmp_path / "corpus"
    result = run_build(build_config(studies, out, tiny_model_dir))
    by_status = {(o["stage"], o["status"]) for o in result["outcomes"]}
    assert ("vqa", "done") in by_status
    store = CheckpointStore(out)
    failures = query(out, "select study_id, stage, error_type, message from failures order by stage").to_pylist()
    assert [(f["stage"], f["error_type"]) for f in failures] == [("segment", "EmptyReportError"),
                                                                 ("series", "DicomReadError")]
    done_everywhere = [s for s in store.done_studies("vqa")]
    assert len(done_everywhere) == 1 and done_everywhere[0] not in {f["study_id"] for f in failures}

    status = CliRunner().invoke(app, ["status", "--out", str(out)], env={"COLUMNS": "250"})
    assert status.exit_code == 0
    for f in failures:
        assert f["study_id"] in status.output and f["error_type"] in status.output
    # the later stages of the failed studies are blocked, not attempted
    blocked = {(o["study_id"], o["stage"]) for o in result["outcomes"] if o["status"] == "blocked"}
    assert {(f["study_id"], "vqa") for f in failures} <= blocked


def test_sigkill_mid_build_then_resume_completes_each_study_once(reference_corpus, sample_studies, tiny_model_dir,
                                                                 tmp_path, prefect_harness):
    from flows.build import run_build

    out = tmp_path / "corpus"
    env = {**os.environ, "KEYSLICE_PSEUDONYM_KEY": BUILD_KEY, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)  # the child runs its own ephemeral API, like a user's build
    cmd = [sys.executable, "-m", "keyslice.cli", "build", "--input", str(sample_studies), "--out", str(out),
           "--model", str(tiny_model_dir), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    store = CheckpointStore(out)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if store.done_studies("keyslice"):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert store.done_studies("segment"), "the build was killed before it wrote anything"
    assert len(store.done_studies("vqa")) < 4, "the build finished before it could be killed"

    result = run_build(build_config(sample_studies, out, tiny_model_dir))
    assert result["n_failed"] == 0 and result["n_done"] > 0
    assert corpus_fingerprint(out) == corpus_fingerprint(reference_corpus)
    for stage in STAGES:
        assert store.done_studies(stage) == CheckpointStore(reference_corpus).done_studies(stage)
    assert not list(out.rglob("*.tmp"))
