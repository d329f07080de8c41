"""The selector model used by ``keyslice demo`` on a machine that cannot download weights.

It is a tiny open_clip model the project makes itself (``save_tiny_checkpoint``) and
caches under ``$KEYSLICE_HOME`` (default ``~/.cache/keyslice``). Its weights are random
with a fixed seed: the demo shows the pipeline working end to end offline, not useful
key slices. For real selections pass ``--model biomedclip`` (see README).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

DEMO_MODEL_NAME = "demo-tiny-v1"


def keyslice_home() -> Path:
    return Path(os.environ.get("KEYSLICE_HOME", Path.home() / ".cache" / "keyslice"))


def ensure_demo_model(progress: Callable[[str], None] = print) -> Path:
    """Return the demo checkpoint folder, creating it on first use."""
    from keyslice.selector import save_tiny_checkpoint

    folder = keyslice_home() / "models" / DEMO_MODEL_NAME
    if not (folder / "READY").exists():
        progress(f"creating the demo selector model in {folder} (tiny open_clip, seeded random weights)")
        save_tiny_checkpoint(folder, seed=0)
        (folder / "READY").write_text("ok\n")
    return folder
