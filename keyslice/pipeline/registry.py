"""The stages of a build, declared once.

Everything else is derived from this list: which tables a stage's checkpoint holds
(:class:`keyslice.corpus.checkpoints.CheckpointStore`), the order and the upstream of each
stage (:mod:`keyslice.pipeline.run`), the Prefect tasks and their tags (``tasks/``), the CPU/GPU
phases of the split deployment (``flows/deploy.py``) and the status counts. A new stage is one
:class:`Stage` here plus its function in :mod:`keyslice.pipeline.stage_functions`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from keyslice.pipeline import stage_functions as fn
from keyslice.errors import is_transient


@dataclass(frozen=True)
class Stage:
    """One stage: what it writes, what it runs, what it needs and how it is retried.

    ``resources`` are tags: ``gpu`` stages run one at a time per process (and per GPU through a
    Prefect concurrency limit or Dask resources, see infra/README.md); ``io`` marks disk-bound work.
    ``retries``: extra attempts after an error that ``transient`` calls worth retrying (the build
    config's ``retries`` overrides it for every stage).
    """

    name: str
    tables: tuple[str, ...]
    function: Callable[..., dict[str, list[dict]]]
    resources: tuple[str, ...] = ("cpu",)
    retries: int = 2
    retry_delays_s: tuple[float, ...] = (2.0, 10.0)
    transient: Callable[[BaseException], bool] = is_transient

    @property
    def uses_gpu(self) -> bool:
        return "gpu" in self.resources


REGISTRY: tuple[Stage, ...] = (
    Stage("segment", ("findings",), fn.segment_step),
    Stage("series", ("studies", "series", "assignments"), fn.series_step, resources=("cpu", "io")),
    Stage("keyslice", ("selections",), fn.keyslice_step, resources=("gpu",)),
    Stage("vqa", ("vqa",), fn.vqa_step),
)

STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
STAGE_TABLES: dict[str, tuple[str, ...]] = {s.name: s.tables for s in REGISTRY}
TABLE_STAGE: dict[str, str] = {t: s.name for s in REGISTRY for t in s.tables}


_RESOURCE_LOCKS: dict[str, threading.Lock] = {"gpu": threading.Lock()}


def resource_lock(resource: str) -> threading.Lock:
    """The process-wide lock of an exclusive resource (``gpu``): the studies running in one process's
    threads share one model and take turns on the device. Across processes and machines the same
    resource tag is a Prefect concurrency limit or a Dask worker resource (infra/README.md)."""
    return _RESOURCE_LOCKS[resource]


def get_stage(name: str) -> Stage:
    for stage in REGISTRY:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")


def downstream(name: str) -> tuple[str, ...]:
    """The stage itself and every stage after it: recomputing one invalidates those."""
    return STAGES[STAGES.index(get_stage(name).name):]


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
