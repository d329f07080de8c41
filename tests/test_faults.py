"""Fault suite: hostile and broken input against the real build (real DICOM, the tiny test model).

One corpus is built (without Prefect) from a good study beside one faulty study per case; each
test checks its case: a clear error recorded against that study (or a refusal before anything is
built), the good study complete, nothing lost or duplicated, no key or folder name in the corpus.
Kills (SIGTERM, ``kill -9`` and the Prefect server) are in ``benchmarks/bench_faults.py --hostile``.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil

import pytest

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.sql import QueryRefusedError, query
from keyslice.pseudonym import Pseudonymizer
from tests.fault_utils import (KEY, REPORT, add_study, assert_clean, build, complete_studies, corpus_text,
                               failures)

LIMITS = {"max_report_bytes": 20_000, "max_findings_per_report": 20, "max_files_per_study": 12}
PSEUDO = Pseudonymizer(KEY.encode(), "env")

# name -> report (text, bytes); folder tweaks are made in the fixture
CASES: dict[str, str | bytes | None] = {
    "good": REPORT,
    "pipe_and_link_loops": REPORT,                                   # x.dcm is a FIFO, a -> ., b -> .
    "random_bytes": random.Random(7).randbytes(4096),
    "latin1": ("FINDINGS:\nA 3 \u00d7 2 cm hypodense lesion in the liver, caf\u00e9 au lait.\n"
               "The spleen is normal.\n").encode("latin-1"),
    "not_language": "FINDINGS:\n" + " ".join(["Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA=="] * 40) + "\n",
    "huge_report": "FINDINGS:\n" + "The liver has a small cyst. " * 1000,      # > max_report_bytes
    "many_findings": "FINDINGS:\n" + "\n".join(f"There is a {i} mm nodule in the liver." for i in range(40)),
    "too_many_files": REPORT,                                         # 20 extra files > max_files_per_study
    "no_header": "CT abdomen with contrast.\nThe liver has a 3 cm cyst.\nThe spleen is normal.\n",
    "empty_report": "   \n",
}


@pytest.fixture(scope="module")
def fault_build(tmp_path_factory, data_dir, tiny_model_dir):
    os.environ["KEYSLICE_PSEUDONYM_KEY"] = KEY
    root = tmp_path_factory.mktemp("faults")
    studies, out = root / "studies", root / "corpus"
    for name, report in CASES.items():
        add_study(studies, name, data_dir, report)
    pipe_study = studies / "pipe_and_link_loops"
    os.mkfifo(pipe_study / "x.dcm")
    (pipe_study / "a").symlink_to(".")
    (pipe_study / "b").symlink_to(".")
    for i in range(20):
        (studies / "too_many_files" / f"note{i}.txt").write_text("x")
    result = build(studies, out, tiny_model_dir, **LIMITS)
    ids = {name: PSEUDO("study", name) for name in CASES}
    return {"studies": studies, "out": out, "result": result, "ids": ids}


def _failure(build: dict, case: str) -> dict:
    rows = [f for f in failures(build["out"]) if f["study_id"] == build["ids"][case]]
    assert rows, f"no failure recorded for {case}"
    return rows[-1]


def _findings(build: dict, case: str) -> list[dict]:
    return query(build["out"], f"select text, measurements_mm from findings where study_id = "
                               f"'{build['ids'][case]}' order by finding_index").to_pylist()


def test_good_studies_complete_and_nothing_is_duplicated_or_leaked(fault_build):
    complete = complete_studies(fault_build["out"])
    for case in ("good", "pipe_and_link_loops", "latin1", "no_header"):
        assert fault_build["ids"][case] in complete, case
    assert_clean(fault_build["out"], secrets=tuple(CASES))


def test_a_pipe_and_symlink_loops_neither_hang_nor_repeat(fault_build):
    """x.dcm is a FIFO and a -> ., b -> . loop: the build ends, the study completes with its 3 slices once,
    and the files it could not read are recorded with their reasons."""
    sid = fault_build["ids"]["pipe_and_link_loops"]
    [study] = query(fault_build["out"], f"select n_dicom from studies where study_id = '{sid}'").to_pylist()
    assert study["n_dicom"] == 3
    message = _failure(fault_build, "pipe_and_link_loops")["message"]
    assert "2 x folder reached again through a symbolic link" in message and "1 x not a regular file" in message


@pytest.mark.parametrize("case, error, text", [
    ("random_bytes", "UndecodableReportError", "not text in any known encoding"),
    ("not_language", "NotLanguageError", "not written language"),
    ("huge_report", "LimitExceededError", "max_report_bytes"),
    ("many_findings", "LimitExceededError", "max_findings_per_report"),
    ("empty_report", "EmptyReportError", ""),
])
def test_bad_reports_fail_their_study_with_the_reason(fault_build, case, error, text):
    failure = _failure(fault_build, case)
    assert (failure["stage"], failure["error_type"]) == ("segment", error)
    assert text in failure["message"]
    assert _findings(fault_build, case) == []


def test_too_many_files_fails_the_study_at_the_series_stage(fault_build):
    failure = _failure(fault_build, "too_many_files")
    assert (failure["stage"], failure["error_type"]) == ("series", "LimitExceededError")
    assert "more than 12 files (max_files_per_study)" in failure["message"]


def test_a_latin1_report_is_decoded_not_replaced(fault_build):
    [first, _] = _findings(fault_build, "latin1")
    assert "3 \u00d7 2 cm" in first["text"] and "\ufffd" not in first["text"]
    assert sorted(first["measurements_mm"]) == [20.0, 30.0]


def test_an_exam_title_without_a_header_is_not_a_finding(fault_build):
    texts = [f["text"] for f in _findings(fault_build, "no_header")]
    assert texts and not any("CT abdomen" in t for t in texts)
    assert any("3 cm cyst" in t for t in texts)


def test_exit_summary_counts_the_failed_studies(fault_build):
    failed = {o["study_id"] for o in fault_build["result"]["outcomes"] if o["status"] == "failed"}
    bad = {"random_bytes", "not_language", "huge_report", "many_findings", "empty_report", "too_many_files"}
    assert failed == {fault_build["ids"][c] for c in bad}


# -- the pseudonym key -------------------------------------------------------------------------------
def test_another_pseudonym_key_is_refused_before_anything_is_built(fault_build, tiny_model_dir, monkeypatch):
    from keyslice.pseudonym import KeyMismatchError

    before = query(fault_build["out"], "select count(*) as n from studies").to_pylist()
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", "another-key")
    with pytest.raises(KeyMismatchError, match="not the key this corpus was built with"):
        build(fault_build["studies"], fault_build["out"], tiny_model_dir, **LIMITS)
    assert query(fault_build["out"], "select count(*) as n from studies").to_pylist() == before
    assert "another-key" not in corpus_text(fault_build["out"])


# -- damage ------------------------------------------------------------------------------------------
def test_deleted_and_corrupt_files_are_reported_and_rebuilt(fault_build, tiny_model_dir, tmp_path, monkeypatch):
    from keyslice.corpus.status import corpus_status

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", KEY)
    out = tmp_path / "corpus"
    shutil.copytree(fault_build["out"], out, symlinks=True)
    store = CheckpointStore(out)
    good, latin = fault_build["ids"]["good"], fault_build["ids"]["latin1"]
    want_vqa = query(out, "select count(*) as n from vqa").to_pylist()[0]["n"]
    want_findings = query(out, f"select text from findings where study_id = '{good}' order by 1").to_pylist()
    store.table_path("findings", good).unlink()
    corrupt = store.table_path("selections", latin)
    corrupt.write_bytes(corrupt.read_bytes()[:40])

    status = corpus_status(out)
    assert {(d.study_id, d.table, d.problem.split(" ")[0]) for d in status.damaged} == {
        (good, "findings", "missing"), (latin, "selections", "checksum")}
    assert status.table_rows["selections"] is None and status.table_rows["vqa"] == want_vqa
    with pytest.raises(Exception, match=f"tables/selections/{latin}.parquet"):
        query(out, "select * from selections")

    build(fault_build["studies"], out, tiny_model_dir, **LIMITS)
    assert corpus_status(out).damaged == []
    assert query(out, f"select text from findings where study_id = '{good}' order by 1").to_pylist() == want_findings
    assert {good, latin} <= complete_studies(out)
    assert query(out, "select count(*) as n from vqa").to_pylist()[0]["n"] == want_vqa
    assert_clean(out, secrets=tuple(CASES))
    assert list((out / "damaged" / "selections").iterdir())   # the corrupt file is kept aside, not deleted


# -- keyslice sql ------------------------------------------------------------------------------------
@pytest.fixture()
def small_corpus(tmp_path, monkeypatch):
    """One committed stage and the corpus' generated key file (no key in the environment)."""
    from keyslice.pseudonym import load_pseudonymizer

    monkeypatch.delenv("KEYSLICE_PSEUDONYM_KEY", raising=False)
    out = tmp_path / "corpus"
    row = {"study_id": "st-a", "finding_id": "st-a:0", "finding_index": 0, "section": "findings", "text": "Cyst.",
           "organ": "liver", "organs": ["liver"], "ts_labels": ["liver"], "status": "abnormal",
           "abnormalities": ["cyst"], "negated_abnormalities": [], "modifiers": [], "laterality": None,
           "measurements_mm": [], "phase_hint": None, "image_refs": [], "language": "en", "segmenter": "rules",
           "created_at": dt.datetime.now(dt.timezone.utc)}
    CheckpointStore(out).commit_stage("segment", "st-a", {"findings": [row]}, "r1")
    key = load_pseudonymizer(out).key.decode()
    assert (out / ".keyslice" / "pseudonym.key").exists()
    return out, key


