"""Write a finished fine-tuning run's metrics into a corpus (tables ``finetune_runs`` and ``finetune_metrics``).

Everything is read back from the run folder (``model/keyslice_finetune.json``,
``metrics/train_steps.parquet`` and, when the run was evaluated, ``eval/*.parquet`` +
``eval/summary.json``), so the same call works after ``keyslice finetune``, after a separate
``keyslice eval`` and from the Prefect flow. The run id is the training fingerprint plus the step
count: recording the same run again (e.g. after a new evaluation) replaces its rows. The metrics
file is written before the runs row, so a ``finetune_runs`` row always has its metrics.

Query them with ``keyslice sql --out CORPUS "select ... from finetune_metrics ..."``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from keyslice.finetune.config import FinetuneConfig

_ORGAN_METRICS = ("accuracy", "f1", "auc", "sensitivity", "specificity", "threshold")
_MACRO_METRICS = ("accuracy_both", "f1_both", "auc_both", "accuracy_all", "f1_all")


def run_id(cfg: FinetuneConfig, steps: int) -> str:
    return f"{cfg.fingerprint()}-{int(steps)}"


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def metric_rows(rid: str, out: Path, ks: tuple[int, ...]) -> tuple[list[dict], dict | None]:
    """The long-format ``finetune_metrics`` rows of the run folder ``out``, and its eval summary (or None)."""
    base = {"model": None, "split": None, "source": None, "subject": None, "style": None, "threshold_on": None,
            "step": None}
    rows: list[dict] = []
    for r in _rows(out / "metrics" / "train_steps.parquet"):
        for m in ("loss", "lr", "logit_scale", "grad_norm"):
            rows.append({**base, "run_id": rid, "scope": "train_step", "metric": m, "value": _num(r[m]),
                         "step": int(r["step"])})
    summary_path = out / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is None:
        return rows, None
    for r in _rows(out / "eval" / "organ_awareness.parquet"):
        for m in _ORGAN_METRICS:
            rows.append({**base, "run_id": rid, "scope": "organ", "model": r["model"], "split": r["split"],
                         "source": r["source"], "subject": r["organ"], "style": r["style"],
                         "threshold_on": r["threshold_on"], "metric": m, "value": _num(r[m])})
    for r in summary["organ_awareness"]:
        for m in _MACRO_METRICS:
            rows.append({**base, "run_id": rid, "scope": "organ_macro", "model": r["model"], "split": r["split"],
                         "style": r["style"], "threshold_on": r["threshold_on"], "metric": m, "value": _num(r[m])})
    for r in summary["localization"]:
        for m in ("mae_slices", "mae_mm", *(f"acc@{k}" for k in ks)):
            rows.append({**base, "run_id": rid, "scope": "localization", "model": r["model"], "split": r["split"],
                         "subject": r["kind"], "style": r["style"], "metric": m, "value": _num(r.get(m))})
    for r in _rows(out / "eval" / "localization.parquet"):
        for m in ("err_slices", "err_mm", *(f"hit@{k}" for k in ks)):
            rows.append({**base, "run_id": rid, "scope": "localization_query", "model": r["model"],
                         "split": r["split"], "source": r["source"], "subject": r["query"], "style": r["style"],
                         "metric": m, "value": _num(r.get(m))})
    return rows, summary


def check_corpus(corpus: Path | str | None) -> Path:
    """The metrics corpus as a Path; InputError unless it is an existing folder (checked before training
    too, so that a typo does not surface only after the run, nor silently create a new corpus)."""
    from keyslice.errors import InputError

    if not corpus or not Path(corpus).is_dir():
        raise InputError(f"metrics corpus {str(corpus or '')!r} is not an existing folder (create it, or build a "
                         f"corpus there first)")
    return Path(corpus)


def record_run_metrics(cfg: FinetuneConfig, corpus: Path | str | None = None) -> dict[str, Any]:
    """Record the finished run of ``cfg`` in ``corpus`` (default ``cfg.metrics_corpus``); returns
    ``{"run_id", "corpus", "n_metrics", "evaluated"}``. The corpus folder must exist
    (:func:`check_corpus`); the run must have finished training."""
    import keyslice
    from keyslice.corpus.atomic import write_parquet_atomic
    from keyslice.errors import InputError
    from keyslice.corpus.schemas import to_table, utcnow

    corpus = check_corpus(corpus or cfg.metrics_corpus)
    prov_path = cfg.out / "model" / "keyslice_finetune.json"
    if not prov_path.is_file():
        raise InputError(f"{cfg.out} has no finished model ({prov_path} missing): train the run to its last step "
                         f"before recording it")
    prov = json.loads(prov_path.read_text())
    rid = run_id(cfg, prov["steps"])
    metrics, summary = metric_rows(rid, cfg.out, tuple(cfg.eval.ks))
    row = {
        "run_id": rid, "name": cfg.name, "fingerprint": cfg.fingerprint(), "recorded_at": utcnow(),
        "init_model": str(prov["init_model"]), "steps": int(prov["steps"]), "final_loss": _num(prov["final_loss"]),
        "mean_loss_last_10": _num(prov.get("mean_loss_last_10")), "train_seconds": float(prov["train_seconds"]),
        "device": str(prov["device"]), "precision": str(prov["precision"]), "n_pairs": int(prov["n_pairs"]),
        "organs": list(prov["organs"]), "train_sources": [s.name for s in cfg.train_sources],
        "eval_sources": [s.name for s in cfg.eval_sources], "evaluated": summary is not None,
        "threshold_on": summary["threshold_on"] if summary else None,
        "tolerance_mm": float(summary["tolerance_mm"]) if summary else None,
        "data_json": json.dumps(prov["data"]), "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
        "keyslice_version": keyslice.__version__,
    }
    runs_table = to_table("finetune_runs", [row])           # validate both before writing either
    metrics_table = to_table("finetune_metrics", metrics)
    write_parquet_atomic(corpus / "tables" / "finetune_metrics" / f"{rid}.parquet", metrics_table)
    write_parquet_atomic(corpus / "tables" / "finetune_runs" / f"{rid}.parquet", runs_table)
    return {"run_id": rid, "corpus": str(corpus), "n_metrics": len(metrics), "evaluated": summary is not None}
