"""Helpers to build the sample corpus and compare corpora row by row (tests only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from keyslice.config import BuildConfig
from keyslice.corpus.sql import query

BUILD_KEY = "test-key-not-a-secret"

VOLATILE = {"created_at", "run_id", "failed_at"}
CONTENT_TABLES = ("studies", "series", "findings", "assignments", "selections", "vqa")


def build_config(samples: Path, out: Path, model: Path, **kw) -> BuildConfig:
    """The build configuration every end-to-end test uses, so that their corpora are comparable."""
    return BuildConfig(input_dir=samples, out_dir=out, model=str(model), max_workers=2, **kw)


def table_rows(corpus: Path, table: str) -> list[str]:
    """Every row of a table as canonical JSON without run-dependent columns, sorted."""
    rows = query(corpus, f"select * from {table}").to_pylist()
    return sorted(json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True, default=str)
                  for r in rows)


def corpus_fingerprint(corpus: Path) -> dict[str, list[str]]:
    content = {t: table_rows(corpus, t) for t in CONTENT_TABLES}
    content["images"] = sorted(f"{p.relative_to(corpus)}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                               for p in (corpus / "images").rglob("*.png"))
    return content
