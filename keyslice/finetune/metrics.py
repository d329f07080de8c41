"""Evaluation metrics, pure numpy (hand-checkable in tests/test_finetune_metrics.py).

Slice localisation (one query = one ranking of a volume's slices):
    The ground truth is a slice range ``[lo, hi]`` (a single key slice has ``lo == hi``; an
    organ prompt's truth is the organ's z-range). The error of a slice ``s`` is its distance to
    the range, in slices ``max(lo - s, 0, s - hi)`` and in mm along the sorted slice positions
    ``max(z[lo] - z[s], 0, z[s] - z[hi])``. MAE is the mean top-1 error; a query is a hit at
    ``k`` when any of its ``k`` best slices lies within ``tolerance_mm`` of the range.

Organ awareness (one organ = binary classification of slices):
    score = similarity of the organ prompt and the slice, label = slice inside the organ's
    z-range, prediction = ``score >= threshold``. :func:`youden_threshold` chooses the
    threshold that maximises Youden's J = sensitivity + specificity - 1 over candidate
    thresholds equal to the observed scores; ties go to the HIGHEST such threshold (the first
    maximum of ``tpr - fpr`` over decreasing thresholds, as ``sklearn.metrics.roc_curve`` +
    ``argmax`` would give). It is undefined (NaN) when the scores hold one class only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


# --------------------------------------------------------------------------- localisation


def range_distance(idx: np.ndarray, lo: int, hi: int, z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of slice indices to the range ``[lo, hi]``: (slices, mm)."""
    idx = np.asarray(idx, dtype=np.int64)
    z = np.asarray(z_mm, dtype=np.float64)
    d_sl = np.maximum(np.maximum(lo - idx, 0), idx - hi)
    d_mm = np.maximum(np.maximum(z[lo] - z[idx], 0.0), z[idx] - z[hi])
    return d_sl, d_mm


@dataclass(frozen=True)
class RankResult:
    top1: int
    err_slices: int
    err_mm: float
    hits: dict[int, bool]


def rank_query(scores: np.ndarray, z_mm: np.ndarray, lo: int, hi: int, *, tolerance_mm: float,
               ks: tuple[int, ...] = (1, 5), valid: np.ndarray | None = None) -> RankResult:
    """Rank the slices of one volume by ``scores`` (higher = better) against the truth ``[lo, hi]``.
    Ties in score go to the lower slice index (stable sort). ``valid`` masks slices that may not
    be chosen (undecodable)."""
    s = np.asarray(scores, dtype=np.float64).copy()
    if valid is not None:
        s[~np.asarray(valid, bool)] = -np.inf
    order = np.argsort(-s, kind="stable")
    d_sl, d_mm = range_distance(order[: max(ks)], lo, hi, z_mm)
    hits = {k: bool((d_mm[:k] <= tolerance_mm + 1e-9).any()) for k in ks}
    return RankResult(int(order[0]), int(d_sl[0]), float(d_mm[0]), hits)


def aggregate_ranks(results: list[RankResult], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """MAE (slices, mm) and Acc@k over queries."""
    if not results:
        return {"n": 0, "mae_slices": math.nan, "mae_mm": math.nan, **{f"acc@{k}": math.nan for k in ks}}
    return {
        "n": len(results),
        "mae_slices": float(np.mean([r.err_slices for r in results])),
        "mae_mm": float(np.mean([r.err_mm for r in results])),
        **{f"acc@{k}": float(np.mean([r.hits[k] for r in results])) for k in ks},
    }


# --------------------------------------------------------------------------- binary


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, J) maximising Youden's J; predictions are ``scores >= threshold``.
    Returns ``(nan, nan)`` when ``labels`` hold a single class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan, math.nan
    best_t, best_j = math.nan, -math.inf
    for t in np.unique(s)[::-1]:              # decreasing: ties keep the highest threshold
        pred = s >= t
        j = (pred & y).sum() / n_pos + (~pred & ~y).sum() / n_neg - 1.0
        if j > best_j + 1e-12:
            best_t, best_j = float(t), float(j)
    return best_t, best_j


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count 1/2); NaN with a single class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


@dataclass(frozen=True)
class BinaryResult:
    threshold: float
    n_pos: int
    n_neg: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    f1: float
    sensitivity: float
    specificity: float
    auc: float

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else math.nan


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> BinaryResult:
    """Accuracy, F1, sensitivity, specificity at ``threshold`` (+ threshold-free AUC).
    A NaN threshold gives NaN metrics. F1 is NaN when there is no positive label and none is
    predicted (0/0); sensitivity (specificity) is NaN without positive (negative) labels."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    a = auc(s, y)
    if math.isnan(threshold):
        return BinaryResult(threshold, n_pos, n_neg, 0, 0, 0, 0, math.nan, math.nan, math.nan, math.nan, a)
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    return BinaryResult(
        threshold=float(threshold), n_pos=n_pos, n_neg=n_neg, tp=tp, fp=fp, tn=tn, fn=fn,
        accuracy=_ratio(tp + tn, len(y)), f1=_ratio(2 * tp, 2 * tp + fp + fn),
        sensitivity=_ratio(tp, n_pos), specificity=_ratio(tn, n_neg), auc=a,
    )
