"""The ``keyslice`` command line.

Commands import their heavy dependencies (Prefect, torch) lazily so that ``keyslice sql``
and ``keyslice status`` answer in a second.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from keyslice.pipeline.studies import Discovery

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn CT studies and their reports into a Medical VQA dataset.")
console = Console()
err_console = Console(stderr=True)


def _quiet_prefect() -> None:
    """Ephemeral local Prefect API, no telemetry: a build must not phone home."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class OutFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _progress_observer(quiet: bool):
    """Progress on standard error (standard output keeps the result): a live display per stage on a
    terminal, else one line per finished study, nothing with ``--quiet``."""
    from keyslice.pipeline.progress import LogLines, RichProgress

    if quiet:
        return None
    err = Console(stderr=True)
    if err.is_terminal:
        return RichProgress(err)
    return LogLines(lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))


def _build(input_dir: Path, out: Path, config: Optional[Path], model: Optional[str], force_stage: list[str],
           workers: Optional[int], runner: str, device: Optional[str], dask_address: Optional[str] = None,
           quiet: bool = False, masks: Optional[Path] = None) -> tuple[dict, Discovery]:
    """Run the build; returns its result and the studies its preflight found (the input is walked once)."""
    from rich.markup import escape

    from keyslice.config import BuildConfig
    from keyslice.corpus.lock import CorpusLockedError, corpus_lock
    from keyslice.errors import ModelWeightsMissingError
    from keyslice.pipeline.studies import ManifestError
    from keyslice.pseudonym import KeyMismatchError

    try:
        cfg = BuildConfig.from_settings(config, input_dir=str(input_dir), out_dir=str(out), model=model,
                                        device=device, max_workers=workers,
                                        force_stages=list(force_stage) or None,
                                        masks_dir=str(masks) if masks else None)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:  # a config mistake, not a crash
        where = f"build config {config}" if config else "build options"
        raise typer.BadParameter(f"{where}: {exc}") from exc
    if not Path(cfg.input_dir).is_dir():  # before the build creates or locks anything under OUT
        raise typer.BadParameter(f"input folder {cfg.input_dir} does not exist; --input (or input_dir in the "
                                 "config) must be a folder of studies, see the README's input contract")
    try:
        with corpus_lock(cfg.out_dir):  # asked here first: a locked corpus is a message, not a flow-run traceback
            from keyslice.pipeline.api import preflight

            found = preflight(cfg)  # the build reuses its discovery: the input folder is walked once
        observer = _progress_observer(quiet)
        with _stop_on_sigterm():
            if runner == "local":
                from keyslice.pipeline.api import build as build_corpus

                return build_corpus(config=cfg, runner="threads", observer=observer, discovery=found), found
            _quiet_prefect()
            from flows.build import run_build
            from flows.server import build_api_server

            with build_api_server():
                return run_build(cfg, task_runner=runner, dask_address=dask_address, observer=observer,
                                 discovery=found), found
    except KeyboardInterrupt:
        err_console.print("[yellow]build stopped; every committed stage is kept: rerun `keyslice build` to resume"
                          "[/yellow]")
        raise typer.Exit(code=130) from None
    except (KeyMismatchError, ManifestError, ModelWeightsMissingError) as exc:  # refused before any study ran
        err_console.print(f"[red]build refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except CorpusLockedError as exc:
        err_console.print(f"[red]build refused:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except PermissionError as exc:
        err_console.print(f"[red]cannot write the corpus:[/red] {exc.strerror or exc} ({exc.filename}); "
                          f"build into a folder you can write, or fix its permissions", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, systemd, a container stop) ends the build like Ctrl-C: KeyboardInterrupt
    unwinds the flow, committed stages stay, the Prefect API server this build started is stopped."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _require_corpus(out: Path) -> None:
    """Refuse a corpus folder that does not exist: a typo would otherwise read as an empty corpus."""
    if not out.exists():
        raise typer.BadParameter(f"{out} does not exist; build a corpus first with `keyslice build`")


def _print_run(result: dict) -> None:
    console.print(f"run {result['run_id']}: {result['n_studies']} studies, {result['n_done']} stages done, "
                  f"{result['n_skipped']} skipped (already done), {result['n_failed']} failed, "
                  f"{result['n_blocked']} blocked")
    if result.get("n_input_folders") is not None:
        skipped = result.get("skipped_inputs") or []
        console.print(f"input: {result['n_input_folders']} folders found, "
                      f"{result['n_input_folders'] - len(skipped)} taken as studies, {len(skipped)} skipped")


@app.command()
def build(
    input_dir: Path = typer.Option(..., "--input", help="folder of studies (see README: input contract)"),
    out: Path = typer.Option(..., "--out", help="corpus folder; created or resumed"),
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="YAML build config; flags override it"),
    model: Optional[str] = typer.Option(None, help="selector model: preset (biomedclip, clip-vit-b16, pubmedclip-vit-b32, demo: the bundled tiny demo model), hf-hub id or local checkpoint dir"),
    force_stage: list[str] = typer.Option([], "--force-stage", help="recompute this stage (and later ones)"),
    workers: Optional[int] = typer.Option(None, help="studies processed concurrently"),
    runner: str = typer.Option("threads", help="threads or dask: Prefect tasks on threads or a Dask cluster; "
                                               "local: the same build without Prefect (keyslice.build)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    dask_address: Optional[str] = typer.Option(None, help="with --runner dask: an existing scheduler, e.g. "
                                                          "tcp://host:8786 (default $KEYSLICE_DASK_ADDRESS, "
                                                          "else a temporary local cluster)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display (on a terminal) or progress "
                                                            "lines (otherwise) on standard error"),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="exit 0 even when some studies failed "
                                                                      "(their errors are in `keyslice status`)"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="masks root written by `keyslice segment` (mirrors "
                                         "INPUT's folders); read after each study's own masks"),
) -> None:
    """Build the studies of INPUT into the corpus OUT (a Prefect flow unless --runner local); reruns
    resume (done stages are skipped). Progress goes to standard error: a live display per stage on a
    terminal, else one line per finished study.

    Exit status: 0 every study complete; 1 some study failed (0 with --allow-partial) or no study was
    found; 2 refused before building (options, a locked corpus, another pseudonym key, a bad manifest,
    missing model weights); 130 stopped by Ctrl-C or SIGTERM (rerun to resume).
    """
    result, found = _build(input_dir, out, config, model, force_stage, workers, runner, device, dask_address, quiet,
                           masks)
    _print_run(result)
    _print_status(out, input_dir, found=found)
    failed = sorted({o["study_id"] for o in result.get("outcomes", []) if o["status"] in ("failed", "blocked")})
    if result["n_studies"] == 0:
        err_console.print(f"[yellow]no study found under {input_dir}: a study is a folder with a report.txt "
                          "(or a manifest.csv row); see the README's input contract[/yellow]")
        raise typer.Exit(code=1)
    if failed or result["n_failed"]:
        err_console.print(f"[yellow]{len(failed) or 'some'} of {result['n_studies']} studies did not complete: "
                          "`keyslice status --out ...` lists their errors; fix the input and rerun "
                          "`keyslice build` to retry them[/yellow]")
        if not allow_partial:
            raise typer.Exit(code=1)


