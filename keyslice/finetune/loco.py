"""Leave-one-CT-out evaluation: each CT of a pool is held out in turn, the model trains on the others and is
measured on the held-out CT before and after fine-tuning, for each variant of the run.

A LOCO config is a fine-tuning config (``configs/finetune_loco_blind.yaml``) without ``data`` and with a ``loco``
section::

    loco:
      sources: [{name, ct, masks, labels, aorta_report}, ...]   # the pool (>= 2 CTs)
      variants: {NAME: {dotted.key: value, ...}, ...}           # overrides of the base config per variant
      headline_style: word                                      # prompt style of the headline table

Per fold and variant the run is exactly ``keyslice finetune`` on the derived config (out_dir
``WORK/<variant>/<held-out>``), so checkpoints resume. The headline numbers are on the held-out CT, with the
Youden threshold chosen on the training CTs (``eval.threshold_on``): organ accuracy over the organs scored on it,
AUC over those with slices inside and outside, station accuracy, and lesion-query localisation.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from keyslice.finetune.config import FinetuneConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LocoPlan:
    name: str
    path: Path
    base: dict                      # the fine-tuning config without data / loco
    sources: tuple[dict, ...]
    variants: dict[str, dict]
    headline_style: str = "word"

    @property
    def source_names(self) -> list[str]:
        return [s["name"] for s in self.sources]


def load_loco(path: Path | str) -> LocoPlan:
    """Read a LOCO config (see the module docstring); every fold config is validated here."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or "loco" not in data:
        raise ValueError(f"{path}: a leave-one-CT-out config needs a `loco` section (sources, variants)")
    loco = data.pop("loco") or {}
    unknown = set(loco) - {"sources", "variants", "headline_style"}
    if unknown:
        raise ValueError(f"unknown key(s) in loco: {sorted(unknown)}")
    if "data" in data:
        raise ValueError(f"{path}: a LOCO config takes its CTs from loco.sources, not data")
    sources = tuple(loco.get("sources") or ())
    if len(sources) < 2:
        raise ValueError("loco.sources must list at least two CTs")
    variants = dict(loco.get("variants") or {"default": {}})
    plan = LocoPlan(str(data.get("name", path.stem)), path, data, sources, variants,
                    str(loco.get("headline_style", "word")))
    for v in plan.variants:
        for held in plan.source_names:
            fold_config(plan, held, v, Path("."))
    return plan


def fold_config(plan: LocoPlan, held_out: str, variant: str, work: Path) -> FinetuneConfig:
    """The fine-tuning config of one fold: train on every pool CT but ``held_out``, evaluate on it."""
    if held_out not in plan.source_names:
        raise ValueError(f"{held_out!r} is not a CT of the pool {plan.source_names}")
    d = copy.deepcopy(plan.base)
    for dotted, value in plan.variants[variant].items():
        node = d
        *head, last = dotted.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    d["data"] = {"train": [copy.deepcopy(s) for s in plan.sources if s["name"] != held_out],
                 "eval": [copy.deepcopy(s) for s in plan.sources if s["name"] == held_out]}
    d["name"] = f"{plan.name}:{variant}:{held_out}"
    d["out_dir"] = str(Path(work) / variant / held_out)
    d.setdefault("eval", {})["plots"] = False       # the LOCO summary draws its own plots
    return FinetuneConfig.from_dict(d, base=plan.path.parent)


