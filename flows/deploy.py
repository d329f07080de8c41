"""Scheduled, incremental builds: a Prefect deployment of the build on a cron schedule.

Two ways to run it (see infra/README.md):

* ``keyslice serve --input STUDIES --out CORPUS --model MODEL --cron "0 2 * * *"`` serves the
  deployment from this process (``prefect.serve``): it stays up, and every cron tick starts an
  incremental build in a subprocess. Point ``PREFECT_API_URL`` at a Prefect server to see the
  runs in its UI; without one the process runs its own ephemeral API.
* ``prefect deploy --all`` with ``prefect.yaml`` registers the same flow on work pools, so that
  workers (docker compose, Kubernetes) pick the runs up.

Each scheduled run is incremental: studies already complete get no task at all, new studies
(and studies that failed before) are built, and the checkpoints make anything half-done resume.
The deployment allows one run at a time: two builds of one corpus would collide on its lock.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

DEFAULT_CRON = "0 2 * * *"          # every night at 02:00
DEPLOYMENT_NAME = "keyslice-incremental"
TAGS = ["keyslice"]


@flow(name="keyslice-scheduled-build", log_prints=True)
def scheduled_build(input_dir: str, out_dir: str, model: str = "biomedclip", config_file: str | None = None,
                    incremental: bool = True, runner: str = "threads", dask_address: str | None = None,
                    max_workers: int | None = None, device: str | None = None,
                    compact: bool = False, stages: list[str] | None = None) -> dict[str, Any]:
    """Build the studies of ``input_dir`` into the corpus ``out_dir`` (incremental by default).

    ``model``: selector model (preset, hf-hub id or local checkpoint folder). ``config_file``: a
    YAML build config; the other parameters override it. ``runner``: ``threads`` or ``dask``
    (``dask_address``: an existing scheduler, e.g. ``tcp://dask-scheduler:8786``). ``compact``:
    pack the per-study files into shards after the build (``keyslice compact``). ``stages``: only
    these stages (default all four), as the CPU and GPU phases of :func:`pipeline_build` do.
    """
    from flows.build import run_build
    from keyslice.config import BuildConfig

    cfg = BuildConfig.from_settings(config_file, input_dir=input_dir, out_dir=out_dir, model=model,
                                    max_workers=max_workers, device=device)
    result = run_build(cfg, runner, dask_address=dask_address, incremental=incremental, stages=stages)
    summary = {k: v for k, v in result.items() if k != "outcomes"}
    if compact:
        from keyslice.corpus.compact import compact_corpus

        report = compact_corpus(cfg.out_dir)
        summary["compacted_files"] = sum(r.files_absorbed for r in report.values())
    get_run_logger().info("scheduled build: %s", summary)
    return summary


def _phases() -> tuple[list[str], list[str], list[str]]:
    """The registry's stages as (CPU before, GPU, CPU after) phases of the split deployment."""
    from keyslice.pipeline.registry import device_phases

    kinds = [kind for kind, _ in device_phases()]
    if kinds != ["cpu", "gpu", "cpu"]:
        raise RuntimeError(f"the split deployment expects CPU, GPU, CPU stage phases; the registry has {kinds}")
    before, gpu, after = (names for _, names in device_phases())
    return before, gpu, after


CPU_STAGES_BEFORE, GPU_STAGES, CPU_STAGES_AFTER = _phases()


@flow(name="keyslice-pipeline", log_prints=True)
def pipeline_build(input_dir: str, out_dir: str, model: str = "biomedclip", config_file: str | None = None,
                   cpu_deployment: str = "keyslice-scheduled-build/keyslice-steps-cpu",
                   gpu_deployment: str = "keyslice-scheduled-build/keyslice-steps-gpu",
                   compact: bool = False) -> list[dict[str, Any]]:
    """Steps 1-2 on the CPU work pool, step 3 on the GPU work pool, step 4 on the CPU pool again.

    Each phase is a run of a ``scheduled_build`` deployment limited to its stages, started with
    ``run_deployment`` and awaited, so the phases of one corpus never run at the same time (they
    share the corpus lock). Every phase is incremental and resumable like any build.
    """
    from prefect.deployments import run_deployment

    phases = [(cpu_deployment, CPU_STAGES_BEFORE), (gpu_deployment, GPU_STAGES), (cpu_deployment, CPU_STAGES_AFTER)]
    results = []
    for i, (deployment, stages) in enumerate(phases):
        params: dict[str, Any] = {"input_dir": input_dir, "out_dir": out_dir, "model": model, "stages": stages,
                                  "compact": compact and i == len(phases) - 1}
        if config_file:
            params["config_file"] = config_file
        run = run_deployment(name=deployment, parameters=params, timeout=None)
        state = run.state
        if state is None or not state.is_completed():
            raise RuntimeError(f"phase {stages} ({deployment}) ended {state.name if state else 'without a state'}")
        results.append({"deployment": deployment, "stages": stages, "flow_run": str(run.id)})
    return results


def make_deployment(input_dir: str, out_dir: str, model: str = "biomedclip", *, cron: str = DEFAULT_CRON,
                    timezone: str | None = None, name: str = DEPLOYMENT_NAME, config_file: str | None = None,
                    runner: str = "threads", dask_address: str | None = None, max_workers: int | None = None,
                    device: str | None = None, compact: bool = False, incremental: bool = True,
                    work_pool_name: str | None = None):
    """The deployment ``keyslice serve`` serves (and a test inspects): cron schedule + parameters."""
    from prefect.schedules import Cron

    parameters = {"input_dir": str(input_dir), "out_dir": str(out_dir), "model": str(model),
                  "incremental": incremental, "runner": runner, "compact": compact}
    optional = {"config_file": config_file, "dask_address": dask_address, "max_workers": max_workers,
                "device": device}
    parameters.update({k: (str(v) if k == "config_file" else v) for k, v in optional.items() if v is not None})
    return scheduled_build.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        concurrency_limit=1,
        tags=TAGS,
        description=f"Incremental keyslice build of {input_dir} into {out_dir} on cron '{cron}'",
        work_pool_name=work_pool_name,
    )


def api_url() -> str | None:
    """The Prefect API that deployments register on: ``PREFECT_API_URL`` from the environment or the
    active profile, read afresh; None means Prefect's ephemeral API in this process."""
    from prefect.settings import Settings

    return Settings().api.url


def serve(input_dir: str, out_dir: str, model: str = "biomedclip", **kwargs: Any) -> None:
    """Serve the scheduled deployment from this process until interrupted (Ctrl-C)."""
    from prefect import serve as prefect_serve

    prefect_serve(make_deployment(input_dir, out_dir, model, **kwargs), limit=1)


if __name__ == "__main__":  # python flows/deploy.py INPUT OUT [MODEL]
    import sys

    serve(*sys.argv[1:4])