def _print_status(out: Path, input_dir: Optional[Path] = None, verify: bool = False,
                  found: Optional[Discovery] = None) -> None:
    """``found``: the studies the build just found in ``input_dir`` (names its skipped folders without
    walking the input again)."""
    from keyslice.corpus.status import corpus_status

    status = corpus_status(out, verify)
    for renderable in _status_tables(out, status, input_dir, found):
        console.print(renderable)


def _status_tables(out: Path, status, input_dir: Optional[Path] = None, found: Optional[Discovery] = None) -> list:
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


@app.command()
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
    _require_corpus(out)
    if watch:
        _watch_status(out, interval)
        if console.is_terminal:   # the live tables stay on screen
            return
    _print_status(out, input_dir, verify)


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


def _rich_table(result, title: Optional[str] = None) -> Table:
    """An Arrow table as a rich table (None printed as an empty cell)."""
    table = Table(title=title)
    for name in result.column_names:
        table.add_column(name, overflow="fold")
    for row in result.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


@app.command()
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
        _require_corpus(out)
    try:
        result = run_query(out, query)
    except QueryRefusedError as exc:
        err_console.print(f"[red]query refused:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc
    except duckdb.Error as exc:
        err_console.print(f"[red]query failed:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc
    if fmt is OutFormat.table:
        console.print(_rich_table(result))
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


def _csv_text(result) -> str:
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


@app.command()
def check(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    limit: int = typer.Option(20, help="contradicting answers to list (0: counts only)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV file for every contradicting answer"),
) -> None:
    """Count VQA answers that contradict the finding they rest on; exit 1 when there is any."""
    from keyslice.vqa.consistency import check_corpus

    _require_corpus(out)
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
        console.print(_rich_table(shown, f"contradicting answers (first {shown.num_rows} of {result.total})"))
    if output is not None:
        import pyarrow.csv as pacsv

        pacsv.write_csv(result.rows, output)
        console.print(f"{result.rows.num_rows} rows written to {output}")
    if result.total:
        raise typer.Exit(code=1)


class SegmentDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


@app.command()
def segment(
    input_dir: Path = typer.Option(..., "--input", help="folder of studies (see README: input contract)"),
    masks: Path = typer.Option(..., "--masks", help="masks root: INPUT/<folder>'s labelmap goes to "
                               "MASKS/<folder>/totalseg_seg.nii.gz (give it to `keyslice build --masks`)"),
    fast: bool = typer.Option(True, "--fast/--full", help="TotalSegmentator's 3 mm model (default) or the "
                                                         "1.5 mm one (five models, slower, more memory)"),
    device: SegmentDevice = typer.Option(SegmentDevice.gpu, "--device", help="gpu or cpu"),
    overwrite: bool = typer.Option(False, "--overwrite", help="segment studies that already have masks again "
                                                            "(replacing the labelmaps this command wrote)"),
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="YAML build config: its report segmenter, manifest and limits "
                                               "choose the series as the build will"),
) -> None:
    """Organ masks for the studies that have none: TotalSegmentator on the series step 2 would choose, written
    under MASKS (never into INPUT), where `keyslice build --masks MASKS` finds them.

    One line per study on standard output (folder, status, detail; tab-separated in a pipe), the summary on
    standard error. Exit status: 0 every study segmented or already had masks; 1 some study failed (its line
    says why, e.g. weights missing) or none was found; 2 bad options.
    """
    from keyslice.config import BuildConfig
    from keyslice.pipeline.organ_masks import segment_studies
    from keyslice.selector import totalsegmentator_segmenter
    from keyslice.selector.totalseg import check_totalsegmentator

    if not input_dir.is_dir():
        raise typer.BadParameter(f"input folder {input_dir} does not exist; --input must be a folder of studies")
    try:
        cfg = BuildConfig.from_settings(config, input_dir=str(input_dir), out_dir=str(masks))
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"build config {config}: {exc}") from exc
    plain = not console.is_terminal
    colour = {"segmented": "green", "skipped": "dim", "failed": "red"}

    def show(outcome) -> None:
        line = f"{outcome.folder}\t{outcome.status}\t{outcome.detail}"
        if plain:  # a pipe: tab-separated fields, no markup
            typer.echo(line)
        else:
            from rich.text import Text

            console.print(Text(line.replace("\t", "  "), style=colour[outcome.status]), soft_wrap=True)

    outcomes = segment_studies(input_dir, masks, totalsegmentator_segmenter(fast=fast, device=device.value),
                               config=cfg, overwrite=overwrite, progress=show,
                               check=lambda: check_totalsegmentator(fast))
    counts = {status: sum(o.status == status for o in outcomes) for status in ("segmented", "skipped", "failed")}
    summary = (f"{len(outcomes)} studies: {counts['segmented']} segmented, {counts['skipped']} already had masks, "
               f"{counts['failed']} failed")
    err_console.print(summary, markup=False, highlight=False, soft_wrap=True)
    if not outcomes:
        err_console.print(f"no study found under {input_dir}: a study is a folder with a report.txt (or a "
                          "manifest.csv row); see the README's input contract", markup=False, highlight=False)
        raise typer.Exit(code=1)
    if counts["failed"]:
        err_console.print(f"the failed studies have no masks: fix what their line says and rerun; then build with "
                          f"`keyslice build --input {input_dir} --masks {masks} ...`", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="corpus folder (default: a new temp dir)"),
    model: Optional[str] = typer.Option(None, help="selector model (default: the bundled demo model)"),
) -> None:
    """Build the bundled sample corpus (real DICOM from shared/data, assembled reports) and summarise it."""
    from keyslice.demo_model import ensure_demo_model
    from keyslice.sample import materialize_samples

    work = Path(tempfile.mkdtemp(prefix="keyslice-demo-"))
    studies = work / "studies"
    materialize_samples(studies)
    out = out or work / "corpus"
    model = model or str(ensure_demo_model(progress=console.print))
    console.print(f"sample studies in {studies}; corpus in {out}; selector model {model}")
    result, _ = _build(studies, out, None, model, [], None, "threads", None)
    _print_run(result)
    _print_status(out)
    from keyslice.corpus.sql import VQA_QUESTION_TYPES, VQA_YES_NO_BALANCE, query as run_query

    console.print(_rich_table(run_query(out, VQA_QUESTION_TYPES), "VQA question types"))
    console.print(_rich_table(run_query(out, VQA_YES_NO_BALANCE), "VQA yes/no balance (closed questions)"))
    console.print(f"try: keyslice sql --out {out} \"select organ, count(*) from findings group by 1\"")


