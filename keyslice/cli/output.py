"""The consoles the commands print to, how a command refuses, and query results as rich tables.

``console`` is standard output, where a command's answer goes; ``err_console`` is standard error, for
what must stay out of an answer read from a pipe (build progress, refusals, where a file was written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pyarrow as pa

console = Console()
err_console = Console(stderr=True)


def refuse(to: Console, label: str, detail: str, code: int) -> NoReturn:
    """Print ``label: detail`` (the label in red) to ``to`` and exit with ``code``. The detail is printed
    verbatim: messages carry paths, SQL and report text, whose brackets rich would read as markup."""
    to.print(f"[red]{label}:[/red] {escape(detail)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def rich_table(result: pa.Table, title: Optional[str] = None) -> Table:
    """An Arrow table as a rich table (None printed as an empty cell)."""
    table = Table(title=title)
    for name in result.column_names:
        table.add_column(name, overflow="fold")
    for row in result.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table
