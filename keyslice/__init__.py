"""keyslice: turn CT studies and their radiology reports into a Medical VQA dataset.

The domain library. Nothing in this package imports Prefect: the Prefect tasks in
``tasks/`` and flows in ``flows/`` are thin runners over :mod:`keyslice.pipeline`, so a
corpus can be built from Python (:func:`build`) and every step used and tested on its own.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def build(input_dir: Any = None, out_dir: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Build (or resume) a corpus without Prefect: see :func:`keyslice.pipeline.api.build`."""
    from keyslice.pipeline.api import build as build_corpus

    return build_corpus(input_dir, out_dir, **kwargs)
