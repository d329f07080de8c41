"""One Prefect task per stage of :mod:`keyslice.pipeline.registry`, each a thin wrapper around
:func:`keyslice.pipeline.run.run_stage`, which reads the stage's inputs from and writes its
outputs to Parquet checkpoints.

Retries are Prefect's: a transient error (endpoint timeout, rate limit, GPU out of memory) is
re-raised by ``run_stage`` while attempts remain, so Prefect retries it with the stage's delays;
on the last attempt, or for bad input, the failure is recorded in the corpus and the task
completes, so the flow goes on with the other studies. Tags are the stage's resources (``gpu``:
one per GPU through a Prefect concurrency limit, see infra/README.md).
"""

from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from keyslice.pipeline.context import BuildContext
from keyslice.pipeline.registry import REGISTRY, Stage
from keyslice.pipeline.run import StageOutcome, attempts_allowed, run_stage
from keyslice.pipeline.studies import Study


def _stage_task(stage: Stage) -> Task:
    def body(study: Study, ctx: BuildContext) -> StageOutcome:
        attempt = max(int(task_run.run_count or 1), 1)
        return run_stage(stage.name, study, ctx, attempt=attempt,
                         final_attempt=attempt >= attempts_allowed(stage, ctx))

    body.__name__ = f"{stage.name}_task"
    body.__doc__ = f"Prefect task running stage {stage.name!r} for one study."
    # Checkpoints are the cache: Prefect's own result cache would hash the context on every call.
    return task(body, name=stage.name, task_run_name=f"{stage.name}-{{study.study_id}}", retries=stage.retries,
                retry_delay_seconds=list(stage.retry_delays_s), cache_policy=NONE, tags=list(stage.resources),
                persist_result=False)


STAGE_TASKS: dict[str, Task] = {stage.name: _stage_task(stage) for stage in REGISTRY}


def stage_task(stage: Stage, ctx: BuildContext) -> Task:
    """The stage's task with the build's retry count when the config overrides the stage's own."""
    task_ = STAGE_TASKS[stage.name]
    retries = attempts_allowed(stage, ctx) - 1
    return task_ if retries == task_.retries else task_.with_options(retries=retries)
