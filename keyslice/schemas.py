"""Arrow schemas of the corpus tables, loaded from the versioned JSON files in ``schemas/tables``.

Every checkpoint is written through :func:`to_table`, which refuses rows whose values do
not already have the declared type: a float where an int32 is declared, or a missing
non-nullable column, is an error rather than a silent cast that would corrupt the corpus.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import pyarrow as pa

from keyslice.resources import resource_dir

TABLES = ("studies", "series", "findings", "assignments", "selections", "vqa", "failures", "runs",
          "finetune_runs", "finetune_metrics")


class SchemaError(ValueError):
    """Rows that do not match their table's declared schema."""


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema


def parse_type(spec: str) -> pa.DataType:
    """Parse the small type language used in the schema files (``list<struct<a:int32>>``)."""
    spec = spec.strip()
    if spec == "timestamp_utc":
        return pa.timestamp("us", tz="UTC")
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(parse_type(spec[5:-1]))
    if spec.startswith("struct<") and spec.endswith(">"):
        fields = []
        for part in _split_top_level(spec[7:-1]):
            name, _, sub = part.partition(":")
            fields.append(pa.field(name.strip(), parse_type(sub)))
        return pa.struct(fields)
    return pa.type_for_alias(spec)


def _split_top_level(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p for p in parts if p.strip()]


@lru_cache(maxsize=None)
def table_schema(name: str) -> TableSchema:
    """Load the newest version of a table's schema."""
    folder = resource_dir("schemas") / "tables"
    files = sorted(folder.glob(f"{name}.v*.json"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if not files:
        raise KeyError(f"no schema file for table {name!r} in {folder}")
    spec = json.loads(files[-1].read_text())
    fields = [
        pa.field(f["name"], parse_type(f["type"]), nullable=f.get("nullable", True),
                 metadata={"description": f.get("description", "")})
        for f in spec["fields"]
    ]
    metadata = {"keyslice.table": name, "keyslice.schema_version": str(spec["version"])}
    return TableSchema(name, int(spec["version"]), pa.schema(fields, metadata=metadata))


def _check_value(value: Any, typ: pa.DataType, where: str) -> None:
    """Reject Python values whose kind differs from the declared Arrow type."""
    if value is None:
        return
    if pa.types.is_string(typ):
        ok = isinstance(value, str)
    elif pa.types.is_boolean(typ):
        ok = isinstance(value, bool)
    elif pa.types.is_integer(typ):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and hasattr(value, "dtype") and value.dtype.kind in "iu":
            ok = True
    elif pa.types.is_floating(typ):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok and hasattr(value, "dtype") and value.dtype.kind in "fiu":
            ok = True
    elif pa.types.is_timestamp(typ):
        ok = isinstance(value, dt.datetime) and value.tzinfo is not None
    elif pa.types.is_list(typ):
        ok = isinstance(value, (list, tuple))
        if ok:
            for i, item in enumerate(value):
                _check_value(item, typ.value_type, f"{where}[{i}]")
    elif pa.types.is_struct(typ):
        ok = isinstance(value, Mapping)
        if ok:
            for fld in typ:
                _check_value(value.get(fld.name), fld.type, f"{where}.{fld.name}")
    else:
        ok = True
    if not ok:
        raise SchemaError(f"{where}: expected {typ}, got {type(value).__name__} {value!r:.80}")


def to_table(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table for ``name`` from rows, enforcing the declared schema exactly."""
    schema = table_schema(name).schema
    rows = list(rows)
    declared = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - declared
        if extra:
            raise SchemaError(f"{name} row {i}: unknown column(s) {sorted(extra)}")
        for fld in schema:
            value = row.get(fld.name)
            if value is None and not fld.nullable:
                raise SchemaError(f"{name} row {i}: column {fld.name!r} must not be null")
            _check_value(value, fld.type, f"{name} row {i} column {fld.name!r}")
    columns = {fld.name: [row.get(fld.name) for row in rows] for fld in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def validate_table(name: str, table: pa.Table) -> pa.Table:
    """Check that an Arrow table has exactly the declared schema (names, types, order)."""
    schema = table_schema(name).schema
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        raise SchemaError(f"{name}: schema mismatch\nexpected:\n{schema}\ngot:\n{table.schema}")
    return table.replace_schema_metadata(schema.metadata)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
