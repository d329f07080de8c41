"""What state a corpus is in: per-stage counts, the studies whose last attempt failed, damaged files
(a table file missing, corrupt or changed since its stage's marker vouched for it), and what the last
build found in its input. It reads stage markers and table files only, so it is safe to call while a
build writes (``keyslice status --watch``)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from keyslice.corpus.checkpoints import CheckpointStore, Damage
from keyslice.corpus.sql import connect
from keyslice.corpus.layout import STAGES, TABLE_STAGE

STATUS_TABLES = (*TABLE_STAGE, "failures")


class StatusUnavailable(RuntimeError):
    """A table file vanished between listing and reading (compaction ran): read again."""


@dataclass(frozen=True)
class CorpusStatus:
    stage_done: dict[str, int]
    table_rows: dict[str, int | None]     # None: the table cannot be read (see table_errors)
    open_failures: list[dict]   # latest failure per (study, stage) whose stage is still not done
    damaged: list[Damage] = field(default_factory=list)
    table_errors: dict[str, str] = field(default_factory=dict)
    last_run_id: str | None = None
    last_run_finished: dt.datetime | None = None
    n_input_folders: int | None = None      # of the last build (null: built before this was recorded)
    skipped_inputs: list[dict] = field(default_factory=list)   # folder_id, reason: last build's input


def corpus_status(corpus_dir: Path, verify: bool = False) -> CorpusStatus:
    """``verify``: hash every file of every done stage (default: only files whose size or time changed)."""
    store = CheckpointStore(Path(corpus_dir))
    try:
        con = connect(corpus_dir)
    except (duckdb.IOException, FileNotFoundError) as exc:
        raise StatusUnavailable(str(exc)) from exc
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
    last: list[dict] = []
    try:
        last = con.sql("SELECT run_id, finished_at, n_input_folders, skipped_inputs FROM runs "
                       "ORDER BY finished_at DESC LIMIT 1").to_arrow_table().to_pylist()
    except duckdb.Error as exc:
        errors["runs"] = str(exc).splitlines()[0]
    con.close()
    open_failures = [f for f in latest
                     if f["stage"] not in STAGES or not store.is_done(f["stage"], f["study_id"])]
    run = last[0] if last else {}
    return CorpusStatus(stage_done, table_rows, open_failures, store.damaged(deep=verify), errors,
                        run.get("run_id"), run.get("finished_at"), run.get("n_input_folders"),
                        list(run.get("skipped_inputs") or []))


def last_build_setting(corpus_dir: Path, name: str) -> Any:
    """A setting of the corpus' newest recorded build (its ``runs`` row's config), or None when no build
    recorded it: what later readers of the corpus (publish, fine-tuning from reviews) fall back on so that
    they see the study folders as the build saw them (e.g. ``masks_dir``)."""
    try:
        con = connect(corpus_dir)
        try:
            rows = con.sql("SELECT config_json FROM runs WHERE config_json IS NOT NULL "
                           "ORDER BY finished_at DESC LIMIT 1").fetchall()
        finally:
            con.close()
    except (duckdb.Error, FileNotFoundError):
        return None
    return json.loads(rows[0][0]).get(name) if rows else None


def watch_line(status: CorpusStatus) -> str:
    """One line of a followed build: studies done per stage, rows, open failures."""
    stages = " ".join(f"{stage} {n}" for stage, n in status.stage_done.items())
    return (f"studies done per stage: {stages}; vqa rows {status.table_rows['vqa']}; "
            f"failed studies {len({f['study_id'] for f in status.open_failures})}")
