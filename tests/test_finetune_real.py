"""The shipped run (configs/finetune_tiny_example_ct.yaml) end to end on the real CTs, as recorded in
benchmarks/results/finetune/: train on example_ct, evaluate on the other patient's DICOM series."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.finetune_utils import SHIPPED

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "finetune" / "tiny-example-ct"


@pytest.mark.slow
def test_shipped_run_learns_the_training_ct_and_matches_the_recorded_run(tmp_path, data_dir):
    from keyslice.finetune.config import FinetuneConfig
    from keyslice.finetune.evaluate import run_finetune

    cfg = FinetuneConfig.from_yaml(SHIPPED, out_dir=str(tmp_path / "run"),
                                   **{"train.device": "cpu", "train.precision": "fp32", "eval.plots": False})
    out = run_finetune(cfg, progress=lambda m: None)
    assert out["train"].step == cfg.train.steps == 300
    summary = out["eval"].summary
    oa = {(r["model"], r["split"], r["style"]): r for r in summary["organ_awareness"] if r["threshold_on"] == "train"}
    for style in ("word", "sentence"):
        # in-sample: the fine-tuned model separates the training CT's organ z-ranges, the random one does not
        before, after = oa[("before", "train", style)], oa[("after", "train", style)]
        assert before["auc_both"] < 0.6 and after["auc_both"] > before["auc_both"] + 0.3
        # the held-out CT is evaluated for every organ of the run
        assert oa[("after", "eval", style)]["n_organs"] == len(cfg.pairs.organs) == 28

    # the recorded benchmark was produced by this config and code: same loss trajectory (early steps;
    # a tolerance for other CPUs' floating-point rounding)
    with open(RECORDED / "train_steps.csv", newline="") as fh:
        recorded = [float(r["loss"]) for r in csv.DictReader(fh)]
    got = _losses(tmp_path / "run")
    assert len(recorded) == len(got) == 300
    assert got[:20] == pytest.approx(recorded[:20], rel=1e-2), \
        "benchmarks/results/finetune is stale: rerun python benchmarks/bench_finetune.py"


def _losses(run: Path) -> list[float]:
    import pyarrow.parquet as pq

    return [r["loss"] for r in pq.read_table(run / "metrics" / "train_steps.parquet").to_pylist()]
