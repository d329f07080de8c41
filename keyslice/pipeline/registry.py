"""The stages of a build, declared once.

The stage names, their order and the tables each one's checkpoint holds are the corpus'
shape, declared as data in :mod:`keyslice.corpus.layout` (the corpus layer reads and verifies
checkpoints without importing the pipeline). This module binds each of those stages to what it
runs: its function, resources and retries. Everything else is derived from the two: the order
and the upstream of each stage (:mod:`keyslice.pipeline.run`), the Prefect tasks and their tags
(``tasks/``), the CPU/GPU phases of the split deployment (``flows/deploy.py``) and the status
counts. A new stage is its tables in :data:`keyslice.corpus.layout.STAGE_TABLES`, one
:class:`Stage` here and its function in :mod:`keyslice.pipeline.stage_functions`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from keyslice.corpus.layout import STAGE_TABLES, STAGES, TABLE_STAGE, check_stage, downstream
from keyslice.errors import is_transient
from keyslice.pipeline import stage_functions as fn

__all__ = ["REGISTRY", "STAGES", "STAGE_TABLES", "Stage", "TABLE_STAGE", "device_phases", "downstream", "get_stage",
           "resource_lock", "select_stages"]


@dataclass(frozen=True)
class Stage:
    """One stage: what it writes, what it runs, what it needs and how it is retried.

    ``resources`` are tags: ``gpu`` stages run one at a time per process (and per GPU through a
    Prefect concurrency limit or Dask resources, see infra/README.md); ``io`` marks disk-bound work.
    ``retries``: extra attempts after an error that ``transient`` calls worth retrying (the build
    config's ``retries`` overrides it for every stage).
    """

    name: str
    function: Callable[..., dict[str, list[dict]]]
    resources: tuple[str, ...] = ("cpu",)
    retries: int = 2
    retry_delays_s: tuple[float, ...] = (2.0, 10.0)
    transient: Callable[[BaseException], bool] = is_transient

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables this stage's checkpoint holds (:data:`keyslice.corpus.layout.STAGE_TABLES`)."""
        return STAGE_TABLES[self.name]

    @property
    def uses_gpu(self) -> bool:
        return "gpu" in self.resources


REGISTRY: tuple[Stage, ...] = (
    Stage("segment", fn.segment_step),
    Stage("series", fn.series_step, resources=("cpu", "io")),
    Stage("keyslice", fn.keyslice_step, resources=("gpu",)),
    Stage("vqa", fn.vqa_step),
)
if tuple(s.name for s in REGISTRY) != STAGES:  # a stage bound here must be the corpus' stage, in its order
    raise RuntimeError(f"pipeline stages {[s.name for s in REGISTRY]} differ from the corpus layout {list(STAGES)}")


_RESOURCE_LOCKS: dict[str, threading.Lock] = {"gpu": threading.Lock()}


def resource_lock(resource: str) -> threading.Lock:
    """The process-wide lock of an exclusive resource (``gpu``): the studies running in one process's
    threads share one model and take turns on the device. Across processes and machines the same
    resource tag is a Prefect concurrency limit or a Dask worker resource (infra/README.md)."""
    return _RESOURCE_LOCKS[resource]


def get_stage(name: str) -> Stage:
    return REGISTRY[STAGES.index(check_stage(name))]


def select_stages(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """The named stages in build order (all when none are named); an unknown name is an error."""
    if not names:
        return list(STAGES)
    for name in names:
        get_stage(name)
    return [s for s in STAGES if s in set(names)]


def device_phases() -> list[tuple[str, list[str]]]:
    """Consecutive stages grouped by the kind of machine they need, in build order:
    ``[("cpu", ["segment", "series"]), ("gpu", ["keyslice"]), ("cpu", ["vqa"])]`` today."""
    phases: list[tuple[str, list[str]]] = []
    for stage in REGISTRY:
        kind = "gpu" if stage.uses_gpu else "cpu"
        if phases and phases[-1][0] == kind:
            phases[-1][1].append(stage.name)
        else:
            phases.append((kind, [stage.name]))
    return phases
