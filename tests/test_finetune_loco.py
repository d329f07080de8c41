"""The leave-one-CT-out plan of the shipped blind config: folds, variants, config checks and the summary tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from keyslice.finetune.loco import fold_config, load_loco, mean_rows, render_summary, write_results

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune_loco_blind.yaml"


def test_every_fold_trains_on_the_other_cts_with_the_variant_settings(data_dir, tmp_path):
    plan = load_loco(CONFIG)
    assert plan.source_names == ["example_ct", "example_ct_dicom", "aorta_cta"]
    assert list(plan.variants) == ["slice-raw", "slice-spatial", "anatomy-raw", "anatomy-spatial"]
    for held in plan.source_names:
        cfg = fold_config(plan, held, "anatomy-spatial", tmp_path)
        assert [s.name for s in cfg.eval_sources] == [held]
        assert held not in {s.name for s in cfg.train_sources} and len(cfg.train_sources) == 2
        assert cfg.train.alignment == "anatomy" and cfg.spatial.enabled
        assert cfg.out == tmp_path / "anatomy-spatial" / held
    raw = fold_config(plan, "example_ct", "slice-raw", tmp_path)
    assert raw.train.alignment == "slice" and not raw.spatial.enabled
    # one config per fold and variant: the fingerprints differ where the training differs
    assert raw.fingerprint() != fold_config(plan, "example_ct", "slice-spatial", tmp_path).fingerprint()
    aorta = next(s for s in raw.train_sources if s.name == "aorta_cta")
    assert isinstance(aorta.masks, tuple) and aorta.aorta_report.endswith("aorta_report.json")
    with pytest.raises(ValueError, match="not a CT of the pool"):
        fold_config(plan, "spine_report", "slice-raw", tmp_path)


def test_bad_loco_configs_are_refused(tmp_path):
    d = yaml.safe_load(CONFIG.read_text())
    d["loco"]["sources"] = d["loco"]["sources"][:1]
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="at least two"):
        load_loco(tmp_path / "one.yaml")
    d = yaml.safe_load(CONFIG.read_text())
    d["loco"]["variants"]["typo"] = {"train.alignmnt": "anatomy"}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="alignmnt"):
        load_loco(tmp_path / "typo.yaml")
    d = yaml.safe_load(CONFIG.read_text())
    d["loco"]["variants"]["bad"] = {"train.alignment": "voxel"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="alignment"):
        load_loco(tmp_path / "bad.yaml")


def _row(variant, held, model, acc, auc):
    return {"variant": variant, "held_out": held, "model": model, "style": "word", "threshold_on": "train",
            "n_organs": 4, "n_organs_both": 2, "n_organs_thresholded": 3, "accuracy_all": acc, "auc_both": auc, "f1_both": math.nan,
            "station_accuracy": None, "station_slices": None, "train_seconds": None, "lesion_n": None}


def test_means_skip_missing_numbers_and_the_summary_lists_every_fold(data_dir, tmp_path):
    plan = load_loco(CONFIG)
    rows = [_row("slice-raw", "example_ct", "before", 0.4, 0.5), _row("slice-raw", "example_ct", "after", 0.6, 0.9),
            _row("slice-raw", "aorta_cta", "before", 0.2, math.nan), _row("slice-raw", "aorta_cta", "after", 0.3, None)]
    means = {r["model"]: r for r in mean_rows(rows)}
    assert means["before"]["accuracy_all"] == pytest.approx(0.3) and means["after"]["auc_both"] == pytest.approx(0.9)
    text = render_summary(plan, rows + mean_rows(rows))
    assert "| slice-raw | example_ct | 4 (2, 3) | 0.40 → 0.60 | +0.20 | 0.50 → 0.90 |" in text
    assert "**mean**" in text and "aorta_cta" in text
    write_results(plan, rows, tmp_path / "out")
    assert (tmp_path / "out" / "plots" / "loco.png").stat().st_size > 0
    assert (tmp_path / "out" / "loco.csv").read_text().count("\n") == 1 + 4 + 2


def test_rescoring_fits_the_threshold_on_fully_segmented_training_cts_only(data_dir, tmp_path):
    from keyslice.finetune.loco import organ_rows_from_scores

    plan = load_loco(CONFIG)
    cfg = fold_config(plan, "example_ct_dicom", "slice-raw", tmp_path)      # trains on example_ct + aorta_cta

    class Segments:
        def __init__(self, full):
            self.full = full

        def segments_organ(self, organ):
            return self.full

    def scores(src, values, inside):
        return [{"model": "after", "source": src, "organ": "spine", "style": "word", "slice": k, "score": v,
                 "inside": y} for k, (v, y) in enumerate(zip(values, inside))]

    rows = (scores("example_ct", [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
            # aorta_cta segments only T12: its 'spine' labels are wrong and must not move the threshold
            + scores("aorta_cta", [0.95, 0.96, 0.97, 0.1], [0, 0, 0, 1])
            + scores("example_ct_dicom", [0.3, 0.85, 0.9, 0.1], [0, 1, 1, 0]))
    srcs = {"example_ct": Segments(True), "aorta_cta": Segments(False), "example_ct_dicom": Segments(True)}
    out = organ_rows_from_scores(rows, cfg, srcs)
    assert {r["source"] for r in out} == {"example_ct", "example_ct_dicom"}
    held = next(r for r in out if r["source"] == "example_ct_dicom")
    assert held["threshold"] == pytest.approx(0.8) and held["accuracy"] == 1.0 and held["auc"] == 1.0
