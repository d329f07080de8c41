"""DuckDB over the corpus: one view per table, globbing its Parquet files at query time.

Views are created on demand in an in-memory database, so a query always sees the
corpus as it is now, including studies a running build has just committed. A table
with no files yet is an empty view with the declared schema, so queries never fail
just because a stage has not run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from keyslice.checkpoints import CheckpointStore
from keyslice.schemas import TABLES, table_schema


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(corpus_dir: Path) -> duckdb.DuckDBPyConnection:
    store = CheckpointStore(Path(corpus_dir))
    con = duckdb.connect(database=":memory:")
    for table in TABLES:
        if store.table_files(table):
            pattern = (store.table_dir(table) / "*.parquet").as_posix()
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_sql_literal(pattern)}, "
                        f"union_by_name = true)")
        else:
            empty = table_schema(table).schema.empty_table()
            con.register(f"_empty_{table}", empty)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")
    return con


def query(corpus_dir: Path, sql: str):
    """Run one SQL statement against the corpus views; returns an Arrow table."""
    return connect(corpus_dir).execute(sql).to_arrow_table()
