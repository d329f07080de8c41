"""DuckDB over the corpus: one view per table, globbing its Parquet files at query time.

Views are created on demand in an in-memory database, so a query always sees the
corpus as it is now, including studies a running build has just committed. A table
with no files yet is an empty view with the declared schema, so queries never fail
just because a stage has not run.

The connection is read-only over the corpus tables (:func:`lock_down`): once the views exist,
DuckDB may open files only under ``CORPUS/tables/`` (``allowed_directories`` with
``enable_external_access = false``), extensions can no longer be installed or loaded, the
configuration is locked, and :func:`query` runs only ``SELECT`` statements. So ``keyslice sql``
cannot read the pseudonym key or any file outside the corpus tables, write files (``COPY``),
attach databases or change these settings.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from keyslice.corpus.schemas import TABLES, sql_defaults, sql_literal, table_schema
from keyslice.errors import KeysliceError
from keyslice.corpus.shards import APPEND_TABLES, PREFIX
from keyslice.corpus.layout import TABLE_STAGE
from keyslice.corpus.views import create_views


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


class QueryRefusedError(KeysliceError):
    """A ``keyslice sql`` statement that is not a read-only query over the corpus views."""


#: statement types :func:`query` runs: reading the views (``SELECT``, ``WITH``, ``DESCRIBE``,
#: ``SUMMARIZE``, ``SHOW`` all parse as SELECT) and explaining such a query
READ_ONLY_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def lock_down(con: duckdb.DuckDBPyConnection, root: Path | str) -> None:
    """Let ``con`` touch no file but those under ``root/tables/``, and lock its configuration.

    Called after the views are created (and after :func:`keyslice.corpus.storage.prepare_duckdb`
    loaded what a remote corpus needs): the views glob their files at query time, inside the
    allowed folder; ``read_text('CORPUS/.keyslice/pseudonym.key')``, ``read_csv('/etc/...')``,
    ``ATTACH``, ``INSTALL``/``LOAD`` and ``SET`` of these options fail with a permission error.
    """
    from keyslice.corpus import storage

    tables = storage.join(root, "tables") + "/"
    allowed = [tables]
    if storage.is_url(tables):  # fsspec filesystems report their files as scheme:///path
        allowed.append(tables.replace("://", ":///", 1))
    con.execute(f"SET allowed_directories = [{', '.join(sql_literal(a) for a in allowed)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def connect(corpus_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """Views over a corpus folder, or a corpus URL (``s3://``, ``gs://``: see :mod:`keyslice.corpus.storage`).

    A compacted corpus reads the same: a study's per-study file wins over its compacted rows
    (:func:`view_sql`), so no row is ever shown twice. The connection is locked down
    (:func:`lock_down`): it reads the corpus tables and nothing else.
    """
    from keyslice.corpus import storage

    root = storage.normalize(corpus_dir)
    if isinstance(root, Path):
        root = root.resolve()  # the allowed folder and the view globs must name the same absolute path
    con = duckdb.connect(database=":memory:")
    storage.prepare_duckdb(con, root)
    for table in TABLES:
        pattern = storage.table_pattern(root, table)
        con.register(f"_empty_{table}", table_schema(table).schema.empty_table())
        if storage.has_files(con, pattern):
            try:
                con.execute(view_sql(table, pattern))
            except duckdb.Error as exc:  # a corrupt file: this table names it, the others still answer
                reason = str(exc).splitlines()[0]
                message = sql_literal(f"table {table} cannot be read: {reason}; `keyslice status` lists damaged "
                                      "files and the next `keyslice build` recomputes them")
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table} UNION ALL "
                            f"SELECT * FROM _empty_{table} WHERE (SELECT error({message})) IS NULL")
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")
    create_views(con)  # review_judgements, review_acceptance_by_* (see keyslice.corpus.views)
    lock_down(con, root)
    return con


def check_read_only(sql: str) -> None:
    """Refuse anything but one read-only query (``COPY``, ``ATTACH``, ``INSTALL``, ``SET``, ``CREATE``...)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return  # a syntax error: DuckDB itself reports it when the query runs
    if len(statements) != 1:
        raise QueryRefusedError(f"one SQL statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind not in READ_ONLY_STATEMENTS:
        raise QueryRefusedError(f"{kind.name} statements are not allowed: keyslice sql is read-only over the "
                                "corpus views (SELECT, WITH, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN); to export, use "
                                "--format csv/json/parquet with --output")


def query(corpus_dir: Path, sql: str):
    """Run one read-only SQL statement against the corpus views; returns an Arrow table.

    Raises :class:`QueryRefusedError` for anything but a query (see :func:`check_read_only`).
    """
    check_read_only(sql)
    con = connect(corpus_dir)
    try:
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    finally:
        con.close()


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

