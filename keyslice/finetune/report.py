"""What an evaluation run measured, summarised and written up: macro means per model, split and
prompt style (:func:`summarize`, :func:`summarize_stations`), the before/after markdown report
(:func:`render_report`) and the JSON summary (:func:`summary_json`). Pure functions of the rows
:func:`keyslice.finetune.evaluate.evaluate_models` writes, so a saved evaluation can be re-summarised
without encoding anything (:func:`keyslice.finetune.loco.rescore_fold`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from keyslice.finetune.config import FinetuneConfig


def jsonable(obj):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def summary_json(summary: dict) -> str:
    """The summary as JSON text: NaN as null, anything else JSON lacks as its string."""
    return json.dumps(jsonable(summary), indent=1, default=str)


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else math.nan


def summarize(organ_rows: list[dict], loc_rows: list[dict], tags: list[str], cfg: FinetuneConfig) -> dict:
    """Macro means per (model, split, style, threshold_on): over organs with both classes, and over all."""
    out: dict = {"threshold_on": cfg.eval.threshold_on, "tolerance_mm": cfg.eval.tolerance_mm, "organ_awareness": [],
                 "localization": []}
    for tag in tags:
        for split in ("train", "eval"):
            for style in cfg.eval.styles:
                for how in ("train", "eval"):
                    rows = [r for r in organ_rows if r["model"] == tag and r["split"] == split and r["style"] == style
                            and r["threshold_on"] == how]
                    if not rows:
                        continue
                    both = [r for r in rows if r["both_classes"]]
                    out["organ_awareness"].append({
                        "model": tag, "split": split, "style": style, "threshold_on": how,
                        "n_organs": len(rows), "n_organs_both_classes": len(both),
                        # organs with a threshold (a training CT set with one class for an organ gives none)
                        "n_organs_thresholded": sum(1 for r in rows if not math.isnan(r["threshold"])),
                        "accuracy_both": _nanmean(r["accuracy"] for r in both),
                        "f1_both": _nanmean(r["f1"] for r in both),
                        "auc_both": _nanmean(r["auc"] for r in both),
                        "accuracy_all": _nanmean(r["accuracy"] for r in rows),
                        "f1_all": _nanmean(r["f1"] for r in rows),
                    })
            for kind in ("organ", "lesion", "normal"):
                for style in cfg.eval.styles:
                    rows = [r for r in loc_rows if r["model"] == tag and r["split"] == split and r["kind"] == kind
                            and r["style"] == style]
                    if not rows:
                        continue
                    agg = {"n": len(rows), "mae_slices": _nanmean(r["err_slices"] for r in rows),
                           "mae_mm": _nanmean(r["err_mm"] for r in rows),
                           **{f"acc@{k}": _nanmean(float(r[f"hit@{k}"]) for r in rows) for k in cfg.eval.ks},
                           **{f"acc0@{k}": _nanmean(float(r[f"hit0@{k}"]) for r in rows) for k in cfg.eval.ks}}
                    out["localization"].append({"model": tag, "split": split, "kind": kind, "style": style, **agg})
    return out


def summarize_stations(rows: list[dict], tags: list[str]) -> list[dict]:
    """Station accuracy per (model, split, source) over the slices with a station label."""
    out = []
    for tag in tags:
        for key in dict.fromkeys((r["split"], r["source"]) for r in rows if r["model"] == tag):
            rr = [r for r in rows if r["model"] == tag and (r["split"], r["source"]) == key]
            out.append({"model": tag, "split": key[0], "source": key[1], "n_slices": len(rr),
                        "stations": sorted({r["gold"] for r in rr}),
                        "accuracy": float(np.mean([r["correct"] for r in rr])) if rr else math.nan})
    return out


# --------------------------------------------------------------------------- report


def _f(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def render_report(organ_rows: list[dict], loc_rows: list[dict], summary: dict, cfg: FinetuneConfig,
                  tags: list[str]) -> str:
    how = cfg.eval.threshold_on
    lines = [f"# Organ awareness and slice localisation: {', '.join(tags)}", ""]
    lines.append(f"Threshold: Youden's J chosen on the **{'training CT(s)' if how == 'train' else 'evaluated CT (optimistic)'}**"
                 f" (`eval.threshold_on: {how}`); tolerance {cfg.eval.tolerance_mm:g} mm. "
                 f"Training CT(s): {', '.join(s.name for s in cfg.train_sources)}; evaluated CT(s): "
                 f"{', '.join(s.name for s in cfg.eval_sources) or '(none)'}.")
    lines.append("")
    for split in ("eval", "train"):
        srcs = cfg.eval_sources if split == "eval" else cfg.train_sources
        for src in srcs:
            lines.append(f"## {'Evaluated' if split == 'eval' else 'Training'} CT `{src.name}`"
                         + (" (in-sample)" if split == "train" else ""))
            lines.append("")
            head = "| organ | in / out |"
            sep = "|---|---|"
            for style in cfg.eval.styles:
                for metric in ("Acc", "F1", "AUC"):
                    for tag in tags:
                        head += f" {style} {metric} {tag} |"
                        sep += "---|"
            lines += [head, sep]
            organs = list(dict.fromkeys(r["organ"] for r in organ_rows if r["source"] == src.name))
            for organ in organs:
                first = next(r for r in organ_rows if r["source"] == src.name and r["organ"] == organ)
                line = f"| {organ} | {first['n_pos']} / {first['n_neg']} |"
                for style in cfg.eval.styles:
                    for metric in ("accuracy", "f1", "auc"):
                        for tag in tags:
                            r = next((r for r in organ_rows if r["source"] == src.name and r["organ"] == organ
                                      and r["style"] == style and r["model"] == tag and r["threshold_on"] == how), None)
                            line += f" {_f(r[metric]) if r else '–'} |"
                lines.append(line)
            lines.append("")
    lines.append("## Macro means")
    lines.append("")
    lines.append("| model | CT | style | threshold on | organs (both classes) | Acc (both) | F1 (both) | AUC (both) "
                 "| Acc (all) | F1 (all) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary["organ_awareness"]:
        lines.append(f"| {r['model']} | {r['split']} | {r['style']} | {r['threshold_on']} | {r['n_organs']} "
                     f"({r['n_organs_both_classes']}) | {_f(r['accuracy_both'])} | {_f(r['f1_both'])} | "
                     f"{_f(r['auc_both'])} | {_f(r['accuracy_all'])} | {_f(r['f1_all'])} |")
    lines.append("")
    if summary["localization"]:
        ks = cfg.eval.ks
        lines.append("## Slice localisation (top-k slices vs the organ's z-range / the labelled key slice)")
        lines.append("")
        lines.append("| model | CT | queries | style | n | MAE (slices) | MAE (mm) | "
                     + " | ".join(f"Acc@{k}" for k in ks) + " |")
        lines.append("|---|---|---|---|---|---|---|" + "---|" * len(ks))
        for r in summary["localization"]:
            lines.append(f"| {r['model']} | {r['split']} | {r['kind']} | {r['style']} | {r['n']} | "
                         f"{_f(r['mae_slices'])} | {_f(r['mae_mm'], 1)} | "
                         + " | ".join(_f(r[f'acc@{k}']) for k in ks) + " |")
        lines.append("")
    if not any(r["kind"] == "lesion" for r in loc_rows):
        lines.append("No lesion queries: no lesion labels (CSV, corpus image references or reviewed selections) "
                     "name an evaluated CT, so slice localisation is measured for organ prompts only (a hit: one "
                     "of the top-k slices within the tolerance of the organ's z-range).")
        lines.append("")
    return "\n".join(lines)
