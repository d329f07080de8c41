"""Selection confidence (margin, peakedness, uncertain) and selections schema v2 beside v1 files."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.schemas import table_schema, to_table
from keyslice.selector.select import SelectorConfig, selection_confidence
from keyslice.corpus.sql import query

Z = np.arange(10, dtype=float) * 5.0          # 10 slices, 5 mm apart


def test_margin_ignores_the_neighbours_of_the_peak():
    curve = np.array([0.1, 0.1, 0.2, 0.5, 0.49, 0.48, 0.1, 0.1, 0.30, 0.1])
    ok = np.ones(10, bool)
    c = selection_confidence(curve, ok, Z, 3, tolerance_mm=10.0, threshold=0.05)
    # slices 1..5 are within 10 mm of slice 3: the competitor is slice 8 (0.30), not slice 4 (0.49)
    assert c.margin == pytest.approx(0.2) and c.uncertain is False
    assert c.peakedness == pytest.approx((0.5 - curve.mean()) / curve.std())
    tight = selection_confidence(curve, ok, Z, 3, tolerance_mm=0.0, threshold=0.05)
    assert tight.margin == pytest.approx(0.01) and tight.uncertain is True


def test_a_second_peak_elsewhere_makes_it_uncertain_and_disallowed_slices_do_not_count():
    curve = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.499])
    ok = np.ones(10, bool)
    assert selection_confidence(curve, ok, Z, 0, 10.0, 0.01).uncertain is True
    ok[9] = False                                # outside the organ's z-range (or a blank slice)
    c = selection_confidence(curve, ok, Z, 0, 10.0, 0.01)
    assert c.margin == pytest.approx(0.4) and c.uncertain is False


def test_no_slice_outside_the_tolerance_means_unknown():
    curve = np.array([0.2, 0.3, 0.1])
    c = selection_confidence(curve, np.ones(3, bool), np.array([0.0, 2.5, 5.0]), 1, 10.0, 0.01)
    assert c.margin is None and c.uncertain is None and c.peakedness is not None
    flat = selection_confidence(np.zeros(3), np.ones(3, bool), np.array([0.0, 20.0, 40.0]), 0, 10.0, 0.01)
    assert flat.margin == 0.0 and flat.uncertain is True and flat.peakedness == 0.0


def test_config_validates_the_tolerance():
    with pytest.raises(ValueError):
        SelectorConfig(confidence_tolerance_mm=-1)


def test_selections_built_carry_confidence(review_corpus):
    rows = query(review_corpus, "select * from selections").to_pylist()
    assert rows and all(len(r["curve"]) == r["n_slices"] for r in rows)
    for r in rows:
        assert r["curve"][r["top1_index"]] == pytest.approx(r["top1_score"], abs=1e-6)
        assert (r["margin"] is None) == (r["uncertain"] is None)
        if r["margin"] is not None:
            assert r["margin"] >= 0 and r["uncertain"] == (r["margin"] < SelectorConfig().uncertain_margin)
    # the 3-slice series (slices 1.25 mm apart) has no slice outside 10 mm: unknown, not confident
    assert any(r["n_slices"] == 3 and r["margin"] is None for r in rows)


def _v1_row(study: str) -> dict:
    return {"study_id": study, "finding_id": f"{study}:0", "series_id": "se-1", "model_id": "m",
            "weights_sha256": "w", "window": "abdomen", "n_slices": 3, "top1_index": 1, "top1_instance_number": 2,
            "top1_z_mm": 1.0, "top1_score": 0.5, "topk_indices": [1, 0], "topk_scores": [0.5, 0.4],
            "restricted_to": None, "z_range_mm": None, "image_path": f"images/{study}/0000.png",
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}


def test_old_corpora_read_with_unknown_confidence(tmp_path):
    """A selections file written with schema v1 reads as v2 (null margin/uncertain), in Python and SQL."""
    v1 = table_schema("selections", 1).schema
    assert table_schema("selections").version == 2 and "margin" not in v1.names
    old = pa.Table.from_pylist([_v1_row("st-old")], schema=v1)
    store = CheckpointStore(tmp_path)
    path = store.table_path("selections", "st-old")
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    new = {**_v1_row("st-new"), "margin": 0.2, "peakedness": 3.0, "uncertain": False, "curve": [0.1, 0.5, 0.2]}
    pq.write_table(to_table("selections", [new]), store.table_path("selections", "st-new"))
    [row] = store.read_rows("selections", "st-old")
    assert row["margin"] is None and row["uncertain"] is None and row["curve"] is None
    got = {r["study_id"]: r for r in query(tmp_path, "select * from selections").to_pylist()}
    assert got["st-old"]["uncertain"] is None and got["st-new"]["margin"] == pytest.approx(0.2)
