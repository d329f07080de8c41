"""Evaluation of key-slice selectors: slice localisation and organ awareness, before vs after.

For each model (``before`` = the starting weights, ``after`` = the fine-tuned ones, or any
``tag=spec`` given) and each CT, every slice is encoded once per window exactly as the selector
does at inference (:func:`keyslice.selector.preprocess.preprocess_batch`, the organ's window from
:func:`keyslice.selector.windows.choose_window`), and every prompt once.

Organ awareness (per organ and prompt style, ``word`` / ``sentence``):
    score = cosine similarity of the canonical organ prompt and the slice; label = slice inside the
    organ's z-range (masks); prediction = score >= threshold. The threshold maximises Youden's J.
    ``threshold_on: train`` (default) chooses it on the TRAINING CTs' scores with the same model and
    applies it to the evaluated CT, which is what a deployed selector can do (no labels at test
    time). ``threshold_on: eval`` chooses it on the evaluated CT itself: optimistic (an oracle),
    reported beside for reference only. Both are always computed; the config says which one the
    summary tables show. AUC is threshold-free. An organ absent from the evaluated CT's masks is
    all-negative there (TotalSegmentator found no voxel), one that fills every slice all-positive:
    accuracy is defined, AUC and the eval-chosen threshold are not; macro means are given over the
    organs with both classes and over all organs.

Slice localisation:
    organ queries (organ prompt vs the organ's z-range; organs with both classes on the CT) and
    lesion queries (a finding sentence vs its labelled key slice, from lesion labels of the
    evaluated CTs): MAE in slices and mm, Acc@k within ``tolerance_mm`` (see :mod:`.metrics`).

Outputs (``out``): ``organ_awareness.parquet``, ``localization.parquet``, ``scores.parquet``
(per-slice scores, for the curves), ``report.md`` (before/after tables), ``plots/*.png``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from keyslice.finetune.config import FinetuneConfig
from keyslice.finetune.metrics import binary_metrics, rank_query, youden_threshold

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- encoding


def encode_volume(encoder, volume, window: str, batch_size: int = 64, spatial=None) -> np.ndarray:
    """Unit-norm embeddings ``[n, D]`` of every slice, preprocessed as the selector does (spatially
    normalised first when ``spatial`` is an enabled :class:`~keyslice.selector.spatial.SpatialConfig`)."""
    import torch

    from keyslice.selector.preprocess import preprocess_batch
    from keyslice.selector.spatial import plan_for_volume
    from keyslice.selector.windows import get_window

    w = get_window(window)
    plan = plan_for_volume(volume, spatial) if spatial is not None and spatial.enabled else None
    out = []
    for a in range(0, volume.n_slices, batch_size):
        b = min(volume.n_slices, a + batch_size)
        hu = torch.from_numpy(np.ascontiguousarray(volume.slab(a, b))).to(encoder.device)
        if plan is not None:
            hu = plan.apply(hu)
        x = preprocess_batch(hu, w, encoder.image_size, encoder.mean, encoder.std, resize_mode=encoder.resize_mode)
        out.append(encoder.encode_images(x).numpy())
    return np.concatenate(out).astype(np.float32)


class _Scorer:
    """Slice embeddings per (source, window) and text embeddings per prompt, for one model."""

    def __init__(self, encoder, batch_size: int, spatial=None):
        self.encoder = encoder
        self.batch_size = batch_size
        self.spatial = spatial
        self._img: dict[tuple[str, str], np.ndarray] = {}
        self._txt: dict[str, np.ndarray] = {}

    def image(self, source, window: str) -> np.ndarray:
        key = (source.name, window)
        if key not in self._img:
            self._img[key] = encode_volume(self.encoder, source.volume, window, self.batch_size, self.spatial)
        return self._img[key]

    def text(self, prompts: list[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._txt]
        if missing:
            for p, e in zip(missing, self.encoder.encode_texts(missing).numpy()):
                self._txt[p] = e
        return np.stack([self._txt[p] for p in prompts])

    def scores(self, source, window: str, prompt: str) -> np.ndarray:
        return self.image(source, window) @ self.text([prompt])[0]


# --------------------------------------------------------------------------- evaluation


def _loc_row(tag: str, split: str, src, kind: str, query: str, style: str, scores: np.ndarray, lo: int, hi: int,
             tol: float, ks: tuple[int, ...], valid: np.ndarray, origin: str | None = None) -> dict:
    """One localisation row: top-1 error (slices, mm) and hits at k within ``tol`` mm and at 0 mm (inside the gold
    range itself)."""
    r = rank_query(scores, src.z_mm, lo, hi, tolerance_mm=tol, ks=ks, valid=valid)
    r0 = rank_query(scores, src.z_mm, lo, hi, tolerance_mm=0.0, ks=ks, valid=valid)
    return {"model": tag, "split": split, "source": src.name, "kind": kind, "query": query, "style": style,
            "origin": origin, "gt_lo": int(lo), "gt_hi": int(hi), "gt_fraction": (hi - lo + 1) / max(1, src.n_slices),
            "top1": r.top1, "err_slices": r.err_slices, "err_mm": r.err_mm, **{f"hit@{k}": r.hits[k] for k in ks},
            **{f"hit0@{k}": r0.hits[k] for k in ks}}


def _station_rows(tag: str, scorer, encoder, train_sources, eval_sources) -> list[dict]:
    """Per slice with a station label (from its masks): the station whose canonical prompt scores highest."""
    from keyslice.finetune.pairs import STATIONS, slice_stations
    from keyslice.finetune.prompts import canonical_station_prompt

    window = _window_for(None, encoder)
    txt = scorer.text([canonical_station_prompt(st) for st in STATIONS])
    rows = []
    for split, srcs in (("train", train_sources), ("eval", eval_sources)):
        for src in srcs:
            gold = slice_stations(src)
            pred = (scorer.image(src, window) @ txt.T).argmax(1)
            valid = np.asarray(src.volume.valid, bool)
            for k, g in enumerate(gold):
                if g is None or not valid[k]:
                    continue
                rows.append({"model": tag, "split": split, "source": src.name, "slice": k, "gold": g,
                             "pred": STATIONS[int(pred[k])], "correct": STATIONS[int(pred[k])] == g})
    return rows


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


@dataclass
class EvalResult:
    out_dir: Path
    organ_rows: list[dict]
    localization_rows: list[dict]
    summary: dict
    report_path: Path


def _window_for(organ: str | None, encoder) -> str:
    from keyslice.selector.windows import DEFAULT_WINDOW, choose_window

    if organ:
        return choose_window([organ])
    return encoder.training_window or DEFAULT_WINDOW


def _eval_organs(cfg: FinetuneConfig, train_sources) -> list[str]:
    if cfg.eval.organs:
        return list(cfg.eval.organs)
    if cfg.pairs.organs:
        return list(cfg.pairs.organs)
    from keyslice.finetune.pairs import default_organs

    return default_organs(train_sources)


def evaluate_models(cfg: FinetuneConfig, models: dict[str, str], out: Path, *, progress: Progress = print,
                    device: str = "auto") -> EvalResult:
    """Evaluate each ``tag -> load_model spec`` on the config's CTs; write tables, report and plots to ``out``."""
    from keyslice.finetune.pairs import LesionLabel, collect_lesion_labels, load_source
    from keyslice.finetune.prompts import canonical_prompt
    from keyslice.selector.loaders import load_model

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_sources = [load_source(s) for s in cfg.train_sources]
    eval_sources = [load_source(s) for s in cfg.eval_sources]
    organs = _eval_organs(cfg, train_sources)
    lesions: list[LesionLabel] = collect_lesion_labels(cfg.pairs, eval_sources) if eval_sources else []
    ks = tuple(cfg.eval.ks)
    tol = float(cfg.eval.tolerance_mm)

    organ_rows: list[dict] = []
    loc_rows: list[dict] = []
    score_rows: list[dict] = []
    station_rows: list[dict] = []
    for tag, spec in models.items():
        encoder = load_model(spec, device=device)
        scorer = _Scorer(encoder, cfg.eval.batch_size, cfg.spatial)
        scorer.text([canonical_prompt(o, st) for o in organs for st in cfg.eval.styles]
                    + [lb.sentence for lb in lesions])          # one batch of prompts
        if cfg.eval.station:
            station_rows += _station_rows(tag, scorer, encoder, train_sources, eval_sources)
        for organ in organs:
            window = _window_for(organ, encoder)
            for style in cfg.eval.styles:
                prompt = canonical_prompt(organ, style)
                # threshold fitted on the training CTs (all of them together)
                fit = [s for s in train_sources if not cfg.eval.only_segmented or s.segments_organ(organ)]
                if fit:
                    tr_s = np.concatenate([scorer.scores(s, window, prompt) for s in fit])
                    tr_y = np.concatenate([s.inside(organ) for s in fit])
                    tr_valid = np.concatenate([np.asarray(s.volume.valid, bool) for s in fit])
                    t_train, j_train = youden_threshold(tr_s[tr_valid], tr_y[tr_valid])
                else:
                    t_train, j_train = math.nan, math.nan
                for split, srcs in (("train", train_sources), ("eval", eval_sources)):
                    for src in srcs:
                        if cfg.eval.only_segmented and not src.segments_organ(organ):
                            continue          # never segmented on this CT: unknown, not absent
                        s = scorer.scores(src, window, prompt)
                        y = src.inside(organ)
                        valid = np.asarray(src.volume.valid, bool)
                        t_eval, j_eval = youden_threshold(s[valid], y[valid])
                        for how, thr, j_fit in (("train", t_train, j_train), ("eval", t_eval, j_eval)):
                            m = binary_metrics(s[valid], y[valid], thr)
                            organ_rows.append({
                                "model": tag, "split": split, "source": src.name, "organ": organ, "style": style,
                                "prompt": prompt, "window": window, "threshold_on": how, "youden_j_fit": j_fit,
                                "both_classes": bool(m.n_pos > 0 and m.n_neg > 0), **m.as_dict()})
                        for k in range(src.n_slices):
                            score_rows.append({"model": tag, "source": src.name, "organ": organ, "style": style,
                                               "slice": k, "z_mm": float(src.z_mm[k]), "score": float(s[k]),
                                               "inside": bool(y[k])})
                        if y.any() and (~y).any():
                            kk = np.nonzero(y)[0]
                            loc_rows.append(_loc_row(tag, split, src, "organ", organ, style, s, int(kk[0]), int(kk[-1]),
                                                     tol, ks, valid))
        by_name = {s.name: s for s in eval_sources}
        for lb in lesions:
            src = by_name[lb.source]
            window = _window_for(lb.organ, encoder)
            s = scorer.scores(src, window, lb.sentence)
            kind = "normal" if lb.status == "normal" else "lesion"
            loc_rows.append(_loc_row(tag, "eval", src, kind, lb.sentence, "sentence", s, lb.slice, lb.hi, tol, ks,
                                     np.asarray(src.volume.valid, bool), origin=lb.origin))
        progress(f"evaluated {tag} ({spec}) on {len(train_sources)} training and {len(eval_sources)} evaluation CT(s)")

    _write(out / "organ_awareness.parquet", organ_rows)
    _write(out / "localization.parquet", loc_rows)
    _write(out / "scores.parquet", score_rows)
    _write(out / "stations.parquet", station_rows)
    summary = summarize(organ_rows, loc_rows, list(models), cfg)
    summary["station"] = summarize_stations(station_rows, list(models))
    summary["eval_seconds"] = round(time.perf_counter() - t0, 2)
    summary["models"] = dict(models)
    report = out / "report.md"
    report.write_text(render_report(organ_rows, loc_rows, summary, cfg, list(models)))
    if cfg.eval.plots:
        plot_all(organ_rows, score_rows, out / "plots", list(models), cfg)
    import json

    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1, default=_json_default))
    return EvalResult(out, organ_rows, loc_rows, summary, report)


