"""Helpers for VQA tests: finding rows with step 1's structured fields, and the consistency
check run on in-memory tables or on a corpus folder (tests only)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.schemas import table_schema, to_table
from keyslice.vqa.consistency import CheckResult, check_connection

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

# the structured columns of findings v2 with what an older row reads as
STRUCTURED = {"statement": None, "abnormalities": [], "negated_abnormalities": [], "modifiers": []}


def finding(study: str, index: int, text: str, organs: Iterable[str], status: str, *, laterality: str | None = None,
            abnormalities: Iterable[str] = (), negated: Iterable[str] = (), measurements_mm: Iterable[float] = (),
            statement: str | None = None, modifiers: Iterable[str] = ()) -> dict[str, Any]:
    """A findings row as step 1 writes it (findings v2 fields included)."""
    organs = list(organs)
    return {"study_id": study, "finding_id": f"{study}:{index}", "finding_index": index, "section": "findings",
            "text": text, "organ": organs[0] if organs else None, "organs": organs, "ts_labels": [],
            "status": status, "laterality": laterality, "measurements_mm": [float(m) for m in measurements_mm],
            "phase_hint": None, "image_refs": [], "language": "en", "segmenter": "hand-labelled",
            "created_at": NOW, "statement": statement, "abnormalities": list(abnormalities),
            "negated_abnormalities": list(negated), "modifiers": list(modifiers)}


def selection_for(row: dict, series_id: str = "ser-1") -> dict[str, Any]:
    return {"finding_id": row["finding_id"], "series_id": series_id, "top1_index": 10 + row["finding_index"],
            "image_path": f"images/{row['study_id']}/{row['finding_index']:04d}.png"}


def stamp(rows: Iterable[dict]) -> list[dict]:
    """VQA generator rows as ``vqa`` table rows."""
    return [{**r, "study_id": r["finding_id"].rsplit(":", 1)[0], "created_at": NOW} for r in rows]


def findings_arrow(rows: list[dict]) -> pa.Table:
    """Findings rows with every v2 structured column (whatever the findings schema of this checkout)."""
    cols = ["study_id", "finding_id", "status", "laterality", "organs", "measurements_mm", *STRUCTURED]
    types = {"measurements_mm": pa.list_(pa.float32()), "organs": pa.list_(pa.string()),
             "abnormalities": pa.list_(pa.string()), "negated_abnormalities": pa.list_(pa.string()),
             "modifiers": pa.list_(pa.string())}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in cols])
    return pa.Table.from_pylist([{c: r.get(c, STRUCTURED.get(c)) for c in cols} for r in rows], schema=schema)


def check_tables(findings: list[dict], vqa_rows: list[dict]) -> CheckResult:
    """The consistency check on in-memory ``findings`` and ``vqa`` views (``vqa_rows`` as the
    generators return them, without ``study_id``)."""
    con = duckdb.connect()
    con.register("findings", findings_arrow(findings))
    con.register("vqa", to_table("vqa", stamp(vqa_rows)))
    return check_connection(con)


def as_stored(row: dict) -> dict:
    """A findings row restricted to (and completed for) this checkout's findings schema, as the
    corpus stores it: structured columns the schema does not have yet are dropped."""
    schema = table_schema("findings")
    out = {}
    for fld in schema.schema:
        if fld.name in row:
            out[fld.name] = row[fld.name]
        elif fld.name in schema.defaults:
            out[fld.name] = schema.defaults[fld.name]
        else:
            out[fld.name] = None
    return out


def write_corpus(root: Path, findings: list[dict], vqa_rows: list[dict]) -> Path:
    """A corpus folder with the given findings and (generator) vqa rows, written as the build writes them."""
    store = CheckpointStore(root)
    by_study: dict[str, tuple[list, list]] = {}
    for f in findings:
        by_study.setdefault(f["study_id"], ([], []))[0].append(as_stored(f))
    for r in stamp(vqa_rows):
        by_study.setdefault(r["study_id"], ([], []))[1].append(r)
    for study, (frows, vrows) in by_study.items():
        store.commit_stage("segment", study, {"findings": frows}, "test")
        store.commit_stage("vqa", study, {"vqa": vrows}, "test")
    return root
