"""``keyslice build``, ``demo`` and ``serve``: building a corpus once, from the bundled samples, or on a
cron schedule. Prefect and torch are imported only once a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
import yaml
from rich.console import Console

from keyslice.cli.output import console, err_console, refuse, rich_table
from keyslice.cli.status import print_status

if TYPE_CHECKING:
    from keyslice.pipeline.progress import BuildObserver
    from keyslice.pipeline.studies import Discovery


def quiet_prefect() -> None:
    """Ephemeral local Prefect API, no telemetry: a build must not phone home."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _progress_observer(quiet: bool) -> Optional[BuildObserver]:
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
            quiet_prefect()
            from flows.build import run_build
            from flows.server import build_api_server

            with build_api_server():
                return run_build(cfg, task_runner=runner, dask_address=dask_address, observer=observer,
                                 discovery=found), found
    except KeyboardInterrupt:
        err_console.print("[yellow]build stopped; every committed stage is kept: rerun `keyslice build` to resume"
                          "[/yellow]")
        raise typer.Exit(code=130) from None
    except (KeyMismatchError, ManifestError, ModelWeightsMissingError,
            CorpusLockedError) as exc:  # refused before any study ran
        refuse(err_console, "build refused", str(exc), 2)
    except PermissionError as exc:
        refuse(err_console, "cannot write the corpus", f"{exc.strerror or exc} ({exc.filename}); build into a "
               "folder you can write, or fix its permissions", 2)


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


def _print_run(result: dict) -> None:
    console.print(f"run {result['run_id']}: {result['n_studies']} studies, {result['n_done']} stages done, "
                  f"{result['n_skipped']} skipped (already done), {result['n_failed']} failed, "
                  f"{result['n_blocked']} blocked")
    if result.get("n_input_folders") is not None:
        skipped = result.get("skipped_inputs") or []
        console.print(f"input: {result['n_input_folders']} folders found, "
                      f"{result['n_input_folders'] - len(skipped)} taken as studies, {len(skipped)} skipped")


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
    print_status(out, input_dir, found=found)
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
    print_status(out)
    from keyslice.corpus.sql import VQA_QUESTION_TYPES, VQA_YES_NO_BALANCE, query as run_query

    console.print(rich_table(run_query(out, VQA_QUESTION_TYPES), "VQA question types"))
    console.print(rich_table(run_query(out, VQA_YES_NO_BALANCE), "VQA yes/no balance (closed questions)"))
    console.print(f"try: keyslice sql --out {out} \"select organ, count(*) from findings group by 1\"")


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
    quiet_prefect()
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