@app.command()
def publish(
    out: Path = typer.Option(..., "--out", help="corpus folder to publish"),
    repo_id: str = typer.Option(..., "--repo-id", help="Hugging Face dataset repository, ORG/NAME"),
    private: bool = typer.Option(False, "--private", help="create the repository private (refused if it exists public)"),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="write what would be uploaded into this folder "
                                                                    "(Parquet shards + README.md); upload nothing"),
    license: str = typer.Option("other", "--license", help="license id for the dataset card (e.g. cc-by-4.0)"),
    input_dir: Optional[Path] = typer.Option(None, "--input", help="the studies folder the corpus was built from: "
                                             "also check that no DICOM header identifier appears in the export"),
    scrub_text: bool = typer.Option(False, "--scrub-text", help="replace PHI-looking spans of report sentences, "
                                    "questions and answers by [NAME]/[DATE]... (listed in the privacy report) "
                                    "instead of refusing; identifiers, DICOM values and images are never scrubbed"),
    max_shard_mb: int = typer.Option(500, "--max-shard-mb", help="target Parquet shard size"),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="export only rows whose key "
                                                   "slice has a selector margin of at least this (unknown = left out)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="make this publish a named, immutable release (a Hub "
                                      "tag; recorded in CORPUS/publish/; a dry run records it as a dry run)"),
    context: int = typer.Option(0, "--context", help="add N slices on each side of every key slice to findings and "
                                "selections rows (ascending z, with z in mm); needs --input"),
    context_topk: bool = typer.Option(False, "--context-topk", help="also add the selector's top-k slices to the "
                                      "slice context; needs --input"),
    grounding: bool = typer.Option(False, "--grounding", help="add the finding's organ mask on the key slice (where "
                                   "the study has TotalSegmentator / DICOM-SEG masks) and its labels; needs --input"),
    stack: int = typer.Option(0, "--stack", help="add N slices per finding evenly spaced in z over its organ's mask "
                              "range (+-10 mm; else +-60 mm around the key slice), HU linearly interpolated, "
                              "windowed like the key slice (e.g. 32); with --grounding their masks too; needs --input"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="masks root read after each study's own masks for "
                                         "--grounding (default: the one the corpus' last build was given)"),
) -> None:
    """Publish the corpus as a Hugging Face dataset (configs vqa, findings, selections), behind a privacy gate.

    Needs $KEYSLICE_PSEUDONYM_KEY and a Hub write token (HF_TOKEN or `hf auth login`); uploads only changed shards.
    """
    from huggingface_hub.errors import HfHubHTTPError
    from rich.markup import escape

    from keyslice.publish import MissingKeyError, PrivacyError, PublishError, publish_corpus

    try:
        result = publish_corpus(out, repo_id, private=private, dry_run_dir=dry_run, license=license,
                                input_dir=input_dir, scrub_text=scrub_text, max_shard_bytes=max_shard_mb * 1024 * 1024,
                                min_confidence=min_confidence, tag=tag, context_slices=context,
                                context_topk=context_topk, grounding=grounding, stack_slices=stack, masks_dir=masks,
                                log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    except (MissingKeyError, PrivacyError, PublishError) as exc:
        console.print(f"[red]publish refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from exc
    except HfHubHTTPError as exc:
        console.print(f"[red]the Hub refused the upload:[/red] {escape(str(exc))}\n(a write token is needed: "
                      f"set HF_TOKEN or run `hf auth login`)", highlight=False, soft_wrap=True)
        raise typer.Exit(code=3) from exc
    table = Table(title=f"{repo_id}: rows per configuration and split")
    for col in ("config", "train", "validation", "test"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for config, splits in result.counts.items():
        table.add_row(config, *(str(splits.get(s, 0)) for s in ("train", "validation", "test")))
    console.print(table)
    if result.dry_run:
        console.print(f"load it back: datasets.load_dataset({str(result.staged_dir)!r}, 'vqa')")


@app.command()
def stats(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder for the plot PNGs (default: CORPUS/stats)"),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="as for publish"),
) -> None:
    """Statistics of what `keyslice publish` would export (organs, abnormalities, phases, question and answer
    balance, key-slice position, selector confidence): printed, and drawn as the card's PNG plots."""
    from rich.markup import escape

    from keyslice.publish import PublishError
    from keyslice.publish.stats import STATS_DIR, corpus_stats, draw_stats, stats_tables

    try:
        result = corpus_stats(out, min_confidence=min_confidence)
    except PublishError as exc:
        console.print(f"[red]stats:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from exc
    for title, (header, rows) in stats_tables(result).items():
        table = Table(title=title)
        for col in header:
            table.add_column(str(col))
        for row in rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)
    written = draw_stats(result, plots or out / STATS_DIR)
    console.print(f"{len(written)} plots in {escape(str(plots or out / STATS_DIR))}", highlight=False,
                  soft_wrap=True)


def _finetune_config(config: Path, out: Optional[Path], device: Optional[str], **extra):
    from keyslice.finetune.config import FinetuneConfig

    overrides = {"out_dir": str(out) if out else None, "train.device": device, **extra}
    try:
        return FinetuneConfig.from_yaml(config, **overrides)
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:  # a config mistake, not a crash
        raise typer.BadParameter(f"fine-tuning config {config}: {exc}") from exc


def _print_finetune_summary(summary: dict) -> None:
    table = Table(title=f"organ awareness (macro means; Youden threshold on {summary['threshold_on']} data)")
    for col in ("model", "CT", "style", "organs (both classes)", "Acc both", "F1 both", "AUC both", "Acc all"):
        table.add_column(col)

    def f(x):
        return "-" if x is None or x != x else f"{x:.2f}"

    for r in summary["organ_awareness"]:
        if r["threshold_on"] != summary["threshold_on"]:
            continue
        table.add_row(r["model"], r["split"], r["style"], f"{r['n_organs']} ({r['n_organs_both_classes']})",
                      f(r["accuracy_both"]), f(r["f1_both"]), f(r["auc_both"]), f(r["accuracy_all"]))
    console.print(table)


@app.command()
def finetune(
    config: Path = typer.Argument(..., exists=True, dir_okay=False,
                                  help="fine-tuning YAML (see configs/finetune_*.yaml); it fixes the whole run"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the config's out_dir)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many steps in total; "
                                                                       "rerun to resume from the checkpoint"),
    restart: bool = typer.Option(False, "--restart", help="discard the run's checkpoints and start over"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    no_eval: bool = typer.Option(False, "--no-eval", help="train only (no before/after evaluation)"),
    prefect: bool = typer.Option(False, "--prefect", help="run as the Prefect flow flows/finetune.py"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="record the run's metrics in this corpus "
                                                                 "(default: the config's metrics_corpus)"),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="also train on this corpus' reviews (keyslice "
                                                                   "review): accepted/chosen slices positive, "
                                                                   "rejected ones negative; needs --reviews-input"),
    reviews_input: Optional[Path] = typer.Option(None, "--reviews-input", help="the studies folder the reviewed "
                                                                               "corpus was built from"),
) -> None:
    """Fine-tune the key-slice selector on organ/lesion pairs (resumable), then evaluate before vs after."""
    review_overrides = {"pairs.reviews": str(reviews) if reviews else None,
                        "pairs.reviews_input": str(reviews_input) if reviews_input else None}
    if prefect:
        _quiet_prefect()
        from flows.finetune import finetune_flow

        overrides = {k: v for k, v in {"out_dir": str(out) if out else None, "train.device": device,
                                       "metrics_corpus": str(corpus) if corpus else None,
                                       **review_overrides}.items() if v}
        result = finetune_flow(str(config), overrides=overrides, max_steps=max_steps, restart=restart,
                               evaluate=not no_eval)
        console.print(f"trained to step {result['train']['step']}/{result['train']['total_steps']}; "
                      f"model {result['train']['model_dir']}")
        if result["eval"]:
            _print_finetune_summary(result["eval"]["summary"])
            console.print(f"report: {result['eval']['report']}")
        if result["recorded"]:
            console.print(f"metrics recorded in {result['recorded']['corpus']} (run {result['recorded']['run_id']})")
        return
    from rich.markup import escape

    from keyslice.errors import InputError
    from keyslice.finetune.evaluate import run_finetune

    cfg = _finetune_config(config, out, device, metrics_corpus=str(corpus) if corpus else None, **review_overrides)
    try:
        result = run_finetune(cfg, max_steps=max_steps, restart=restart, evaluate=not no_eval,
                              progress=console.print)
    except InputError as exc:
        console.print(f"[red]finetune refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from exc
    tr = result["train"]
    console.print(f"trained to step {tr.step}/{tr.total_steps} in {tr.train_seconds:.1f} s "
                  f"(final loss {tr.final_loss:.4f}); run folder {tr.out_dir}")
    if tr.model_dir is None:
        console.print("[yellow]stopped before the last step: rerun the same command to resume[/yellow]")
    if result["eval"] is not None:
        _print_finetune_summary(result["eval"].summary)
        console.print(f"report: {result['eval'].report_path}")


@app.command("eval")
def evaluate(
    config: Optional[Path] = typer.Argument(None, exists=True, dir_okay=False,
                                            help="fine-tuning YAML: its CTs, masks, organs and eval settings"),
    model: list[str] = typer.Option([], "--model", help="TAG=SPEC to evaluate (repeatable; SPEC: preset, hf-hub id "
                                                        "or checkpoint folder); default: the run's before/after"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the config's out_dir)"),
    eval_out: Optional[Path] = typer.Option(None, "--eval-out", help="tables, report and plots (default: OUT/eval)"),
    threshold_on: Optional[str] = typer.Option(None, "--threshold-on", help="train (default; no optimistic bias) "
                                                                            "or eval (oracle threshold)"),
    tolerance_mm: Optional[float] = typer.Option(None, "--tolerance-mm", help="Acc@k hit tolerance in mm"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="record the run's metrics in this corpus "
                                                                 "(default: the config's metrics_corpus; only for "
                                                                 "the run's own before/after in OUT/eval)"),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="instead: acceptance of the key slices reviewed "
                                                                    "in this corpus (keyslice review), per model and "
                                                                    "weights, and reader agreement"),
) -> None:
    """Slice-level MAE / Acc@k and per-organ accuracy/F1 (Youden threshold), before vs after, with plots;
    or, with --reviews CORPUS, the acceptance of reviewed key slices and reader agreement."""
    if reviews is not None:
        from keyslice.review.cli import print_review_metrics

        _require_corpus(reviews)
        print_review_metrics(reviews, tolerance_mm if tolerance_mm is not None else 10.0)
        return
    if config is None:
        raise typer.BadParameter("give a fine-tuning CONFIG, or --reviews CORPUS")
    from keyslice.finetune.evaluate import evaluate_run

    cfg = _finetune_config(config, out, device, **{"eval.threshold_on": threshold_on,
                                                    "eval.tolerance_mm": tolerance_mm,
                                                    "metrics_corpus": str(corpus) if corpus else None})
    models = None
    if model:
        models = {}
        for i, item in enumerate(model):
            tag, sep, spec = item.partition("=")
            models[tag if sep else f"model{i + 1}"] = spec if sep else item
    result = evaluate_run(cfg, models, eval_out, progress=console.print, device=device or "auto")
    _print_finetune_summary(result.summary)
    console.print(f"report: {result.report_path}; tables and plots in {result.out_dir}")
    if cfg.metrics_corpus and models is None and eval_out is None and (cfg.out / "model").is_dir():
        from keyslice.finetune.record import record_run_metrics

        rec = record_run_metrics(cfg)
        console.print(f"metrics recorded in {rec['corpus']} (run {rec['run_id']})")


@app.command()
def serve(
    input_dir: Path = typer.Option(..., "--input", help="folder of studies; new ones are built on every tick"),
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    model: str = typer.Option("biomedclip", help="selector model: preset (biomedclip, clip-vit-b16, pubmedclip-vit-b32, demo: the bundled tiny demo model), hf-hub id or local checkpoint dir"),
    cron: str = typer.Option("0 2 * * *", help="cron schedule of the incremental builds"),
    timezone: Optional[str] = typer.Option(None, help="time zone of the cron schedule (default UTC)"),
    name: str = typer.Option("keyslice-incremental", help="deployment name"),
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="YAML build config; the flags above override it"),
    runner: str = typer.Option("threads", help="task runner: threads or dask"),
    dask_address: Optional[str] = typer.Option(None, help="existing Dask scheduler, e.g. tcp://host:8786"),
    workers: Optional[int] = typer.Option(None, help="studies processed concurrently"),
    compact_after: bool = typer.Option(False, "--compact", help="compact the corpus after each build"),
) -> None:
    """Serve a Prefect deployment that builds new studies on a cron schedule (runs until Ctrl-C)."""
    _quiet_prefect()
    os.environ["PREFECT_LOGGING_LEVEL"] = os.environ.get("KEYSLICE_SERVE_LOG_LEVEL", "INFO")
    from flows.deploy import api_url, serve as serve_deployment

    console.print(f"serving deployment {name!r}: {input_dir} -> {out}, cron '{cron}' (Ctrl-C stops it)")
    server = api_url()
    if server:
        console.print(f"schedule registered on the Prefect server {server}; its UI lists the runs", soft_wrap=True)
    else:
        console.print("[yellow]warning: PREFECT_API_URL is not set, so the schedule lives in an ephemeral Prefect "
                      "API inside this process: the deployment, its schedule and the run history are gone when it "
                      "stops. For nightly builds start a server (`prefect server start`) and set PREFECT_API_URL "
                      "(see infra/README.md).[/yellow]", soft_wrap=True)
    serve_deployment(str(input_dir.resolve()), str(out.resolve()), model, cron=cron, timezone=timezone, name=name,
                     config_file=str(config.resolve()) if config else None, runner=runner,
                     dask_address=dask_address, max_workers=workers, compact=compact_after)


@app.command()
def compact(
    out: Path = typer.Option(..., "--out", help="corpus folder"),
    shards: Optional[int] = typer.Option(None, help="shards per table (first compaction only; default 16)"),
    sync_to: Optional[str] = typer.Option(None, "--sync-to", help="then mirror the corpus to an fsspec URL "
                                                                  "(s3://bucket/corpus, gs://...)"),
) -> None:
    """Pack per-study checkpoint files into a few Parquet shards per table (no row lost or duplicated)."""
    from keyslice.corpus.compact import compact_corpus
    from keyslice.corpus.lock import CorpusLockedError

    _require_corpus(out)
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


from keyslice.review.cli import review as _review  # noqa: E402  (its heavy imports are lazy)

app.command("review")(_review)

