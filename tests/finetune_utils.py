"""The shipped fine-tuning config (configs/finetune_tiny_example_ct.yaml), shrunk for tests.

Tests start from the real config file, so they exercise the data paths, organs and settings the
recorded benchmark run uses; they only shorten the run and pin it to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = CONFIGS / "finetune_tiny_example_ct.yaml"


def shipped_config(out_dir: Path, steps: int) -> dict:
    """The shipped config as a dict, with ``out_dir``, ``steps`` and CPU fp32 set; callers shrink the rest."""
    d = yaml.safe_load(SHIPPED.read_text())
    d["out_dir"] = str(out_dir)
    d["train"].update({"steps": steps, "warmup_steps": max(1, steps // 10), "device": "cpu", "precision": "fp32"})
    d["eval"]["plots"] = False
    return d


#: TotalSegmentator's reference CTs inside the real data folder.
REF = Path("totalsegmentator_reference/tests/reference_files")


def load_example_ct(data_dir: Path):
    """The real example CT with its 61-label TotalSegmentator mask, as a fine-tuning source."""
    from keyslice.finetune.config import SourceConfig
    from keyslice.finetune.pairs import load_source

    ref = data_dir / REF
    return load_source(SourceConfig("example_ct", str(ref / "example_ct.nii.gz"),
                                    str(ref / "example_seg_fast_force_split.nii.gz"),
                                    str(data_dir / "totalsegmentator_reference/totalsegmentator_total_labels.json")))
