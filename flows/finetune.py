"""The fine-tuning flow: train (resumable), evaluate before vs after, record the metrics in a corpus;
thin wrappers over keyslice.finetune.

``finetune_flow(config_path)`` runs the whole YAML-defined run; a retried or re-run flow resumes
from the run folder's last checkpoint (the training task retries once on a transient error).
The flow's parameter is the YAML file (its relative paths and ``{config_dir}`` resolve against the
file's folder); its tasks receive the :class:`FinetuneConfig` it reads, as it is.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from keyslice.finetune.config import FinetuneConfig


@task(name="finetune-train", retries=1, retry_delay_seconds=5, cache_policy=NONE, persist_result=False)
def train_task(config: FinetuneConfig, max_steps: int | None = None, restart: bool = False) -> dict[str, Any]:
    from keyslice.finetune.train import train

    logger = get_run_logger()
    result = train(config, max_steps=max_steps, restart=restart, progress=logger.info)
    return {"out_dir": str(result.out_dir), "model_dir": str(result.model_dir) if result.model_dir else None,
            "step": result.step, "total_steps": result.total_steps, "final_loss": result.final_loss,
            "train_seconds": result.train_seconds, "resumed_from": result.resumed_from}


@task(name="finetune-eval", cache_policy=NONE, persist_result=False)
def eval_task(config: FinetuneConfig) -> dict[str, Any]:
    from keyslice.finetune.evaluate import evaluate_run
    from keyslice.finetune.report import jsonable

    logger = get_run_logger()
    result = evaluate_run(config, progress=logger.info)
    return {"report": str(result.report_path), "summary": jsonable(result.summary)}


@task(name="finetune-record", cache_policy=NONE, persist_result=False)
def record_task(config: FinetuneConfig) -> dict[str, Any]:
    from keyslice.finetune.record import record_run_metrics

    return record_run_metrics(config)


@flow(name="keyslice-finetune", log_prints=True)
def finetune_flow(config_path: str, overrides: dict[str, Any] | None = None, max_steps: int | None = None,
                  restart: bool = False, evaluate: bool = True) -> dict[str, Any]:
    """Train the run of ``config_path`` (dotted ``overrides`` such as ``{"out_dir": ...}`` win) and,
    once training has finished, evaluate before vs after and record the metrics in the config's
    ``metrics_corpus`` (when it names one)."""
    cfg = FinetuneConfig.from_yaml(config_path, **(overrides or {}))
    if cfg.metrics_corpus:
        from keyslice.finetune.record import check_corpus

        check_corpus(cfg.metrics_corpus)
    trained = train_task(cfg, max_steps=max_steps, restart=restart)
    finished = trained["model_dir"] is not None
    evaluated = eval_task(cfg) if evaluate and finished else None
    recorded = record_task(cfg) if cfg.metrics_corpus and finished else None
    return {"train": trained, "eval": evaluated, "recorded": recorded}
