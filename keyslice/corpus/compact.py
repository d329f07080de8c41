"""Compaction: pack per-study checkpoint files into a few large Parquet files, losing no row.

A large corpus holds one small Parquet file per study and table (plus one per failed
attempt). ``keyslice compact`` packs them into a fixed number of *shards* per table::

    CORPUS/tables/<table>/compacted-<k>-of-<n>.parquet     k = hash(study_id) mod n
    CORPUS/.keyslice/compaction.json                       {"shards": n}, fixed at the first compaction

Design (every step is safe against ``kill -9`` and never shows a row twice):

* **A study lives in exactly one shard per table**, chosen by a hash of its id; a shard is
  rewritten as a whole (streamed, rows sorted by ``study_id``) to a temporary file and renamed
  over the old one, so it changes atomically.
* **The per-study file wins.** Readers take a study's rows from ``<study_id>.parquet`` when it
  exists and from its shard only otherwise: :meth:`CheckpointStore.read` does so, and the DuckDB
  views (:func:`keyslice.corpus.sql.view_sql`) drop the compacted rows of every study that has a per-study file.
  Hence recomputing (``--force-stage``) or rerunning a stage of a compacted study simply writes
  its per-study file as before; its old compacted rows become invisible at that instant, and
  the next compaction drops them from the shard (they are *dead*).
* Stage done-markers stay per study (``stages/<stage>/<study_id>.json``) and are never compacted.
  Only files of studies whose stage is done are absorbed; a half-written stage (killed build)
  keeps its per-study files, which the rerun overwrites.
* Order: new shard renamed into place first, absorbed per-study files deleted after. A kill in
  between leaves a study both in its file and its shard: the file wins (same rows), and the next
  compaction absorbs it again, replacing the shard's copy.
* ``failures`` (one file per failed attempt) is append-only: its files are packed into shards by
  file name, and a repeated absorption (after a kill between rename and delete) is de-duplicated
  row by row; its view reads ``SELECT DISTINCT`` so the kill window shows no duplicate either.
  ``runs`` (one small file per build) is left as it is.
* Compaction holds the corpus lock: it never runs beside a build of the same corpus.

Memory stays bounded: shards are streamed in row groups and per-study files are read one at a
time; nothing holds a whole table.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from keyslice.corpus.atomic import fsync_dir, tmp_name
from keyslice.corpus.layout import TABLE_STAGE
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.schemas import table_schema, validate_table
from keyslice.corpus.shards import APPEND_TABLES, SETTINGS_FILE, is_compacted, shard_count, shard_name, shard_of

DEFAULT_SHARDS = 16
ROW_GROUP_ROWS = 8192           # small row groups: reading one study from a shard decodes little
COMPACTABLE: tuple[str, ...] = tuple(TABLE_STAGE) + APPEND_TABLES


# -- compaction -------------------------------------------------------------------------------------
@dataclass
class TableCompaction:
    table: str
    files_absorbed: int = 0
    rows_absorbed: int = 0
    dead_rows_dropped: int = 0
    duplicate_rows_dropped: int = 0
    shards_written: list[str] = field(default_factory=list)
    files_left: int = 0            # per-study files kept (their stage is not done)


class _ShardWriter:
    """Buffers small tables into row groups of ``ROW_GROUP_ROWS`` and writes a temporary file."""

    def __init__(self, table: str, final: Path):
        self.schema = table_schema(table).schema
        self.final = final
        self.tmp = tmp_name(final)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.rows = 0

    def write(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        self.pending.append(table.replace_schema_metadata(self.schema.metadata))
        self.n_pending += table.num_rows
        self.rows += table.num_rows
        if self.n_pending >= ROW_GROUP_ROWS:
            self._flush()
        return table.num_rows

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=ROW_GROUP_ROWS)
        self.pending, self.n_pending = [], 0

    def commit(self) -> None:
        """Close, fsync, and rename over the final name (or remove the shard if it holds no row)."""
        self._flush()
        self.writer.close()
        if self.rows == 0:
            self.tmp.unlink(missing_ok=True)
            self.final.unlink(missing_ok=True)
        else:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _old_batches(table: str, path: Path) -> Iterator[pa.Table]:
    if not path.exists():
        return
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        yield validate_table(table, pf.read_row_group(i))


def _read_study_file(table: str, path: Path) -> pa.Table:
    return validate_table(table, pq.read_table(path))


def _shard_study_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["study_id"]).column("study_id").to_pylist())


def _merge_stage_shard(table: str, path: Path, dead: set[str], new: dict[str, Path],
                       report: TableCompaction) -> None:
    """Rewrite one shard: old rows minus dead studies, plus the new studies' files, sorted by study."""
    writer = _ShardWriter(table, path)
    try:
        queue = sorted(new)
        j = 0
        dead_arr = pa.array(sorted(dead), pa.string())
        for chunk in _old_batches(table, path):
            keep = pc.invert(pc.is_in(chunk.column("study_id"), value_set=dead_arr))
            kept = chunk.filter(keep)
            report.dead_rows_dropped += chunk.num_rows - kept.num_rows
            ids = kept.column("study_id").to_pylist()
            start = 0
            # old rows are sorted by study; interleave the new studies at their place
            for pos, sid in enumerate(ids):
                while j < len(queue) and queue[j] < sid:
                    writer.write(kept.slice(start, pos - start))
                    start = pos
                    report.rows_absorbed += writer.write(_read_study_file(table, new[queue[j]]))
                    j += 1
            writer.write(kept.slice(start))
        for sid in queue[j:]:
            report.rows_absorbed += writer.write(_read_study_file(table, new[sid]))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    report.shards_written.append(path.name)


