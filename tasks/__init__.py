"""Prefect tasks: one per step, each a thin wrapper around :func:`keyslice.stages.run_stage`,
which reads the step's inputs from and writes its outputs to Parquet checkpoints."""

from tasks.steps import keyslice_task, segment_task, series_task, vqa_task, STAGE_TASKS

__all__ = ["segment_task", "series_task", "keyslice_task", "vqa_task", "STAGE_TASKS"]
