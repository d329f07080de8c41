"""Benchmark of issue 7: organ-aware fine-tuning of a tiny open_clip selector on ONE real CT,
evaluated on ANOTHER patient's CT, before vs after (the recorded run of the README).

Each config (default: the two in configs/) is run end to end exactly as
``keyslice finetune CONFIG`` runs it (train, then evaluate the starting and the fine-tuned weights
on the training CT and on the held-out CT), in a work folder outside the repository. The small
outputs are copied to ``benchmarks/results/finetune/<config name>/``:

* ``report.md``: per-organ accuracy / F1 / AUC tables (word and sentence prompts), macro means,
  slice localisation (MAE in slices and mm, Acc@1, Acc@5);
* ``summary.json``, ``organ_awareness.csv``, ``localization.csv``: the same numbers as data;
* ``train_steps.csv``: loss, learning rate, logit scale per step;
* ``provenance.json``: config, sha256 of every CT and mask, seed, steps, training time, versions;
* ``plots/``: per-organ bars and similarity-vs-z curves of the held-out CT, bars of the training CT.

A summary of both runs (before -> after, with after/before ratios) is printed and written to
``benchmarks/results/finetune/summary.md``. CPU, fp32, ``--threads`` torch threads (default 2);
about 5 CPU-minutes of training per config on the reference machine.

    python benchmarks/bench_finetune.py [CONFIG ...] [--work DIR] [--results DIR] [--threads 2]

Leave-one-CT-out (``--loco CONFIG``, e.g. ``configs/finetune_loco_blind.yaml``): every CT of the config's pool is
held out in turn, for every variant; tables (each held-out CT and the mean, before -> after), ``loco.csv``,
``loco.json`` and ``plots/loco.png`` go to ``benchmarks/results/finetune/<config name>/``, rewritten after each
fold. Per-fold run folders (checkpoints: rerun to resume) stay in ``--work``.

    python benchmarks/bench_finetune.py --loco configs/finetune_loco_blind.yaml --work runs/loco [--variants a,b]
        [--held-out x,y]          # a subset of variants / folds (several processes can share one --work)
    python benchmarks/bench_finetune.py --loco configs/finetune_loco_blind.yaml --work runs/loco --rescore
                                  # the tables of every finished fold in --work, from the saved scores
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = (ROOT / "configs" / "finetune_tiny_example_ct.yaml",
                   ROOT / "configs" / "finetune_tiny_example_ct_wide_fov.yaml")


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _ratio(a, b) -> str:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)) or math.isnan(b):
        return "–"
    return f"x{a / b:.2f}"


def run_one(config: Path, work: Path, results: Path) -> dict:
    import pyarrow.parquet as pq

    from keyslice.finetune.config import FinetuneConfig
    from keyslice.finetune.evaluate import run_finetune

    cfg = FinetuneConfig.from_yaml(config, out_dir=str(work / config.stem), **{"train.device": "cpu",
                                                                                "train.precision": "fp32"})
    t0 = time.perf_counter()
    result = run_finetune(cfg, progress=lambda m: print("  " + m, flush=True))
    wall = time.perf_counter() - t0
    run, ev = cfg.out, cfg.out / "eval"
    dest = results / cfg.name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "plots").mkdir(parents=True)
    shutil.copy(ev / "report.md", dest / "report.md")
    shutil.copy(ev / "summary.json", dest / "summary.json")
    _csv(dest / "organ_awareness.csv", pq.read_table(ev / "organ_awareness.parquet").to_pylist())
    _csv(dest / "localization.csv", pq.read_table(ev / "localization.parquet").to_pylist())
    steps = pq.read_table(run / "metrics" / "train_steps.parquet").to_pylist()
    _csv(dest / "train_steps.csv", steps)
    prov = json.loads((run / "model" / "keyslice_finetune.json").read_text())
    prov["wall_seconds_train_and_eval"] = round(wall, 1)
    prov["config_file"] = str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config)
    (dest / "provenance.json").write_text(json.dumps(prov, indent=1, default=str) + "\n")
    held_out = {s.name for s in cfg.eval_sources}
    for png in sorted((ev / "plots").glob("*.png")):
        # all plots of the held-out CT(s); of the training CT only the bars (its curves are in-sample)
        if any(f"_{name}_" in png.name for name in held_out) or png.name.startswith("organ_bars_"):
            shutil.copy(png, dest / "plots" / png.name)
    return {"name": cfg.name, "config": prov["config_file"], "summary": result["eval"].summary,
            "train_seconds": result["train"].train_seconds, "wall_seconds": wall, "dest": dest,
            "loss_first_10": sum(x["loss"] for x in steps[:10]) / len(steps[:10]),
            "loss_last_10": prov["mean_loss_last_10"]}


def summary_lines(runs: list[dict]) -> list[str]:
    lines = []
    for r in runs:
        s = r["summary"]
        how = s["threshold_on"]
        lines.append(f"### {r['name']} (`{r['config']}`)")
        lines.append("")
        lines.append(f"Training {r['train_seconds']:.0f} s (train + eval {r['wall_seconds']:.0f} s wall); "
                     f"mean loss of the first / last 10 steps {r['loss_first_10']:.3f} / {r['loss_last_10']:.3f}. "
                     f"Youden threshold chosen on the {'training' if how == 'train' else 'evaluated'} CT. "
                     f"Macro means, before -> after (after/before):")
        lines.append("")
        lines.append("| CT | prompts | organs (both classes) | accuracy (both) | F1 (both) | AUC (both) | accuracy (all) |")
        lines.append("|---|---|---|---|---|---|---|")
        oa = {(x["model"], x["split"], x["style"]): x for x in s["organ_awareness"] if x["threshold_on"] == how}
        for split in ("eval", "train"):
            for style in ("word", "sentence"):
                b, a = oa.get(("before", split, style)), oa.get(("after", split, style))
                if not (a and b):
                    continue
                ct = "held-out" if split == "eval" else "training (in-sample)"
                cells = [f"{_f(b[k])} → {_f(a[k])} ({_ratio(a[k], b[k])})"
                         for k in ("accuracy_both", "f1_both", "auc_both", "accuracy_all")]
                lines.append(f"| {ct} | {style} | {a['n_organs']} ({a['n_organs_both_classes']}) | "
                             + " | ".join(cells) + " |")
        lines.append("")
        lines.append("| CT | organ queries | n | MAE slices | MAE mm | Acc@1 | Acc@5 |")
        lines.append("|---|---|---|---|---|---|---|")
        loc = {(x["model"], x["split"], x["kind"], x["style"]): x for x in s["localization"]}
        for split in ("eval", "train"):
            for style in ("word", "sentence"):
                b, a = loc.get(("before", split, "organ", style)), loc.get(("after", split, "organ", style))
                if not (a and b):
                    continue
                ct = "held-out" if split == "eval" else "training (in-sample)"
                lines.append(f"| {ct} | {style} | {a['n']} | {_f(b['mae_slices'])} → {_f(a['mae_slices'])} | "
                             f"{_f(b['mae_mm'])} → {_f(a['mae_mm'])} | {_f(b['acc@1'])} → {_f(a['acc@1'])} | "
                             f"{_f(b['acc@5'])} → {_f(a['acc@5'])} |")
        lines.append("")
    return lines


def run_loco_bench(args) -> int:
    from keyslice.finetune.loco import load_loco, run_loco, write_results

    import torch

    plan = load_loco(args.loco.resolve())
    work = args.work or Path(tempfile.mkdtemp(prefix="keyslice-bench-loco-"))
    dest = args.results / plan.name
    header = (f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, {args.threads} "
              f"torch threads, load average at start {os.getloadavg()[0]:.1f}; config "
              f"`{args.loco.resolve().relative_to(ROOT) if args.loco.resolve().is_relative_to(ROOT) else args.loco}`")
    t0 = time.perf_counter()

    def on_fold(rows):
        write_results(plan, rows, dest, header + f"; {time.perf_counter() - t0:.0f} s so far")
        print(f"  -> {dest / 'summary.md'} ({len(rows) // 2} fold(s) done)", flush=True)

    variants = args.variants.split(",") if args.variants else None
    held_out = args.held_out.split(",") if args.held_out else None
    rows = run_loco(plan, work, progress=lambda m: print(m, flush=True), variants=variants, on_fold=on_fold,
                    held_out=held_out)
    summary = write_results(plan, rows, dest, header + f"; {time.perf_counter() - t0:.0f} s in all")
    print(summary.read_text())
    return 0


def rescore_loco(args) -> int:
    from keyslice.finetune.loco import fold_config, load_loco, rescore_fold, write_results

    if args.work is None:
        raise SystemExit("--rescore needs --work (the folder of the finished folds)")
    plan = load_loco(args.loco.resolve())
    rows, done = [], []
    for variant in plan.variants:
        for held in plan.source_names:
            out = fold_config(plan, held, variant, args.work).out
            if (out / "eval" / "scores.parquet").exists() and (out / "model").is_dir():
                rows += rescore_fold(plan, held, variant, args.work)
                done.append(f"{variant}/{held}")
    missing = [f"{v}/{h}" for v in plan.variants for h in plan.source_names if f"{v}/{h}" not in done]
    header = (f"Folds finished: {', '.join(done) or 'none'}. Not run (out of time on the shared CPU): "
              f"{', '.join(missing) or 'none'}. Tables recomputed from the saved per-slice scores (`--rescore`).")
    summary = write_results(plan, rows, args.results / plan.name, header)
    print(summary.read_text())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", type=Path, default=list(DEFAULT_CONFIGS))
    ap.add_argument("--work", type=Path, default=None, help="run folders (checkpoints, models); default: a temp dir")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "finetune")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--loco", type=Path, default=None, help="a leave-one-CT-out config: run it instead of CONFIGs")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the LOCO config's variants")
    ap.add_argument("--held-out", default=None, help="comma-separated subset (and order) of the LOCO folds")
    ap.add_argument("--rescore", action="store_true",
                    help="with --loco and --work: recompute the tables of every finished fold in WORK from its saved "
                         "per-slice scores (no encoding) and write them to the results folder")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.loco is not None and args.rescore:
        return rescore_loco(args)
    if args.loco is not None:
        return run_loco_bench(args)
    work_ctx = tempfile.TemporaryDirectory(prefix="keyslice-bench-finetune-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    args.results.mkdir(parents=True, exist_ok=True)
    header = [f"keyslice fine-tuning benchmark: python {platform.python_version()}, torch {torch.__version__}, "
              f"{platform.machine()}, {args.threads} torch threads, load average {os.getloadavg()[0]:.1f}", ""]
    print(header[0], flush=True)
    runs = []
    try:
        for config in args.configs:
            print(f"\n== {config}", flush=True)
            runs.append(run_one(config.resolve(), work, args.results))
    finally:
        if work_ctx:
            work_ctx.cleanup()
    lines = header + summary_lines(runs)
    print("\n" + "\n".join(lines))
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
