"""``keyslice sql``, ``check`` and ``compact``: querying, checking and compacting a built corpus."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from keyslice.cli.output import console, err_console, rich_table

if TYPE_CHECKING:
    import pyarrow as pa


def require_corpus(out: Path) -> None:
    """Refuse a corpus folder that does not exist: a typo would otherwise read as an empty corpus."""
    if not out.exists():
        raise typer.BadParameter(f"{out} does not exist; build a corpus first with `keyslice build`")


class OutFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def sql(
    query: str = typer.Argument(..., help="SQL over the views studies, series, findings, assignments, "
                                           "selections, vqa, failures, runs, finetune_runs, finetune_metrics"),
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    fmt: OutFormat = typer.Option(OutFormat.table, "--format", help="table (print), csv, json or parquet"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="file to write (parquet needs one; "
                                                                       "csv and json go to standard output "
                                                                       "without it)"),
) -> None:
    """Query the corpus with DuckDB."""
    import duckdb

    from rich.markup import escape

    from keyslice.corpus.sql import QueryRefusedError, query as run_query
    from keyslice.corpus.storage import is_url, normalize

    if not is_url(normalize(out)):  # a corpus URL is checked by DuckDB when it reads it
        require_corpus(out)
    try:
        result = run_query(out, query)
    except QueryRefusedError as exc:
        err_console.print(f"[red]query refused:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc
    except duckdb.Error as exc:
        err_console.print(f"[red]query failed:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc
    if fmt is OutFormat.table:
        console.print(rich_table(result))
        return
    if fmt is OutFormat.parquet:
        if output is None:
            raise typer.BadParameter("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(result, output)
    else:
        text = (_csv_text(result) if fmt is OutFormat.csv
                else json.dumps(result.to_pylist(), default=str, indent=1) + "\n")
        if output is None:  # to standard output, so the command works in a pipe
            typer.echo(text, nl=False)
            return
        output.write_text(text)
    Console(stderr=True).print(f"{result.num_rows} rows written to {output}")


def _csv_text(result: pa.Table) -> str:
    """CSV of a query result; list and struct cells as JSON (CSV has no nested values)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.column_names)
    for row in result.to_pylist():
        writer.writerow(["" if v is None else json.dumps(v, default=str) if isinstance(v, (list, dict)) else v
                         for v in row.values()])
    return buffer.getvalue()


def check(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    limit: int = typer.Option(20, help="contradicting answers to list (0: counts only)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV file for every contradicting answer"),
) -> None:
    """Count VQA answers that contradict the finding they rest on; exit 1 when there is any."""
    from keyslice.vqa.consistency import check_corpus

    require_corpus(out)
    result = check_corpus(out)
    table = Table(title=f"VQA answers contradicting their finding ({result.n_answers} answers checked)")
    table.add_column("kind")
    table.add_column("answers", justify="right")
    for kind, n in result.counts.items():
        table.add_row(kind, str(n))
    table.add_row("total", str(result.total))
    console.print(table)
    if result.n_unchecked:
        console.print(f"{result.n_unchecked} answers were written before vqa schema v2 (no organ, no answer source): "
                      f"their presence answers cannot be checked; rebuild them with --force-stage vqa")
    if result.total and limit:
        shown = result.rows.select(["kind", "finding_id", "question", "answer", "detail"]).slice(0, limit)
        console.print(rich_table(shown, f"contradicting answers (first {shown.num_rows} of {result.total})"))
    if output is not None:
        import pyarrow.csv as pacsv

        pacsv.write_csv(result.rows, output)
        console.print(f"{result.rows.num_rows} rows written to {output}")
    if result.total:
        raise typer.Exit(code=1)


def compact(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    shards: Optional[int] = typer.Option(None, help="shards per table (first compaction only; default 16)"),
    sync_to: Optional[str] = typer.Option(None, "--sync-to", help="then mirror the corpus to an fsspec URL "
                                                                  "(s3://bucket/corpus, gs://...)"),
) -> None:
    """Pack per-study checkpoint files into a few Parquet shards per table (no row lost or duplicated)."""
    from keyslice.corpus.compact import compact_corpus
    from keyslice.corpus.lock import CorpusLockedError

    require_corpus(out)
    try:
        report = compact_corpus(out, shards=shards)
    except CorpusLockedError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from exc
    table = Table(title=f"compaction of {out}")
    for col in ("table", "files absorbed", "rows absorbed", "dead rows dropped", "shards written", "files left"):
        table.add_column(col, justify="right")
    for name, r in report.items():
        table.add_row(name, str(r.files_absorbed), str(r.rows_absorbed),
                      str(r.dead_rows_dropped + r.duplicate_rows_dropped), str(len(r.shards_written)),
                      str(r.files_left))
    console.print(table)
    if sync_to:
        from keyslice.corpus.storage import sync_corpus

        counts = sync_corpus(out, sync_to)
        console.print(f"mirrored to {sync_to}: {counts['uploaded']} files uploaded, {counts['deleted']} deleted")
