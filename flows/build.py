"""The build flow: keyslice's corpus build (:func:`keyslice.pipeline.api.execute`) with each study's
stages run as Prefect tasks, on threads or on a Dask cluster.

A study's next stage is submitted as soon as its previous stage is checkpointed, independently
of the others, with a bounded number of studies in flight (:func:`_run_studies`). Every stage task completes
(its failures are recorded in the corpus), so one bad study never stops the build.

Progress goes to the observer :func:`run_build` was given (the CLI's display), else one line per finished
study to the run's log. Every run publishes its result (:mod:`keyslice.pipeline.summary`) as a markdown
and a table artifact under one key per corpus, so the Prefect UI shows what each run gave and the nightly
runs can be compared side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from keyslice.config import BuildConfig
from keyslice.corpus.lock import corpus_lock
from keyslice.pipeline.api import execute
from keyslice.pipeline.context import BuildContext, make_context
from keyslice.pipeline.progress import BuildObserver, LogLines
from keyslice.pipeline.registry import get_stage
from keyslice.pipeline.studies import Discovery
from keyslice.pipeline.summary import artifact_key, run_summary, summary_markdown, summary_table
from tasks import stage_task

@dataclass(frozen=True)
class _InProcess:
    """What :func:`run_build` hands the flow run it starts in this process besides its parameters, which
    the Prefect API stores: the live progress observer, and the studies its caller's preflight found
    (their folder names are private, so they never become a stored parameter)."""

    observer: BuildObserver | None = None
    discovery: Discovery | None = None


# Set by run_build for the flow run it starts; empty for a run from a deployment: log lines, discover here.
_in_process = _InProcess()


@flow(name="keyslice-build", log_prints=True)
def build_flow(config: BuildConfig, studies_filter: list[str] | None = None,
               incremental: bool = False, stages: list[str] | None = None) -> dict[str, Any]:
    """Build (or resume) a corpus. ``config``: the :class:`BuildConfig` itself when called from Python;
    a deployment's parameters hold it as a JSON mapping of its fields (paths as strings), which Prefect
    validates into the dataclass (an unknown or missing key fails the run before it starts).

    ``incremental`` and ``stages``: see :func:`keyslice.pipeline.api.execute` (and flows/deploy.py
    for the CPU/GPU phases).
    """
    ctx = make_context(config)
    window = 2 * max(config.max_workers, 1)
    logger = get_run_logger()
    observer = _in_process.observer or LogLines(logger.info)
    with corpus_lock(config.out_dir):
        result = execute(ctx, lambda studies, names, c, on_outcome=None:
                         _run_studies(studies, names, c, window, on_outcome),
                         studies_filter=studies_filter, incremental=incremental, stages=stages,
                         logger=logger, observer=observer, preflight_model=not _on_dask(),
                         discovery=_in_process.discovery)
    try:
        publish_summary(config.out_dir, result)
    except Exception as exc:  # noqa: BLE001 - the corpus is built and recorded; only its report is missing
        logger.warning("the run's summary artifacts were not published (%s: %s); the build itself is complete, "
                       "`keyslice status` and the runs table show its result", type(exc).__name__, exc)
    return result


def _on_dask() -> bool:
    """Whether this flow run's tasks go to a Dask cluster (their workers load the model, not the flow)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "DaskTaskRunner"


def publish_summary(out_dir: Path | str, result: dict[str, Any]) -> None:
    """The run's summary as artifacts of this flow run (one key per corpus: versions side by side)."""
    summary = run_summary(out_dir, result)
    key = artifact_key(out_dir)
    description = f"keyslice build {summary.run_id} of {summary.n_studies} studies"
    create_markdown_artifact(markdown=summary_markdown(summary), key=key, description=description)
    create_table_artifact(table=summary_table(summary), key=f"{key}-numbers", description=description)


