"""Per-stage, per-study Parquet checkpoints under a corpus directory.

Layout::

    CORPUS/tables/<table>/<study_id>.parquet      rows a stage produced for one study
    CORPUS/tables/failures/<study_id>__<stage>__<stamp>.parquet
    CORPUS/tables/runs/<run_id>.parquet
    CORPUS/stages/<stage>/<study_id>.json         the stage's done-marker, written last
    CORPUS/images/<study_id>/<finding_index>.png  key slices

A stage writes each of its tables atomically and its marker last, so a study's stage
is done exactly when the marker exists. A stage killed half-way leaves at most some
complete table files that the rerun overwrites (same name), never duplicates.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from keyslice.corpus.atomic import write_bytes_atomic, write_parquet_atomic
from keyslice.pipeline.registry import STAGE_TABLES, downstream
from keyslice.corpus.schemas import to_table, utcnow, validate_table
from keyslice.corpus.shards import read_compacted

@dataclass(frozen=True)
class CheckpointStore:
    root: Path

    # -- paths ---------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / "tables" / table

    def table_path(self, table: str, study_id: str) -> Path:
        return self.table_dir(table) / f"{study_id}.parquet"

    def marker_path(self, stage: str, study_id: str) -> Path:
        return self.root / "stages" / stage / f"{study_id}.json"

    def image_path(self, study_id: str, name: str) -> Path:
        return self.root / "images" / study_id / name

    # -- stage state ----------------------------------------------------------
    def is_done(self, stage: str, study_id: str) -> bool:
        return self.marker_path(stage, study_id).exists()

    def done_studies(self, stage: str) -> set[str]:
        folder = self.root / "stages" / stage
        return {p.stem for p in folder.glob("*.json")} if folder.exists() else set()

    def invalidate(self, stage: str, study_id: str) -> None:
        """Forget a stage and all later ones for a study, so they are recomputed."""
        for later in downstream(stage):
            self.marker_path(later, study_id).unlink(missing_ok=True)

    def commit_stage(self, stage: str, study_id: str, tables: Mapping[str, Iterable[Mapping[str, Any]]],
                     run_id: str) -> dict[str, int]:
        """Write every table of a stage for one study, then its done-marker."""
        expected = set(STAGE_TABLES[stage])
        if set(tables) != expected:
            raise ValueError(f"stage {stage!r} must write tables {sorted(expected)}, got {sorted(tables)}")
        built = {name: to_table(name, rows) for name, rows in tables.items()}  # validate all first
        for name, table in built.items():
            write_parquet_atomic(self.table_path(name, study_id), table)
        counts = {name: table.num_rows for name, table in built.items()}
        marker = {"stage": stage, "study_id": study_id, "run_id": run_id,
                  "rows": counts, "finished_at": utcnow().isoformat()}
        write_bytes_atomic(self.marker_path(stage, study_id), json.dumps(marker).encode())
        return counts

    # -- reading ---------------------------------------------------------------
    def read(self, table: str, study_id: str) -> pa.Table:
        """A study's rows of a table: its per-study file, else its rows in a compacted shard.

        The per-study file always wins (see :mod:`keyslice.corpus.compact`), so a stage recomputed
        after compaction is read from its new file, never from the stale compacted rows.
        """
        try:
            return validate_table(table, pq.read_table(self.table_path(table, study_id)))
        except FileNotFoundError:
            rows = read_compacted(self, table, study_id)
            if rows is None:
                raise
            return rows

    def read_rows(self, table: str, study_id: str) -> list[dict[str, Any]]:
        return self.read(table, study_id).to_pylist()

    def table_files(self, table: str) -> list[Path]:
        folder = self.table_dir(table)
        return sorted(folder.glob("*.parquet")) if folder.exists() else []

    # -- append-only tables ------------------------------------------------------
    def record_failure(self, study_id: str, stage: str, error: BaseException, attempt: int,
                       run_id: str, private: Iterable[str] = ()) -> str:
        """Append one failure row; returns the stored message.

        The message is sanitised first (:func:`keyslice.deid.sanitize_message`): error texts quote file
        paths, and a study's folder name is often a patient name or an accession number. ``private``
        names the study's own private strings (its folder path, its source key), which become ``<study>``;
        other paths become ``<path>``, and names, IDs and dates left in the text are masked.
        """
        from keyslice.deid import sanitize_message

        now = utcnow()
        message = sanitize_message(str(error) or repr(error), private)
        row = {"study_id": study_id, "stage": stage, "error_type": type(error).__name__,
               "message": message, "attempt": int(attempt), "run_id": run_id, "failed_at": now}
        name = f"{study_id}__{stage}__{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}.parquet"
        write_parquet_atomic(self.table_dir("failures") / name, to_table("failures", [row]))
        return message

    def record_run(self, row: Mapping[str, Any]) -> None:
        write_parquet_atomic(self.table_path("runs", row["run_id"]), to_table("runs", [row]))

    def write_image(self, study_id: str, name: str, png: bytes) -> str:
        path = self.image_path(study_id, name)
        write_bytes_atomic(path, png)
        return path.relative_to(self.root).as_posix()