def _row_keys(table: pa.Table) -> list[str]:
    return [json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist()]


def _merge_append_shard(table: str, path: Path, new: list[Path], report: TableCompaction) -> None:
    writer = _ShardWriter(table, path)
    try:
        seen: set[str] = set()
        for chunk in _old_batches(table, path):
            seen.update(_row_keys(chunk))
            writer.write(chunk)
        for file in sorted(new):
            rows = _read_study_file(table, file)
            keys = _row_keys(rows)
            fresh = [i for i, k in enumerate(keys) if k not in seen]
            seen.update(keys)
            report.duplicate_rows_dropped += rows.num_rows - len(fresh)
            report.rows_absorbed += len(fresh)
            writer.write(rows.take(pa.array(fresh, pa.int64())) if len(fresh) < rows.num_rows else rows)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    report.shards_written.append(path.name)


def _delete(files: Iterable[Path]) -> None:
    folders = set()
    for f in files:
        f.unlink(missing_ok=True)
        folders.add(f.parent)
    for folder in folders:
        fsync_dir(folder)


def compact_table(store: CheckpointStore, table: str, n_shards: int) -> TableCompaction:
    """Compact one table (the caller holds the corpus lock)."""
    report = TableCompaction(table)
    folder = store.table_dir(table)
    if not folder.exists():
        return report
    singles = {p.stem: p for p in folder.glob("*.parquet") if not is_compacted(p)}
    if table in APPEND_TABLES:
        by_shard: dict[int, list[Path]] = defaultdict(list)
        for stem, p in singles.items():
            by_shard[shard_of(stem, n_shards)].append(p)
        for k, files in sorted(by_shard.items()):
            _merge_append_shard(table, folder / shard_name(k, n_shards), files, report)
        _delete(singles.values())
        report.files_absorbed = len(singles)
        return report

    stage = TABLE_STAGE[table]
    absorb = {sid: p for sid, p in singles.items() if store.is_done(stage, sid)}
    report.files_left = len(singles) - len(absorb)
    dead: dict[int, set[str]] = defaultdict(set)     # every per-study file supersedes its shard rows
    new: dict[int, dict[str, Path]] = defaultdict(dict)
    for sid in singles:
        dead[shard_of(sid, n_shards)].add(sid)
    for sid, p in absorb.items():
        new[shard_of(sid, n_shards)][sid] = p
    for k in sorted(dead):
        path = folder / shard_name(k, n_shards)
        if not new[k] and not (dead[k] & _shard_study_ids(path)):
            continue  # nothing to add and nothing dead in this shard: leave it untouched
        _merge_stage_shard(table, path, dead[k], new[k], report)
    _delete(absorb.values())
    report.files_absorbed = len(absorb)
    return report


def _settle_shard_count(store: CheckpointStore, requested: int | None) -> int:
    existing = shard_count(store)
    if existing is not None:
        if requested is not None and requested != existing:
            raise ValueError(f"this corpus is compacted into {existing} shards per table; "
                             f"--shards {requested} would move studies between shards (not supported)")
        return existing
    n = requested or DEFAULT_SHARDS
    if not 1 <= n <= 999:
        raise ValueError("shards must be between 1 and 999")
    from keyslice.corpus.atomic import write_bytes_atomic

    write_bytes_atomic(store.root / SETTINGS_FILE, json.dumps({"shards": n}).encode())
    return n


def compact_corpus(corpus_dir: Path, shards: int | None = None,
                   tables: Iterable[str] | None = None) -> dict[str, TableCompaction]:
    """Compact every compactable table of a corpus; refuses to run while a build holds the corpus."""
    from keyslice.corpus.lock import corpus_lock, sweep_temporaries

    corpus_dir = Path(corpus_dir)
    if not (corpus_dir / "tables").is_dir():
        raise FileNotFoundError(f"{corpus_dir} holds no corpus (no tables/ folder)")
    store = CheckpointStore(corpus_dir)
    chosen = tuple(tables) if tables else COMPACTABLE
    unknown = set(chosen) - set(COMPACTABLE)
    if unknown:
        raise ValueError(f"cannot compact {sorted(unknown)}; compactable tables: {', '.join(COMPACTABLE)}")
    with corpus_lock(corpus_dir):
        sweep_temporaries(corpus_dir)
        n = _settle_shard_count(store, shards)
        return {t: compact_table(store, t, n) for t in chosen}
