"""The build flow: the four steps per study, studies processed concurrently.

Each study's stages are chained with ``wait_for`` so a study moves on as soon as its
previous stage is checkpointed, independently of the others. Every stage task completes
(its failures are recorded in the corpus), so one bad study never stops the build.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from keyslice.checkpoints import STAGES
from keyslice.config import BuildConfig
from keyslice.context import BuildContext, make_context
from keyslice.lock import corpus_lock, sweep_temporaries
from keyslice.runs import record_run
from keyslice.schemas import utcnow
from keyslice.studies import discover_studies
from tasks import STAGE_TASKS


@flow(name="keyslice-build", log_prints=True, validate_parameters=False)
def build_flow(config: dict[str, Any], studies_filter: list[str] | None = None) -> dict[str, Any]:
    """Build (or resume) a corpus. ``config`` is a :class:`BuildConfig` as a plain dict."""
    cfg = BuildConfig.from_dict(config)
    ctx = make_context(cfg)
    with corpus_lock(cfg.out_dir):
        return _build(ctx, studies_filter)


def _build(ctx: BuildContext, studies_filter: list[str] | None) -> dict[str, Any]:
    cfg = ctx.config
    logger = get_run_logger()
    swept = sweep_temporaries(cfg.out_dir)
    if swept:
        logger.info("removed %d half-written temporary file(s) left by an interrupted build", swept)
    started = utcnow()
    studies = discover_studies(cfg.input_dir, ctx.pseudonymize, cfg.manifest)
    if studies_filter:
        studies = [s for s in studies if s.study_id in set(studies_filter)]
    for stage in cfg.force_stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        for study in studies:
            ctx.store.invalidate(stage, study.study_id)
    logger.info("building %d studies into %s (run %s)", len(studies), cfg.out_dir, ctx.run_id)

    futures = []
    for study in studies:
        previous = None
        for stage in STAGES:
            future = STAGE_TASKS[stage].submit(study, ctx, wait_for=[previous] if previous else None)
            futures.append(future)
            previous = future
    outcomes = [f.result() for f in futures]
    run = record_run(ctx, started, len(studies), outcomes)
    for o in outcomes:
        if o.status == "failed":
            logger.warning("study %s failed at stage %s: %s", o.study_id, o.stage, o.message)
    return {"run_id": ctx.run_id, "n_studies": len(studies),
            **{k: run[k] for k in ("n_done", "n_skipped", "n_failed", "n_blocked")},
            "outcomes": [o.__dict__ for o in outcomes]}


def run_build(cfg: BuildConfig, task_runner: str = "threads") -> dict[str, Any]:
    """Run the build flow with the chosen task runner (``threads`` or ``dask``)."""
    if task_runner == "threads":
        runner = ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    elif task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_workers, "processes": True})
    else:
        raise ValueError(f"unknown task runner {task_runner!r}: use 'threads' or 'dask'")
    return build_flow.with_options(task_runner=runner)(config=_config_dict(cfg))


def _config_dict(cfg: BuildConfig) -> dict[str, Any]:
    import dataclasses

    data = dataclasses.asdict(cfg)
    for key in ("input_dir", "out_dir", "manifest"):
        if data[key] is not None:
            data[key] = str(data[key])
    data["force_stages"] = list(data["force_stages"])
    return data
