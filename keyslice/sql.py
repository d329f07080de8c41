"""DuckDB over the corpus: one view per table, globbing its Parquet files at query time.

Views are created on demand in an in-memory database, so a query always sees the
corpus as it is now, including studies a running build has just committed. A table
with no files yet is an empty view with the declared schema, so queries never fail
just because a stage has not run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from keyslice.schemas import TABLES, table_schema


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(corpus_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """Views over a corpus folder, or a corpus URL (``s3://``, ``gs://``: see :mod:`keyslice.storage`).

    A compacted corpus reads the same: a study's per-study file wins over its compacted rows
    (:func:`keyslice.compact.view_sql`), so no row is ever shown twice.
    """
    from keyslice import storage
    from keyslice.compact import view_sql

    root = storage.normalize(corpus_dir)
    con = duckdb.connect(database=":memory:")
    storage.prepare_duckdb(con, root)
    for table in TABLES:
        pattern = storage.table_pattern(root, table)
        con.register(f"_empty_{table}", table_schema(table).schema.empty_table())
        if storage.has_files(con, pattern):
            con.execute(view_sql(table, pattern))
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")
    from keyslice.review.metrics import create_views

    create_views(con)  # review_judgements, review_acceptance_by_* (see keyslice.review.metrics)
    return con


def query(corpus_dir: Path, sql: str):
    """Run one SQL statement against the corpus views; returns an Arrow table."""
    relation = connect(corpus_dir).sql(sql)
    return relation.to_arrow_table() if relation is not None else pa.table({})


# Documented corpus reports (README, `keyslice demo`): closed yes/no balance per generator, and the
# question-type distribution. Rule-based questions use normal findings and other organs of the same slice
# as "no" answers, so a yes_share far from 0.5 points at a generator or lexicon problem.
VQA_YES_NO_BALANCE = """\
SELECT generator,
       count(*) FILTER (WHERE lower(answer) = 'yes') AS n_yes,
       count(*) FILTER (WHERE lower(answer) = 'no') AS n_no,
       round(n_yes / nullif(n_yes + n_no, 0), 3) AS yes_share
FROM vqa WHERE answer_type = 'closed' AND lower(answer) IN ('yes', 'no')
GROUP BY generator ORDER BY generator"""

VQA_QUESTION_TYPES = """\
SELECT generator, question_type, answer_type, count(*) AS n,
       round(100.0 * n / sum(n) OVER (PARTITION BY generator), 1) AS pct
FROM vqa GROUP BY generator, question_type, answer_type ORDER BY generator, n DESC"""
