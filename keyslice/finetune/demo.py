"""The organ-aware demo selector: the tiny open_clip ViT fine-tuned on one real CT.

:func:`train_demo_model` trains the tiny model (``save_tiny_checkpoint``, seed 0) on
``example_ct.nii.gz`` + ``example_seg_fast_force_split.nii.gz`` from the real test data
(organ-level pairs, soft-target contrastive loss), evaluates it before/after on the
other patient's CT (``example_ct_dicom`` + ``example_seg_dicom.nii.gz``), and writes into
``folder``:

* the model in the config layout ``keyslice.selector.load_model(str(folder))`` reads
  (``tiny-clip.json`` + ``tiny-clip.pt``);
* ``keyslice_finetune.json``: provenance (data paths and sha256, config, seed, steps, training
  time, versions) and the evaluation summary (macro accuracy/F1/AUC of organ awareness, held-out
  CT and training CT, before vs after).

It does not write a ``READY`` marker: the caller (``keyslice.demo_model.ensure_demo_model``)
decides when the folder is complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

DEMO_STEPS = 300

_REF = "{data}/totalsegmentator_reference/tests/reference_files"
_LABELS = "{data}/totalsegmentator_reference/totalsegmentator_total_labels.json"

#: Organs of the demo model: the report organs the sample reports mention, plus a few levels.
DEMO_ORGANS = ("liver", "spleen", "kidney", "pancreas", "stomach", "gallbladder", "adrenal gland", "aorta",
               "inferior vena cava", "portal vein", "colon", "small bowel", "duodenum", "urinary bladder", "prostate",
               "lung", "spine", "rib", "sacrum", "hip bone", "femur", "iliac artery", "iliopsoas muscle",
               "spinal cord", "vertebrae_L1", "vertebrae_L3", "vertebrae_L5", "vertebrae_T12")


def demo_config(out_dir: Path, steps: int = DEMO_STEPS, seed: int = 0) -> dict:
    """The demo run's config (the same as ``configs/finetune_tiny_example_ct.yaml``), as a dict."""
    return {
        "name": "keyslice-demo-organ-aware", "seed": seed, "out_dir": str(out_dir),
        "model": {"spec": "tiny", "tiny_image_size": 64},
        "data": {
            "train": [{"name": "example_ct", "ct": f"{_REF}/example_ct.nii.gz",
                       "masks": f"{_REF}/example_seg_fast_force_split.nii.gz", "labels": _LABELS}],
            "eval": [{"name": "example_ct_dicom", "ct": f"{_REF}/example_ct_dicom",
                      "masks": f"{_REF}/example_seg_dicom.nii.gz", "labels": _LABELS}],
        },
        "pairs": {"organs": list(DEMO_ORGANS), "pairs_per_organ": 64},
        "prompts": {"styles": ["word", "sentence"], "language_augment": True},
        "augment": {"enabled": True},
        "train": {"steps": steps, "batch_size": 64, "lr": 5e-4, "weight_decay": 0.1,
                  "warmup_steps": max(1, steps // 10), "device": "cpu", "precision": "fp32",
                  "checkpoint_every": steps, "log_every": max(1, steps // 6)},
        "eval": {"threshold_on": "train", "plots": False},
    }


def train_demo_model(folder: Path, progress: Callable[[str], None] = print, *, steps: int = DEMO_STEPS,
                     evaluate: bool = True) -> Path:
    """Train the organ-aware demo model into ``folder`` (see the module docstring); returns ``folder``.
    Needs the real test data (``keyslice.sample.data_dir``); raises FileNotFoundError without it."""
    from keyslice.finetune.config import FinetuneConfig
    from keyslice.finetune.evaluate import evaluate_run, jsonable
    from keyslice.finetune.train import train

    folder = Path(folder)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keyslice-demo-train-") as work:
        cfg = FinetuneConfig.from_dict(demo_config(Path(work) / "run", steps=steps))
        progress(f"training the organ-aware demo selector ({steps} steps on example_ct, CPU)")
        result = train(cfg, progress=lambda m: None)
        summary = None
        if evaluate:
            ev = evaluate_run(cfg, progress=lambda m: None, device="cpu")
            summary = jsonable({k: ev.summary[k] for k in ("threshold_on", "tolerance_mm", "organ_awareness",
                                                              "localization")})
        prov_path = result.model_dir / "keyslice_finetune.json"
        prov = json.loads(prov_path.read_text())
        prov["evaluation"] = summary
        prov["total_seconds"] = round(time.perf_counter() - t0, 1)
        prov_path.write_text(json.dumps(prov, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(result.model_dir, folder)
    progress(f"demo selector trained in {time.perf_counter() - t0:.0f} s -> {folder}")
    return folder
