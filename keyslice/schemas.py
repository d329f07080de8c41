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
          "finetune_runs", "finetune_metrics", "reviews")


class SchemaError(ValueError):
    """Rows that do not match their table's declared schema."""


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema
    defaults: Mapping[str, Any]   # value a column takes in rows written before it existed


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


def _schema_files(name: str) -> list:
    folder = resource_dir("schemas") / "tables"
    files = sorted(folder.glob(f"{name}.v*.json"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    if not files:
        raise KeyError(f"no schema file for table {name!r} in {folder}")
    return files


@lru_cache(maxsize=None)
def table_schema(name: str, version: int | None = None) -> TableSchema:
    """A table's schema: the newest version, or the given older one (to read files written with it).

    A field added in a later version declares a ``default`` (or is nullable), which is what rows
    written before it existed read as: see :func:`upgrade_table`.
    """
    files = _schema_files(name)
    if version is not None:
        files = [p for p in files if int(p.stem.rsplit(".v", 1)[1]) == version]
        if not files:
            raise KeyError(f"table {name!r} has no schema version {version}")
    spec = json.loads(files[-1].read_text())
    fields = [
        pa.field(f["name"], parse_type(f["type"]), nullable=f.get("nullable", True),
                 metadata={"description": f.get("description", "")})
        for f in spec["fields"]
    ]
    defaults = {f["name"]: f["default"] for f in spec["fields"] if "default" in f}
    metadata = {"keyslice.table": name, "keyslice.schema_version": str(spec["version"])}
    return TableSchema(name, int(spec["version"]), pa.schema(fields, metadata=metadata), defaults)


def file_version(table: pa.Table) -> int | None:
    """The schema version a Parquet file was written with (from its metadata), if it says."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"keyslice.schema_version")
    return int(raw) if raw is not None else None


def upgrade_table(name: str, table: pa.Table) -> pa.Table:
    """Rows written with an older schema version, as the newest version reads them.

    Columns added since are filled with their declared default (null when none is declared);
    the column order becomes the newest one. Old corpora stay readable without rewriting them.
    """
    current = table_schema(name)
    columns = []
    for fld in current.schema:
        if fld.name in table.column_names:
            columns.append(table.column(fld.name).cast(fld.type))
        elif fld.name in current.defaults or fld.nullable:
            columns.append(pa.array([current.defaults.get(fld.name)] * table.num_rows, type=fld.type))
        else:
            raise SchemaError(f"{name}: column {fld.name!r} is missing and has no default to upgrade from "
                              f"version {file_version(table)}")
    return pa.Table.from_arrays(columns, schema=current.schema)


def sql_defaults(name: str) -> dict[str, str]:
    """SQL literals of the declared defaults, for views over files of mixed schema versions."""
    out = {}
    for column, value in table_schema(name).defaults.items():
        if isinstance(value, bool):
            out[column] = "TRUE" if value else "FALSE"
        elif isinstance(value, (int, float)):
            out[column] = repr(value)
        elif isinstance(value, str):
            out[column] = "'" + value.replace("'", "''") + "'"
        elif isinstance(value, list) and not value:
            out[column] = "[]"
        else:
            raise SchemaError(f"{name}.{column}: default {value!r} has no SQL literal")
    return out


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
    """Check that an Arrow table has exactly the declared schema (names, types, order).

    A file written with an older schema version is upgraded first (:func:`upgrade_table`).
    """
    schema = table_schema(name).schema
    version = file_version(table)
    if version is not None and version < table_schema(name).version:
        table = upgrade_table(name, table)
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        raise SchemaError(f"{name}: schema mismatch\nexpected:\n{schema}\ngot:\n{table.schema}")
    return table.replace_schema_metadata(schema.metadata)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
