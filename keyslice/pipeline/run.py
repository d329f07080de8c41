"""Run one stage for one study with checkpoint semantics.

Done stages are skipped, stages whose upstream is missing are reported as blocked,
and any error is recorded in the ``failures`` table against the study and stage so the
build goes on with other studies. An error the stage calls transient (timeouts, rate
limits, GPU OOM) is re-raised while attempts remain: the runner retries it, Prefect by its
task retries, the plain runners by :func:`run_stage_with_retries`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from keyslice.pipeline.context import BuildContext
from keyslice.pipeline.registry import STAGES, Stage, get_stage
from keyslice.pipeline.studies import Study


@dataclass(frozen=True)
class StageOutcome:
    study_id: str
    stage: str
    status: str  # done | skipped | failed | blocked
    message: str = ""
    rows: dict[str, int] = field(default_factory=dict)


def attempts_allowed(stage: Stage, ctx: BuildContext) -> int:
    """First try plus retries: the stage's own count unless the build config sets one for all."""
    retries = stage.retries if ctx.config.retries is None else ctx.config.retries
    return 1 + max(int(retries), 0)


def run_stage(stage: str, study: Study, ctx: BuildContext, *, attempt: int = 1,
              final_attempt: bool = True) -> StageOutcome:
    spec = get_stage(stage)
    store, sid = ctx.store, study.study_id
    if store.is_done(stage, sid):
        return StageOutcome(sid, stage, "skipped")
    earlier = STAGES[: STAGES.index(stage)]
    missing = [s for s in earlier if not store.is_done(s, sid)]
    if missing:
        return StageOutcome(sid, stage, "blocked", f"waiting for stage {missing[0]!r}, which did not complete")
    try:
        tables = spec.function(study, ctx)
        counts = store.commit_stage(stage, sid, tables, ctx.run_id)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded against the study
        if spec.transient(exc) and not final_attempt:
            raise
        message = store.record_failure(sid, stage, exc, attempt, ctx.run_id, private=study.private_strings())
        return StageOutcome(sid, stage, "failed", f"{type(exc).__name__}: {message}")
    return StageOutcome(sid, stage, "done", rows=counts)


def run_stage_with_retries(stage: str, study: Study, ctx: BuildContext) -> StageOutcome:
    """:func:`run_stage` with the stage's retries and delays, for runners without their own."""
    spec = get_stage(stage)
    allowed = attempts_allowed(spec, ctx)
    for attempt in range(1, allowed + 1):
        try:
            return run_stage(stage, study, ctx, attempt=attempt, final_attempt=attempt == allowed)
        except Exception:  # noqa: BLE001 - transient, attempts remain (run_stage re-raised it)
            delays = spec.retry_delays_s or (0.0,)
            time.sleep(delays[min(attempt - 1, len(delays) - 1)])
    raise AssertionError("unreachable: the last attempt never re-raises")


def process_study(study: Study, ctx: BuildContext, stages: list[str] | None = None,
                  on_outcome: Callable[[StageOutcome], None] | None = None) -> list[StageOutcome]:
    """The stages of one study in order (all by default), without an orchestrator; ``on_outcome``
    hears of each stage as it finishes."""
    outcomes = []
    for stage in stages or STAGES:
        outcomes.append(run_stage_with_retries(stage, study, ctx))
        if on_outcome is not None:
            on_outcome(outcomes[-1])
    return outcomes
