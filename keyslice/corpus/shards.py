"""Where compacted rows live: shard names, the corpus' shard count, and reading one study back.

Shared by the checkpoint store (a study's rows after compaction), the DuckDB views and
compaction itself (:mod:`keyslice.corpus.compact`, which explains the design).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from keyslice.corpus.schemas import table_schema, validate_table
from keyslice.corpus.layout import TABLE_STAGE

if TYPE_CHECKING:
    from keyslice.corpus.checkpoints import CheckpointStore

PREFIX = "compacted-"
SETTINGS_FILE = Path(".keyslice") / "compaction.json"
APPEND_TABLES: tuple[str, ...] = ("failures",)


# -- naming -------------------------------------------------------------------------------------
def is_compacted(path: Path | str) -> bool:
    return Path(path).name.startswith(PREFIX)


def shard_of(key: str, n_shards: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % n_shards


def shard_name(k: int, n_shards: int) -> str:
    return f"{PREFIX}{k:03d}-of-{n_shards:03d}.parquet"


def shard_count(store: "CheckpointStore") -> int | None:
    """The corpus' shard count, or None when it has never been compacted."""
    path = store.root / SETTINGS_FILE
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["shards"])


def compacted_files(store: "CheckpointStore", table: str) -> list[Path]:
    folder = store.table_dir(table)
    return sorted(folder.glob(f"{PREFIX}*.parquet")) if folder.exists() else []


# -- reading a compacted study ---------------------------------------------------------------------
def read_compacted(store: "CheckpointStore", table: str, study_id: str) -> pa.Table | None:
    """The rows of ``study_id`` in its shard of ``table``; None when the study was never compacted.

    A study whose stage is done but has no row in its shard had zero rows in that table: an
    empty table is returned, exactly as its (empty) per-study file gave before compaction.
    """
    n = shard_count(store)
    if n is None:
        return None
    path = store.table_dir(table) / shard_name(shard_of(study_id, n), n)
    if not path.exists():
        rows = None
    else:
        rows = validate_table(table, pq.read_table(path, filters=[("study_id", "==", study_id)]))
    if rows is not None and rows.num_rows:
        return rows
    stage = TABLE_STAGE.get(table)
    if stage is not None and store.is_done(stage, study_id):
        return table_schema(table).schema.empty_table()
    return None
