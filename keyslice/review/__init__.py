"""Human review of key-slice selections: a local web app, the ``reviews`` table and its metrics.

The loop: ``keyslice build`` -> ``keyslice review`` (a reader accepts, rejects or corrects each
key slice) -> ``keyslice eval --reviews`` (acceptance, reader agreement) -> ``keyslice finetune``
on the reviews -> rebuild -> review again.

Modules: :mod:`.store` (decisions: append-only, one atomic file each), :mod:`.queue` (what to
review next), :mod:`.slices` (slices of a series rendered on demand from the studies),
:mod:`.app` (the Starlette app), :mod:`.metrics` (SQL views, kappa, the acceptance table),
:mod:`.cli` (the ``review`` command and ``eval --reviews``).
"""

from keyslice.review.store import DECISIONS, JUDGEMENTS, ReviewStore, selection_sha256

__all__ = ["DECISIONS", "JUDGEMENTS", "ReviewStore", "selection_sha256"]
