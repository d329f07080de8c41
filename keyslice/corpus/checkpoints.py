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

A marker records what it vouches for: per table the file name, its row count and the
SHA-256 of its bytes. :meth:`CheckpointStore.verify` compares them with the disk, so a
deleted, truncated or corrupt file is found (``keyslice status`` lists it, and the next
build recomputes the study from the earliest damaged stage) instead of silently losing rows.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from keyslice.corpus.atomic import write_bytes_atomic, write_parquet_atomic
from keyslice.corpus.layout import STAGE_TABLES, STAGES, downstream
from keyslice.corpus.schemas import to_table, utcnow, validate_table
from keyslice.corpus.shards import read_compacted, shard_count


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Damage:
    """A done stage whose files no longer match its marker."""

    study_id: str
    stage: str
    table: str
    file: str      # relative to the corpus root
    problem: str   # missing | unreadable: ... | checksum mismatch | N rows, marker says M

    def __str__(self) -> str:
        return f"{self.file}: {self.problem} (stage {self.stage!r} of study {self.study_id} is recomputed by the next build)"

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
        files = {}
        for name, table in built.items():
            path = self.table_path(name, study_id)
            write_parquet_atomic(path, table)
            st = path.stat()
            files[name] = {"file": path.name, "rows": table.num_rows, "sha256": file_sha256(path),
                           "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        counts = {name: table.num_rows for name, table in built.items()}
        marker = {"stage": stage, "study_id": study_id, "run_id": run_id,
                  "rows": counts, "files": files, "finished_at": utcnow().isoformat()}
        write_bytes_atomic(self.marker_path(stage, study_id), json.dumps(marker).encode())
        return counts

    # -- damage -----------------------------------------------------------------
    def verify(self, stage: str, study_id: str, deep: bool = False) -> list[Damage]:
        """What is wrong with a done stage's files (empty when intact or not done).

        Per table of the marker: the per-study file must exist, hash to the recorded SHA-256 and
        hold the recorded rows. A file whose size and modification time are those recorded is
        taken as intact without reading it, unless ``deep`` (``keyslice status --verify``): every
        build checks every done study, and hashing a large corpus each night would cost more
        than the build. After compaction a per-study file is legitimately gone (its rows live in
        a shard); markers written before checksums were recorded are checked for presence,
        readability and row count only.
        """
        try:
            marker = json.loads(self.marker_path(stage, study_id).read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            return [Damage(study_id, stage, "-", self._rel(self.marker_path(stage, study_id)),
                           f"unreadable marker: {type(exc).__name__}")]
        files = marker.get("files") or {t: {"file": f"{study_id}.parquet", "rows": n}
                                         for t, n in (marker.get("rows") or {}).items()}
        damage = []
        for table, want in files.items():
            path = self.table_dir(table) / want["file"]
            rel = self._rel(path)
            if not path.exists():
                if shard_count(self) is None:
                    damage.append(Damage(study_id, stage, table, rel, "missing"))
                continue
            if want.get("sha256"):
                st = path.stat()
                if not deep and (st.st_size, st.st_mtime_ns) == (want.get("bytes"), want.get("mtime_ns")):
                    continue
                if file_sha256(path) != want["sha256"]:
                    damage.append(Damage(study_id, stage, table, rel, "checksum mismatch (changed or corrupt)"))
                continue
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception as exc:  # noqa: BLE001 - any reader error means the file is damaged
                damage.append(Damage(study_id, stage, table, rel, f"unreadable: {type(exc).__name__}"))
                continue
            if want.get("rows") is not None and rows != want["rows"]:
                damage.append(Damage(study_id, stage, table, rel, f"{rows} rows, marker says {want['rows']}"))
        return damage

    def damaged(self, study_ids: Iterable[str] | None = None, deep: bool = False) -> list[Damage]:
        """Every damaged file of every done stage (of ``study_ids``, default all studies with a marker)."""
        if study_ids is None:
            study_ids = sorted(set().union(*(self.done_studies(s) for s in STAGES)))
        return [d for sid in study_ids for stage in STAGES for d in self.verify(stage, sid, deep)]

    def quarantine(self, damage: Damage) -> Path | None:
        """Move a damaged table file out of the views to ``CORPUS/damaged/`` (kept for inspection)."""
        path = self.root / damage.file
        if damage.table == "-" or not path.exists():
            return None
        dest = self.root / "damaged" / damage.table / f"{path.name}.{utcnow().strftime('%Y%m%dT%H%M%S%f')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.replace(dest)
        return dest

    def repair(self, study_id: str) -> list[Damage]:
        """Forget the earliest damaged stage of a study and every later one, so the build redoes them,
        and move the damaged files aside. Returns what was found (empty: nothing to do)."""
        for stage in STAGES:
            found = self.verify(stage, study_id)
            if found:
                self.invalidate(stage, study_id)
                for damage in found:
                    self.quarantine(damage)
                return found
        return []

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

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