def test_sql_reads_the_views(small_corpus):
    out, _ = small_corpus
    assert query(out, "select finding_id from findings").to_pylist() == [{"finding_id": "st-a:0"}]
    assert query(out, "describe findings").num_rows > 5


@pytest.mark.parametrize("statement", [
    "select content from read_text('{out}/.keyslice/pseudonym.key')",
    "select content from read_text('{out}/tables/../.keyslice/pseudonym.key')",
    "select * from read_text('/etc/shadow')",
    "select * from read_csv('/etc/passwd')",
    "select * from glob('/**')",
])
def test_sql_cannot_read_files_outside_the_corpus_tables(small_corpus, statement):
    import duckdb

    out, key = small_corpus
    with pytest.raises(duckdb.PermissionException):
        query(out, statement.format(out=out))


@pytest.mark.parametrize("statement", [
    "COPY (select * from findings) TO '{out}/tables/findings/zz.parquet'",
    "ATTACH '{out}/x.duckdb' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
    "select 1; select 2",
])
def test_sql_refuses_statements_that_are_not_queries(small_corpus, statement):
    out, _ = small_corpus
    with pytest.raises(QueryRefusedError):
        query(out, statement.format(out=out))
    assert not (out / "tables" / "findings" / "zz.parquet").exists()
    assert not (out / "x.duckdb").exists()


