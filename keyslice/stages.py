"""Run one stage for one study with checkpoint semantics.

Done stages are skipped, stages whose upstream is missing are reported as blocked,
and any error is recorded in the ``failures`` table against the study and stage so the
build goes on with other studies. Transient errors (timeouts, rate limits, GPU OOM)
are re-raised while retries remain, so the orchestrator (Prefect) retries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyslice.checkpoints import STAGES
from keyslice.context import BuildContext
from keyslice.errors import is_transient
from keyslice.steps import STEPS
from keyslice.studies import Study


@dataclass(frozen=True)
class StageOutcome:
    study_id: str
    stage: str
    status: str  # done | skipped | failed | blocked
    message: str = ""
    rows: dict[str, int] = field(default_factory=dict)


def run_stage(stage: str, study: Study, ctx: BuildContext, *, attempt: int = 1,
              final_attempt: bool = True) -> StageOutcome:
    store, sid = ctx.store, study.study_id
    if store.is_done(stage, sid):
        return StageOutcome(sid, stage, "skipped")
    earlier = STAGES[: STAGES.index(stage)]
    missing = [s for s in earlier if not store.is_done(s, sid)]
    if missing:
        return StageOutcome(sid, stage, "blocked", f"waiting for stage {missing[0]!r}, which did not complete")
    try:
        tables = STEPS[stage](study, ctx)
        counts = store.commit_stage(stage, sid, tables, ctx.run_id)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded against the study
        if is_transient(exc) and not final_attempt:
            raise
        message = store.record_failure(sid, stage, exc, attempt, ctx.run_id, private=study.private_strings())
        return StageOutcome(sid, stage, "failed", f"{type(exc).__name__}: {message}")
    return StageOutcome(sid, stage, "done", rows=counts)


def process_study(study: Study, ctx: BuildContext) -> list[StageOutcome]:
    """All stages of one study in order, without an orchestrator (library use, debugging)."""
    return [run_stage(stage, study, ctx) for stage in STAGES]
