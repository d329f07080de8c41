"""Selection confidence in the published rows: margin, uncertain flag, review status and ``--min-confidence``.

The corpus is the publish fixture corpus (real GE head CT key slices, real ROCO sentences; pairing, VQA
pairs and the margins SYNTHETIC, set per slice by tests/publish_fixtures.py). Reviews are written through
the review app's own store, so undo and re-judging count as they do in the app.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from keyslice.corpus.sql import query
from tests.publish_fixtures import fixture_corpus_fixtures, load_config

TEST_KEY = "keyslice-publish-confidence-key"


template, corpus = fixture_corpus_fixtures(TEST_KEY)


def _rows(folder, config, cache):
    return [row for part in load_config(folder, config, cache).values() for row in part]


EXPORTABLE = ("JOIN series se ON se.series_id = sel.series_id WHERE NOT coalesce(se.burned_in_annotation, false) "
              "AND coalesce(se.drop_reason, '') <> 'secondary_capture'")


def test_min_confidence_leaves_out_low_margin_rows_in_every_config(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    out = tmp_path / "dry"
    result = publish_corpus(root, "o/n", dry_run_dir=out, min_confidence=0.02, log=lambda m: None)
    keep = {r["finding_id"]: r["margin"] for r in query(
        root, f"SELECT sel.finding_id, sel.margin FROM selections sel {EXPORTABLE} AND sel.margin >= 0.02").to_pylist()}
    low = query(root, f"SELECT count(*) n FROM selections sel {EXPORTABLE} AND (sel.margin < 0.02 OR sel.margin "
                      f"IS NULL)").to_pylist()[0]["n"]
    assert keep and low, "the fixture margins must fall on both sides of the threshold"
    cache = tmp_path / "cache"
    for config in ("selections", "findings", "vqa"):
        rows = _rows(out, config, cache)
        assert rows and {r["finding_id"] for r in rows} <= set(keep), config
        assert all(r["margin"] == pytest.approx(keep[r["finding_id"]]) and np.float32(r["margin"]) >= np.float32(0.02)
                   for r in rows)
    assert {r["finding_id"] for r in _rows(out, "selections", cache)} == set(keep)
    assert result.counts["selections"] and sum(result.counts["selections"].values()) == len(keep)
    assert result.privacy.ok
    card = (out / "README.md").read_text()
    assert "--min-confidence 0.02" in card and f"{low} selections" in card


def test_uncertain_flag_and_margin_are_in_every_row(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    out = tmp_path / "dry"
    publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    want = {r["finding_id"]: r for r in query(root, "SELECT finding_id, margin, uncertain FROM selections").to_pylist()}
    cache = tmp_path / "cache"
    uncertain = set()
    for config in ("selections", "findings", "vqa"):
        for r in _rows(out, config, cache):
            assert r["uncertain"] is want[r["finding_id"]]["uncertain"]
            assert r["margin"] == pytest.approx(want[r["finding_id"]]["margin"])
            assert r["review_status"] is None and r["n_reviews"] == 0
            if r["uncertain"]:
                uncertain.add(r["finding_id"])
    assert uncertain, "the fixture flags some selections uncertain"
    card = (out / "README.md").read_text()
    assert "### Confidence" in card and "not reviewed" in card


def test_review_status_follows_the_standing_judgements(corpus, tmp_path):
    from keyslice.publish import publish_corpus
    from keyslice.review.store import ReviewStore, selection_sha256

    root, _ = corpus
    sels = query(root, f"SELECT sel.* FROM selections sel {EXPORTABLE} ORDER BY finding_id").to_pylist()
    a, b, c, d = sels[:4]
    store = ReviewStore(root)

    def judge(sel, reviewer, decision, **extra):
        return store.append({"study_id": sel["study_id"], "finding_id": sel["finding_id"],
                             "series_id": sel["series_id"], "model_id": sel["model_id"],
                             "weights_sha256": sel["weights_sha256"], "selection_top1_index": sel["top1_index"],
                             "selection_top1_z_mm": sel["top1_z_mm"], "selection_sha256": selection_sha256(sel),
                             "reviewer": reviewer, "decision": decision, "chosen_index": extra.get("chosen_index"),
                             "chosen_z_mm": None, "undoes": extra.get("undoes"), "app_version": "test"})

    judge(a, "r1", "accept")
    judge(a, "r2", "accept")
    judge(b, "r1", "accept")
    judge(b, "r2", "not_visible")
    judge(c, "r1", "choose", chosen_index=0)
    undone = judge(d, "r1", "accept")
    judge(d, "r1", "undo", undoes=undone["review_id"])
    # a judgement of an older selection of the same finding does not count for the current one
    judge({**a, "finding_id": d["finding_id"], "top1_index": d["top1_index"] + 3}, "r2", "reject")

    out = tmp_path / "dry"
    publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    cache = tmp_path / "cache"
    expected = {a["finding_id"]: ("accepted", 2), b["finding_id"]: ("disputed", 2), c["finding_id"]: ("rejected", 1),
                d["finding_id"]: (None, 0)}
    for config in ("selections", "findings", "vqa"):
        got = {r["finding_id"]: (r["review_status"], r["n_reviews"]) for r in _rows(out, config, cache)}
        for fid, status in expected.items():
            assert got[fid] == status, (config, fid)
    # reviewer pseudonyms are never exported
    for r in _rows(out, "selections", cache):
        assert "r1" not in r.values() and "reviewer" not in r


def test_cli_min_confidence(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "dry"
    proc = subprocess.run([sys.executable, "-m", "keyslice.cli", "publish", "--out", str(root), "--repo-id", "o/n",
                           "--dry-run", str(out), "--min-confidence", "0.03"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--min-confidence 0.03: left out" in proc.stdout
    margins = [r["margin"] for r in _rows(out, "selections", tmp_path / "cache")]
    assert margins and np.float32(min(margins)) >= np.float32(0.03)


def test_the_gate_scans_the_new_columns(corpus, tmp_path):
    """A date planted in the vqa table's abnormality column (SYNTHETIC) is refused like any other PHI."""
    import datetime as dt

    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.publish import PrivacyError, publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_001"]
    rows = query(root, f"SELECT * FROM vqa WHERE study_id = '{sid}'").to_pylist()
    rows[0]["abnormality"] = "seen on 03/04/2021"
    rows[0]["created_at"] = dt.datetime.now(dt.timezone.utc)
    CheckpointStore(root).commit_stage("vqa", sid, {"vqa": rows}, "fixture-run-2")
    with pytest.raises(PrivacyError) as err:
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    hits = err.value.report.hits
    assert [(h.table, h.column) for h in hits] == [("vqa", "abnormality")], hits
    assert not (tmp_path / "dry").exists()
