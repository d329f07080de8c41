"""Named, immutable releases (`keyslice publish --tag`): Hub tags, the corpus' release record, the card's changes.

The upload runs huggingface_hub's real client against the fake Hub on 127.0.0.1 (tests/publish_fixtures.py,
which implements the refs and tag endpoints too). The corpus is the publish fixture corpus (real GE head CT
key slices, real ROCO sentences; pairing and VQA pairs SYNTHETIC).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from keyslice.pseudonym import Pseudonymizer
from tests.publish_fixtures import (FixtureStudy, fixture_corpus_fixtures, load_config, serving_fake_hub,
                                    write_fixture_corpus)

TEST_KEY = "keyslice-release-test-key"
REPO = "keyslice-test/ct-vqa"


template, corpus = fixture_corpus_fixtures(TEST_KEY)


@pytest.fixture
def hub(monkeypatch):
    with serving_fake_hub(monkeypatch) as fake:
        yield fake


def _publish(root, **kw):
    from keyslice.publish import publish_corpus

    return publish_corpus(root, REPO, log=lambda m: None, **kw)


def _add_study(root, tmp_path, data_dir) -> str:
    """One more study of a new patient, committed by the same code path as a build (a second run)."""
    extra = write_fixture_corpus(tmp_path / "extra", Pseudonymizer(TEST_KEY.encode(), "env"), data_dir,
                                 (FixtureStudy("case_100", "PAT-0100", n_findings=2),), run_id="fixture-run-2")
    for sub in ("tables", "stages", "images"):
        shutil.copytree(tmp_path / "extra" / sub, root / sub, dirs_exist_ok=True)
    return extra.study_ids["case_100"]


def _releases(root):
    return json.loads((root / "publish" / "keyslice-test__ct-vqa.releases.json").read_text())["releases"]


def test_tagged_releases_are_immutable_and_the_card_lists_changes(corpus, hub, tmp_path, data_dir):
    from keyslice.publish import PublishError

    root, fx = corpus
    v1 = _publish(root, tag="v1")
    repo = hub.repos[REPO]
    assert repo.tags == {"v1": v1.commit} and v1.commit == repo.head
    card = repo.files["README.md"].decode()
    assert "This is release `v1`" in card and "There is no earlier release." in card
    [r1] = _releases(root)
    assert r1["tag"] == "v1" and r1["commit"] == v1.commit and not r1["dry_run"]
    assert r1["corpus_state"] == v1.state["corpus_state"] and r1["studies"] == sorted(fx.study_ids.values())
    assert r1["files"] == {p: f["sha256"] for p, f in v1.files.items()}

    # the same name again is refused before anything is sent
    hub.requests.clear()
    with pytest.raises(PublishError, match="already exists"):
        _publish(root, tag="v1")
    assert not [r for r in hub.requests if r[0] in ("PUT", "POST")]

    new_sid = _add_study(root, tmp_path, data_dir)
    v2 = _publish(root, tag="v2")
    assert repo.tags == {"v1": v1.commit, "v2": v2.commit} and v1.commit != v2.commit
    card = repo.files["README.md"].decode()
    assert "This is release `v2`" in card and "Changes since release `v1`: 1 studies added, 0 removed." in card
    before, now = sum(v1.counts["vqa"].values()), sum(v2.counts["vqa"].values())
    assert now > before and f"| vqa | {before} | {now} | +{now - before} |" in card
    assert [r["tag"] for r in _releases(root)] == ["v1", "v2"]
    assert new_sid in _releases(root)[1]["studies"] and new_sid not in _releases(root)[0]["studies"]
    manifest = json.loads((root / "publish" / "keyslice-test__ct-vqa.json").read_text())
    assert manifest["release"] == "v2"

    # no data changed: a new release name only re-sends the card (which names the release)
    v3 = _publish(root, tag="v3")
    assert v3.upload == ["README.md"] and repo.tags["v3"] == v3.commit == repo.head
    assert "Changes since release `v2`: 0 studies added, 0 removed." in repo.files["README.md"].decode()
    # a tag someone made on the Hub is refused too (the local record does not know it)
    repo.tags["v4"] = v1.commit
    with pytest.raises(PublishError, match="already has the tag 'v4'"):
        _publish(root, tag="v4")


def test_dry_run_release_is_recorded_locally(corpus, hub, tmp_path, data_dir):
    root, _ = corpus
    first = _publish(root, tag="v1", dry_run_dir=tmp_path / "d1")
    assert hub.requests == [] and first.commit is None
    [r1] = _releases(root)
    assert r1["dry_run"] and r1["commit"] is None and r1["tag"] == "v1"
    assert "This is release `v1`" in (tmp_path / "d1" / "README.md").read_text()

    _add_study(root, tmp_path, data_dir)
    second = _publish(root, tag="v2", dry_run_dir=tmp_path / "d2")
    card = (tmp_path / "d2" / "README.md").read_text()
    assert "Changes since release `v1`: 1 studies added, 0 removed." in card
    assert sum(second.counts["findings"].values()) == sum(first.counts["findings"].values()) + 2
    # the dry-run folder loads back with the new study in it
    rows = [r for part in load_config(tmp_path / "d2", "findings", tmp_path / "cache").values() for r in part]
    assert len(rows) == sum(second.counts["findings"].values())
    # a dry-run record does not block the real release of that name, which replaces it
    real = _publish(root, tag="v1")
    assert hub.repos[REPO].tags["v1"] == real.commit
    assert [(r["tag"], r["dry_run"]) for r in _releases(root)] == [("v2", True), ("v1", False)]


def test_cli_rejects_bad_tags(corpus, tmp_path):
    root, _ = corpus
    for bad in ("main", "v1 final", "../x"):
        proc = subprocess.run([sys.executable, "-m", "keyslice.cli", "publish", "--out", str(root), "--repo-id", "o/n",
                               "--dry-run", str(tmp_path / "d"), "--tag", bad], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "--tag must be a release name" in proc.stdout, proc.stdout
    assert not (tmp_path / "d").exists()
