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
    from tests.publish_fixtures import assert_round_trip, load_config

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
    # where each exported answer comes from, counted in the card
    sources = [r["answer_source"] for part in load_config(out, "vqa", tmp_path / "hf_cache").values() for r in part]
    assert "finding" in sources
    assert all(f"| {src} | {sources.count(src)} |" in card for src in set(sources))
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


def test_stack_geometry_interpolates_between_irregular_real_slices():
    """Stack positions are evenly spaced in z and each is interpolated from the two real slices around it, by
    their exact z (the GE head series changes its step from 4 mm to 1 mm to 7 mm); never by nearest index."""
    import numpy as np

    from keyslice.publish.stack import KEY_HALF_RANGE_MM, ORGAN_MARGIN_MM, stack_geometry, stack_range

    z = np.array([0.0, 4.0, 5.0, 6.0, 13.0])
    geo = stack_geometry(z, 5, 0.0, 13.0, "key_slice")
    assert np.allclose(geo.z_mm, [0.0, 3.25, 6.5, 9.75, 13.0])
    assert geo.lower.tolist() == [0, 0, 3, 3, 4] and geo.upper.tolist() == [0, 1, 4, 4, 4]
    assert np.allclose(geo.weight, [0.0, 3.25 / 4, 0.5 / 7, 3.75 / 7, 0.0])
    # ranges: the organ's mask z-range widened by the margin, else a fixed window around the key slice,
    # clipped to the series and always holding the key slice
    series = np.arange(0.0, 301.0, 3.0)
    assert stack_range(series, 50, (120.0, 180.0)) == (120.0 - ORGAN_MARGIN_MM, 180.0 + ORGAN_MARGIN_MM, "organ")
    assert stack_range(series, 70, (120.0, 180.0)) == (120.0 - ORGAN_MARGIN_MM, 210.0 + ORGAN_MARGIN_MM, "organ")
    assert stack_range(series, 50, None) == (150.0 - KEY_HALF_RANGE_MM, 150.0 + KEY_HALF_RANGE_MM, "key_slice")
    assert stack_range(series, 2, None) == (0.0, 6.0 + KEY_HALF_RANGE_MM, "key_slice")


def test_real_sample_stack_round_trips(sample_corpus, tmp_path, monkeypatch):
    """`--stack 4 --grounding --input STUDIES` on the real sample: every findings/selections row comes back from
    `load_dataset` with 4 slices in ascending z, evenly spaced over the organ's mask range (or +-60 mm around the
    key slice), each the linear interpolation of the two real slices around it in the row's window, and with the
    real organ masks (TotalSegmentator NIfTI, DICOM-SEG) sampled on the stack slices."""
    import numpy as np

    from keyslice.corpus.sql import query
    from keyslice.pseudonym import load_pseudonymizer
    from keyslice.publish import publish_corpus
    from keyslice.publish.stack import KEY_HALF_RANGE_MM, ORGAN_MARGIN_MM
    from keyslice.review.slices import SliceSource
    from keyslice.selector.preprocess import to_uint8
    from keyslice.selector.windows import get_window
    from tests.publish_fixtures import _pixels, load_config

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    out = tmp_path / "dry"
    n = 4
    result = publish_corpus(root, "keyslice/sample-ct-vqa", dry_run_dir=out, input_dir=studies_dir, stack_slices=n,
                            grounding=True, log=lambda m: None)
    assert result.privacy.ok
    sels = {r["finding_id"]: r for r in query(root, "select finding_id, n_slices, top1_index, z_range_mm "
                                                    "from selections").to_pylist()}
    source = SliceSource(root, studies_dir, load_pseudonymizer(root, create=False))
    cache = tmp_path / "cache"
    rules, interpolated, masked_slices, stack_pngs = set(), 0, 0, 0
    for config in ("findings", "selections"):
        for row in (r for part in load_config(out, config, cache).values() for r in part):
            sel = sels[row["finding_id"]]
            zs = np.asarray(row["stack_z_mm"])
            assert len(row["stack"]) == len(zs) == n
            assert np.all(np.diff(zs) > 0) and np.allclose(np.diff(zs), row["stack_spacing_mm"], atol=1e-6)
            volume = source.volume(row["study_id"], row["series_id"], sel["n_slices"])
            z = np.asarray(volume.z_mm)
            key = z[sel["top1_index"]]
            assert zs[0] - 1e-6 <= key <= zs[-1] + 1e-6 and z[0] - 1e-6 <= zs[0] and zs[-1] <= z[-1] + 1e-6
            rules.add(row["stack_range"])
            if sel["z_range_mm"] is not None:
                lo, hi = sel["z_range_mm"]
                assert row["stack_range"] == "organ"
                assert np.isclose(zs[0], max(z[0], min(lo, key) - ORGAN_MARGIN_MM))
                assert np.isclose(zs[-1], min(z[-1], max(hi, key) + ORGAN_MARGIN_MM))
            else:
                assert row["stack_range"] == "key_slice"
                assert np.isclose(zs[0], max(z[0], key - KEY_HALF_RANGE_MM))
                assert np.isclose(zs[-1], min(z[-1], key + KEY_HALF_RANGE_MM))
            window = get_window(row["window"])
            assert (row["stack_window"], row["stack_window_center"], row["stack_window_width"]) == (
                window.name, window.level, window.width)
            stack_pngs += n + (n if row["mask_labels"] else 0)
            # pixels: the linear interpolation along z, recomputed here from the two real slices around each z
            hu = volume.hu
            for j, zj in enumerate(zs):
                up = min(int(np.searchsorted(z, zj, side="right")), len(z) - 1)
                low = max(up - 1, 0)
                w = 0.0 if z[up] == z[low] else min(max((zj - z[low]) / (z[up] - z[low]), 0.0), 1.0)
                expected = to_uint8(hu[low].astype(np.float64) * (1 - w) + hu[up].astype(np.float64) * w, window)
                got = _pixels(row["stack"][j]).astype(int)
                assert np.abs(got - expected.astype(int)).max() <= 1
                if 0.2 < w < 0.8:
                    nearest = to_uint8(hu[low if w < 0.5 else up], window).astype(int)
                    interpolated += int(np.abs(got - nearest).max() > 1)
            # masks on the stack: present exactly for grounded findings, binary, the size of the stack slices
            if not row["mask_labels"]:
                assert row["stack_mask"] is None
                continue
            assert len(row["stack_mask"]) == n
            for j, m in enumerate(row["stack_mask"]):
                m = _pixels(m)
                assert m.shape == _pixels(row["stack"][j]).shape and set(np.unique(m)) <= {0, 255}
                masked_slices += int((m == 255).any())
    assert rules == {"organ", "key_slice"}, "the sample has findings with and without organ masks"
    assert interpolated > 0, "stack slices between two real slices are interpolated, not the nearest slice"
    assert masked_slices > 0
    # every stack PNG and every mask on it went through the gate's PNG check
    assert result.privacy.images_checked >= stack_pngs > 0
    card = (out / "README.md").read_text()
    assert "### Slice stacks" in card and "stack_z_mm" in card and "`stack_mask`" in card
    assert "stack" not in load_config(out, "vqa", cache)["train"].column_names


