"""Prefect tasks: one per stage of :mod:`keyslice.pipeline.registry` (see :mod:`tasks.steps`)."""

from tasks.steps import STAGE_TASKS, stage_task

__all__ = ["STAGE_TASKS", "stage_task"]
