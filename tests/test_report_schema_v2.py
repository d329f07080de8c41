"""findings schema v2: what step 1 writes round-trips, and corpora written with v1 stay readable."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from keyslice.corpus import sql
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.schemas import table_schema, to_table, utcnow

REPO = Path(__file__).resolve().parents[1]
REPORT = ("FINDINGS: No ascites. 3 cm mass in the pancreatic tail without signs of pancreatitis.\n"
          "IMPRESSION: Pancreatic mass, possibly a neuroendocrine tumour. Discussed with Dr. Miller on 03/04/2021.")


def _segment_rows(study_id: str) -> list[dict]:
    from keyslice.config import BuildConfig
    from keyslice.pipeline.stage_functions import segment_step

    from keyslice.deid import deidentify

    study = SimpleNamespace(study_id=study_id, read_report_deid=lambda max_bytes=None: deidentify(REPORT))
    cfg = BuildConfig(input_dir=REPO, out_dir=REPO)
    return segment_step(study, SimpleNamespace(config=cfg))["findings"]


def test_v2_adds_the_new_fields_with_defaults_and_keeps_v1():
    v1 = json.loads((REPO / "schemas/tables/findings.v1.json").read_text())
    v2 = json.loads((REPO / "schemas/tables/findings.v2.json").read_text())
    assert table_schema("findings").version == 2
    names1 = [f["name"] for f in v1["fields"]]
    added = [f for f in v2["fields"] if f["name"] not in names1]
    assert [f["name"] for f in added] == ["statement", "abnormalities", "negated_abnormalities", "modifiers",
                                          "deid_version", "report_phi_masked"]
    assert all(f["nullable"] or "default" in f for f in added)
    assert [f["name"] for f in v2["fields"] if f["name"] in names1] == names1


def test_segment_step_rows_round_trip_through_the_store(tmp_path):
    rows = _segment_rows("s1")
    got = {r["text"]: r for r in rows}
    assert (got["No ascites."]["status"], got["No ascites."]["negated_abnormalities"]) == ("normal", ["ascites"])
    mass = got["3 cm mass in the pancreatic tail without signs of pancreatitis."]
    assert (mass["status"], mass["abnormalities"], mass["negated_abnormalities"]) == (
        "abnormal", ["mass"], ["inflammation"])
    assert "negated" in mass["modifiers"] and mass["statement"] is None
    talk = got["Discussed with [NAME] on [DATE]."]  # de-identified as it was read
    assert (talk["status"], talk["statement"], talk["organ"]) == ("non_finding", "communication", None)
    store = CheckpointStore(tmp_path / "corpus")
    store.commit_stage("segment", "s1", {"findings": rows}, "run1")
    back = store.read_rows("findings", "s1")
    assert [{k: r[k] for k in rows[0]} for r in back] == rows
    counts = sql.query(store.root, "select status, statement, count(*) n from findings group by all order by 1")
    assert ("non_finding", "communication", 1) in [tuple(r.values()) for r in counts.to_pylist()]


def test_a_v1_corpus_reads_with_the_v2_defaults(tmp_path):
    """A findings file written before v2 (v1 schema and metadata) reads as v2 in Python and in SQL."""
    store = CheckpointStore(tmp_path / "corpus")
    old = {"study_id": "old", "finding_id": "old:0", "finding_index": 0, "section": "findings",
           "text": "Hepatic cyst.", "organ": "liver", "organs": ["liver"], "ts_labels": ["liver"],
           "status": "abnormal", "laterality": None, "measurements_mm": [], "phase_hint": None, "image_refs": [],
           "language": "en", "segmenter": "rules-v1", "created_at": utcnow()}
    v1 = table_schema("findings", 1).schema
    path = store.table_path("findings", "old")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([old], schema=v1), path)
    row = store.read_rows("findings", "old")[0]
    assert (row["statement"], row["abnormalities"], row["negated_abnormalities"], row["modifiers"]) == (
        None, [], [], [])
    assert row["text"] == "Hepatic cyst." and row["status"] == "abnormal"
    # beside a v2 file, one view reads both
    store.commit_stage("segment", "new", {"findings": _segment_rows("new")}, "run1")
    got = sql.query(store.root, "select study_id, count(*) n, count(statement) with_statement, "
                                "sum(len(abnormalities)) n_types from findings group by 1 order by 1").to_pylist()
    assert got[1] == {"study_id": "old", "n": 1, "with_statement": 0, "n_types": 0}
    assert got[0]["study_id"] == "new" and got[0]["with_statement"] == 1 and got[0]["n_types"] >= 2
    assert to_table("findings", [{**row, "study_id": "x"}]).num_rows == 1  # an upgraded row is a valid v2 row
