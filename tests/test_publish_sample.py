"""The REAL bundled sample corpus (steps 1-4 on the real DICOM + ROCO sentences), published and loaded back.

Built without Prefect (``keyslice.pipeline.run.process_study`` per study) with the tiny random-weight
selector; the round trip then checks rows, pixels and patient splits, and that the Philips
secondary captures (``S4010``, whose pixels show patient/dose text; one file says BurnedInAnnotation
YES) never reach the export.
"""

from __future__ import annotations

import importlib
import shutil

import pytest

from keyslice.pseudonym import KEY_ENV

KEY = "keyslice-sample-publish-test-key"
NEEDED = (("keyslice.report", "segment_report"), ("keyslice.dicom", "index_study"),
          ("keyslice.selector", "load_model"), ("keyslice.vqa", "generate_rule_vqa"))


def _missing() -> list[str]:
    out = []
    for module, name in NEEDED:
        try:
            if not hasattr(importlib.import_module(module), name):
                out.append(f"{module}.{name}")
        except ImportError:
            out.append(module)
    return out


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"steps 1-4 not available: {_missing()}")


@pytest.fixture(scope="module")
def sample_corpus(tmp_path_factory, data_dir, tiny_model_dir):
    import os

    from keyslice.config import BuildConfig
    from keyslice.pipeline.context import make_context
    from keyslice.sample import materialize_samples
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import discover_studies

    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = KEY
    try:
        work = tmp_path_factory.mktemp("sample_publish")
        studies_dir = work / "studies"
        materialize_samples(studies_dir, data_dir)
        cfg = BuildConfig(input_dir=studies_dir, out_dir=work / "corpus", model=str(tiny_model_dir), device="cpu")
        ctx = make_context(cfg, run_id="sample-publish-run")
        outcomes = []
        for study in discover_studies(studies_dir, ctx.pseudonymize):
            outcomes += process_study(study, ctx)
    finally:
        if previous is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = previous
    return work / "corpus", studies_dir, outcomes


def test_real_sample_corpus_round_trips(sample_corpus, tmp_path, monkeypatch):
    from keyslice.publish import publish_corpus
    from keyslice.corpus.sql import query
    from tests.publish_fixtures import assert_round_trip

    src, studies_dir, outcomes = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    done = {o.study_id for o in outcomes if o.stage == "vqa" and o.status == "done"}
    assert len(done) >= 3, [o for o in outcomes if o.status != "done"]

    out = tmp_path / "dry"
    # --input: the real DICOM headers (names, IDs, dates, institution...) are checked against every exported row
    result = publish_corpus(root, "keyslice/sample-ct-vqa", dry_run_dir=out, input_dir=studies_dir, tag="v1",
                            log=lambda m: None)
    excluded = {r["series_id"] for r in query(root, "select series_id from series where burned_in_annotation "
                                                   "or drop_reason = 'secondary_capture'").to_pylist()}
    # one real Philips "Exam Summary" file says BurnedInAnnotation YES: the series step carries it into the
    # series table, and the publish counts that series as excluded for it
    burned = query(root, "select series_id, drop_reason from series where burned_in_annotation").to_pylist()
    assert [b["drop_reason"] for b in burned] == ["secondary_capture"]
    assert result.privacy.excluded["series"] == {"burned_in_annotation": 1}
    summary = assert_round_trip(root, out, tmp_path / "hf_cache", excluded)
    assert summary["studies"] == len(done)
    assert sum(result.counts["vqa"].values()) + summary["duplicates"] == query(
        root, "select count(*) n from vqa v join series s using (series_id) where not (coalesce("
              "s.burned_in_annotation, false) or coalesce(s.drop_reason, '') = 'secondary_capture')"
    ).to_pylist()[0]["n"]
    assert result.privacy.ok and result.privacy.images_checked > 0
    card = (out / "README.md").read_text()
    # the real sample's series-level questions (plane, phase) repeat on neighbouring key slices
    assert summary["duplicates"] > 0 and f"Near-duplicate pairs removed: {summary['duplicates']} " in card
    # the statistics plots are in the folder, referenced by the card, and were checked by the gate
    plots = sorted(p.name for p in (out / "stats").iterdir())
    assert len(plots) == 6 and all(f"(stats/{name})" in card for name in plots)
    assert "## Statistics" in card and "![key slices per phase](stats/phases.png)" in card
    # a dry-run release is recorded in the corpus, with the corpus state and every file's hash
    import json

    [release] = json.loads((root / "publish" / "keyslice__sample-ct-vqa.releases.json").read_text())["releases"]
    assert release["tag"] == "v1" and release["dry_run"] and release["corpus_state"] == result.state["corpus_state"]
    assert release["files"] == {p: f["sha256"] for p, f in result.files.items()}
    assert "This is release `v1`" in card
    model = query(root, "select distinct model_id, weights_sha256 from selections").to_pylist()
    assert all(m["model_id"] in card and m["weights_sha256"] in card for m in model)


