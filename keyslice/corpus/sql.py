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

from keyslice.corpus.schemas import TABLES, sql_defaults, sql_literal, table_schema
from keyslice.corpus.shards import APPEND_TABLES, PREFIX
from keyslice.pipeline.registry import TABLE_STAGE


def view_sql(table: str, pattern: str) -> str:
    """``CREATE VIEW`` for one table over the Parquet files matching ``pattern`` (a path or URL glob).

    Stage tables: a compacted row is shown only when its study has no per-study file (the per-study
    file wins). Failures: distinct rows (a kill during compaction may leave one row in two files).
    Other tables: all rows. Correct whether or not the corpus was ever compacted.

    Files of older schema versions read as the newest version: the rows are unioned by name with
    the empty declared table ``_empty_<table>`` (registered by :func:`connect`), so a
    column added later is present even when no file has it, and takes its declared default.
    """
    src = (f"read_parquet({sql_literal(pattern)}, union_by_name = true, filename = '_ks_file')")
    if table in TABLE_STAGE:
        rows = (f"SELECT * EXCLUDE (_ks_file) FROM {src} "
                f"WHERE NOT starts_with(parse_filename(_ks_file), '{PREFIX}') "
                f"OR study_id NOT IN (SELECT parse_filename(file, true) FROM glob({sql_literal(pattern)}))")
    elif table in APPEND_TABLES:
        rows = f"SELECT DISTINCT * FROM read_parquet({sql_literal(pattern)}, union_by_name = true)"
    else:
        rows = f"SELECT * FROM read_parquet({sql_literal(pattern)}, union_by_name = true)"
    defaults = sql_defaults(table)
    columns = ", ".join(f'coalesce("{name}", {defaults[name]}) AS "{name}"' if name in defaults else f'"{name}"'
                        for name in table_schema(table).schema.names)
    return (f"CREATE VIEW {table} AS SELECT {columns} FROM "
            f"(SELECT * FROM _empty_{table} UNION ALL BY NAME {rows})")


def connect(corpus_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """Views over a corpus folder, or a corpus URL (``s3://``, ``gs://``: see :mod:`keyslice.corpus.storage`).

    A compacted corpus reads the same: a study's per-study file wins over its compacted rows
    (:func:`view_sql`), so no row is ever shown twice.
    """
    from keyslice.corpus import storage

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
# question-type distribution. Rule-based "no" answers come only from what the report states (normal
# findings, negated types), so a yes_share far above 0.5 means reports with few normal statements;
# n_no_mask counts the "no" answers that rest on organ masks instead (vqa_mask_negatives, off by default).
VQA_YES_NO_BALANCE = """\
SELECT generator,
       count(*) FILTER (WHERE lower(answer) = 'yes') AS n_yes,
       count(*) FILTER (WHERE lower(answer) = 'no') AS n_no,
       round(n_yes / nullif(n_yes + n_no, 0), 3) AS yes_share,
       count(*) FILTER (WHERE lower(answer) = 'no' AND answer_source = 'mask') AS n_no_mask
FROM vqa WHERE answer_type = 'closed' AND lower(answer) IN ('yes', 'no')
GROUP BY generator ORDER BY generator"""

VQA_QUESTION_TYPES = """\
SELECT generator, question_type, answer_type, count(*) AS n,
       round(100.0 * n / sum(n) OVER (PARTITION BY generator), 1) AS pct
FROM vqa GROUP BY generator, question_type, answer_type ORDER BY generator, n DESC"""


def __getattr__(name: str):
    """``VQA_CONTRADICTIONS``: the answers that contradict their finding (0 rows expected), defined with
    its rules in :mod:`keyslice.vqa.consistency` (``keyslice check`` runs it); loaded on first use."""
    if name == "VQA_CONTRADICTIONS":
        from keyslice.vqa.consistency import VQA_CONTRADICTIONS

        return VQA_CONTRADICTIONS
    raise AttributeError(name)
