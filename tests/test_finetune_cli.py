"""`keyslice finetune CONFIG` / `keyslice eval CONFIG` on the real CTs (tiny run), and the Prefect flow."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from keyslice.cli import app
from tests.finetune_utils import shipped_config


def write_config(tmp_path, steps=3):
    d = shipped_config(tmp_path / "run", steps=steps)
    # SYNTHETIC lesion labels (sentences and key slices written here; the CTs are real): lesion pairs
    # on the training CT, lesion queries (MAE, Acc@k) on the held-out one
    labels = tmp_path / "synthetic_lesion_labels.csv"
    labels.write_text("study,slice,sentence,organ\n"
                      "example_ct,95,Hypodense lesion in the right liver lobe.,liver\n"
                      "example_ct,20,Bladder wall thickening.,urinary bladder\n"
                      "example_ct_dicom,2,Hypodense lesion in the pancreatic head.,pancreas\n"
                      "example_ct_dicom,15,Hypodense lesion in the right liver lobe.,liver\n")
    d["pairs"] = {"organs": ["liver", "kidney", "pancreas", "urinary bladder"], "pairs_per_organ": 16,
                  "lesion_csv": str(labels)}
    d["train"].update({"batch_size": 12, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1})
    d["eval"] = {"plots": True, "tolerance_mm": 10.0}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_cli_finetune_resume_eval_and_corpus_record(tmp_path, data_dir):
    cfg = write_config(tmp_path)
    runner = CliRunner()
    # a metrics corpus that does not exist is refused before any training
    r = runner.invoke(app, ["finetune", str(cfg), "--device", "cpu", "--corpus", str(tmp_path / "typo")])
    assert r.exit_code == 2 and "not an existing folder" in r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "typo").exists()
    r = runner.invoke(app, ["finetune", str(cfg), "--max-steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "rerun the same command to resume" in r.output
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = runner.invoke(app, ["finetune", str(cfg), "--device", "cpu", "--corpus", str(corpus)])
    assert r.exit_code == 0, r.output
    assert "resumed from step_0000002.pt" in r.output and "organ awareness" in r.output
    assert "recorded in" in r.output
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
    lesion = [r for r in loc if r["kind"] == "lesion"]
    assert {r["source"] for r in lesion} == {"example_ct_dicom"} and len(lesion) == 2 * 2   # 2 queries x 2 models
    for r in lesion:   # the held-out series has 2 mm between slice positions
        assert r["err_slices"] == abs(r["top1"] - r["gt_lo"]) and r["err_mm"] == pytest.approx(2.0 * r["err_slices"])
        assert r["hit@1"] == (r["err_mm"] <= 10.0)
    assert {r["query"] for r in loc if r["kind"] == "organ" and r["source"] == "example_ct_dicom"} == {"pancreas"}
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["threshold_on"] == "train"
    assert "Youden" in (ev / "report.md").read_text()
    assert (ev / "plots" / "organ_bars_example_ct_dicom_word.png").stat().st_size > 1000
    assert (ev / "plots" / "similarity_example_ct_dicom_sentence.png").is_file()

    # the run's metrics in the corpus, queryable with the corpus' SQL views
    from keyslice.corpus.sql import query

    run = query(corpus, "select * from finetune_runs").to_pylist()
    assert len(run) == 1 and run[0]["steps"] == 3 and run[0]["evaluated"]
    assert run[0]["n_pairs"] == 4 * 16 + 2          # organ rows + the training CT's lesion rows
    assert run[0]["train_sources"] == ["example_ct"] and run[0]["eval_sources"] == ["example_ct_dicom"]
    assert run[0]["organs"] == ["liver", "kidney", "pancreas", "urinary bladder"]
    rid = run[0]["run_id"]
    steps = query(corpus, "select step, value from finetune_metrics where scope = 'train_step' and metric = 'loss' "
                          "order by step").to_pylist()
    losses = [r["loss"] for r in pq.read_table(tmp_path / "run" / "metrics" / "train_steps.parquet").to_pylist()]
    assert [s["step"] for s in steps] == [1, 2, 3] and [s["value"] for s in steps] == losses
    table = {(r["model"], r["source"], r["style"], r["threshold_on"]): r
             for r in pq.read_table(ev / "organ_awareness.parquet").to_pylist() if r["organ"] == "pancreas"}
    got = query(corpus, "select model, source, style, threshold_on, value from finetune_metrics "
                        "where scope = 'organ' and subject = 'pancreas' and metric = 'f1'").to_pylist()
    assert len(got) == len(table) == 2 * 2 * 2 * 2     # models x CTs x styles x threshold choices
    for g in got:
        want = table[(g["model"], g["source"], g["style"], g["threshold_on"])]["f1"]
        assert g["value"] == (None if want != want else want)
    # undefined metrics (AUC of an organ absent from the held-out CT, ...) are NULL, not NaN
    nan_auc = sum(r["auc"] != r["auc"] for r in pq.read_table(ev / "organ_awareness.parquet").to_pylist())
    null_auc = query(corpus, "select count(*) as n from finetune_metrics where scope = 'organ' and metric = 'auc' "
                             "and value is null").to_pylist()[0]["n"]
    assert nan_auc > 0 and null_auc == nan_auc
    assert query(corpus, "select count(*) as n from finetune_metrics where isnan(value)").to_pylist()[0]["n"] == 0
    n_macro = query(corpus, "select count(*) as n from finetune_metrics where scope = 'organ_macro'").to_pylist()
    assert n_macro[0]["n"] == 2 * 2 * 2 * 2 * 5
    assert query(corpus, "select distinct run_id from finetune_metrics").to_pylist() == [{"run_id": rid}]

    # eval of explicit models, oracle threshold, elsewhere
    other = tmp_path / "eval2"
    r = runner.invoke(app, ["eval", str(cfg), "--model", f"tuned={tmp_path / 'run' / 'model'}",
                            "--threshold-on", "eval", "--eval-out", str(other), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(other / "organ_awareness.parquet").to_pylist()
    assert {r["model"] for r in rows} == {"tuned"}
    assert json.loads((other / "summary.json").read_text())["threshold_on"] == "eval"
    # evaluating the run again re-records it under the same run id (rows replaced, not added)
    r = runner.invoke(app, ["eval", str(cfg), "--device", "cpu", "--tolerance-mm", "4", "--corpus", str(corpus)])
    assert r.exit_code == 0, r.output
    run = query(corpus, "select run_id, tolerance_mm from finetune_runs").to_pylist()
    assert run == [{"run_id": rid, "tolerance_mm": 4.0}]


@pytest.mark.slow
def test_prefect_flow(tmp_path, data_dir, prefect_harness):
    from flows.finetune import finetune_flow

    cfg = write_config(tmp_path, steps=2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = finetune_flow(str(cfg), overrides={"eval.plots": False, "metrics_corpus": str(corpus)})
    assert result["train"]["step"] == 2 and result["train"]["model_dir"]
    assert result["eval"]["summary"]["organ_awareness"]
    assert result["recorded"]["evaluated"]
    rows = pq.read_table(corpus / "tables" / "finetune_runs" / f"{result['recorded']['run_id']}.parquet").to_pylist()
    assert rows[0]["steps"] == 2