def test_real_sample_slice_context_round_trips(sample_corpus, tmp_path, monkeypatch):
    """`--context 2 --input STUDIES`: each findings/selections row carries the key slice and 2 slices on each
    side, re-read from the real DICOM, in ascending z, the key slice's pixels equal to the exported key slice."""
    import numpy as np

    from keyslice.corpus.sql import query
    from keyslice.publish import publish_corpus
    from tests.publish_fixtures import _pixels, load_config

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    out = tmp_path / "dry"
    plain = publish_corpus(root, "keyslice/sample-ct-vqa", dry_run_dir=tmp_path / "plain", log=lambda m: None)
    result = publish_corpus(root, "keyslice/sample-ct-vqa", dry_run_dir=out, input_dir=studies_dir,
                            context_slices=2, log=lambda m: None)
    sels = {r["finding_id"]: r for r in query(root, "select finding_id, n_slices, top1_index from selections")
            .to_pylist()}
    n_context = 0
    for config in ("findings", "selections"):
        ds = load_config(out, config, tmp_path / "cache")
        for row in (r for part in ds.values() for r in part):
            sel = sels[row["finding_id"]]
            top, n = sel["top1_index"], sel["n_slices"]
            assert sorted(row["context_indices"]) == list(range(max(0, top - 2), min(n, top + 3)))
            assert len(row["context"]) == len(row["context_indices"]) == len(row["context_z_mm"])
            assert row["context_z_mm"] == sorted(row["context_z_mm"])  # ascending z
            key = _pixels(row["context"][row["context_indices"].index(top)])
            assert np.array_equal(key, _pixels(row["image"]))      # same renderer, same window as the key slice
            n_context += len(row["context"])
    assert n_context > 0
    # every context PNG went through the gate's PNG check (shared slices counted once)
    assert result.privacy.images_checked > plain.privacy.images_checked
    card = (out / "README.md").read_text()
    assert "### Slice context" in card and "context_z_mm" in card
    # the vqa config keeps one image per row
    assert "context" not in load_config(out, "vqa", tmp_path / "cache")["train"].column_names


def test_slice_context_needs_the_studies_folder(sample_corpus, tmp_path, monkeypatch):
    from keyslice.publish import PublishError, publish_corpus

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    with pytest.raises(PublishError, match="--context needs --input"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "d", context_slices=2, log=lambda m: None)
    # the studies folder lost a slice of a selected series: refused with the study named, nothing staged
    from keyslice.corpus.sql import query

    query_one = query(root, "select study_id, series_id from selections limit 1").to_pylist()[0]
    from keyslice.dicom import index_study
    from keyslice.pipeline.studies import discover_studies
    from keyslice.pseudonym import load_pseudonymizer

    pseudonymize = load_pseudonymizer(root, create=False)
    copy = tmp_path / "studies"
    shutil.copytree(studies_dir, copy)
    study = {s.study_id: s for s in discover_studies(copy, pseudonymize)}[query_one["study_id"]]
    files = {r.row["series_id"]: r.files for r in index_study(study.path, pseudonymize, image_phase=False).series}
    victim = sorted(files[query_one["series_id"]])[0]
    victim.unlink()
    with pytest.raises(PublishError, match=f"slice context of study {query_one['study_id']}"):
        publish_corpus(root, "o/n", dry_run_dir=tmp_path / "d", input_dir=copy, context_slices=2,
                       log=lambda m: None)
    assert not (tmp_path / "d").exists()