def test_sql_configuration_is_locked_even_inside_a_query(small_corpus):
    """A query cannot switch external access back on: the connection's configuration is locked."""
    import duckdb

    from keyslice.corpus.sql import connect

    out, key = small_corpus
    con = connect(out)
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error):
        con.execute(f"select content from read_text('{out}/.keyslice/pseudonym.key')")


def test_cli_sql_refusal_prints_no_key(small_corpus):
    from typer.testing import CliRunner

    from keyslice.cli import app

    out, key = small_corpus
    for statement in (f"select content from read_text('{out}/.keyslice/pseudonym.key')",
                      f"COPY (select 1) TO '{out}/tables/findings/zz.parquet'"):
        result = CliRunner().invoke(app, ["sql", "--out", str(out), statement])
        assert result.exit_code == 2 and key not in result.output
        assert "Traceback" not in result.output


# -- manifests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, message", [
    ("../../../etc,x\n", "leaves the input folder"),
    ("/etc,x\n", "not an absolute path"),
    ("s1,one\ns2,two\n./s1,again\n", "manifest rows 1 and 3 name the same study folder"),
    (",x\n", "empty 'study'"),
])
def test_manifest_paths_outside_the_input_and_duplicates_are_refused(tmp_path, rows, message):
    from keyslice.pipeline.studies import ManifestError, discover_studies

    (tmp_path / "s1").mkdir()
    (tmp_path / "manifest.csv").write_text("study,report\n" + rows)
    with pytest.raises(ManifestError, match=message):
        discover_studies(tmp_path, PSEUDO)