def _run_studies(studies: list, stages: list[str], ctx: BuildContext, window: int, on_outcome=None) -> list:
    """Submit each study's next stage when its previous one has finished, ``window`` studies at a time.

    Why not submit every stage of every study at once with ``wait_for``: the thread runner runs a
    waiting task *in* a worker thread, so queued later stages of one study hold the threads while
    earlier stages of others could run (with 2 workers the build ran ~1 stage at a time), and the
    flow would hold 4 futures per study for the whole build. Here every submitted task can start
    at once, and the flow holds one future per study in flight, whatever the corpus size.
    ``wait_for`` still names the (finished) previous stage, so the UI shows the dependency.
    ``on_outcome`` hears of every stage outcome as its task finishes (progress display).
    """
    import itertools
    import queue

    finished: queue.SimpleQueue = queue.SimpleQueue()
    waiting = iter(studies)
    outcomes = []

    def submit(study, i: int, previous=None) -> None:
        task = stage_task(get_stage(stages[i]), ctx)
        with _dask_placement(task):
            future = task.submit(study, ctx, wait_for=[previous] if previous is not None else None)
        future.add_done_callback(lambda f: finished.put((f, study, i)))

    in_flight = 0
    for study in itertools.islice(waiting, window):
        submit(study, 0)
        in_flight += 1
    while in_flight:
        future, study, i = finished.get()
        outcomes.append(future.result())
        if on_outcome is not None:
            on_outcome(outcomes[-1])
        if i + 1 < len(stages):
            submit(study, i + 1, future)
            continue
        in_flight -= 1
        nxt = next(waiting, None)
        if nxt is not None:
            submit(nxt, 0)
            in_flight += 1
    return outcomes


DASK_ADDRESS_ENV = "KEYSLICE_DASK_ADDRESS"
DASK_RESOURCES_ENV = "KEYSLICE_DASK_RESOURCES"


def _dask_placement(task):
    """Dask resource restrictions for a task, from its tags: ``$KEYSLICE_DASK_RESOURCES`` maps a tag
    to the resources its tasks need, e.g. ``{"gpu": {"GPU": 1}, "cpu": {"CPU": 1}}`` with GPU workers
    started as ``dask worker ... --resources GPU=1`` (see infra/README.md). Unset: no restriction."""
    import contextlib

    spec = os.environ.get(DASK_RESOURCES_ENV)
    if not spec:
        return contextlib.nullcontext()
    import json

    import dask

    resources: dict[str, float] = {}
    for tag, needs in json.loads(spec).items():
        if tag in task.tags:
            resources.update(needs)
    return dask.annotate(resources=resources) if resources else contextlib.nullcontext()


def make_task_runner(task_runner: str, max_workers: int, dask_address: str | None = None):
    """``threads``: a thread pool in this process. ``dask``: a Dask cluster through prefect-dask,
    either the existing scheduler at ``dask_address`` (or ``$KEYSLICE_DASK_ADDRESS``), e.g.
    ``tcp://scheduler:8786``, or a temporary local cluster of ``max_workers`` processes."""
    if task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        address = dask_address or os.environ.get(DASK_ADDRESS_ENV)
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "processes": True})
    raise ValueError(f"unknown task runner {task_runner!r}: use 'threads' or 'dask'")


def run_build(cfg: BuildConfig, task_runner: str = "threads", *, dask_address: str | None = None,
              incremental: bool = False, stages: list[str] | None = None,
              observer: BuildObserver | None = None, discovery: Discovery | None = None) -> dict[str, Any]:
    """Run the build flow with the chosen task runner (``threads`` or ``dask``, see :func:`make_task_runner`).

    ``incremental``: submit tasks only for studies that are not complete (new studies, failed or
    forced ones); complete studies cost no task run at all, which keeps a scheduled build over a
    large, mostly-built corpus cheap. Without it every study gets its four (skipped) task runs.
    ``observer``: progress of the build (:mod:`keyslice.pipeline.progress`), else log lines.
    ``discovery``: the studies :func:`keyslice.pipeline.api.preflight` found for ``cfg`` (the flow walks the
    input folder otherwise).
    """
    global _in_process
    runner = make_task_runner(task_runner, cfg.max_workers, dask_address)
    _in_process = _InProcess(observer, discovery)
    try:
        return build_flow.with_options(task_runner=runner)(config=cfg, incremental=incremental,
                                                           stages=list(stages) if stages else None)
    finally:
        _in_process = _InProcess()
