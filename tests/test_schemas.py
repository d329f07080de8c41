import datetime as dt

import pyarrow as pa
import pytest

from keyslice.corpus.schemas import TABLES, SchemaError, parse_type, table_schema, to_table, validate_table


def _failure_row(**overrides):
    row = {"study_id": "st-1", "stage": "segment", "error_type": "X", "message": "m", "attempt": 1,
           "run_id": "r", "failed_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    row.update(overrides)
    return row


def test_every_table_has_a_versioned_schema():
    for name in TABLES:
        schema = table_schema(name)
        assert schema.version >= 1
        assert schema.schema.metadata[b"keyslice.table"] == name.encode()


def test_parse_nested_types():
    assert parse_type("list<struct<series_number:int32, instance_number:int32>>") == pa.list_(
        pa.struct([("series_number", pa.int32()), ("instance_number", pa.int32())]))
    assert parse_type("timestamp_utc") == pa.timestamp("us", tz="UTC")


def test_valid_rows_build_a_typed_table():
    table = to_table("failures", [_failure_row()])
    assert table.schema.field("attempt").type == pa.int32()
    assert table.num_rows == 1


@pytest.mark.parametrize("override, fragment", [
    ({"attempt": 1.5}, "attempt"),             # float where int32 is declared: not silently truncated
    ({"attempt": "1"}, "attempt"),
    ({"study_id": None}, "must not be null"),
    ({"failed_at": dt.datetime(2026, 1, 1)}, "failed_at"),  # naive timestamp
    ({"unexpected": 1}, "unknown column"),
])
def test_wrong_types_are_errors_not_casts(override, fragment):
    with pytest.raises(SchemaError, match=fragment):
        to_table("failures", [_failure_row(**override)])


def test_validate_table_rejects_foreign_schema():
    wrong = pa.table({"study_id": ["a"]})
    with pytest.raises(SchemaError):
        validate_table("failures", wrong)


def _finding_row():
    return {"study_id": "s1", "finding_id": "s1:0", "finding_index": 0, "section": "findings",
            "text": "Hepatic cyst.", "organ": "liver", "organs": ["liver"], "ts_labels": ["liver"],
            "status": "abnormal", "statement": None, "abnormalities": [], "negated_abnormalities": [],
            "modifiers": [], "laterality": None, "measurements_mm": [], "phase_hint": None,
            "image_refs": [], "language": "en", "segmenter": "rules", "created_at": dt.datetime.now(dt.timezone.utc)}


def test_files_of_an_older_schema_version_read_as_the_newest(tmp_path, monkeypatch):
    """A corpus written before a column existed stays readable: Python reads and SQL views
    both show the added column with its declared default (or null)."""
    import json
    import shutil

    import pyarrow.parquet as pq

    from keyslice import resources
    from keyslice.corpus import schemas, sql
    from keyslice.corpus.checkpoints import CheckpointStore

    store = CheckpointStore(tmp_path / "corpus")
    store.commit_stage("segment", "s1", {"findings": [_finding_row()]}, "run1")

    root = tmp_path / "res"
    shutil.copytree(resources.resource_dir("schemas"), root / "schemas")
    newest = schemas.table_schema("findings").version
    spec = json.loads((root / f"schemas/tables/findings.v{newest}.json").read_text())
    spec["version"] = newest + 1
    spec["fields"].insert(5, {"name": "kind", "type": "string", "nullable": False, "default": "finding"})
    spec["fields"].append({"name": "note", "type": "string", "nullable": True})
    (root / f"schemas/tables/findings.v{newest + 1}.json").write_text(json.dumps(spec))
    monkeypatch.setattr(schemas, "resource_dir", lambda name: root / name)
    schemas.table_schema.cache_clear()
    try:
        old = pq.read_table(store.table_path("findings", "s1"))
        assert schemas.file_version(old) == newest
        row = store.read_rows("findings", "s1")[0]
        assert row["kind"] == "finding" and row["note"] is None
        assert list(row)[5] == "kind"
        got = sql.query(store.root, "select kind, note, text from findings").to_pylist()
        assert got == [{"kind": "finding", "note": None, "text": row["text"]}]
        # a new file beside the old one: both read through one view
        new_row = {**_finding_row(), "finding_id": "s2:0", "study_id": "s2", "kind": "non_finding", "note": "x"}
        store.commit_stage("segment", "s2", {"findings": [new_row]}, "run1")
        got = sql.query(store.root, "select study_id, kind, note from findings order by 1").to_pylist()
        assert got == [{"study_id": "s1", "kind": "finding", "note": None},
                       {"study_id": "s2", "kind": "non_finding", "note": "x"}]
    finally:
        schemas.table_schema.cache_clear()
