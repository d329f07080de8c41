"""Review metrics: the paper's acceptance and agreement figures over the review views.

Definitions (the README's "Reviewing key slices" section says the same):

* A reviewer's **standing judgement** of a selection is their latest accept / reject / choose /
  not_visible on it that was not undone (view ``review_judgements``).
* **Acceptance** = accept / all standing judgements: choosing another slice, rejecting and "not
  visible in this series" all count as not accepted (the paper's share of key slices a
  radiologist accepts); ``not_visible`` is also counted on its own.
* **Reader agreement** on selections two readers judged: Cohen's kappa of accepted vs not, and the
  second reader's Acc@1 against the first: each reader's slice is the top-1 when they accepted
  and their chosen slice when they chose one; a hit is within ``tolerance_mm`` of the first
  reader's slice (slice indices equal when a z is unknown). The first reader of a selection is
  the one who judged it first.

The views themselves (``review_judgements``, ``review_acceptance_by_*``) are SQL over corpus tables,
so they live with the corpus views in :mod:`keyslice.corpus.views`: every
:func:`keyslice.corpus.sql.connect` has them, and this module only queries them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


def cohen_kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two raters' labels of the same items (None when undefined: no items, or
    chance agreement 1 because both raters always gave the same single label)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    labels = set(a) | set(b)
    observed = sum(x == y for x, y in zip(a, b)) / n
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in labels)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class Agreement:
    n_pairs: int                  # selections with standing judgements of two readers
    kappa_accept: float | None    # accepted vs not
    kappa_decision: float | None  # accept / choose / reject / not_visible
    n_slice_pairs: int            # pairs where both readers named a slice
    acc1_second_vs_first: float | None
    tolerance_mm: float


def _slice_of(row: dict) -> tuple[int, float | None] | None:
    if row["decision"] in ("accept", "choose") and row["chosen_index"] is not None:
        return row["chosen_index"], row["chosen_z_mm"]
    return None


def reader_agreement(judgements: list[dict], tolerance_mm: float = 10.0) -> Agreement:
    """Agreement of the first two readers of each selection (see the module docstring)."""
    by_sel: dict[str, list[dict]] = defaultdict(list)
    for r in judgements:
        by_sel[r["selection_sha256"]].append(r)
    first, second = [], []
    hits = n_slices = 0
    for rows in by_sel.values():
        readers: dict[str, dict] = {}
        for r in sorted(rows, key=lambda r: r["decided_at"]):
            readers.setdefault(r["reviewer"], r)
        if len(readers) < 2:
            continue
        one, two = list(readers.values())[:2]
        first.append(one)
        second.append(two)
        s1, s2 = _slice_of(one), _slice_of(two)
        if s1 is None or s2 is None:
            continue
        n_slices += 1
        if s1[1] is not None and s2[1] is not None:
            hits += abs(s1[1] - s2[1]) <= tolerance_mm + 1e-6
        else:
            hits += s1[0] == s2[0]
    return Agreement(
        n_pairs=len(first),
        kappa_accept=cohen_kappa([r["decision"] == "accept" for r in first], [r["decision"] == "accept" for r in second]),
        kappa_decision=cohen_kappa([r["decision"] for r in first], [r["decision"] for r in second]),
        n_slice_pairs=n_slices, acc1_second_vs_first=hits / n_slices if n_slices else None,
        tolerance_mm=tolerance_mm)


def acceptance_table(con) -> list[dict]:
    """Acceptance per (model, weights), in the order they were first reviewed, each with its change
    against the first row of the same table: rows of a selector and its fine-tuned version read as
    before -> after when the corpus was reviewed, rebuilt with the fine-tuned weights, and reviewed
    again."""
    rows = con.sql("SELECT * FROM review_acceptance_by_model ORDER BY first_decided_at").to_arrow_table().to_pylist()
    base = rows[0]["acceptance"] if rows else None
    for i, r in enumerate(rows):
        r["role"] = "first reviewed" if i == 0 else "later"
        r["delta_vs_first"] = None if i == 0 or base is None else r["acceptance"] - base
    return rows
