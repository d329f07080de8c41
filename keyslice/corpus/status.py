"""What state a corpus is in: per-stage counts, the studies whose last attempt failed, and
damaged files (a table file missing, corrupt or changed since its stage's marker vouched for it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from keyslice.corpus.checkpoints import CheckpointStore, Damage
from keyslice.corpus.sql import connect
from keyslice.pipeline.registry import STAGES

STATUS_TABLES = ("studies", "series", "findings", "assignments", "selections", "vqa", "failures")


@dataclass(frozen=True)
class CorpusStatus:
    stage_done: dict[str, int]
    table_rows: dict[str, int | None]     # None: the table cannot be read (see table_errors)
    open_failures: list[dict]   # latest failure per (study, stage) whose stage is still not done
    damaged: list[Damage] = field(default_factory=list)
    table_errors: dict[str, str] = field(default_factory=dict)


def corpus_status(corpus_dir: Path, verify: bool = False) -> CorpusStatus:
    """``verify``: hash every file of every done stage (default: only files whose size or time changed)."""
    store = CheckpointStore(Path(corpus_dir))
    con = connect(corpus_dir)
    stage_done = {stage: len(store.done_studies(stage)) for stage in STAGES}
    table_rows: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    for t in STATUS_TABLES:
        try:
            table_rows[t] = con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        except duckdb.Error as exc:  # a corrupt file: name it, keep counting the other tables
            table_rows[t] = None
            errors[t] = str(exc).splitlines()[0]
    latest: list[dict] = []
    if "failures" not in errors:
        latest = con.sql(
            "SELECT study_id, stage, error_type, message, attempt, failed_at FROM failures "
            "QUALIFY row_number() OVER (PARTITION BY study_id, stage ORDER BY failed_at DESC) = 1 "
            "ORDER BY study_id, stage"
        ).to_arrow_table().to_pylist()
    con.close()
    open_failures = [f for f in latest
                     if f["stage"] not in STAGES or not store.is_done(f["stage"], f["study_id"])]
    return CorpusStatus(stage_done, table_rows, open_failures, store.damaged(deep=verify), errors)
