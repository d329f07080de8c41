"""What every stage of a build needs: the config, the checkpoint store, the pseudonymiser, the run id.

A plain, picklable dataclass so that the same context travels to thread, process or
Dask workers unchanged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.config import BuildConfig
from keyslice.pseudonym import Pseudonymizer, load_pseudonymizer
from keyslice.corpus.schemas import utcnow


@dataclass(frozen=True)
class BuildContext:
    config: BuildConfig
    store: CheckpointStore
    pseudonymize: Pseudonymizer
    run_id: str

    @property
    def cache_dir(self) -> Path:
        return self.store.root / "cache"


def make_context(config: BuildConfig, run_id: str | None = None) -> BuildContext:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = run_id or f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return BuildContext(config, CheckpointStore(out), load_pseudonymizer(out), run_id)
