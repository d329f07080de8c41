"""Summaries of a build: the ``runs`` table row and the per-stage counts printed at the end."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Iterable

from keyslice import __version__
from keyslice.pipeline.context import BuildContext
from keyslice.corpus.schemas import utcnow
from keyslice.pipeline.run import StageOutcome
from keyslice.pipeline.studies import Discovery


def record_run(ctx: BuildContext, started_at: dt.datetime, n_studies: int,
               outcomes: Iterable[StageOutcome], found: Discovery | None = None) -> dict:
    """Write the run's row. ``found``: the discovery of the input, whose skipped folders are recorded
    by pseudonym and reason only (folder names can be patient names)."""
    counts = Counter(o.status for o in outcomes)
    row = {
        "run_id": ctx.run_id, "started_at": started_at, "finished_at": utcnow(), "n_studies": n_studies,
        "n_done": counts["done"], "n_skipped": counts["skipped"], "n_failed": counts["failed"],
        "n_blocked": counts["blocked"], "config_json": ctx.config.to_json(), "keyslice_version": __version__,
        "key_fingerprint": ctx.pseudonymize.fingerprint,
        "n_input_folders": found.n_folders if found is not None else None,
        "skipped_inputs": ([{"folder_id": f.folder_id, "reason": f.reason} for f in found.skipped]
                           if found is not None else None),
    }
    ctx.store.record_run(row)
    return row
