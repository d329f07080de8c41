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
(per-slice scores, for the curves), ``stations.parquet``, ``summary.json`` and ``report.md``
(macro means and before/after tables: :mod:`.report`), ``plots/*.png`` (:mod:`.plots`).
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
from keyslice.finetune.plots import plot_all
from keyslice.finetune.report import render_report, summarize, summarize_stations, summary_json

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
    (out / "summary.json").write_text(summary_json(summary))
    return EvalResult(out, organ_rows, loc_rows, summary, report)


def _write(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    from keyslice.corpus.atomic import write_parquet_atomic

    write_parquet_atomic(path, pa.Table.from_pylist(rows) if rows else pa.table({}))


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
