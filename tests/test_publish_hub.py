"""The upload path against a fake Hub on 127.0.0.1 (no internet): first publish, no-op republish, incremental.

huggingface_hub's real client code runs unchanged (create_repo, repo_info, list_repo_tree,
create_commit with preupload + LFS batch + PUT + NDJSON commit); only the server is fake. Xet is
switched off so that LFS files go through the plain LFS protocol the fake implements.
"""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest

from keyslice.pseudonym import Pseudonymizer
from tests.publish_fixtures import FixtureStudy, fixture_corpus_fixtures, serving_fake_hub, write_fixture_corpus

TEST_KEY = "keyslice-hub-test-key"
REPO = "keyslice-test/ct-vqa"
SHARD = 150_000  # small shards, so that a new study touches only some of them


template, corpus = fixture_corpus_fixtures(TEST_KEY)


@pytest.fixture
def hub(monkeypatch):
    with serving_fake_hub(monkeypatch) as fake:
        yield fake


def _publish(root, **kw):
    from keyslice.publish import publish_corpus

    return publish_corpus(root, REPO, max_shard_bytes=SHARD, log=lambda m: None, **kw)


def test_first_publish_uploads_everything_and_loads_back(corpus, hub, tmp_path):
    from tests.publish_fixtures import assert_round_trip

    root, fx = corpus
    dry = _publish(root, dry_run_dir=tmp_path / "dry")
    assert hub.requests == []  # a dry run never talks to the Hub

    result = _publish(root, private=True)
    assert result.commit is not None and result.upload == sorted(dry.files)
    methods = {(m, p.split("/")[-1] if m == "PUT" else p) for m, p in hub.requests}
    assert ("POST", "/api/repos/create") in methods
    assert ("POST", f"/api/datasets/{REPO}/preupload/main") in methods
    assert ("POST", f"/datasets/{REPO}.git/info/lfs/objects/batch") in methods
    assert ("POST", f"/api/datasets/{REPO}/commit/main") in methods
    n_lfs = sum(1 for p in dry.files if p.endswith((".parquet", ".png")))
    assert sum(1 for p in dry.files if p.startswith("stats/")) == 6
    assert sum(1 for m, _ in hub.requests if m == "PUT") == n_lfs  # each shard and plot once, via LFS
    repo = hub.repos[REPO]
    assert repo.private is True
    # the Hub now holds byte for byte what the dry run wrote, and it loads back as the corpus
    for rel in dry.files:
        assert repo.files[rel] == (tmp_path / "dry" / rel).read_bytes()
    assert set(repo.files) == set(dry.files) | {".gitattributes"}
    assert_round_trip(root, hub.materialize(REPO, tmp_path / "from_hub"), tmp_path / "hf_cache", fx.excluded_series)
    # the publish is recorded in the corpus: what was sent, the commit, the corpus state it came from
    manifest = (root / "publish" / "keyslice-test__ct-vqa.json")
    import json

    record = json.loads(manifest.read_text())
    assert record["commit"] == repo.head and record["corpus_state"] == result.state["corpus_state"]
    assert record["files"] == result.files and record["run_ids"] == ["fixture-run-1"]


def test_republish_without_change_uploads_nothing(corpus, hub, tmp_path):
    root, _ = corpus
    _publish(root)
    head = hub.repos[REPO].head
    hub.requests.clear()
    result = _publish(root)
    assert result.commit is None and result.upload == [] and result.delete == []
    assert result.uploaded_bytes == 0
    assert hub.writes() == []  # no create, no preupload, no LFS batch/PUT, no commit
    assert {m for m, _ in hub.requests} == {"GET"}  # repo info and the file list only
    assert hub.repos[REPO].head == head
    # a dry run now agrees: nothing to upload against the last publish
    dry = _publish(root, dry_run_dir=tmp_path / "dry")
    assert dry.upload == [] and len(dry.unchanged) == len(dry.files)


