"""Near-duplicate VQA pairs are exported once, and the card says how many were removed.

The corpus is the publish fixture corpus (real GE head CT key slices, real ROCO sentences); the
duplicate pairs added here are SYNTHETIC: copies of a real fixture pair moved to the same or a
neighbouring key slice of the same study.
"""

from __future__ import annotations

import datetime as dt
import hashlib


from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.sql import query
from keyslice.publish.dataset_builder import ExportRow, drop_near_duplicates
from tests.publish_fixtures import fixture_corpus_fixtures, load_config

TEST_KEY = "keyslice-publish-duplicates-key"


template, corpus = fixture_corpus_fixtures(TEST_KEY)


def _row(qa_id, question, answer, slice_index, *, study="s1", series="se1", finding=0) -> ExportRow:
    return ExportRow("train", "p", (study, finding, f"{study}:{finding}", qa_id), "images/x.png", "x.png",
                     {"qa_id": qa_id, "study_id": study, "series_id": series, "question": question, "answer": answer,
                      "slice_index": slice_index})


def test_near_duplicate_rule():
    rows = [_row("a", "Is the liver abnormal?", "yes", 10),
            _row("b", "is the  liver abnormal", "Yes", 11, finding=1),       # same pair, adjacent slice: dropped
            _row("c", "Is the liver abnormal?", "yes", 10, finding=2),       # same slice: dropped
            _row("d", "Is the liver abnormal?", "yes", 13, finding=3),       # 3 slices away: kept
            _row("e", "Is the liver abnormal?", "no", 10, finding=4),        # another answer: kept
            _row("f", "Is the liver abnormal?", "yes", 10, series="se2"),    # another series: kept
            _row("g", "Is the liver abnormal?", "yes", 10, study="s2")]      # another study: kept
    kept, dropped = drop_near_duplicates(rows)
    assert sorted(r.fields["qa_id"] for r in kept) == ["a", "d", "e", "f", "g"] and dropped == 2
    # the earliest finding's pair is the one kept, whatever the input order
    kept, _ = drop_near_duplicates(list(reversed(rows)))
    assert "a" in {r.fields["qa_id"] for r in kept} and "b" not in {r.fields["qa_id"] for r in kept}


def test_publish_exports_duplicates_once_and_counts_them(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_001"]
    rows = query(root, f"SELECT * FROM vqa WHERE study_id = '{sid}' ORDER BY finding_id, qa_id").to_pylist()
    sels = {r["finding_id"]: r for r in query(root, f"SELECT * FROM selections WHERE study_id = '{sid}'").to_pylist()}
    first = next(r for r in rows if r["finding_id"] == f"{sid}:0" and r["answer_type"] == "closed")
    neighbour = sels[f"{sid}:1"]
    assert abs(neighbour["top1_index"] - first["slice_index"]) == 1, "fixture key slices are adjacent"
    extra = []
    for n, (finding, sel) in enumerate(((f"{sid}:0", sels[f"{sid}:0"]), (f"{sid}:1", neighbour))):
        extra.append({**first, "finding_id": finding, "question": first["question"].upper(),
                      "qa_id": hashlib.sha256(f"dup{n}".encode()).hexdigest()[:20],
                      "slice_index": sel["top1_index"], "image_path": sel["image_path"],
                      "created_at": dt.datetime.now(dt.timezone.utc)})
    CheckpointStore(root).commit_stage("vqa", sid, {"vqa": rows + extra}, "fixture-run-2")

    out = tmp_path / "dry"
    result = publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    exported = [r for part in load_config(out, "vqa", tmp_path / "cache").values() for r in part]
    ids = {r["qa_id"] for r in exported}
    assert first["qa_id"] in ids and not ids & {e["qa_id"] for e in extra}
    total = query(root, "SELECT count(*) n FROM vqa v JOIN series se USING (series_id) WHERE NOT coalesce("
                        "se.burned_in_annotation, false) AND coalesce(se.drop_reason, '') <> 'secondary_capture'"
                  ).to_pylist()[0]["n"]
    assert sum(result.counts["vqa"].values()) == len(exported) == total - 2
    assert "Near-duplicate pairs removed: 2 " in (out / "README.md").read_text()