def _json_default(o):
    return str(o)


def jsonable(obj):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _write(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    from keyslice.corpus.atomic import write_parquet_atomic

    write_parquet_atomic(path, pa.Table.from_pylist(rows) if rows else pa.table({}))


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


# --------------------------------------------------------------------------- plots


def plot_all(organ_rows: list[dict], score_rows: list[dict], folder: Path, tags: list[str], cfg: FinetuneConfig,
             max_curves: int = 8) -> list[Path]:
    """Per-organ F1/accuracy bars (one figure per CT and style) and similarity curves (score vs z per
    organ, the organ's z-range shaded, one line per model). Matplotlib Agg, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    how = cfg.eval.threshold_on
    written = []
    sources = list(dict.fromkeys(r["source"] for r in organ_rows))
    for src in sources:
        for style in cfg.eval.styles:
            rows = [r for r in organ_rows if r["source"] == src and r["style"] == style and r["threshold_on"] == how]
            organs = list(dict.fromkeys(r["organ"] for r in rows))
            if not organs:
                continue
            fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(organs) + 2), 6), sharex=True)
            width = 0.8 / len(tags)
            x = np.arange(len(organs))
            for ax, metric in zip(axes, ("f1", "accuracy")):
                for i, tag in enumerate(tags):
                    vals = []
                    for o in organs:
                        r = next((r for r in rows if r["organ"] == o and r["model"] == tag), None)
                        v = r[metric] if r else math.nan
                        vals.append(math.nan if v is None else v)
                    vals = np.array(vals, dtype=float)
                    xs = x + (i - (len(tags) - 1) / 2) * width
                    ax.bar(xs, np.nan_to_num(vals), width, label=tag, color=f"C{i}")
                    undefined = np.isnan(vals)      # e.g. F1 of an organ absent from the CT: a hatched "n/a" frame
                    ax.bar(xs[undefined], np.ones(undefined.sum()), width, fill=False, hatch="//", lw=0.5,
                           edgecolor=f"C{i}")
                ax.set_ylabel(metric)
                ax.set_ylim(0, 1)
            axes[0].legend(loc="upper right", fontsize=8)
            axes[0].set_title(f"{src}: per-organ {style} prompts (threshold on {how}; hatched = undefined)")
            axes[1].set_xticks(x)
            axes[1].set_xticklabels(organs, rotation=60, ha="right", fontsize=8)
            fig.tight_layout()
            path = folder / f"organ_bars_{src}_{style}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
        # curves of the organs with slices inside and outside the range on this CT (the informative ones)
        both = {r["organ"] for r in organ_rows if r["source"] == src and r["both_classes"]}
        organs = [o for o in dict.fromkeys(r["organ"] for r in score_rows if r["source"] == src) if o in both]
        organs = organs[:max_curves]
        if not organs:
            continue
        ncol = 4
        nrow = math.ceil(len(organs) / ncol)
        src_rows = [r for r in score_rows if r["source"] == src]
        for style in cfg.eval.styles:
            fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
            for ax, organ in zip(axes.ravel(), organs):
                rows = [r for r in src_rows if r["organ"] == organ and r["style"] == style]
                if not rows:
                    continue
                ref = [r for r in rows if r["model"] == tags[0]]
                z = np.array([r["z_mm"] for r in ref])
                inside = np.array([r["inside"] for r in ref])
                if inside.any():
                    ax.axvspan(z[inside].min(), z[inside].max(), color="0.9")
                for tag in tags:
                    rr = [r for r in rows if r["model"] == tag]
                    s = np.array([r["score"] for r in rr])
                    ax.plot([r["z_mm"] for r in rr], (s - s.mean()) / (s.std() + 1e-9), label=tag, lw=1,
                            color=f"C{tags.index(tag)}")
                ax.set_title(organ, fontsize=8)
                ax.tick_params(labelsize=6)
            for ax in axes.ravel()[len(organs):]:
                ax.axis("off")
            axes.ravel()[0].legend(fontsize=6)
            fig.suptitle(f"{src}: z-scored similarity vs z (mm), {style} prompts; grey = organ z-range", fontsize=9)
            fig.tight_layout()
            path = folder / f"similarity_{src}_{style}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


# --------------------------------------------------------------------------- run helpers


def run_models(cfg: FinetuneConfig) -> dict[str, str]:
    """``before`` (the starting weights) and, when the run has finished, ``after`` (its model folder)."""
    from keyslice.finetune.train import prepare_initial_model

    models = {"before": prepare_initial_model(cfg)}
    after = cfg.out / "model"
    if after.is_dir():
        models["after"] = str(after.resolve())
    return models


def evaluate_run(cfg: FinetuneConfig, models: dict[str, str] | None = None, out: Path | None = None, *,
                 progress: Progress = print, device: str = "auto") -> EvalResult:
    """Evaluate a run's before/after models (or the given ``tag -> spec``) into ``out`` (default ``OUT/eval``)."""
    from keyslice.selector.loaders import load_model

    models = models or run_models(cfg)
    load_model.cache_clear()  # the run folder may have been rewritten since an earlier load in this process
    return evaluate_models(cfg, models, Path(out) if out else cfg.out / "eval", progress=progress, device=device)


def run_finetune(cfg: FinetuneConfig, *, max_steps: int | None = None, restart: bool = False, evaluate: bool = True,
                 progress: Progress = print) -> dict:
    """Train (resuming when possible) and, when training has finished, evaluate before vs after and,
    when the config names a ``metrics_corpus``, record the run's metrics there."""
    from keyslice.finetune.record import check_corpus, record_run_metrics
    from keyslice.finetune.train import train

    if cfg.metrics_corpus:
        check_corpus(cfg.metrics_corpus)
    result = train(cfg, max_steps=max_steps, restart=restart, progress=progress)
    out = {"train": result, "eval": None, "recorded": None}
    if result.model_dir is None:
        return out
    if evaluate:
        out["eval"] = evaluate_run(cfg, progress=progress)
    if cfg.metrics_corpus:
        out["recorded"] = record_run_metrics(cfg)
        progress(f"metrics of run {out['recorded']['run_id']} recorded in {cfg.metrics_corpus} "
                 f"(tables finetune_runs, finetune_metrics)")
    return out
