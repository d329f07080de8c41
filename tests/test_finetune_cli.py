"""`keyslice finetune CONFIG` / `keyslice eval CONFIG` on the real CTs (tiny run), and the Prefect flow."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from keyslice.cli import app
from keyslice.finetune.demo import demo_config


def write_config(tmp_path, steps=3):
    d = demo_config(tmp_path / "run", steps=steps)
    d["pairs"] = {"organs": ["liver", "kidney", "pancreas", "urinary bladder"], "pairs_per_organ": 16}
    d["train"].update({"batch_size": 12, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1})
    d["eval"] = {"plots": True, "tolerance_mm": 10.0}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_cli_finetune_resume_and_eval(tmp_path, data_dir):
    cfg = write_config(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["finetune", str(cfg), "--max-steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "rerun the same command to resume" in r.output
    r = runner.invoke(app, ["finetune", str(cfg), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "resumed from step_0000002.pt" in r.output and "organ awareness" in r.output
    ev = tmp_path / "run" / "eval"
    rows = pq.read_table(ev / "organ_awareness.parquet").to_pylist()
    assert {r["model"] for r in rows} == {"before", "after"}
    assert {r["threshold_on"] for r in rows} == {"train", "eval"}
    assert {r["source"] for r in rows} == {"example_ct", "example_ct_dicom"}
    pancreas = [r for r in rows if r["source"] == "example_ct_dicom" and r["organ"] == "pancreas"]
    assert all((r["n_pos"], r["n_neg"]) == (4, 16) for r in pancreas)   # pancreas on slices 0-3 of 20
    kidney = [r for r in rows if r["source"] == "example_ct_dicom" and r["organ"] == "kidney"]
    assert all((r["n_pos"], r["n_neg"]) == (0, 20) and not r["both_classes"] for r in kidney)
    loc = pq.read_table(ev / "localization.parquet").to_pylist()
    assert loc and all(r["kind"] == "organ" for r in loc)
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["threshold_on"] == "train"
    assert "Youden" in (ev / "report.md").read_text()
    assert (ev / "plots" / "organ_bars_example_ct_dicom_word.png").stat().st_size > 1000
    assert (ev / "plots" / "similarity_example_ct_dicom_sentence.png").is_file()

    # eval of explicit models, oracle threshold, elsewhere
    other = tmp_path / "eval2"
    r = runner.invoke(app, ["eval", str(cfg), "--model", f"tuned={tmp_path / 'run' / 'model'}",
                            "--threshold-on", "eval", "--eval-out", str(other), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(other / "organ_awareness.parquet").to_pylist()
    assert {r["model"] for r in rows} == {"tuned"}
    assert json.loads((other / "summary.json").read_text())["threshold_on"] == "eval"


@pytest.mark.slow
def test_prefect_flow(tmp_path, data_dir, prefect_harness):
    from flows.finetune import finetune_flow

    cfg = write_config(tmp_path, steps=2)
    result = finetune_flow(str(cfg), overrides={"eval.plots": False})
    assert result["train"]["step"] == 2 and result["train"]["model_dir"]
    assert result["eval"]["summary"]["organ_awareness"]
