import datetime as dt

import pyarrow as pa
import pytest

from keyslice.schemas import TABLES, SchemaError, parse_type, table_schema, to_table, validate_table


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
