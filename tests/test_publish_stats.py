"""Statistics of the published dataset: the card's plots (PNGs in the dataset folder) and `keyslice stats`.

The corpus is the publish fixture corpus (real GE head CT key slices, real ROCO sentences; pairing, VQA
pairs and margins SYNTHETIC). The expected counts are computed in SQL over the corpus views, not by
keyslice.publish.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from keyslice.corpus.sql import query
from keyslice.publish.privacy import ALLOWED_PNG_CHUNKS, png_chunks
from tests.publish_fixtures import fixture_corpus_fixtures

TEST_KEY = "keyslice-publish-stats-key"
EXPORTABLE = ("JOIN series se ON se.series_id = sel.series_id WHERE NOT coalesce(se.burned_in_annotation, false) "
              "AND coalesce(se.drop_reason, '') <> 'secondary_capture'")
PLOT_FILES = {"organs.png", "abnormalities.png", "phases.png", "questions.png", "positions.png", "margins.png"}


template, corpus = fixture_corpus_fixtures(TEST_KEY)


def test_stats_count_the_exported_rows(corpus):
    from keyslice.publish.stats import corpus_stats

    root, _ = corpus
    stats = corpus_stats(root)
    organs = {r["organ"]: r["n"] for r in query(root, f"SELECT f.organ, count(*) n FROM selections sel JOIN findings f "
                                                      f"USING (finding_id) {EXPORTABLE} GROUP BY 1").to_pylist()}
    assert dict(stats.organs) == organs
    assert sum(stats.abnormalities.values()) == sum(organs.values())  # fixture findings have no abnormality type
    sels = query(root, f"SELECT sel.top1_index, sel.n_slices, sel.margin, sel.uncertain, se.phase FROM selections sel "
                       f"{EXPORTABLE}").to_pylist()
    assert sum(stats.phases.values()) == len(sels) and set(stats.phases) == {s["phase"] for s in sels}
    assert sorted(stats.positions) == pytest.approx(sorted(s["top1_index"] / (s["n_slices"] - 1) for s in sels))
    assert sorted(stats.margins) == pytest.approx(sorted(s["margin"] for s in sels))
    assert stats.uncertain == sum(bool(s["uncertain"]) for s in sels) > 0
    qa = query(root, f"SELECT v.question_type, v.answer, v.answer_type FROM vqa v JOIN selections sel USING "
                     f"(finding_id) {EXPORTABLE}").to_pylist()
    closed = [q for q in qa if q["answer_type"] == "closed"]
    assert stats.questions[("abnormality", "yes")] == sum(q["answer"] == "yes" for q in closed) > 0
    assert stats.questions[("abnormality", "no")] == sum(q["answer"] == "no" for q in closed) > 0
    assert stats.questions[("organ", "choice")] == sum(q["answer_type"] == "choice" for q in qa)
    # the confidence filter is applied as in publish
    assert len(corpus_stats(root, min_confidence=0.025).margins) == sum(s["margin"] >= 0.025 for s in sels)


def test_dry_run_holds_the_plots_referenced_by_the_card(corpus, tmp_path):
    from keyslice.publish import publish_corpus

    root, _ = corpus
    a = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "a", log=lambda m: None)
    folder = tmp_path / "a"
    assert {p.name for p in (folder / "stats").iterdir()} == PLOT_FILES
    card = (folder / "README.md").read_text()
    for name in PLOT_FILES:
        data = (folder / "stats" / name).read_bytes()
        assert {c for c, _ in png_chunks(data)} <= ALLOWED_PNG_CHUNKS  # no text/metadata chunks
        assert Image.open(folder / "stats" / name).size[0] > 100
        assert f"(stats/{name})" in card
        assert f"stats/{name}" in a.files
    # the privacy gate checked the plots like the key slices
    images = len(query(root, f"SELECT DISTINCT sel.image_path FROM selections sel {EXPORTABLE}"))
    assert a.privacy.images_checked == images + len(PLOT_FILES)
    assert "## Statistics" in card and "| liver |" in card
    # an unchanged corpus draws byte-identical plots: nothing to upload
    b = publish_corpus(root, "o/n", dry_run_dir=tmp_path / "b", log=lambda m: None)
    assert {p: f["sha256"] for p, f in a.files.items()} == {p: f["sha256"] for p, f in b.files.items()}


def test_cli_stats_prints_and_draws(corpus, tmp_path):
    root, _ = corpus
    plots = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "keyslice.cli", "stats", "--out", str(root), "--plots", str(plots)],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "findings per organ" in proc.stdout and "selector margin" in proc.stdout
    assert "6 plots in" in proc.stdout
    assert {p.name for p in plots.iterdir()} == PLOT_FILES
    proc = subprocess.run([sys.executable, "-m", "keyslice.cli", "stats", "--out", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a keyslice corpus" in proc.stdout
