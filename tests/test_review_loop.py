"""The whole loop on the real sample data, as a MECHANISM test (not a quality claim): build ->
scripted reviewer records decisions through the app's API -> `keyslice finetune --reviews` -> rebuild
the key slices with the fine-tuned weights -> the same scripted reviewer again -> `keyslice eval
--reviews` shows both. The tiny random-weight model and a rule-following reviewer say nothing about
real acceptance; the numbers are written to .artifacts/review_loop.txt for the record."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from keyslice.cli import app
from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY
from tests.real_data import DATA
from tests.review_utils import REPO, build_sample_corpus, copy_corpus
from tests.test_review_api import Client

pytestmark = pytest.mark.slow
REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"


def scripted_review(corpus: Path, studies: Path, name: str) -> dict[str, int]:
    """A rule, not a reader: the 'right' slice of a finding is the middle of its organ's z-range (when
    the selection was restricted by masks), else the middle slice of the series; accept when the
    key slice is within 10 mm of it, else choose it."""
    c = Client(corpus, studies, name=name)
    counts = {"accept": 0, "choose": 0}
    for fid in c.queue("study"):
        f = c.finding(fid)
        z = c.http.get("/api/geometry", params={"id": fid}).json()["z_mm"]
        if f["z_range_mm"]:
            mid = sum(f["z_range_mm"]) / 2
            ref = min(range(len(z)), key=lambda k: abs(z[k] - mid))
        else:
            ref = len(z) // 2
        if abs(z[f["top1_index"]] - z[ref]) <= 10.0:
            assert c.decide(fid, "accept").status_code == 201
            counts["accept"] += 1
        else:
            assert c.decide(fid, "choose", chosen_index=ref).status_code == 201
            counts["choose"] += 1
    return counts


def test_build_review_finetune_rebuild_review(review_corpus, sample_studies, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    corpus = copy_corpus(review_corpus, tmp_path / "corpus")
    before = scripted_review(corpus, sample_studies, "Scripted Reader")

    cfg = {"name": "review-loop", "seed": 0, "out_dir": str(tmp_path / "run"),
           "model": {"spec": str(tiny_model_dir)},
           "data": {"train": [{"name": "example_ct_dicom", "ct": str(REF / "example_ct_dicom"),
                               "masks": str(REF / "example_seg_dicom.nii.gz")}]},
           "pairs": {"organs": ["liver", "kidney"], "pairs_per_organ": 8, "lesion_weight": 4.0},
           "augment": {"enabled": False},
           "train": {"steps": 30, "batch_size": 16, "warmup_steps": 3, "device": "cpu", "checkpoint_every": 30,
                     "log_every": 10}}
    cfg_path = tmp_path / "loop.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["finetune", str(cfg_path), "--no-eval", "--reviews", str(corpus),
                                      "--reviews-input", str(sample_studies)])
    assert result.exit_code == 0, result.output
    pairs = pq.read_table(tmp_path / "run" / "pairs.parquet").to_pylist()
    lesion = [p for p in pairs if p["kind"] == "lesion"]
    # accept -> 1 positive; choose -> the chosen slice positive and the rejected top-1 negative
    assert sum(p["label"] == 1 for p in lesion) == before["accept"] + before["choose"]
    assert sum(p["label"] == 0 for p in lesion) == before["choose"]
    assert {p["source"].split("/")[0] for p in lesion} <= set(query(corpus, "select study_id from studies")
                                                            .column("study_id").to_pylist())
    model_dir = tmp_path / "run" / "model"
    assert model_dir.is_dir()

    from keyslice.corpus.checkpoints import CheckpointStore

    store = CheckpointStore(corpus)
    for sid in store.done_studies("keyslice"):
        store.invalidate("keyslice", sid)                  # what --force-stage keyslice does
    build_sample_corpus(sample_studies, corpus, model_dir)
    after = scripted_review(corpus, sample_studies, "Scripted Reader")

    rows = query(corpus, "select * from review_acceptance_by_model order by first_decided_at").to_pylist()
    assert len(rows) == 2 and rows[0]["weights_sha256"] != rows[1]["weights_sha256"]
    assert [r["n_judged"] for r in rows] == [sum(before.values()), sum(after.values())]
    from rich.console import Console

    monkeypatch.setattr("keyslice.review.cli.console", Console(width=250))
    out = CliRunner().invoke(app, ["eval", "--reviews", str(corpus)])
    assert out.exit_code == 0 and "pts" in out.output
    folder = Path(os.environ.get("KEYSLICE_TEST_ARTIFACTS", REPO / ".artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "review_loop.txt").write_text(
        "MECHANISM test (tiny random-weight model, scripted rule-following reviewer; not a quality claim)\n"
        + "".join(f"{r['model_id']} {r['weights_sha256'][:12]}: {r['n_accepted']}/{r['n_judged']} accepted "
                  f"({100 * r['acceptance']:.1f}%)\n" for r in rows) + out.output)
