"""Round trip: corpus -> `publish --dry-run` -> `datasets.load_dataset` -> same rows, same pixels, patient splits.

The corpus is written by tests/publish_fixtures.py through CheckpointStore.commit_stage: key slices
rendered from real GE head CT slices, finding sentences from real ROCO captions; the pairing and the
VQA pairs are assembled for the test.
"""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from keyslice.pseudonym import KEY_ENV, MissingKeyError, Pseudonymizer
from tests.publish_fixtures import (FixtureStudy, assert_round_trip, fixture_corpus_fixtures, load_config,
                                    write_fixture_corpus)

TEST_KEY = "keyslice-publish-test-key"
FRACTIONS = (0.5, 0.25, 0.25)


template, corpus = fixture_corpus_fixtures(TEST_KEY)


def test_dry_run_round_trips_rows_images_and_patient_splits(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, fx = corpus
    out = tmp_path / "dry"
    result = publish_corpus(root, "keyslice-test/ct-vqa", dry_run_dir=out, fractions=FRACTIONS, log=lambda m: None)
    assert result.dry_run and result.staged_dir == out.resolve()
    # the folder holds exactly what would be uploaded: the card and Parquet shards per config/split
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    data = [f for f in files[1:] if not f.startswith("stats/")]
    assert files[0] == "README.md" and all(f.endswith(".parquet") for f in data)
    assert {f.split("/")[0] for f in data} == {"vqa", "findings", "selections"}
    assert set(result.files) == set(files)

    summary = assert_round_trip(root, out, tmp_path / "hf_cache", fx.excluded_series)
    assert summary["studies"] == len(fx.study_ids)
    assert len(summary["splits"]) >= 2, summary  # the test key and fractions put patients in several splits
    # the two studies of patient PAT-0001 are in the same split
    two = {fx.study_ids["case_001"], fx.study_ids["case_002"]}
    vqa = load_config(out, "vqa", tmp_path / "hf_cache")
    assert len({split for split, part in vqa.items() for sid in part["study_id"] if sid in two}) == 1

    # burned-in and secondary-capture series were never exported; their rows are counted as excluded
    assert result.privacy.excluded["rows"] == {"selections:burned_in_annotation": 1,
                                               "selections:secondary_capture": 1,
                                               "vqa:burned_in_annotation": 2, "vqa:secondary_capture": 2}
    # the stored image name is a pseudonymous file name, not a local path
    for shard in out.glob("*/*.parquet"):
        names = pq.read_table(shard, columns=["image"]).column("image").combine_chunks().field("path").to_pylist()
        assert all(n.startswith("st-") and n.endswith(".png") and "/" not in n for n in names)


def test_card_metadata_and_build_provenance(corpus, tmp_path):
    import yaml

    from keyslice.publish import publish_corpus

    root, _ = corpus
    out = tmp_path / "dry"
    result = publish_corpus(root, "keyslice-test/ct-vqa", dry_run_dir=out, license="cc-by-4.0", log=lambda m: None)
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-4.0"
    assert meta["task_categories"] == ["visual-question-answering"]
    assert [c["config_name"] for c in meta["configs"]] == ["vqa", "findings", "selections"]
    assert meta["configs"][0]["default"] is True
    vqa_info = meta["dataset_info"][0]
    assert vqa_info["features"][0] == {"name": "image", "dtype": "image"}
    assert sum(s["num_examples"] for s in vqa_info["splits"]) == sum(result.counts["vqa"].values())
    # how it was built: model + weights hash, prompt versions, phase rules, exclusions, corpus state
    assert "`local:tiny-test-clip`" in text and hashlib.sha256(b"local:tiny-test-clip").hexdigest() in text
    assert "prompt_version" in text and "ContrastBolusStartTime" in text
    assert "### Report segmenter" in text and "| `fixture` |" in text
    assert "BurnedInAnnotation" in text and result.state["corpus_state"] in text
    from huggingface_hub import DatasetCard

    assert DatasetCard(text).data.license == "cc-by-4.0"  # the Hub's own parser reads it


def test_shards_are_deterministic(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    a = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "a", max_shard_bytes=200_000, log=lambda m: None)
    b = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "b", max_shard_bytes=200_000, log=lambda m: None)
    assert a.files == b.files
    assert sum(1 for p in a.files if p.startswith("vqa/")) > 2  # small shards: several hash buckets


def test_a_bucket_larger_than_the_shard_size_continues_in_further_files(corpus, tmp_path):
    """Shards are hash buckets of patients, but a file holds at most the shard size of images (one row
    alone may exceed it): a bucket that outgrows it continues in further files of the same split, row
    groups are bounded the same way, and the rows still load back whole, a patient in one split."""
    from keyslice.publish import publish_corpus
    from keyslice.publish.dataset_builder import ROW_OVERHEAD_BYTES

    root, fx = corpus
    largest = max(p.stat().st_size for p in (root / "images").rglob("*.png"))
    limit = 2 * (largest + ROW_OVERHEAD_BYTES)
    out = tmp_path / "dry"
    a = publish_corpus(root, "o/n", dry_run_dir=out, max_shard_bytes=limit, log=lambda m: None)
    parts = [p for p in a.files if p.endswith("-001.parquet")]
    assert parts, sorted(a.files)
    for part in parts:  # a continuation follows the bucket's first file, same config, split and bucket
        assert part.replace("-001.parquet", ".parquet") in a.files
    for path in out.glob("*/*.parquet"):
        meta = pq.ParquetFile(path).metadata
        images = pq.read_table(path, columns=["image"]).column("image").combine_chunks().field("bytes")
        sizes = [len(b) + ROW_OVERHEAD_BYTES for b in images.to_pylist()]
        assert len(sizes) == 1 or sum(sizes) <= limit, (path.name, sizes)
        assert meta.num_rows == len(sizes)
        first = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            assert n == 1 or sum(sizes[first:first + n]) - sizes[first + n - 1] < limit
            first += n
    summary = assert_round_trip(root, out, tmp_path / "hf_cache", fx.excluded_series)
    assert summary["studies"] == len(fx.study_ids)
    b = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "again", max_shard_bytes=limit, log=lambda m: None)
    assert a.files == b.files  # the cut between files is deterministic