def _pick(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def fold_rows(plan: LocoPlan, variant: str, held_out: str, summary: dict, cfg: FinetuneConfig,
              train_seconds: float) -> list[dict]:
    """Headline rows (before, after) of one fold from its evaluation summary."""
    how = cfg.eval.threshold_on
    out = []
    for tag in ("before", "after"):
        oa = _pick(summary["organ_awareness"], model=tag, split="eval", style=plan.headline_style, threshold_on=how) or {}
        st = _pick(summary.get("station", []), model=tag, split="eval", source=held_out) or {}
        row = {"variant": variant, "held_out": held_out, "model": tag, "style": plan.headline_style,
               "threshold_on": how, "n_organs": oa.get("n_organs"), "n_organs_both": oa.get("n_organs_both_classes"),
               "n_organs_thresholded": oa.get("n_organs_thresholded"),
               "accuracy_all": oa.get("accuracy_all"), "auc_both": oa.get("auc_both"), "f1_both": oa.get("f1_both"),
               "station_accuracy": st.get("accuracy"), "station_slices": st.get("n_slices"),
               "train_seconds": train_seconds if tag == "after" else None}
        for kind in ("lesion", "normal", "organ"):
            loc = _pick(summary["localization"], model=tag, split="eval", kind=kind,
                        style="sentence" if kind != "organ" else plan.headline_style) or {}
            for k in ("n", "mae_mm", "acc@1", "acc@5", "acc0@1", "acc0@5"):
                row[f"{kind}_{k}"] = loc.get(k)
        out.append(row)
    return out


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def run_loco(plan: LocoPlan, work: Path, *, progress: Progress = print, variants: list[str] | None = None,
             max_steps: int | None = None, on_fold: Callable[[list[dict]], None] | None = None,
             held_out: list[str] | None = None) -> list[dict]:
    """Train and evaluate every (variant, held-out CT); returns the headline rows (see :func:`fold_rows`).
    ``on_fold(rows so far)`` is called after each fold (the benchmark writes its tables there, so a long run
    shows its results as they come). ``max_steps`` shortens every run (tests; not a result to report);
    ``held_out`` runs only those folds, in that order."""
    from keyslice.finetune.evaluate import run_finetune

    rows: list[dict] = []
    for variant in variants or list(plan.variants):
        for held in held_out or plan.source_names:
            cfg = fold_config(plan, held, variant, work)
            if max_steps is not None:
                cfg = replace(cfg, train=replace(cfg.train, steps=int(max_steps), warmup_steps=0,
                                                 checkpoint_every=int(max_steps)))
                cfg.validate()
            progress(f"== {variant}: hold out {held}, train on {[s.name for s in cfg.train_sources]}")
            res = run_finetune(cfg, progress=lambda m: progress("  " + m))
            rows += fold_rows(plan, variant, held, res["eval"].summary, cfg, res["train"].train_seconds)
            if on_fold is not None:
                on_fold(rows)
    return rows


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per (variant, model): the mean over held-out CTs of each headline number (NaN-skipping)."""
    out = []
    keys = [k for k in (rows[0] if rows else {}) if k not in ("variant", "held_out", "model", "style", "threshold_on")]
    for v in dict.fromkeys(r["variant"] for r in rows):
        for tag in ("before", "after"):
            rr = [r for r in rows if r["variant"] == v and r["model"] == tag]
            out.append({"variant": v, "held_out": "mean", "model": tag, "style": rr[0]["style"],
                        "threshold_on": rr[0]["threshold_on"], **{k: _mean(r[k] for r in rr) for k in keys}})
    return out


def jsonable(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


def write_results(plan: LocoPlan, rows: list[dict], dest: Path, header: str = "") -> Path:
    """``loco.csv`` / ``loco.json`` (every fold + the means), ``summary.md`` and ``plots/loco.png`` in ``dest``."""
    import csv

    dest.mkdir(parents=True, exist_ok=True)
    allrows = rows + mean_rows(rows)
    with open(dest / "loco.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(allrows[0]))
        w.writeheader()
        for r in allrows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    (dest / "loco.json").write_text(json.dumps(jsonable(allrows), indent=1) + "\n")
    (dest / "summary.md").write_text(render_summary(plan, allrows, header))
    plot_loco(allrows, dest / "plots" / "loco.png")
    return dest / "summary.md"


def _f(x, d: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def render_summary(plan: LocoPlan, rows: list[dict], header: str = "") -> str:
    lines = [f"# Leave-one-CT-out: `{plan.name}` (`{plan.path.name}`)", ""]
    if header:
        lines += [header, ""]
    lines.append(f"Held-out CT, {plan.headline_style} prompts, Youden threshold chosen on the training CTs; "
                 "before -> after fine-tuning (same starting weights). Accuracy: over the organs scored on the "
                 "held-out CT (those in its segmentation vocabulary); AUC / F1: over those with slices inside and "
                 "outside; station: argmax over 4 station prompts, slices with a station label from the masks. An organ whose "
                 "training CTs hold one class only (e.g. inside every slice of the 20-slice series) gets no threshold, "
                 "hence no accuracy / F1: `thr` counts the organs that have one, and the means are over those.")
    lines.append("")
    lines.append("| variant | held-out CT | organs (both, thr) | accuracy | Δ acc | AUC | F1 | station acc |")
    lines.append("|---|---|---|---|---|---|---|---|")
    by = {(r["variant"], r["held_out"], r["model"]): r for r in rows}
    for v in dict.fromkeys(r["variant"] for r in rows):
        for held in list(dict.fromkeys(r["held_out"] for r in rows if r["variant"] == v)):
            b, a = by.get((v, held, "before")), by.get((v, held, "after"))
            if not (a and b):
                continue
            d = (a["accuracy_all"] - b["accuracy_all"]) if a["accuracy_all"] is not None and b["accuracy_all"] is not None else None
            nd = 0 if held != "mean" else 1
            lines.append(f"| {v} | {'**mean**' if held == 'mean' else held} | {_f(a['n_organs'], nd)} "
                         f"({_f(a['n_organs_both'], nd)}, {_f(a.get('n_organs_thresholded'), nd)}) | "
                         f"{_f(b['accuracy_all'])} → {_f(a['accuracy_all'])} | {'+' if d is not None and d >= 0 else ''}{_f(d)} | "
                         f"{_f(b['auc_both'])} → {_f(a['auc_both'])} | {_f(b['f1_both'])} → {_f(a['f1_both'])} | "
                         f"{_f(b['station_accuracy'])} → {_f(a['station_accuracy'])} |")
    lines.append("")
    les = [r for r in rows if r.get("lesion_n") and r["held_out"] != "mean"]
    if les:
        lines.append("Lesion queries on the held-out CT (sentence prompts; gold slices from model-made masks and "
                     "TotalSegmentator's aorta report, not manual labels). Acc@k within the tolerance / at 0 mm:")
        lines.append("")
        lines.append("| variant | held-out CT | kind | n | MAE mm | Acc@1 | Acc@5 | Acc@1 (0 mm) | Acc@5 (0 mm) |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for v in dict.fromkeys(r["variant"] for r in les):
            for held in dict.fromkeys(r["held_out"] for r in les if r["variant"] == v):
                for kind in ("lesion", "normal"):
                    b, a = by.get((v, held, "before")), by.get((v, held, "after"))
                    if not (a and b) or not a.get(f"{kind}_n"):
                        continue
                    cells = " | ".join(f"{_f(b[f'{kind}_{k}'], 1 if k == 'mae_mm' else 2)} → "
                                       f"{_f(a[f'{kind}_{k}'], 1 if k == 'mae_mm' else 2)}"
                                       for k in ("mae_mm", "acc@1", "acc@5", "acc0@1", "acc0@5"))
                    lines.append(f"| {v} | {held} | {kind} | {_f(a[f'{kind}_n'], 0)} | {cells} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_loco(rows: list[dict], path: Path) -> Path:
    """Grouped bars: held-out accuracy and AUC, before vs after, per variant and held-out CT (+ mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    helds = list(dict.fromkeys(r["held_out"] for r in rows))
    fig, axes = plt.subplots(2, len(variants), figsize=(3.6 * len(variants), 5.5), squeeze=False, sharey=True)
    for c, v in enumerate(variants):
        for r_, metric in enumerate(("accuracy_all", "auc_both")):
            ax = axes[r_][c]
            x = np.arange(len(helds))
            for i, tag in enumerate(("before", "after")):
                vals = []
                for h in helds:
                    row = next((r for r in rows if r["variant"] == v and r["held_out"] == h and r["model"] == tag), None)
                    val = row[metric] if row else None
                    vals.append(np.nan if val is None else val)
                ax.bar(x + (i - 0.5) * 0.38, np.nan_to_num(vals), 0.38, label=tag, color=f"C{i}")
            ax.axhline(0.8 if metric == "auc_both" else 0.5, color="0.5", lw=0.8, ls="--")
            ax.set_xticks(x)
            ax.set_xticklabels(helds, rotation=30, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(f"{v}: {'accuracy (all organs)' if metric == 'accuracy_all' else 'AUC (both classes)'}",
                         fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("held-out CT, word prompts, threshold from the training CTs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def organ_rows_from_scores(score_rows: list[dict], cfg: FinetuneConfig, sources: dict) -> list[dict]:
    """Per-organ rows (as :func:`keyslice.finetune.evaluate.evaluate_models` writes them, ``threshold_on: train``)
    recomputed from saved per-slice scores with the current ``only_segmented`` rule, thresholds included."""
    from collections import defaultdict

    import numpy as np

    from keyslice.finetune.metrics import binary_metrics, youden_threshold

    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in score_rows:
        by[(r["model"], r["organ"], r["style"], r["source"])].append(r)
    train = [s.name for s in cfg.train_sources]
    held = [s.name for s in cfg.eval_sources]
    keep = (lambda src, organ: sources[src].segments_organ(organ)) if cfg.eval.only_segmented else (lambda *_: True)
    out = []
    for model, organ, style in sorted({k[:3] for k in by}):
        def arrays(src):
            rr = sorted(by[(model, organ, style, src)], key=lambda r: r["slice"])
            return np.array([r["score"] for r in rr]), np.array([r["inside"] for r in rr], dtype=bool)
        fit = [arrays(src) for src in train if (model, organ, style, src) in by and keep(src, organ)]
        if fit:
            thr, _ = youden_threshold(np.concatenate([f[0] for f in fit]), np.concatenate([f[1] for f in fit]))
        else:
            thr = math.nan
        for split, names in (("train", train), ("eval", held)):
            for src in names:
                if (model, organ, style, src) not in by or not keep(src, organ):
                    continue
                s, y = arrays(src)
                m = binary_metrics(s, y, thr)
                out.append({"model": model, "split": split, "source": src, "organ": organ, "style": style,
                            "threshold_on": "train", "both_classes": bool(m.n_pos > 0 and m.n_neg > 0), **m.as_dict()})
    return out


def rescore_fold(plan: LocoPlan, held_out: str, variant: str, work: Path) -> list[dict]:
    """Headline rows of a finished fold recomputed from its saved per-slice scores, localisation and station
    tables with the current scoring rules (no encoding): organs that a CT does not fully segment are neither
    scored on it nor used to fit the threshold (``eval.only_segmented``)."""
    import pyarrow.parquet as pq

    from keyslice.finetune.report import summarize, summarize_stations
    from keyslice.finetune.pairs import load_source

    cfg = fold_config(plan, held_out, variant, work)
    ev = cfg.out / "eval"
    srcs = {s.name: load_source(s) for s in cfg.train_sources + cfg.eval_sources}
    organ_rows = organ_rows_from_scores(pq.read_table(ev / "scores.parquet").to_pylist(), cfg, srcs)
    loc_rows = pq.read_table(ev / "localization.parquet").to_pylist()
    if cfg.eval.only_segmented:
        loc_rows = [r for r in loc_rows if r["kind"] != "organ" or srcs[r["source"]].segments_organ(r["query"])]
    station_rows = pq.read_table(ev / "stations.parquet").to_pylist() if (ev / "stations.parquet").exists() else []
    summary = summarize(organ_rows, loc_rows, ["before", "after"], cfg)
    summary["station"] = summarize_stations(station_rows, ["before", "after"])
    steps = pq.read_table(cfg.out / "metrics" / "train_steps.parquet").to_pylist()
    return fold_rows(plan, variant, held_out, summary, cfg, sum(s["seconds"] for s in steps))
