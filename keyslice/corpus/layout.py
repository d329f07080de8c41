"""Which tables each build stage's checkpoint holds, in build order: the corpus' shape as data.

The corpus layer needs only this much of a build (which stage vouches for which table, which
stages a recomputation invalidates) to write checkpoints, verify them, compact and query tables.
What each stage runs, its resources and retries are the pipeline's
(:data:`keyslice.pipeline.registry.REGISTRY`, one :class:`~keyslice.pipeline.registry.Stage` per
name here), so the corpus can be read and maintained without importing the pipeline.
"""

from __future__ import annotations

#: stage name -> the tables its per-study checkpoint holds, in build order
STAGE_TABLES: dict[str, tuple[str, ...]] = {
    "segment": ("findings",),
    "series": ("studies", "series", "assignments"),
    "keyslice": ("selections",),
    "vqa": ("vqa",),
}

STAGES: tuple[str, ...] = tuple(STAGE_TABLES)
TABLE_STAGE: dict[str, str] = {table: stage for stage, tables in STAGE_TABLES.items() for table in tables}


def check_stage(name: str) -> str:
    """The name itself, or ValueError naming the stages when it is none of them."""
    if name not in STAGE_TABLES:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    return name


def downstream(name: str) -> tuple[str, ...]:
    """The stage itself and every stage after it: recomputing one invalidates those."""
    return STAGES[STAGES.index(check_stage(name)):]