def test_real_sample_grounding_round_trips(sample_corpus, tmp_path, monkeypatch):
    """`--grounding --input STUDIES`: the real TotalSegmentator NIfTI and DICOM-SEG masks of the sample studies,
    resampled onto the key slice, exported as mask PNGs with their labels; vqa rows name the same labels."""
    import numpy as np

    from keyslice.corpus.sql import query
    from keyslice.publish import publish_corpus
    from tests.publish_fixtures import _pixels, load_config

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    out = tmp_path / "dry"
    result = publish_corpus(root, "keyslice/sample-ct-vqa", dry_run_dir=out, input_dir=studies_dir, grounding=True,
                            log=lambda m: None)
    assert result.privacy.ok
    ts = {r["finding_id"]: set(r["ts_labels"]) for r in query(root, "select finding_id, ts_labels from findings")
          .to_pylist()}
    cache = tmp_path / "cache"
    labels_by_finding, grounded, organ_pixels = {}, 0, 0
    for config in ("findings", "selections"):
        for row in (r for part in load_config(out, config, cache).values() for r in part):
            labels_by_finding[row["finding_id"]] = row["mask_labels"]
            if row["mask"] is None:
                assert row["mask_labels"] == []
                continue
            grounded += 1
            assert row["mask_labels"] and set(row["mask_labels"]) <= ts[row["finding_id"]]
            mask = _pixels(row["mask"])
            assert mask.shape == _pixels(row["image"]).shape[:2] and set(np.unique(mask)) <= {0, 255}
            organ_pixels += int((mask == 255).sum())
    assert grounded > 0 and organ_pixels > 0, "the sample's masked studies ground some key slices"
    assert any(not v for v in labels_by_finding.values()), "studies without masks stay ungrounded"
    for row in (r for part in load_config(out, "vqa", cache).values() for r in part):
        assert row["mask_labels"] == labels_by_finding[row["finding_id"]]
    card = (out / "README.md").read_text()
    assert "### Grounding" in card and f"{grounded // 2} of" in card


def test_real_sample_topk_context(sample_corpus, tmp_path, monkeypatch):
    """`--context-topk` alone: the key slice and the selector's top-k slices, ascending z, re-read from real DICOM."""
    from keyslice.corpus.sql import query
    from keyslice.publish import publish_corpus
    from tests.publish_fixtures import load_config

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    out = tmp_path / "dry"
    publish_corpus(root, "o/n", dry_run_dir=out, input_dir=studies_dir, context_topk=True, log=lambda m: None)
    sels = {r["finding_id"]: r for r in query(root, "select finding_id, top1_index, topk_indices from selections")
            .to_pylist()}
    rows = [r for part in load_config(out, "selections", tmp_path / "cache").values() for r in part]
    assert rows and any(len(sels[r["finding_id"]]["topk_indices"]) > 1 for r in rows)
    for row in rows:
        sel = sels[row["finding_id"]]
        assert set(row["context_indices"]) == set(sel["topk_indices"]) | {sel["top1_index"]}
        assert row["context_z_mm"] == sorted(row["context_z_mm"]) and len(row["context"]) == len(row["context_z_mm"])
    assert "and the selector's other top-k slices" in (out / "README.md").read_text()
