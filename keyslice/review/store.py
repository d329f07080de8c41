"""Reviewer decisions: append-only, one atomically written Parquet file per decision.

``CORPUS/tables/reviews/<decided_at>-<review_id>.parquet`` is written to a temporary name, fsynced
and renamed (:func:`keyslice.corpus.atomic.write_parquet_atomic`) before the app acknowledges the
decision, so an acknowledged decision survives ``kill -9`` and a power cut, and a killed server
loses at most the decision it had not yet acknowledged. Names are unique (time + uuid4): two
reviewers, or two servers on one corpus, never write the same file. Nothing is ever rewritten:
an undo is a new row (``decision = 'undo'``, ``undoes`` = the withdrawn ``review_id``).

Rebuilding the selections (``--force-stage keyslice``) never touches this table, and each row keeps
the identity of the selection it judged (model, weights, top-1 slice and ``selection_sha256``), so
a review of a selection that has since changed is still attributed to the one it judged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping

import pyarrow.parquet as pq

from keyslice.corpus.atomic import write_parquet_atomic
from keyslice.corpus.schemas import to_table, utcnow, validate_table

#: every value of ``reviews.decision``
DECISIONS = ("accept", "reject", "choose", "not_visible", "skip", "undo")
#: decisions that judge the key slice (acceptance = accept / these); skip and undo do not
JUDGEMENTS = ("accept", "reject", "choose", "not_visible")

_IDENTITY = ("finding_id", "series_id", "model_id", "weights_sha256", "window", "top1_index", "topk_indices")


def selection_sha256(selection: Mapping[str, Any]) -> str:
    """Identity of one selection: which finding, series, model and weights, window and top-k slices.

    Scores are left out on purpose: a bit-identical rebuild on another device may differ in the
    last float digits and still show the reader the same slices.
    """
    key = {k: selection[k] for k in _IDENTITY}
    key["topk_indices"] = [int(i) for i in key["topk_indices"]]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class ReviewStore:
    """The ``reviews`` table of one corpus, with an in-memory copy for the app's lookups."""

    def __init__(self, corpus: Path) -> None:
        self.corpus = Path(corpus)
        self.folder = self.corpus / "tables" / "reviews"
        self._lock = threading.Lock()
        self._rows: dict[str, dict] = {}
        self._seen: set[str] = set()
        # standing judgements, kept up to date row by row so that a decision costs the same with
        # 10 or 10,000 rows: reviewer -> (finding_id, selection_sha256) -> row
        self._history: dict[tuple[str, str, str], list[dict]] = {}
        self._undone: set[str] = set()
        self._standing: dict[str, dict[tuple[str, str], dict]] = {}

    def _index(self, row: dict) -> None:
        """Fold one row into the standing judgements: the latest judgement per (reviewer, finding,
        selection) that was not undone, so undoing the latest lets an earlier one stand again (an
        undo stack). Skips and undos never stand."""
        if row["decision"] in JUDGEMENTS:
            key = (row["reviewer"], row["finding_id"], row["selection_sha256"])
            history = self._history.setdefault(key, [])
            history.append(row)
            history.sort(key=lambda r: (r["decided_at"], r["review_id"]))
            self._restand(key)
        elif row["decision"] == "undo" and row.get("undoes"):
            self._undone.add(row["undoes"])
            target = self._rows.get(row["undoes"])
            if target is not None and target["decision"] in JUDGEMENTS:
                self._restand((target["reviewer"], target["finding_id"], target["selection_sha256"]))

    def _restand(self, key: tuple[str, str, str]) -> None:
        live = [r for r in self._history.get(key, []) if r["review_id"] not in self._undone]
        per = self._standing.setdefault(key[0], {})
        if live:
            per[(key[1], key[2])] = live[-1]
        else:
            per.pop((key[1], key[2]), None)

    def is_undone(self, review_id: str) -> bool:
        with self._lock:
            return review_id in self._undone

    def standing(self, reviewer: str) -> dict[tuple[str, str], dict]:
        """(finding_id, selection_sha256) -> the reviewer's standing judgement."""
        with self._lock:
            return dict(self._standing.get(reviewer, {}))

    def refresh(self) -> list[dict]:
        """Read every decision file not seen yet (another server on the same corpus may add some)."""
        files = sorted(self.folder.glob("*.parquet")) if self.folder.is_dir() else []
        with self._lock:
            for path in files:
                if path.name in self._seen:
                    continue
                table = validate_table("reviews", pq.read_table(path))
                for row in table.to_pylist():
                    self._rows[row["review_id"]] = row
                    self._index(row)
                self._seen.add(path.name)
            return list(self._rows.values())

    def rows(self) -> list[dict]:
        with self._lock:
            return list(self._rows.values())

    def get(self, review_id: str) -> dict | None:
        with self._lock:
            return self._rows.get(review_id)

    def append(self, row: Mapping[str, Any]) -> dict:
        """Validate and durably write one decision; returns the stored row (with id and time)."""
        row = dict(row)
        row.setdefault("review_id", uuid.uuid4().hex)
        row.setdefault("decided_at", utcnow())
        if row["decision"] not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {row['decision']!r}")
        table = to_table("reviews", [row])
        stamp: dt.datetime = row["decided_at"]
        name = f"{stamp.strftime('%Y%m%dT%H%M%S%f')}-{row['review_id']}.parquet"
        write_parquet_atomic(self.folder / name, table)
        with self._lock:
            self._rows[row["review_id"]] = row
            self._seen.add(name)
            self._index(row)
        return row
