"""ReviewStore: one file per decision, standing judgements as an undo stack, rows of another store."""

from __future__ import annotations

import datetime as dt

import pytest

from keyslice.review.store import ReviewStore
from keyslice.corpus.schemas import SchemaError

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)


def row(decision: str, minute: int, reviewer: str = "re-a", finding: str = "st-1:0", undoes: str | None = None,
        sha: str = "s1") -> dict:
    return {"study_id": "st-1", "finding_id": finding, "series_id": "se-1", "model_id": "m", "weights_sha256": "w",
            "selection_top1_index": 3, "selection_top1_z_mm": 1.0, "selection_sha256": sha, "reviewer": reviewer,
            "decision": decision, "chosen_index": 3 if decision == "accept" else None, "chosen_z_mm": None,
            "undoes": undoes, "decided_at": T0 + dt.timedelta(minutes=minute), "app_version": "test"}


def test_standing_is_an_undo_stack_and_other_stores_rows_are_read(tmp_path):
    a = ReviewStore(tmp_path)
    first = a.append(row("accept", 0))["review_id"]
    second = a.append(row("reject", 1))["review_id"]
    a.append(row("skip", 2))
    assert a.standing("re-a")[("st-1:0", "s1")]["review_id"] == second
    a.append(row("undo", 3, undoes=second))
    assert a.standing("re-a")[("st-1:0", "s1")]["review_id"] == first and a.is_undone(second)
    a.append(row("undo", 4, undoes=first))
    assert a.standing("re-a") == {}
    a.append(row("not_visible", 5, sha="s2"))                      # the rebuilt selection: its own judgement
    assert list(a.standing("re-a")) == [("st-1:0", "s2")]
    assert len(list((tmp_path / "tables" / "reviews").glob("*.parquet"))) == 6
    b = ReviewStore(tmp_path)                                     # another server on the same corpus
    b.refresh()
    assert b.standing("re-a") == a.standing("re-a") and len(b.rows()) == 6
    a.append(row("accept", 6, reviewer="re-b"))
    assert b.standing("re-b") == {}
    b.refresh()
    assert list(b.standing("re-b")) == [("st-1:0", "s1")]


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    s = ReviewStore(tmp_path)
    with pytest.raises(ValueError):
        s.append(row("maybe", 0))
    with pytest.raises(SchemaError):
        s.append({**row("accept", 0), "chosen_index": "3"})
    assert not (tmp_path / "tables" / "reviews").exists() or not list((tmp_path / "tables" / "reviews").iterdir())
