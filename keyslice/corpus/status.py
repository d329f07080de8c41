"""What state a corpus is in: per-stage counts and the studies whose last attempt failed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keyslice.pipeline.registry import STAGES, TABLE_STAGE
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.sql import connect


@dataclass(frozen=True)
class CorpusStatus:
    stage_done: dict[str, int]
    table_rows: dict[str, int]
    open_failures: list[dict]   # latest failure per (study, stage) whose stage is still not done


def corpus_status(corpus_dir: Path) -> CorpusStatus:
    store = CheckpointStore(Path(corpus_dir))
    con = connect(corpus_dir)
    stage_done = {stage: len(store.done_studies(stage)) for stage in STAGES}
    table_rows = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                  for t in (*TABLE_STAGE, "failures")}
    latest = con.sql(
        "SELECT study_id, stage, error_type, message, attempt, failed_at FROM failures "
        "QUALIFY row_number() OVER (PARTITION BY study_id, stage ORDER BY failed_at DESC) = 1 "
        "ORDER BY study_id, stage"
    ).to_arrow_table().to_pylist()
    open_failures = [f for f in latest
                     if f["stage"] not in STAGES or not store.is_done(f["stage"], f["study_id"])]
    return CorpusStatus(stage_done, table_rows, open_failures)
