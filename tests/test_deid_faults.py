"""Fault suite for PHI at ingestion: studies whose folder names and reports carry (SYNTHETIC) PHI, built next to
clean studies of REAL DICOM.

Each case asserts: a clear error is recorded for that study (or none, when nothing is wrong but the PHI), the
other studies complete, nothing is lost or duplicated (a rerun changes no row and every key is unique), no
PHI reaches any table, and none is printed or logged. The end-to-end test runs the real Prefect build flow on
the sample studies plus a PHI study, through the shared test utilities.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.deid import scan_text

#: SYNTHETIC PHI: invented for these tests.
PHI_REPORT = """FINDINGS:
Dr. Jonathan Whitfield reviewed the CT of Jane Doe (MRN 00482913) on March 3rd, 2021.
A 2 cm hypodense lesion in the liver, unchanged since 03/04/21.
The 92-year-old patient, reachable at 617-555-0199 or jane.doe@example.org, lives at 123 Main Street.
No splenic abnormality.

IMPRESSION:
Hepatic cyst; discussed with Whitfield, Jonathan by phone.
"""
PHI_FOLDER = "Smith John MRN00482913"
#: every PHI value of the folder names and reports above, as it must never be found (case-sensitive words)
PHI_VALUES = ("Smith", "John", "00482913", "Jonathan", "Whitfield", "Jane", "Doe", "March 3rd", "2021",
              "03/04/21", "617-555-0199", "jane.doe", "Main Street", "92-year-old", "19480211", "55120987",
              "Eleanor", "Vance")
CLEAN_REPORT = "FINDINGS:\nA 2 cm hypodense lesion in the liver.\nNo splenic abnormality.\n"


def _phi_in(text: str) -> list[str]:
    return [v for v in PHI_VALUES if re.search(rf"(?<![\w]){re.escape(v)}(?![\w])", text)]


def _study(root: Path, name: str, report: str | None, dicom: Path | None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    if report is not None:
        (folder / "report.txt").write_text(report)
    if dicom is not None:
        (folder / "dicom").symlink_to(dicom, target_is_directory=True)


def _inputs(kind: str, root: Path, data_dir: Path) -> tuple[Path, str | None]:
    """(input folder, source key of the study that must fail or None) for one fault case."""
    dicom = (data_dir / "dcmqi_ct3slice" / "ct-3slice").resolve()
    inp = root / "in"
    _study(inp, "case_a", CLEAN_REPORT, dicom)
    _study(inp, "case_b", CLEAN_REPORT, dicom)
    if kind == "phi_report_ok":       # PHI in the folder name and the report; nothing else wrong
        _study(inp, PHI_FOLDER, PHI_REPORT, dicom)
        return inp, None
    if kind == "phi_no_dicom":        # PHI in the folder name and report, and no DICOM: step 2 fails
        _study(inp, "Doe Jane 19480211", PHI_REPORT, None)
        return inp, "Doe Jane 19480211"
    if kind == "phi_missing_folder":  # a manifest lists a folder that is not there: its path is in the error
        with (inp / "manifest.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["study", "report"])
            writer.writerow(["case_a", CLEAN_REPORT])
            writer.writerow(["case_b", CLEAN_REPORT])
            writer.writerow(["Whitfield Jonathan ACC55120987", PHI_REPORT + "Mrs. Eleanor Vance, next of kin.\n"])
        return inp, "Whitfield Jonathan ACC55120987"
    raise ValueError(kind)


def _all_rows(root: Path) -> dict[str, list[dict]]:
    from keyslice.corpus.schemas import TABLES

    store = CheckpointStore(root)
    out = {}
    for table in TABLES:
        rows = []
        for path in store.table_files(table):
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
        out[table] = rows
    return out


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _content(rows: dict[str, list[dict]]) -> dict[str, list[str]]:
    volatile = {"created_at", "run_id", "failed_at", "finished_at", "started_at", "config_json"}
    return {t: sorted(json.dumps({k: v for k, v in r.items() if k not in volatile}, sort_keys=True, default=str)
                      for r in rs) for t, rs in rows.items() if t not in ("failures", "runs")}


def _build(inp: Path, out: Path, model: Path):
    from keyslice.config import BuildConfig
    from keyslice.pipeline.context import make_context
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import discover_studies

    ctx = make_context(BuildConfig(input_dir=inp, out_dir=out, model=str(model), max_workers=1))
    studies = discover_studies(inp, ctx.pseudonymize)
    outcomes = {s.source_key: process_study(s, ctx) for s in studies}
    return ctx, studies, outcomes


@pytest.mark.parametrize("kind", ["phi_report_ok", "phi_no_dicom", "phi_missing_folder"])
def test_phi_fault_cases(kind, tmp_path, data_dir, tiny_model_dir, monkeypatch, capsys, caplog):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", "deid-fault-suite-key")
    caplog.set_level(logging.DEBUG)
    inp, failing = _inputs(kind, tmp_path, data_dir)
    out = tmp_path / "corpus"
    ctx, studies, outcomes = _build(inp, out, tiny_model_dir)
    by_key = {s.source_key: s for s in studies}
    assert len(studies) == 3

    # the other studies complete; the failing one has one clear error, at step 2, without PHI or paths
    for key, outs in outcomes.items():
        if key == failing:
            assert [o.status for o in outs] == ["done", "failed", "blocked", "blocked"], outs
        else:
            assert [o.status for o in outs] == ["done"] * 4, outs
    rows = _all_rows(out)
    failures = rows["failures"]
    if failing is None:
        assert failures == []
    else:
        (failure,) = failures
        assert failure["study_id"] == by_key[failing].study_id and failure["stage"] == "series"
        assert failure["error_type"] in {"DicomReadError", "NoUsableSeriesError"}
        assert failure["message"] and _phi_in(failure["message"]) == [], failure["message"]
        assert str(tmp_path) not in failure["message"]
        failed_outcome = next(o for o in outcomes[failing] if o.status == "failed")
        assert _phi_in(failed_outcome.message) == [] and str(tmp_path) not in failed_outcome.message

    # no PHI in any table; the report text is de-identified and its masks are counted
    for table, table_rows in rows.items():
        for row in table_rows:
            for text in _strings(row):
                assert _phi_in(text) == [], (table, text)
    phi_sid = by_key[failing or PHI_FOLDER].study_id
    findings = [r for r in rows["findings"] if r["study_id"] == phi_sid]
    assert findings and all(scan_text(r["text"]) == [] for r in rows["findings"])
    assert any("[NAME]" in r["text"] for r in findings)
    counts = findings[0]["report_phi_masked"]
    assert counts["name"] >= 3 and counts["date"] >= 2 and counts["id"] >= 1 and counts["contact"] >= 2
    assert counts["address"] >= 1 and counts["age"] >= 1
    assert {r["deid_version"] for r in rows["findings"]} == {"deid-rules.v1"}

    # nothing lost or duplicated: keys unique, and a rerun (resume) changes no content row
    for table, key in (("findings", "finding_id"), ("vqa", "qa_id"), ("selections", "finding_id"),
                       ("studies", "study_id")):
        keys = [r[key] for r in rows[table]]
        assert len(keys) == len(set(keys)), table
    before = _content(rows)
    _, _, again = _build(inp, out, tiny_model_dir)
    after_rows = _all_rows(out)
    assert _content(after_rows) == before
    for key, outs in again.items():
        expected = ["skipped", "failed", "blocked", "blocked"] if key == failing else ["skipped"] * 4
        assert [o.status for o in outs] == expected
    assert len(after_rows["failures"]) == (2 if failing else 0)  # the retry is a new attempt, not a duplicate
    assert all(_phi_in(f["message"]) == [] for f in after_rows["failures"])

    # nothing printed or logged carries PHI
    captured = capsys.readouterr()
    printed = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert _phi_in(printed) == [], _phi_in(printed)
    # and no file of the corpus names the study folder
    for path in out.rglob("*"):
        assert "Smith" not in path.name and "Whitfield" not in path.name and "Doe" not in path.name


@pytest.mark.slow
def test_prefect_build_of_a_phi_study_leaves_no_phi_in_any_table(tmp_path, sample_studies, tiny_model_dir,
                                                                  prefect_harness, monkeypatch, capfd):
    """The real build flow (tests/corpus_utils.py configuration) on the sample studies plus a study whose
    folder name and report carry SYNTHETIC PHI: the build completes, and no table holds any of it."""
    import shutil

    from flows.build import run_build
    from tests.corpus_utils import BUILD_KEY, build_config

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    inp = tmp_path / "studies"
    shutil.copytree(sample_studies, inp, symlinks=True)
    phi = inp / PHI_FOLDER
    phi.mkdir()
    (phi / "report.txt").write_text(PHI_REPORT)
    (phi / "dicom").symlink_to((inp / "colonography_ge_3slice" / "dicom").resolve(), target_is_directory=True)
    out = tmp_path / "corpus"
    result = run_build(build_config(inp, out, tiny_model_dir))
    assert result["n_studies"] == 5 and result["n_failed"] == 0
    rows = _all_rows(out)
    assert rows["findings"] and rows["vqa"]
    for table, table_rows in rows.items():
        for row in table_rows:
            for text in _strings(row):
                assert _phi_in(text) == [], (table, text)
    masked = [r for r in rows["findings"] if r["report_phi_masked"] and r["report_phi_masked"]["name"]]
    assert masked and {r["study_id"] for r in masked} == {masked[0]["study_id"]}
    printed = capfd.readouterr()
    assert _phi_in(printed.out + printed.err) == []
