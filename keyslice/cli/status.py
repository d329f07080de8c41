"""``keyslice status``: what a corpus holds, what failed and which input folders were skipped, once or
following a running build. ``build`` and ``demo`` print the same tables when they finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from keyslice.cli.corpus import require_corpus
from keyslice.cli.output import console

if TYPE_CHECKING:
    from keyslice.corpus.status import CorpusStatus
    from keyslice.pipeline.studies import Discovery


def status(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    input_dir: Optional[Path] = typer.Option(None, "--input", help="the studies folder: name the skipped "
                                             "input folders on this terminal (the corpus keeps pseudonyms)"),
    watch: bool = typer.Option(False, "--watch", help="follow a running build of this corpus until it records "
                                                      "its run (Ctrl-C stops watching, not the build)"),
    interval: float = typer.Option(2.0, help="seconds between refreshes with --watch"),
    verify: bool = typer.Option(False, "--verify", help="hash every table file against its stage marker "
                                                        "(default: only files whose size or time changed)"),
) -> None:
    """Per-stage counts, rows per table, the studies whose last attempt failed (with the error), damaged
    files (missing, changed or corrupt since their stage's marker), and the input folders the last build
    did not take as studies (with the reason)."""
    require_corpus(out)
    if watch:
        _watch_status(out, interval)
        if console.is_terminal:   # the live tables stay on screen
            return
    print_status(out, input_dir, verify)


def print_status(out: Path, input_dir: Optional[Path] = None, verify: bool = False,
                  found: Optional[Discovery] = None) -> None:
    """``found``: the studies the build just found in ``input_dir`` (names its skipped folders without
    walking the input again)."""
    from keyslice.corpus.status import corpus_status

    status = corpus_status(out, verify)
    for renderable in _status_tables(out, status, input_dir, found):
        console.print(renderable)


def _status_tables(out: Path, status: CorpusStatus, input_dir: Optional[Path] = None,
                   found: Optional[Discovery] = None) -> list:
    """The status as rich renderables: per stage, per table, unreadable tables, damaged files, failed
    studies, skipped input folders."""
    from rich.markup import escape
    from rich.text import Text

    tables = []
    table = Table(title=f"corpus {out}")
    table.add_column("stage")
    table.add_column("studies done", justify="right")
    for stage, n in status.stage_done.items():
        table.add_row(stage, str(n))
    tables.append(table)
    rows = Table(title="rows per table")
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for name, n in status.table_rows.items():
        rows.add_row(name, "unreadable" if n is None else str(n))
    tables.append(rows)
    for name, error in status.table_errors.items():
        tables.append(Text.from_markup(f"[red]table {name} cannot be read:[/red] {escape(error)}"))
    if status.damaged:
        damaged = Table(title="damaged files (the next `keyslice build` recomputes their stages)")
        for col in ("study_id", "stage", "file", "problem"):
            damaged.add_column(col, overflow="fold")
        for d in status.damaged:
            damaged.add_row(d.study_id, d.stage, d.file, d.problem)
        tables.append(damaged)
    if status.open_failures:
        failed = Table(title="failed studies (latest error per stage)")
        for col in ("study_id", "stage", "error_type", "message", "attempt"):
            failed.add_column(col, overflow="fold")
        for f in status.open_failures:
            failed.add_row(f["study_id"], f["stage"], f["error_type"], f["message"], str(f["attempt"]))
        tables.append(failed)
    if status.skipped_inputs:
        names = _skipped_folder_names(out, input_dir, found) if input_dir else {}
        n_found = status.n_input_folders
        skipped = Table(title=f"input folders not taken as studies (last build: {n_found} folders found, "
                              f"{n_found - len(status.skipped_inputs)} studies, {len(status.skipped_inputs)} skipped)")
        for col in ("folder_id", *(["folder"] if input_dir else []), "reason"):
            skipped.add_column(col, overflow="fold")
        for f in status.skipped_inputs:
            skipped.add_row(f["folder_id"], *([names.get(f["folder_id"], "?")] if input_dir else []), f["reason"])
        tables.append(skipped)
    return tables


def _skipped_folder_names(out: Path, input_dir: Path, found: Optional[Discovery] = None) -> dict[str, str]:
    """Folder pseudonym -> relative path, found again in the input with the corpus' key (unless the build
    just found them: ``found``): shown on this terminal only (folder names can be patient names; the
    corpus keeps pseudonyms)."""
    from keyslice.pipeline.studies import discover_studies
    from keyslice.pseudonym import MissingKeyError, load_pseudonymizer

    if found is not None:
        return {f.folder_id: f.source_key for f in found.skipped}
    if not input_dir.is_dir():
        return {}
    try:
        pseudonymize = load_pseudonymizer(out, create=False)
    except MissingKeyError as exc:
        console.print(f"[yellow]cannot name the skipped folders: {exc}[/yellow]")
        return {}
    found = discover_studies(input_dir, pseudonymize)
    return {f.folder_id: f.source_key for f in found.skipped}


def _watch_status(out: Path, interval: float) -> None:
    """Follow a build from another process: it reads stage markers and table files only (both are
    written atomically, so a half-written file is never read) until a run newer than the start of
    watching is recorded. Live tables on a terminal, else one line per change."""
    import time

    from rich.live import Live

    from keyslice.corpus.status import StatusUnavailable, corpus_status, watch_line

    started = time.time()
    last_line = None

    def snapshot():
        try:
            return corpus_status(out)
        except StatusUnavailable:   # a file vanished between listing and reading (compaction): next tick
            return None

    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    if live:
        live.start()
    try:
        while True:
            status = snapshot()
            if status is not None:
                if live:
                    from rich.console import Group

                    live.update(Group(*_status_tables(out, status)), refresh=True)
                else:
                    line = watch_line(status)
                    if line != last_line:
                        console.print(line, markup=False, highlight=False, soft_wrap=True)
                        last_line = line
                if status.last_run_finished is not None and status.last_run_finished.timestamp() >= started:
                    console.print(f"build finished: run {status.last_run_id}")
                    return
            time.sleep(interval)
    finally:
        if live:
            live.stop()
