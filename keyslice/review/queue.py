"""What a reviewer sees next: the corpus' current selections, joined with their findings, in an order.

The whole queue is a few small columns per finding (read once with DuckDB when the app starts:
a corpus of thousands of findings opens in well under a second); the sentence, scores and curve of
a finding are looked up by id when the page shows it, and images are fetched by the browser only
for the finding on screen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyslice.review.store import selection_sha256

ORDERS = ("uncertain", "random", "organ", "study")
"""``uncertain``: least confident first (smallest margin; selections without a margin last, by
peakedness), ``random`` (seeded per reviewer, so a reader resumes in the same order), ``organ``,
``study`` (report order)."""

_ITEMS_SQL = """
SELECT s.study_id, s.finding_id, s.series_id, s.model_id, s.weights_sha256, s.window, s.n_slices,
       s.top1_index, s.top1_z_mm, s.top1_score, s.topk_indices, s.topk_scores, s.restricted_to,
       s.z_range_mm, s.margin, s.peakedness, s.uncertain, s.image_path,
       f.finding_index, f.text, f.organ, f.organs, f.status, f.laterality, f.measurements_mm, f.phase_hint,
       se.phase, se.kernel, se.slice_thickness_mm, se.z_min_mm, se.z_max_mm, se.spacing_uniform
FROM selections s
JOIN findings f ON f.study_id = s.study_id AND f.finding_id = s.finding_id
LEFT JOIN series se ON se.study_id = s.study_id AND se.series_id = s.series_id
"""


@dataclass
class Corpus:
    """The reviewable selections of a corpus, by finding id (one current selection per finding)."""

    root: Path
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> "Corpus":
        from keyslice.corpus.sql import connect

        con = connect(root)
        rows = con.sql(_ITEMS_SQL).to_arrow_table().to_pylist()
        items = {}
        for r in rows:
            r["selection_sha256"] = selection_sha256(r)
            r["z_step_mm"] = _uniform_step(r)
            items[r["finding_id"]] = r
        return cls(Path(root), items)

    def current_sha256(self, finding_id: str) -> str | None:
        """The finding's selection as the corpus holds it at this instant (its study's file re-read), so
        a rebuild that ran while the app was open is noticed before a decision is recorded; the item
        is refreshed from it."""
        from keyslice.corpus.checkpoints import CheckpointStore

        item = self.items[finding_id]
        try:
            rows = CheckpointStore(self.root).read_rows("selections", item["study_id"])
        except FileNotFoundError:
            return None
        for row in rows:
            if row["finding_id"] == finding_id:
                sha = selection_sha256(row)
                if sha != item["selection_sha256"]:
                    item.update({k: v for k, v in row.items() if k != "curve"}, selection_sha256=sha)
                    item["z_step_mm"] = _uniform_step(item)
                return sha
        return None

    def curve(self, finding_id: str) -> list[float] | None:
        """The stored similarity curve (selections v2), read when the finding is shown."""
        from keyslice.corpus.checkpoints import CheckpointStore

        item = self.items[finding_id]
        table = CheckpointStore(self.root).read("selections", item["study_id"])
        for fid, curve in zip(table.column("finding_id").to_pylist(), table.column("curve").to_pylist()):
            if fid == finding_id:
                return curve
        return None

    def z_of(self, finding_id: str, index: int) -> float | None:
        """z (mm) of a slice from the series table, when its spacing is uniform and agrees with the
        selection's own top-1 z; None otherwise (the app then asks the series itself, if it can)."""
        item = self.items[finding_id]
        if index == item["top1_index"]:
            return item["top1_z_mm"]
        step = item["z_step_mm"]
        return None if step is None else float(item["z_min_mm"] + step * index)


def _uniform_step(r: dict) -> float | None:
    n = r["n_slices"]
    if not r.get("spacing_uniform") or r.get("z_min_mm") is None or r.get("top1_z_mm") is None or n < 2:
        return None
    step = (r["z_max_mm"] - r["z_min_mm"]) / (n - 1)
    if abs(r["z_min_mm"] + step * r["top1_index"] - r["top1_z_mm"]) > 0.05 * max(abs(step), 1e-3) + 1e-3:
        return None
    return step


def order_items(items: list[dict], order: str, seed: str = "") -> list[dict]:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if order == "uncertain":
        def key(r):
            m, p = r.get("margin"), r.get("peakedness")
            return (m is None, m if m is not None else 0.0, p is None, p if p is not None else 0.0,
                    r["study_id"], r["finding_index"])
        return sorted(items, key=key)
    if order == "random":
        out = sorted(items, key=lambda r: r["finding_id"])
        random.Random(f"keyslice-review:{seed}").shuffle(out)
        return out
    if order == "organ":
        return sorted(items, key=lambda r: (r.get("organ") is None, r.get("organ") or "", r["study_id"],
                                            r["finding_index"]))
    return sorted(items, key=lambda r: (r["study_id"], r["finding_index"]))


QUEUE_FIELDS = ("finding_id", "study_id", "organ", "margin", "uncertain", "model_id")


def queue_entry(r: dict) -> dict:
    """The few fields the page needs to list and order the queue."""
    return {k: r.get(k) for k in QUEUE_FIELDS}