def test_input_folder_symlink_loops_are_walked_once(tmp_path):
    from keyslice.pipeline.studies import discover_studies

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.txt").write_text(REPORT)
    (tmp_path / "loop1").symlink_to(".")
    (tmp_path / "loop2").symlink_to(".")
    assert [s.source_key for s in discover_studies(tmp_path, PSEUDO)] == ["a"]


def test_a_report_that_is_a_pipe_is_refused_without_blocking(tmp_path):
    from keyslice.errors import InputError
    from keyslice.pipeline.studies import Study

    (tmp_path / "s").mkdir()
    os.mkfifo(tmp_path / "s" / "report.txt")
    with pytest.raises(InputError, match="not a regular file"):
        Study("st-x", "s", tmp_path / "s", None).read_report()


# -- limits on slices (segment + series stages only: no model) -----------------------------------------
def test_a_series_over_the_slice_limit_fails_the_study(tmp_path, data_dir, monkeypatch):
    from keyslice.config import BuildConfig
    from keyslice.pipeline.context import make_context
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import discover_studies

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", KEY)
    add_study(tmp_path / "studies", "three_slices", data_dir)
    ctx = make_context(BuildConfig(input_dir=tmp_path / "studies", out_dir=tmp_path / "corpus", retries=0,
                                   max_slices_per_series=2))
    [study] = discover_studies(ctx.config.input_dir, ctx.pseudonymize)
    outcomes = process_study(study, ctx, ["segment", "series"])
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "max_slices_per_series" in outcomes[1].message and "LimitExceededError" in outcomes[1].message


