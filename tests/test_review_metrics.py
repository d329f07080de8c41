"""Review metrics: Cohen's kappa, reader agreement, the SQL views and `keyslice eval --reviews`."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from keyslice.cli import app
from keyslice.review.metrics import cohen_kappa, reader_agreement
from keyslice.review.store import ReviewStore, selection_sha256
from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY
from tests.review_utils import copy_corpus

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)


def test_cohen_kappa_textbook_example():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([], []) is None and cohen_kappa(["y", "y"], ["y", "y"]) is None


def _row(reviewer, sel, decision, minute, chosen=None, z=None, rid=None):
    return {"review_id": rid or f"{reviewer}-{sel}-{minute}", "reviewer": reviewer, "selection_sha256": sel,
            "finding_id": sel, "decision": decision, "chosen_index": chosen, "chosen_z_mm": z,
            "decided_at": T0 + dt.timedelta(minutes=minute)}


def test_reader_agreement_first_two_readers_and_acc1_within_tolerance():
    rows = [
        _row("A", "s1", "accept", 0, 10, 50.0), _row("B", "s1", "accept", 5, 10, 50.0),       # hit
        _row("A", "s2", "choose", 1, 12, 60.0), _row("B", "s2", "choose", 6, 14, 68.0),       # 8 mm: hit
        _row("A", "s3", "accept", 2, 3, 15.0), _row("B", "s3", "choose", 7, 7, 35.0),         # 20 mm: miss
        _row("A", "s4", "reject", 3), _row("B", "s4", "not_visible", 8),                      # no slices
        _row("B", "s5", "accept", 4, 1, 5.0), _row("C", "s5", "accept", 9, 1, None),          # index equal: hit
        _row("C", "s6", "accept", 0, 1, 1.0),                                                # one reader only
        _row("A", "s1", "accept", 20, 10, 50.0), _row("C", "s1", "reject", 21),              # third reader ignored
    ]
    ag = reader_agreement(rows, tolerance_mm=10.0)
    assert ag.n_pairs == 5 and ag.n_slice_pairs == 4
    assert ag.acc1_second_vs_first == pytest.approx(3 / 4)
    first = [True, False, True, False, True]
    second = [True, False, False, False, True]
    assert ag.kappa_accept == pytest.approx(cohen_kappa(first, second))
    assert reader_agreement(rows, tolerance_mm=30.0).acc1_second_vs_first == pytest.approx(1.0)


def _record(store: ReviewStore, sel: dict, reviewer: str, decision: str, minute: int, chosen: int | None = None):
    row = {"study_id": sel["study_id"], "finding_id": sel["finding_id"], "series_id": sel["series_id"],
           "model_id": sel["model_id"], "weights_sha256": sel["weights_sha256"],
           "selection_top1_index": sel["top1_index"], "selection_top1_z_mm": sel["top1_z_mm"],
           "selection_sha256": selection_sha256(sel), "reviewer": reviewer, "decision": decision,
           "chosen_index": sel["top1_index"] if decision == "accept" else chosen,
           "chosen_z_mm": sel["top1_z_mm"] if decision == "accept" else None, "undoes": None,
           "decided_at": T0 + dt.timedelta(minutes=minute), "app_version": "test"}
    return store.append(row)


def test_views_and_eval_reviews(review_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    corpus = copy_corpus(review_corpus, tmp_path / "corpus")
    sels = query(corpus, "select * from selections order by finding_id").to_pylist()
    store = ReviewStore(corpus)
    # reader A: accepts the first 6, rejects the rest; reader B agrees on 10 of the first 12 findings
    for i, s in enumerate(sels):
        _record(store, s, "re-a", "accept" if i < 6 else "reject", i)
    for i, s in enumerate(sels[:12]):
        agree = i not in (0, 7)
        a_accepted = i < 6
        _record(store, s, "re-b", "accept" if a_accepted == agree else "reject", 100 + i)
    # a decision undone does not count; a skip does not count
    undone = _record(store, sels[-1], "re-a", "accept", 200)
    store.append({**undone, "review_id": "undo-1", "decision": "undo", "undoes": undone["review_id"],
                  "chosen_index": None, "chosen_z_mm": None, "decided_at": T0 + dt.timedelta(minutes=201)})
    _record(store, sels[-2], "re-a", "skip", 202)

    [model] = query(corpus, "select * from review_acceptance_by_model").to_pylist()
    n_b_accept = sum(1 for i in range(12) if (i < 6) == (i not in (0, 7)))
    assert model["n_judged"] == len(sels) + 12 and model["n_accepted"] == 6 + n_b_accept
    assert model["n_rejected"] == model["n_judged"] - model["n_accepted"] and model["n_reviewers"] == 2
    per_reviewer = {r["reviewer"]: r["acceptance"] for r in
                    query(corpus, "select * from review_acceptance_by_reviewer").to_pylist()}
    assert per_reviewer["re-a"] == pytest.approx(round(6 / len(sels), 4))
    organs = query(corpus, "select sum(n_judged) as n from review_acceptance_by_organ").to_pylist()[0]["n"]
    phases = query(corpus, "select sum(n_judged) as n from review_acceptance_by_phase").to_pylist()[0]["n"]
    assert organs == phases == model["n_judged"]

    from rich.console import Console

    monkeypatch.setattr("keyslice.review.cli.console", Console(width=250))
    result = CliRunner().invoke(app, ["eval", "--reviews", str(corpus)])
    assert result.exit_code == 0, result.output
    assert f"{100 * model['acceptance']:.2f}%" in result.output and "local:tiny-clip" in result.output
    first = [i < 6 for i in range(12)]
    second = [(i < 6) == (i not in (0, 7)) for i in range(12)]
    kappa = cohen_kappa(first, second)
    assert "12 selection(s) judged by two readers" in result.output and f"{kappa:.3f}" in result.output
    assert "100.00% on" in result.output   # both readers accepted the same top-1 wherever both named a slice


def test_eval_needs_a_config_or_reviews(tmp_path):
    result = CliRunner().invoke(app, ["eval"])
    assert result.exit_code != 0 and "--reviews" in result.output
    result = CliRunner().invoke(app, ["eval", "--reviews", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "keyslice build" in result.output
