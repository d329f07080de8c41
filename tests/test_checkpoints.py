import datetime as dt

import pyarrow.parquet as pq
import pytest

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.lock import CorpusLockedError, corpus_lock, sweep_temporaries
from keyslice.corpus.schemas import SchemaError, table_schema
from keyslice.corpus.sql import query

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _vqa_row(i: int) -> dict:
    return {"study_id": "st-a", "finding_id": f"st-a:{i}", "qa_id": f"q{i}", "question": "Is it?", "answer": "yes",
            "answer_type": "closed", "question_type": "organ", "options": ["yes", "no"], "generator": "rule",
            "prompt_version": None, "series_id": "se-1", "slice_index": 3, "image_path": "images/x.png",
            "created_at": NOW}


def test_stage_is_done_only_after_commit(tmp_path):
    store = CheckpointStore(tmp_path)
    assert not store.is_done("vqa", "st-a")
    counts = store.commit_stage("vqa", "st-a", {"vqa": [_vqa_row(0), _vqa_row(1)]}, run_id="r1")
    assert counts == {"vqa": 2}
    assert store.is_done("vqa", "st-a")
    assert [r["qa_id"] for r in store.read_rows("vqa", "st-a")] == ["q0", "q1"]


def test_recommit_replaces_rows_instead_of_duplicating(tmp_path):
    store = CheckpointStore(tmp_path)
    store.commit_stage("vqa", "st-a", {"vqa": [_vqa_row(0), _vqa_row(1)]}, run_id="r1")
    store.commit_stage("vqa", "st-a", {"vqa": [_vqa_row(0)]}, run_id="r2")
    assert query(tmp_path, "select count(*) as n from vqa").to_pylist() == [{"n": 1}]


def test_bad_rows_write_nothing(tmp_path):
    store = CheckpointStore(tmp_path)
    bad = _vqa_row(1) | {"slice_index": 2.5}
    with pytest.raises(SchemaError):
        store.commit_stage("vqa", "st-a", {"vqa": [_vqa_row(0), bad]}, run_id="r1")
    assert not store.is_done("vqa", "st-a")
    assert not store.table_path("vqa", "st-a").exists()


def test_commit_requires_every_table_of_the_stage(tmp_path):
    with pytest.raises(ValueError, match="must write tables"):
        CheckpointStore(tmp_path).commit_stage("series", "st-a", {"series": []}, run_id="r")


def test_invalidate_forgets_the_stage_and_later_ones(tmp_path):
    store = CheckpointStore(tmp_path)
    for stage in ("segment", "series", "keyslice", "vqa"):
        store.marker_path(stage, "st-a").parent.mkdir(parents=True, exist_ok=True)
        store.marker_path(stage, "st-a").write_text("{}")
    store.invalidate("keyslice", "st-a")
    assert [store.is_done(s, "st-a") for s in ("segment", "series", "keyslice", "vqa")] == [True, True, False, False]


def test_failures_accumulate_and_are_queryable(tmp_path):
    store = CheckpointStore(tmp_path)
    store.record_failure("st-a", "series", ValueError("truncated file"), attempt=1, run_id="r1")
    store.record_failure("st-a", "series", ValueError("truncated file"), attempt=2, run_id="r2")
    rows = query(tmp_path, "select stage, error_type, message, attempt from failures order by attempt").to_pylist()
    assert rows == [{"stage": "series", "error_type": "ValueError", "message": "truncated file", "attempt": a}
                    for a in (1, 2)]


def test_empty_corpus_has_empty_typed_views(tmp_path):
    result = query(tmp_path, "select * from findings")
    assert result.num_rows == 0
    assert "organs" in result.column_names


def test_written_parquet_carries_schema_version(tmp_path):
    store = CheckpointStore(tmp_path)
    store.commit_stage("vqa", "st-a", {"vqa": [_vqa_row(0)]}, run_id="r1")
    meta = pq.read_schema(store.table_path("vqa", "st-a")).metadata
    assert meta[b"keyslice.schema_version"] == str(table_schema("vqa").version).encode()


def test_lock_excludes_a_second_build_and_sweeps_temporaries(tmp_path):
    (tmp_path / "tables" / "vqa").mkdir(parents=True)
    stale = tmp_path / "tables" / "vqa" / ".st-a.parquet.1234.tmp"
    stale.write_bytes(b"half")
    with corpus_lock(tmp_path):
        with pytest.raises(CorpusLockedError):
            with corpus_lock(tmp_path):
                pass
        assert sweep_temporaries(tmp_path) == 1
    assert not stale.exists()
    with corpus_lock(tmp_path):  # released after the first holder left
        pass