# -- the command line: exit codes and messages -----------------------------------------------------------
def _cli(*args: str):
    from typer.testing import CliRunner

    from keyslice.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_exit_codes_for_failed_studies_partial_builds_and_no_studies(tmp_path, data_dir, tiny_model_dir,
                                                                          monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", KEY)
    studies, out = tmp_path / "studies", tmp_path / "corpus"
    add_study(studies, "empty", data_dir, "  \n")
    args = ("build", "--input", studies, "--out", out, "--model", tiny_model_dir, "--runner", "local", "--device", "cpu")
    failed = _cli(*args)
    assert failed.exit_code == 1, failed.output
    assert "1 of 1 studies did not complete" in " ".join(failed.output.split())
    assert _cli(*args, "--allow-partial").exit_code == 0
    (tmp_path / "none").mkdir()
    nothing = _cli("build", "--input", tmp_path / "none", "--out", tmp_path / "c2", "--runner", "local")
    assert nothing.exit_code == 1 and "no study found" in nothing.output


def test_cli_locked_corpus_is_a_short_message(tmp_path, monkeypatch):
    from keyslice.corpus.lock import corpus_lock

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", KEY)
    (tmp_path / "studies").mkdir()
    with corpus_lock(tmp_path / "corpus"):
        result = _cli("build", "--input", tmp_path / "studies", "--out", tmp_path / "corpus", "--runner", "local")
    assert result.exit_code == 2
    assert "another keyslice build is writing" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3


def test_cli_missing_model_weights_refuse_the_build_once(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    studies, empty_model = tmp_path / "studies", tmp_path / "no-weights"
    add_study(studies, "s1", data_dir)
    empty_model.mkdir()
    result = _cli("build", "--input", studies, "--out", tmp_path / "corpus", "--model", empty_model,
                  "--runner", "local", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "build refused" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "corpus").glob("stages/*/*.json"))


def test_cli_another_key_is_refused_with_what_to_do(fault_build, monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", "another-key")
    result = _cli("build", "--input", fault_build["studies"], "--out", fault_build["out"], "--runner", "local")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "not the key this corpus was built with" in message
    assert "another-key" not in result.output and KEY not in result.output


def test_cli_status_lists_damaged_files(fault_build, tmp_path):
    out = tmp_path / "corpus"
    shutil.copytree(fault_build["out"], out, symlinks=True)
    victim = CheckpointStore(out).table_path("vqa", fault_build["ids"]["good"])
    victim.write_bytes(b"PAR1 not parquet")
    result = _cli("status", "--out", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "damaged files" in text and "checksum mismatch" in text and "table vqa cannot be read" in text


def test_cli_unwritable_corpus_is_a_message_not_a_traceback(tmp_path):
    """/sys refuses new folders even to root: the closest thing to a read-only corpus location here."""
    try:
        os.mkdir("/sys/keyslice-probe")
    except PermissionError:
        pass
    except OSError as exc:  # pragma: no cover - another kind of refusal on this machine
        pytest.skip(f"/sys gives {type(exc).__name__} here, not a permission error")
    else:  # pragma: no cover - a writable /sys
        os.rmdir("/sys/keyslice-probe")
        pytest.skip("/sys is writable on this machine")
    (tmp_path / "studies").mkdir()
    result = _cli("build", "--input", tmp_path / "studies", "--out", "/sys/keyslice-corpus", "--runner", "local")
    assert result.exit_code == 2
    assert "cannot write the corpus" in result.output and "Traceback" not in result.output


# -- report bytes: encodings and what counts as language ------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"])
def test_report_encodings_are_detected(encoding):
    from keyslice.report.reading import decode_report

    text = "FINDINGS: A 3 \u00d7 2 cm lesion. Caf\u00e9-au-lait spots. The spleen is normal.\n"
    assert decode_report(text.encode(encoding)) == text


@pytest.mark.parametrize("text", [
    "Liver: unremarkable. Spleen: unremarkable. Pancreas: unremarkable. Kidneys: unremarkable. " * 5,
    "FINDINGS:\nLiver 12 cm. Spleen 11 cm. CBD 4 mm. LAD: none.\n",
    "\u809d\u810f\u5de6\u53f6\u89c1\u4e00\u4f4e\u5bc6\u5ea6\u7076\u3002",   # Chinese: the segmenter's language check decides
])
def test_real_report_styles_are_language(text):
    from keyslice.report.reading import check_language_like

    check_language_like(text)


def test_a_bit_flip_that_keeps_size_and_time_is_found_by_status_verify(fault_build, tmp_path):
    """Builds check size and time (cheap, every night); `keyslice status --verify` hashes every file."""
    from keyslice.corpus.status import corpus_status

    out = tmp_path / "corpus"
    shutil.copytree(fault_build["out"], out, symlinks=True)
    path = CheckpointStore(out).table_path("findings", fault_build["ids"]["good"])
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert corpus_status(out).damaged == []
    [damage] = corpus_status(out, verify=True).damaged
    assert damage.table == "findings" and "checksum" in damage.problem
    result = _cli("status", "--out", out, "--verify")
    assert "checksum mismatch" in " ".join(result.output.replace("│", " ").split())