def test_dry_run_folder_is_replaced_not_mixed(corpus, tmp_path):
    from keyslice.publish import PublishError, publish_corpus

    root, _ = corpus
    out = tmp_path / "dry"
    publish_corpus(root, "o/n", dry_run_dir=out, max_shard_bytes=100_000, log=lambda m: None)
    many = {p for p in out.rglob("*.parquet")}
    publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)
    assert len(list(out.rglob("*.parquet"))) < len(many)  # no stale shard of the first layout left
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match="holds other files"):
        publish_corpus(root, "o/n", dry_run_dir=out, log=lambda m: None)


def test_publish_refuses_without_a_deliberate_key(corpus, tmp_path, monkeypatch):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(MissingKeyError, match=r"export KEYSLICE_PSEUDONYM_KEY="):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    # a corpus built with the generated key file: told to adopt that file's key deliberately
    (root / ".keyslice").mkdir(exist_ok=True)
    (root / ".keyslice" / "pseudonym.key").write_text(TEST_KEY)
    with pytest.raises(MissingKeyError, match=r"cat .*pseudonym.key"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    # an env key that is not the key the corpus was built with
    monkeypatch.setenv(KEY_ENV, "another-key")
    with pytest.raises(MissingKeyError, match="differs from the key this corpus was built with"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    assert not (tmp_path / "dry").exists()
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)


def test_incomplete_studies_are_left_out(corpus, tmp_path):
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.publish import publish_corpus

    root, fx = corpus
    sid = fx.study_ids["case_006"]
    CheckpointStore(root).invalidate("keyslice", sid)  # as `--force-stage keyslice` does before recomputing
    result = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    assert result.privacy.excluded["incomplete_studies"] == 1
    ds = load_config(tmp_path / "dry", "findings", tmp_path / "hf_cache")
    assert all(sid not in part["study_id"] for part in ds.values())


def test_cli_publish_dry_run(corpus, tmp_path):
    from typer.testing import CliRunner

    from keyslice.cli import app

    root, _ = corpus
    out = tmp_path / "dry"
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", "org/ct-vqa", "--dry-run", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "README.md").exists() and "privacy gate" in res.output
    res = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", "not a repo", "--dry-run", str(out)])
    assert res.exit_code == 2 and "ORG/NAME" in res.output


def test_single_patient_many_studies_stay_together(tmp_path, data_dir, monkeypatch):
    from keyslice.publish import publish_corpus

    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    studies = tuple(FixtureStudy(f"case_{i:03d}", f"PAT-{i % 3}", n_findings=1) for i in range(9))
    root = tmp_path / "corpus"
    write_fixture_corpus(root, Pseudonymizer(TEST_KEY.encode(), "env"), data_dir, studies)
    result = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", fractions=(0.34, 0.33, 0.33),
                            log=lambda m: None)
    summary = assert_round_trip(root, tmp_path / "dry", tmp_path / "hf_cache")
    assert sum(summary["splits"].values()) == 3  # three patients, each in exactly one split
    assert result.counts["findings"] and sum(result.counts["findings"].values()) == 9


def test_compacted_corpus_publishes_the_same_dataset(corpus, tmp_path):
    """After `keyslice compact` (per-study files packed into shards) the export is byte-identical."""
    from keyslice.corpus.compact import compact_corpus
    from keyslice.publish import publish_corpus

    root, _ = corpus
    before = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "a", log=lambda m: None)
    compact_corpus(root, shards=4)
    assert not list((root / "tables" / "vqa").glob("st-*.parquet"))  # really compacted
    after = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "b", log=lambda m: None)
    assert after.files == before.files


def test_publish_refuses_a_key_other_than_the_builds(corpus, tmp_path, monkeypatch):
    """No key file to compare with (an env-key build): the fingerprint recorded in `runs` decides."""
    import datetime as dt

    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.publish import publish_corpus

    root, _ = corpus
    now = dt.datetime.now(dt.timezone.utc)
    run = {"run_id": "r1", "started_at": now, "finished_at": now, "n_studies": 1, "n_done": 4, "n_skipped": 0,
           "n_failed": 0, "n_blocked": 0, "config_json": "{}", "keyslice_version": "test",
           "key_fingerprint": Pseudonymizer(TEST_KEY.encode(), "env").fingerprint}
    CheckpointStore(root).record_run(run)
    monkeypatch.setenv(KEY_ENV, "another-key")
    with pytest.raises(MissingKeyError, match="not the key this corpus was built with"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    assert not (tmp_path / "dry").exists()
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    publish_corpus(root, "o/n", dry_run_dir=tmp_path / "dry", log=lambda m: None)
    assert Pseudonymizer(b"a", "env").fingerprint != Pseudonymizer(b"b", "env").fingerprint
