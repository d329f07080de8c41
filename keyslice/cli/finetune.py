"""``keyslice finetune`` and ``eval``: fine-tuning the key-slice selector and scoring it before vs after, or
scoring the key slices reviewed in a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from keyslice.cli.build import quiet_prefect
from keyslice.cli.corpus import require_corpus
from keyslice.cli.output import console, refuse


def _finetune_config(config: Path, out: Optional[Path], device: Optional[str], **extra):
    from keyslice.finetune.config import FinetuneConfig

    overrides = {"out_dir": str(out) if out else None, "train.device": device, **extra}
    try:
        return FinetuneConfig.from_yaml(config, **overrides)
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:  # a config mistake, not a crash
        raise typer.BadParameter(f"fine-tuning config {config}: {exc}") from exc


def _print_finetune_summary(summary: dict) -> None:
    table = Table(title=f"organ awareness (macro means; Youden threshold on {summary['threshold_on']} data)")
    for col in ("model", "CT", "style", "organs (both classes)", "Acc both", "F1 both", "AUC both", "Acc all"):
        table.add_column(col)

    def f(x):
        return "-" if x is None or x != x else f"{x:.2f}"

    for r in summary["organ_awareness"]:
        if r["threshold_on"] != summary["threshold_on"]:
            continue
        table.add_row(r["model"], r["split"], r["style"], f"{r['n_organs']} ({r['n_organs_both_classes']})",
                      f(r["accuracy_both"]), f(r["f1_both"]), f(r["auc_both"]), f(r["accuracy_all"]))
    console.print(table)


def finetune(
    config: Path = typer.Argument(..., exists=True, dir_okay=False,
                                  help="fine-tuning YAML (see configs/finetune_*.yaml); it fixes the whole run"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the config's out_dir)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many steps in total; "
                                                                       "rerun to resume from the checkpoint"),
    restart: bool = typer.Option(False, "--restart", help="discard the run's checkpoints and start over"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    no_eval: bool = typer.Option(False, "--no-eval", help="train only (no before/after evaluation)"),
    prefect: bool = typer.Option(False, "--prefect", help="run as the Prefect flow flows/finetune.py"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="record the run's metrics in this corpus "
                                                                 "(default: the config's metrics_corpus)"),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="also train on this corpus' reviews (keyslice "
                                                                   "review): accepted/chosen slices positive, "
                                                                   "rejected ones negative; needs --reviews-input"),
    reviews_input: Optional[Path] = typer.Option(None, "--reviews-input", help="the studies folder the reviewed "
                                                                               "corpus was built from"),
) -> None:
    """Fine-tune the key-slice selector on organ/lesion pairs (resumable), then evaluate before vs after."""
    review_overrides = {"pairs.reviews": str(reviews) if reviews else None,
                        "pairs.reviews_input": str(reviews_input) if reviews_input else None}
    if prefect:
        quiet_prefect()
        from flows.finetune import finetune_flow

        overrides = {k: v for k, v in {"out_dir": str(out) if out else None, "train.device": device,
                                       "metrics_corpus": str(corpus) if corpus else None,
                                       **review_overrides}.items() if v}
        result = finetune_flow(str(config), overrides=overrides, max_steps=max_steps, restart=restart,
                               evaluate=not no_eval)
        console.print(f"trained to step {result['train']['step']}/{result['train']['total_steps']}; "
                      f"model {result['train']['model_dir']}")
        if result["eval"]:
            _print_finetune_summary(result["eval"]["summary"])
            console.print(f"report: {result['eval']['report']}")
        if result["recorded"]:
            console.print(f"metrics recorded in {result['recorded']['corpus']} (run {result['recorded']['run_id']})")
        return
    from keyslice.errors import InputError
    from keyslice.finetune.evaluate import run_finetune

    cfg = _finetune_config(config, out, device, metrics_corpus=str(corpus) if corpus else None, **review_overrides)
    try:
        result = run_finetune(cfg, max_steps=max_steps, restart=restart, evaluate=not no_eval,
                              progress=console.print)
    except InputError as exc:
        refuse(console, "finetune refused", str(exc), 2)
    tr = result["train"]
    console.print(f"trained to step {tr.step}/{tr.total_steps} in {tr.train_seconds:.1f} s "
                  f"(final loss {tr.final_loss:.4f}); run folder {tr.out_dir}")
    if tr.model_dir is None:
        console.print("[yellow]stopped before the last step: rerun the same command to resume[/yellow]")
    if result["eval"] is not None:
        _print_finetune_summary(result["eval"].summary)
        console.print(f"report: {result['eval'].report_path}")


def evaluate(
    config: Optional[Path] = typer.Argument(None, exists=True, dir_okay=False,
                                            help="fine-tuning YAML: its CTs, masks, organs and eval settings"),
    model: list[str] = typer.Option([], "--model", help="TAG=SPEC to evaluate (repeatable; SPEC: preset, hf-hub id "
                                                        "or checkpoint folder); default: the run's before/after"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the config's out_dir)"),
    eval_out: Optional[Path] = typer.Option(None, "--eval-out", help="tables, report and plots (default: OUT/eval)"),
    threshold_on: Optional[str] = typer.Option(None, "--threshold-on", help="train (default; no optimistic bias) "
                                                                            "or eval (oracle threshold)"),
    tolerance_mm: Optional[float] = typer.Option(None, "--tolerance-mm", help="Acc@k hit tolerance in mm"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="record the run's metrics in this corpus "
                                                                 "(default: the config's metrics_corpus; only for "
                                                                 "the run's own before/after in OUT/eval)"),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="instead: acceptance of the key slices reviewed "
                                                                    "in this corpus (keyslice review), per model and "
                                                                    "weights, and reader agreement"),
) -> None:
    """Slice-level MAE / Acc@k and per-organ accuracy/F1 (Youden threshold), before vs after, with plots;
    or, with --reviews CORPUS, the acceptance of reviewed key slices and reader agreement."""
    if reviews is not None:
        from keyslice.review.cli import print_review_metrics

        require_corpus(reviews)
        print_review_metrics(reviews, tolerance_mm if tolerance_mm is not None else 10.0)
        return
    if config is None:
        raise typer.BadParameter("give a fine-tuning CONFIG, or --reviews CORPUS")
    from keyslice.finetune.evaluate import evaluate_run

    cfg = _finetune_config(config, out, device, **{"eval.threshold_on": threshold_on,
                                                    "eval.tolerance_mm": tolerance_mm,
                                                    "metrics_corpus": str(corpus) if corpus else None})
    models = None
    if model:
        models = {}
        for i, item in enumerate(model):
            tag, sep, spec = item.partition("=")
            models[tag if sep else f"model{i + 1}"] = spec if sep else item
    result = evaluate_run(cfg, models, eval_out, progress=console.print, device=device or "auto")
    _print_finetune_summary(result.summary)
    console.print(f"report: {result.report_path}; tables and plots in {result.out_dir}")
    if cfg.metrics_corpus and models is None and eval_out is None and (cfg.out / "model").is_dir():
        from keyslice.finetune.record import record_run_metrics

        rec = record_run_metrics(cfg)
        console.print(f"metrics recorded in {rec['corpus']} (run {rec['run_id']})")
