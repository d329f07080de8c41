"""Building small corpora of real DICOM with one faulty study beside good ones (fault-suite tests only).

Every study links the real 3-slice GE CT of ``dcmqi_ct3slice`` (never copied); the faults are made
in the temporary study folders: links, pipes, bytes of a report, manifest rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyslice.corpus.sql import query

REPORT = ("FINDINGS:\nThe liver has a 3 cm hypodense lesion in the right lobe.\n"
          "The spleen is normal in size.\n\nIMPRESSION:\nLiver lesion, likely a cyst.\n")
KEY = "fault-suite-key-not-a-secret"


def ct_series(data_dir: Path) -> Path:
    return (data_dir / "dcmqi_ct3slice" / "ct-3slice").resolve()


def add_study(root: Path, name: str, data_dir: Path, report: str | bytes | None = REPORT) -> Path:
    """A study folder: ``report.txt`` (text or raw bytes; None for none) and a link to the real series."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dicom").symlink_to(ct_series(data_dir), target_is_directory=True)
    if isinstance(report, bytes):
        (folder / "report.txt").write_bytes(report)
    elif report is not None:
        (folder / "report.txt").write_text(report)
    return folder


def build(studies: Path, out: Path, model: Path, **settings) -> dict:
    """``keyslice.build`` without Prefect, one study after the other (fast, deterministic)."""
    from keyslice.pipeline.api import build as build_corpus

    return build_corpus(studies, out, model=str(model), runner="sequential", device="cpu", retries=0, **settings)


def complete_studies(out: Path) -> set[str]:
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.pipeline.registry import STAGES

    store = CheckpointStore(out)
    return set.intersection(*(store.done_studies(s) for s in STAGES))


def failures(out: Path) -> list[dict]:
    return query(out, "select study_id, stage, error_type, message from failures order by failed_at").to_pylist()


def duplicate_keys(out: Path) -> dict[str, int]:
    keys = {"studies": "study_id", "series": "study_id, series_id", "findings": "finding_id", "assignments": "finding_id",
            "selections": "finding_id, series_id", "vqa": "qa_id"}
    found = {}
    for table, key in keys.items():
        n = query(out, f"select count(*) as n from (select {key} from {table} group by {key} "
                       "having count(*) > 1)").to_pylist()[0]["n"]
        if n:
            found[table] = n
    return found


def corpus_text(out: Path) -> str:
    """Every row of every table as text, for "no secret or folder name was recorded" checks."""
    tables = ("studies", "series", "findings", "assignments", "selections", "vqa", "failures", "runs")
    return "\n".join(json.dumps(r, default=str) for t in tables for r in query(out, f"select * from {t}").to_pylist())


def assert_clean(out: Path, secrets: tuple[str, ...] = ()) -> None:
    """Nothing duplicated, no temporary file left, no secret (key, study folder name) in any table."""
    assert duplicate_keys(out) == {}
    assert not [p for p in out.rglob("*.tmp")]
    text = corpus_text(out)
    for secret in (KEY, *secrets):
        assert secret not in text, secret


def env_with_key() -> dict[str, str]:
    return {**os.environ, "KEYSLICE_PSEUDONYM_KEY": KEY}
