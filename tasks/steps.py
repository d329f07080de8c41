"""The four step tasks.

Retries are Prefect's: a transient error (endpoint timeout, rate limit, GPU out of
memory) is re-raised by ``run_stage`` while attempts remain, so Prefect retries it
with a delay; on the last attempt, or for bad input, the failure is recorded in the
corpus and the task completes, so the flow goes on with the other studies.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from keyslice.context import BuildContext
from keyslice.stages import StageOutcome, run_stage
from keyslice.studies import Study

RETRIES = 2
RETRY_DELAYS = [2, 10]


def _run(stage: str, study: Study, ctx: BuildContext) -> StageOutcome:
    attempt = max(int(task_run.run_count or 1), 1)
    return run_stage(stage, study, ctx, attempt=attempt, final_attempt=attempt > min(ctx.config.retries, RETRIES))


def _stage_task(stage: str, tags: tuple[str, ...]):
    def body(study: Study, ctx: BuildContext) -> StageOutcome:
        return _run(stage, study, ctx)

    body.__name__ = f"{stage}_task"
    body.__doc__ = f"Prefect task running stage {stage!r} for one study."
    # Checkpoints are the cache: Prefect's own result cache would hash the context on every call.
    return task(body, name=stage, task_run_name=f"{stage}-{{study.study_id}}", retries=RETRIES,
                retry_delay_seconds=RETRY_DELAYS, cache_policy=NONE, tags=list(tags), persist_result=False)


segment_task = _stage_task("segment", ("cpu",))
series_task = _stage_task("series", ("cpu", "io"))
keyslice_task = _stage_task("keyslice", ("gpu",))
vqa_task = _stage_task("vqa", ("cpu",))

STAGE_TASKS = {"segment": segment_task, "series": series_task, "keyslice": keyslice_task, "vqa": vqa_task}
