"""Compaction: per-study files packed into shards, no row lost or duplicated, recomputes after it.

These tests build corpora directly through ``CheckpointStore.commit_stage`` with rows generated
from the declared schemas, so they run in a second and need no model or DICOM.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from keyslice.pipeline.registry import STAGE_TABLES, STAGES
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.compact import COMPACTABLE, compact_corpus
from keyslice.corpus.shards import compacted_files, is_compacted, shard_count
from keyslice.corpus.sql import view_sql
from keyslice.corpus.lock import CorpusLockedError, corpus_lock
from keyslice.corpus.schemas import table_schema
from keyslice.corpus.sql import query

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
REPO = Path(__file__).resolve().parents[1]


def _value(name: str, typ: pa.DataType, i: int):
    if pa.types.is_string(typ):
        return f"{name}-{i}"
    if pa.types.is_boolean(typ):
        return i % 2 == 0
    if pa.types.is_integer(typ):
        return i
    if pa.types.is_floating(typ):
        return i * 0.5
    if pa.types.is_timestamp(typ):
        return NOW
    if pa.types.is_list(typ):
        return [_value(name, typ.value_type, i), _value(name, typ.value_type, i + 1)]
    if pa.types.is_struct(typ):
        return {f.name: _value(f.name, f.type, i) for f in typ}
    raise TypeError(typ)


def make_rows(table: str, study_id: str, n: int, salt: str = "") -> list[dict]:
    schema = table_schema(table).schema
    rows = []
    for i in range(n):
        row = {f.name: _value(f.name, f.type, i) for f in schema}
        row["study_id"] = study_id
        for key in ("finding_id", "qa_id", "series_id"):
            if key in row:
                row[key] = f"{study_id}:{key}:{i}{salt}"
        rows.append(row)
    return rows


def commit_study(store: CheckpointStore, sid: str, n: int, stages=STAGES, salt: str = "") -> None:
    for stage in stages:
        store.commit_stage(stage, sid, {t: make_rows(t, sid, n, salt) for t in STAGE_TABLES[stage]}, run_id="r1")


def fail(store: CheckpointStore, sid: str, stage: str, attempt: int = 1) -> None:
    store.record_failure(sid, stage, ValueError(f"bad {sid}"), attempt, run_id="r1")


def visible(corpus: Path) -> dict[str, list[str]]:
    """Every row of every table as sorted canonical JSON (what a user sees through SQL)."""
    out = {}
    for table in COMPACTABLE:
        rows = query(corpus, f"select * from {table}").to_pylist()
        out[table] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def per_study(store: CheckpointStore, sids) -> dict:
    return {(t, s): store.read_rows(t, s) for s in sids for stage in STAGES for t in STAGE_TABLES[stage]
            if store.is_done(stage, s)}


@pytest.fixture()
def corpus(tmp_path) -> tuple[CheckpointStore, list[str]]:
    store = CheckpointStore(tmp_path / "corpus")
    sids = [f"st-{i:04x}" for i in range(40)]
    for i, sid in enumerate(sids):
        commit_study(store, sid, n=i % 4)          # every 4th study has zero rows in every table
        if i % 5 == 0:
            fail(store, sid, "keyslice")
    # a study whose vqa stage never finished (killed build): files without a marker stay per-study
    store.commit_stage("vqa", sids[1], {"vqa": make_rows("vqa", sids[1], 3, salt="x")}, run_id="r1")
    store.marker_path("vqa", sids[1]).unlink()
    return store, sids


def test_compaction_keeps_every_row_and_reads_per_study_the_same(corpus):
    store, sids = corpus
    before_sql, before_rows = visible(store.root), per_study(store, sids)
    n_before = sum(len(store.table_files(t)) for t in COMPACTABLE)
    report = compact_corpus(store.root, shards=4)
    assert visible(store.root) == before_sql
    assert per_study(store, sids) == before_rows           # CheckpointStore.read of compacted studies
    assert store.read_rows("vqa", sids[0]) == []            # zero-row study: empty, not an error
    n_after = sum(len(store.table_files(t)) for t in COMPACTABLE)
    assert n_after < n_before / 5
    assert all(is_compacted(p) for t in ("findings", "series", "failures") for p in store.table_files(t))
    # the unfinished stage's file is left alone, and it is what is read for that study
    assert report["vqa"].files_left == 1 and store.table_path("vqa", sids[1]).exists()
    assert len(store.read_rows("vqa", sids[1])) == 3
    assert shard_count(store) == 4
    with pytest.raises(FileNotFoundError):
        store.read("vqa", "st-never")
    # markers stay per study
    assert store.done_studies("vqa") == set(sids) - {sids[1]}


def test_compacting_twice_changes_nothing(corpus):
    store, _ = corpus
    compact_corpus(store.root, shards=4)
    first = visible(store.root)
    report = compact_corpus(store.root)
    assert visible(store.root) == first
    assert all(r.files_absorbed == 0 and r.rows_absorbed == 0 for t, r in report.items() if t != "vqa")
    with pytest.raises(ValueError, match="shards"):
        compact_corpus(store.root, shards=8)


def test_recomputing_a_compacted_study_never_duplicates_rows(corpus):
    store, sids = corpus
    compact_corpus(store.root, shards=4)
    target, emptied = sids[3], sids[7]       # 3 rows each before
    before = visible(store.root)
    # --force-stage series for two studies: markers go, the stages are recommitted with other rows
    for sid, n in ((target, 2), (emptied, 0)):
        store.invalidate("series", sid)
        commit_study(store, sid, n=n, stages=STAGES[1:], salt="new")
    for table in ("series", "assignments", "selections", "vqa"):
        assert len(store.read_rows(table, target)) == 2
        assert store.read_rows(table, emptied) == []
        n_sql = query(store.root, f"select count(*) as n from {table} where study_id in "
                                  f"('{target}', '{emptied}')").to_pylist()[0]["n"]
        assert n_sql == 2, table
        assert all(r[k].endswith("new") for r in store.read_rows(table, target)
                   for k in ("finding_id", "series_id") if k in r)
    # untouched tables and studies are unchanged
    assert visible(store.root)["findings"] == before["findings"]
    expected = visible(store.root)
    report = compact_corpus(store.root)
    assert visible(store.root) == expected
    assert report["series"].dead_rows_dropped == 6 and report["series"].files_absorbed == 2
    assert len(store.read_rows("series", target)) == 2 and store.read_rows("series", emptied) == []


def test_a_kill_between_shard_rename_and_deletion_shows_no_duplicate(corpus, tmp_path):
    store, sids = corpus
    saved = tmp_path / "saved"
    shutil.copytree(store.root / "tables", saved)
    before = visible(store.root)
    compact_corpus(store.root, shards=4)
    # put the absorbed per-study and per-attempt files back, as if killed right after the renames
    for src in saved.rglob("*.parquet"):
        dest = store.root / "tables" / src.relative_to(saved)
        if not dest.exists():
            shutil.copy(src, dest)
    assert visible(store.root) == before
    compact_corpus(store.root)
    assert visible(store.root) == before
    assert query(store.root, "select count(*) as n from failures").to_pylist()[0]["n"] == 8


def test_failures_keep_accumulating_after_compaction(corpus):
    store, sids = corpus
    compact_corpus(store.root, shards=4)
    fail(store, sids[2], "vqa", attempt=2)
    assert query(store.root, "select count(*) as n from failures").to_pylist()[0]["n"] == 9
    compact_corpus(store.root)
    assert query(store.root, "select count(*) as n from failures").to_pylist()[0]["n"] == 9
    assert all(is_compacted(p) for p in store.table_files("failures"))


def test_compaction_refuses_to_run_beside_a_build(corpus):
    store, _ = corpus
    with corpus_lock(store.root):
        with pytest.raises(CorpusLockedError):
            compact_corpus(store.root)


def test_views_of_a_never_compacted_corpus_are_unchanged(tmp_path):
    store = CheckpointStore(tmp_path)
    commit_study(store, "st-a", 2)
    assert "parse_filename" in view_sql("findings", "x/*.parquet")
    assert query(tmp_path, "select count(*) as n from findings").to_pylist()[0]["n"] == 2
    assert query(tmp_path, "select count(*) as n from failures").to_pylist()[0]["n"] == 0


def test_shards_are_sorted_by_study_and_read_by_row_group(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import keyslice.corpus.compact as compact

    monkeypatch.setattr(compact, "ROW_GROUP_ROWS", 16)
    store = CheckpointStore(tmp_path)
    sids = [f"st-{i:04x}" for i in range(60)]
    for sid in random.Random(1).sample(sids, len(sids)):
        commit_study(store, sid, 3, stages=("segment",))
    compact_corpus(tmp_path, shards=2)
    for shard in compacted_files(store, "findings"):
        ids = pq.read_table(shard, columns=["study_id"]).column("study_id").to_pylist()
        assert ids == sorted(ids)
        assert pq.ParquetFile(shard).num_row_groups > 1
    # add studies that fall between the compacted ones: the merge keeps the order
    for sid in [f"st-{i:04x}x" for i in range(0, 60, 7)]:
        commit_study(store, sid, 2, stages=("segment",))
    compact_corpus(tmp_path)
    for shard in compacted_files(store, "findings"):
        ids = pq.read_table(shard, columns=["study_id"]).column("study_id").to_pylist()
        assert ids == sorted(ids)
    assert query(tmp_path, "select count(*) as n from findings").to_pylist()[0]["n"] == 60 * 3 + 9 * 2
    assert len(store.read_rows("findings", "st-0007x")) == 2


_COMPACT_CHILD = """
import sys
from keyslice.corpus.compact import compact_corpus
print("ready", flush=True)
compact_corpus(sys.argv[1], shards=3)
"""


@pytest.mark.slow
def test_kill_9_during_compaction_loses_and_duplicates_nothing(tmp_path):
    store = CheckpointStore(tmp_path / "corpus")
    sids = [f"st-{i:04x}" for i in range(80)]
    for i, sid in enumerate(sids):
        commit_study(store, sid, n=1 + i % 3)
        if i % 10 == 0:
            fail(store, sid, "series")
    before = visible(store.root)
    reads = per_study(store, sids[:20])
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _COMPACT_CHILD, str(store.root)], env=env,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        assert visible(store.root) == before
        # a half-compacted corpus accepts new work: recompute one study
        sid = sids[rng.randrange(len(sids))]
        store.invalidate("vqa", sid)
        store.commit_stage("vqa", sid, {"vqa": make_rows("vqa", sid, 1 + sids.index(sid) % 3)}, run_id="r2")
        assert visible(store.root) == before
    compact_corpus(store.root)
    assert visible(store.root) == before
    assert per_study(store, sids[:20]) == reads
    assert not list(store.root.rglob("*.tmp"))
    assert killed >= 1, "every compaction finished before it could be killed: make the corpus bigger"
