"""Corpora on object stores: an fsspec mirror that stays consistent, and DuckDB views over its URL.

The mirror goes to fsspec's in-memory filesystem (``memory://``), which DuckDB reads through the
same fsspec filesystem; ``s3://``/``gs://`` go through DuckDB's httpfs extension instead, which
cannot be installed offline here, so for those only the secret built from the environment is
checked (:func:`keyslice.corpus.storage.secret_sql`).
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from typer.testing import CliRunner

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.cli import app
from keyslice.corpus.compact import compact_corpus
from keyslice.corpus.storage import normalize, secret_sql, sync_corpus
from tests.test_ops_compact import commit_study, fail, make_rows, visible


@pytest.fixture()
def remote():
    """A fresh in-memory bucket (fsspec's memory filesystem is global to the process)."""
    fs = fsspec.filesystem("memory")
    url = "memory://bucket/corpus"
    if fs.exists("/bucket"):
        fs.rm("/bucket", recursive=True)
    yield fs, url
    if fs.exists("/bucket"):
        fs.rm("/bucket", recursive=True)


@pytest.fixture()
def store(tmp_path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "corpus")
    for i in range(24):
        sid = f"st-{i:04x}"
        commit_study(store, sid, n=i % 3)
        if i % 6 == 0:
            fail(store, sid, "series")
        store.write_image(sid, "0000.png", f"synthetic png {i}".encode())
    (store.root / ".keyslice").mkdir(exist_ok=True)
    (store.root / ".keyslice" / "pseudonym.key").write_text("secret")
    (store.root / "cache" / "embeddings").mkdir(parents=True)
    (store.root / "cache" / "embeddings" / "x.npy").write_bytes(b"cache")
    return store


class RecordingFS:
    """Proxy to an fsspec filesystem that logs uploads and deletions in order."""

    def __init__(self, fs):
        self._fs, self.ops = fs, []

    def put_file(self, src, dest, **kw):
        self.ops.append(("put", dest))
        return self._fs.put_file(src, dest, **kw)

    def rm_file(self, path, **kw):
        self.ops.append(("rm", path))
        return self._fs.rm_file(path, **kw)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_mirror_reads_like_the_local_corpus_through_duckdb(store, remote):
    fs, url = remote
    compact_corpus(store.root, shards=4)
    store.invalidate("vqa", "st-0003")       # a recompute after compaction: the per-study file wins
    store.commit_stage("vqa", "st-0003", {"vqa": make_rows("vqa", "st-0003", 1, salt="new")}, run_id="r2")
    counts = sync_corpus(store.root, url)
    assert counts["uploaded"] > 0 and counts["deleted"] == 0
    assert visible(url) == visible(store.root)
    uploaded = fs.find("/bucket/corpus")
    assert not [p for p in uploaded if "/.keyslice/" in p or "/cache/" in p]   # key and cache stay local
    assert sum("/images/" in p for p in uploaded) == 24
    # nothing changed: nothing is uploaded again
    assert sync_corpus(store.root, url) == {"uploaded": 0, "deleted": 0}


def test_mirror_order_keeps_readers_consistent(store, remote):
    fs, url = remote
    sync_corpus(store.root, url)                          # per-study files and markers are up
    before = visible(url)
    compact_corpus(store.root, shards=4)                  # absorbs them into shards
    recorder = RecordingFS(fs)
    counts = sync_corpus(store.root, url, fs=recorder)
    assert counts["deleted"] > 0
    ops = recorder.ops
    shard_puts = [i for i, (op, p) in enumerate(ops) if op == "put" and "/compacted-" in p]
    table_rms = [i for i, (op, p) in enumerate(ops) if op == "rm" and "/tables/" in p]
    assert shard_puts and table_rms and max(shard_puts) < min(table_rms)   # shards up before files go
    assert visible(url) == before == visible(store.root)
    # a recomputed stage: its old marker goes first, new table files next, the new marker last
    store.invalidate("keyslice", "st-0005")
    commit_study(store, "st-0005", n=2, stages=("keyslice", "vqa"), salt="again")
    recorder.ops.clear()
    sync_corpus(store.root, url, fs=recorder)
    ops = recorder.ops
    marker_puts = [i for i, (op, p) in enumerate(ops) if op == "put" and "/stages/" in p]
    table_puts = [i for i, (op, p) in enumerate(ops) if op == "put" and "/tables/" in p]
    assert marker_puts and table_puts and max(table_puts) < min(marker_puts)
    assert visible(url) == visible(store.root)


def test_keyslice_sql_and_compact_sync_to_accept_urls(store, remote):
    fs, url = remote
    res = CliRunner().invoke(app, ["compact", "--out", str(store.root), "--sync-to", url], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "mirrored to memory://bucket/corpus" in res.output
    assert not [p for p in fs.find("/bucket/corpus/tables/findings") if "/compacted-" not in p]
    res = CliRunner().invoke(app, ["sql", "--out", url, "select count(*) as n from findings", "--format", "json",
                                   "-o", str(store.root.parent / "n.json")])
    assert res.exit_code == 0, res.output
    want = sum(i % 3 for i in range(24))
    assert (store.root.parent / "n.json").read_text().replace(" ", "").replace("\n", "") == f'[{{"n":{want}}}]'


def test_urls_survive_pathlib():
    assert normalize(Path("s3://bucket/corpus/")) == "s3://bucket/corpus"
    assert normalize("gs://b/c") == "gs://b/c"
    assert normalize("relative/corpus") == Path("relative/corpus")


def test_duckdb_secrets_from_the_environment():
    minio = secret_sql("s3", {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "it's",
                              "AWS_ENDPOINT_URL": "http://minio:9000/", "AWS_REGION": "eu-west-1"})
    assert "TYPE s3" in minio and "KEY_ID 'AK'" in minio and "SECRET 'it''s'" in minio
    assert "ENDPOINT 'minio:9000'" in minio and "URL_STYLE 'path'" in minio and "USE_SSL false" in minio
    assert "REGION 'eu-west-1'" in minio
    assert "USE_SSL true" in secret_sql("s3", {"AWS_ACCESS_KEY_ID": "AK", "AWS_ENDPOINT_URL": "https://r2.example"})
    assert "PROVIDER credential_chain" in secret_sql("s3", {})
    assert "TYPE gcs" in secret_sql("gs", {"GCS_ACCESS_KEY_ID": "G", "GCS_SECRET_ACCESS_KEY": "S"})
    assert secret_sql("gs", {}) is None
