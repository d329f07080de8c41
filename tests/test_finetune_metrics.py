"""Evaluation metrics against values computed by hand from tiny tables written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keyslice.finetune.metrics import (aggregate_ranks, auc, binary_metrics, range_distance, rank_query,
                                       youden_threshold)

# --- organ awareness ------------------------------------------------------------------------
# training CT: 6 slices, scores and inside-organ labels
TRAIN_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
TRAIN_LABELS = [1, 1, 0, 1, 0, 0]
# By hand (predict positive when score >= t; 3 positives, 3 negatives):
#   t=0.9: TP1 FP0 -> J = 1/3 + 3/3 - 1 = 0.333
#   t=0.8: TP2 FP0 -> J = 2/3 + 3/3 - 1 = 0.667   <- first maximum
#   t=0.7: TP2 FP1 -> J = 2/3 + 2/3 - 1 = 0.333
#   t=0.6: TP3 FP1 -> J = 3/3 + 2/3 - 1 = 0.667   (tie: the higher threshold 0.8 is kept)
#   t=0.5: TP3 FP2 -> 0.333 ; t=0.4: TP3 FP3 -> 0
# evaluated CT: 4 slices
EVAL_SCORES = [0.85, 0.75, 0.82, 0.30]
EVAL_LABELS = [1, 1, 0, 0]
# at t=0.8: predictions [1, 0, 1, 0] -> TP1 FN1 FP1 TN1: acc 2/4, F1 = 2*1/(2*1+1+1) = 0.5
# AUC: positive-negative pairs (0.85>0.82) (0.85>0.30) (0.75<0.82) (0.75>0.30) -> 3/4


def test_youden_threshold_by_hand_with_tie():
    t, j = youden_threshold(np.array(TRAIN_SCORES), np.array(TRAIN_LABELS))
    assert t == pytest.approx(0.8)
    assert j == pytest.approx(2 / 3)


def test_binary_metrics_by_hand_at_the_training_threshold():
    m = binary_metrics(np.array(EVAL_SCORES), np.array(EVAL_LABELS), 0.8)
    assert (m.tp, m.fn, m.fp, m.tn) == (1, 1, 1, 1)
    assert m.accuracy == pytest.approx(0.5)
    assert m.f1 == pytest.approx(0.5)
    assert m.sensitivity == pytest.approx(0.5)
    assert m.specificity == pytest.approx(0.5)
    assert m.auc == pytest.approx(0.75)
    assert auc(np.array(TRAIN_SCORES), np.array(TRAIN_LABELS)) == pytest.approx(8 / 9)  # 8 of 9 pairs ordered


def test_single_class_edge_cases():
    t, j = youden_threshold(np.array([0.2, 0.3]), np.array([1, 1]))
    assert math.isnan(t) and math.isnan(j)
    # all-negative organ (absent from the CT): accuracy = specificity, F1 undefined when nothing is predicted
    m = binary_metrics(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 0]), 0.5)
    assert m.accuracy == pytest.approx(2 / 3) and m.specificity == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(0.0)  # one false positive: 0 / (0 + 1 + 0)
    m = binary_metrics(np.array([0.1, 0.2]), np.array([0, 0]), 0.5)
    assert m.accuracy == 1.0 and math.isnan(m.f1) and math.isnan(m.sensitivity) and math.isnan(m.auc)
    m = binary_metrics(np.array([0.1, 0.2]), np.array([1, 0]), math.nan)
    assert math.isnan(m.accuracy) and m.auc == 0.0


# --- slice localisation ---------------------------------------------------------------------
Z = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0])  # 7 slices, 2 mm apart
TOL = 3.0


def test_rank_metrics_by_hand():
    # A: key slice 1; best slice 3 -> 2 slices / 4 mm off (> 3 mm: miss at 1); top-5 [3, 5, 1, 4, 2] holds 1
    a = rank_query(np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.8, 0.0]), Z, 1, 1, tolerance_mm=TOL)
    assert (a.top1, a.err_slices, a.err_mm, a.hits) == (3, 2, 4.0, {1: False, 5: True})
    # B: organ range 4..6; best slice 0 -> 4 slices / 8 mm; top-5 [0, 1, 4, 3, 2] holds 4 (inside)
    b = rank_query(np.array([1.0, 0.9, 0.1, 0.2, 0.3, 0.05, 0.0]), Z, 4, 6, tolerance_mm=TOL)
    assert (b.top1, b.err_slices, b.err_mm, b.hits) == (0, 4, 8.0, {1: False, 5: True})
    # C: range 4..6; best slice 3 -> 1 slice / 2 mm outside, within 3 mm: a hit at 1
    c = rank_query(np.array([0.0, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5]), Z, 4, 6, tolerance_mm=TOL)
    assert (c.top1, c.err_slices, c.err_mm, c.hits) == (3, 1, 2.0, {1: True, 5: True})
    agg = aggregate_ranks([a, b, c])
    assert agg["n"] == 3
    assert agg["mae_slices"] == pytest.approx(7 / 3)     # (2 + 4 + 1) / 3
    assert agg["mae_mm"] == pytest.approx(14 / 3)        # (4 + 8 + 2) / 3
    assert agg["acc@1"] == pytest.approx(1 / 3)
    assert agg["acc@5"] == pytest.approx(1.0)


def test_range_distance_and_invalid_slices():
    d_sl, d_mm = range_distance(np.array([0, 4, 5, 6]), 1, 4, Z)
    assert d_sl.tolist() == [1, 0, 1, 2] and d_mm.tolist() == [2.0, 0.0, 2.0, 4.0]
    # an undecodable slice is never chosen, even with the best score
    r = rank_query(np.array([0.0, 0.0, 0.0, 9.0, 1.0, 0.0, 0.0]), Z, 4, 4, tolerance_mm=0.0,
                   valid=np.array([1, 1, 1, 0, 1, 1, 1], bool))
    assert r.top1 == 4 and r.err_mm == 0.0 and r.hits[1]
