"""Lesion- and organ-aware fine-tuning of the CLIP key-slice selector, and its evaluation (issue 7).

* :mod:`.pairs`: lesion-level and organ-level training pairs from masks and labels;
* :mod:`.prompts`: word / sentence prompts and PMC-MSA-style language augmentation;
* :mod:`.augment`: batched crop/scale, cutout and window-jitter augmentation (torch);
* :mod:`.loss`: contrastive loss with soft targets for false negatives (fVLM);
* :mod:`.train`: AdamW + warmup/cosine, bf16 autocast on CUDA, resumable checkpoints;
* :mod:`.evaluate` / :mod:`.metrics`: the evaluation run and its scoring: MAE, Acc@k, per-organ
  accuracy/F1 at a Youden threshold;
* :mod:`.report` / :mod:`.plots`: its summary, before/after markdown report and figures;
* :mod:`.record`: the run's metrics into a corpus (tables ``finetune_runs``, ``finetune_metrics``).

Heavy modules (torch, open_clip) are imported by the submodules, not here.
"""

from keyslice.finetune.config import FinetuneConfig

__all__ = ["FinetuneConfig", "run_finetune", "train", "evaluate_run", "record_run_metrics"]


def __getattr__(name: str):
    if name == "train":
        from keyslice.finetune.train import train

        return train
    if name == "run_finetune":
        from keyslice.finetune.evaluate import run_finetune

        return run_finetune
    if name == "evaluate_run":
        from keyslice.finetune.evaluate import evaluate_run

        return evaluate_run
    if name == "record_run_metrics":
        from keyslice.finetune.record import record_run_metrics

        return record_run_metrics
    raise AttributeError(name)