def test_a_new_study_uploads_only_the_shards_it_changes(corpus, hub, tmp_path, data_dir):
    import pyarrow.parquet as pq

    root, fx = corpus
    first = _publish(root)
    hub.requests.clear()
    # the same build code path adds one more study of a new patient (a second run)
    extra = write_fixture_corpus(tmp_path / "extra", Pseudonymizer(TEST_KEY.encode(), "env"), data_dir,
                                 (FixtureStudy("case_100", "PAT-0100", n_findings=2),), run_id="fixture-run-2")
    new_sid = extra.study_ids["case_100"]
    for sub in ("tables", "stages", "images"):
        shutil.copytree(tmp_path / "extra" / sub, root / sub, dirs_exist_ok=True)

    result = _publish(root)
    assert result.commit is not None
    changed = [p for p in result.upload if p.endswith(".parquet")]
    assert "README.md" in result.upload  # counts and corpus state changed
    assert changed and len(result.upload) < len(result.files)
    # every re-sent file is of a bucket that holds the new study's rows (a bucket larger than the shard size
    # continues in further files, -001..., whose cut moves with it), or replaces a re-bucketed one
    staged = hub.materialize(REPO, tmp_path / "h")

    def bucket(rel: str) -> str:
        return re.sub(r"-\d{3}\.parquet$", ".parquet", rel)

    holding = {bucket(rel) for rel in result.files if rel.endswith(".parquet")
               and new_sid in pq.read_table(staged / rel, columns=["study_id"]).column("study_id").to_pylist()}
    for rel in changed:
        assert bucket(rel) in holding or rel not in first.files, rel
    unchanged = set(result.unchanged)
    assert unchanged and all(first.files[p]["sha256"] == result.files[p]["sha256"] for p in unchanged)
    puts = [p for m, p in hub.requests if m == "PUT"]
    # one LFS PUT per new content: a continuation file whose rows shifted into a file's old content is not re-sent
    known = {f["sha256"] for f in first.files.values()}
    assert len(puts) == len({result.files[p]["sha256"] for p in result.upload
                             if p.endswith((".parquet", ".png")) and result.files[p]["sha256"] not in known})
    # the new study changes the counts, so some plots are re-sent with the shards
    assert any(p.startswith("stats/") for p in result.upload)
    assert result.state["corpus_state"] != first.state["corpus_state"]
    assert result.state["run_ids"] == ["fixture-run-1", "fixture-run-2"]
    print(f"incremental publish: {len(result.upload)}/{len(result.files)} files, {result.uploaded_bytes} of "
          f"{sum(f['size'] for f in result.files.values())} bytes uploaded")


def test_resharding_deletes_stale_shards(corpus, hub, tmp_path):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    _publish(root)
    before = set(hub.repos[REPO].files)
    result = publish_corpus(root, REPO, log=lambda m: None)  # default shard size: one shard per split
    assert result.delete and set(result.delete) <= before
    assert set(hub.repos[REPO].files) == set(result.files) | {".gitattributes"}


def test_private_requested_but_repo_is_public_is_refused(corpus, hub):
    from huggingface_hub import HfApi

    from keyslice.publish import PublishError

    root, _ = corpus
    HfApi(endpoint=hub.url).create_repo(REPO, repo_type="dataset", private=False)
    hub.requests.clear()
    with pytest.raises(PublishError, match="PUBLIC"):
        _publish(root, private=True)
    assert hub.writes() == []


def test_a_concurrent_commit_is_not_overwritten(corpus, hub, monkeypatch):
    """The commit is pinned to the planned head (parent_commit): someone else's push in between fails ours."""
    from huggingface_hub.errors import HfHubHTTPError

    from keyslice.publish import hub as hub_module

    root, _ = corpus
    real = hub_module.remote_files

    def listing_then_someone_commits(api, repo_id, revision):
        files = real(api, repo_id, revision)
        hub.repos[repo_id].commits.append(hashlib.sha1(b"someone else").hexdigest())
        return files

    monkeypatch.setattr(hub_module, "remote_files", listing_then_someone_commits)
    with pytest.raises(HfHubHTTPError):
        _publish(root)
    assert not (root / "publish" / "keyslice-test__ct-vqa.json").exists()  # no manifest for a failed push


def test_cli_publish_against_the_fake_hub(corpus, hub):
    from typer.testing import CliRunner

    from keyslice.cli import app

    root, _ = corpus
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", REPO, "--private"])
    assert res.exit_code == 0, res.output
    assert f"published {REPO}" in res.output and "commit" in res.output
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", REPO, "--private"])
    assert res.exit_code == 0 and "nothing changed, no commit" in res.output