def test_stack_never_reads_a_series_that_is_now_burned_in(sample_corpus, tmp_path, monkeypatch):
    """The corpus' series table says the key-slice series is clean, but its DICOM files in the studies folder now
    say BurnedInAnnotation YES: the export reads no stack from it and leaves its rows out, counted as excluded."""
    import pydicom

    from keyslice.corpus.sql import query
    from keyslice.dicom import index_study
    from keyslice.pipeline.studies import discover_studies
    from keyslice.pseudonym import load_pseudonymizer
    from keyslice.publish import publish_corpus
    from tests.publish_fixtures import load_config

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    victim = query(root, "select study_id, series_id, count(*) n from selections group by all "
                         "order by n desc limit 1").to_pylist()[0]
    assert query(root, f"select burned_in_annotation from series where series_id = '{victim['series_id']}'"
                 ).to_pylist()[0]["burned_in_annotation"] is not True
    pseudonymize = load_pseudonymizer(root, create=False)
    copy = tmp_path / "studies"
    shutil.copytree(studies_dir, copy)
    study = {s.study_id: s for s in discover_studies(copy, pseudonymize)}[victim["study_id"]]
    files = {r.row["series_id"]: r.files for r in index_study(study.path, pseudonymize, image_phase=False).series}
    for path in files[victim["series_id"]]:
        ds = pydicom.dcmread(path)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(path)
    before = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "plain", input_dir=copy, log=lambda m: None)
    out = tmp_path / "dry"
    result = publish_corpus(root, "o/n", dry_run_dir=out, input_dir=copy, stack_slices=4, log=lambda m: None)
    assert result.privacy.excluded["series"]["burned_in_annotation"] == \
        before.privacy.excluded["series"]["burned_in_annotation"] + 1
    assert result.privacy.excluded["rows"]["selections:burned_in_annotation"] >= victim["n"]
    for config in ("vqa", "findings", "selections"):
        rows = [r for part in load_config(out, config, tmp_path / "cache").values() for r in part]
        assert rows and all(r["series_id"] != victim["series_id"] for r in rows)
        assert config == "vqa" or all(len(r["stack"]) == 4 for r in rows)


def test_cli_stack_option_reaches_the_export(sample_corpus, tmp_path, monkeypatch):
    """`keyslice publish --stack N` is the export's stack length: 1 is refused with the valid range, nothing staged."""
    from typer.testing import CliRunner

    from keyslice.cli import app

    src, studies_dir, _ = sample_corpus
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    result = CliRunner().invoke(app, ["publish", "--out", str(root), "--repo-id", "o/n", "--dry-run",
                                      str(tmp_path / "d"), "--input", str(studies_dir), "--stack", "1"])
    assert result.exit_code == 2 and "--stack must be between 2 and 512" in result.output
    assert not (tmp_path / "d").exists()
