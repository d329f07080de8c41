"""The package's layers point one way: the corpus layer (how a corpus is stored, read and checked)
imports nothing from the packages that fill or consume it, and the domain library runs without Prefect."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "keyslice" / "corpus"
#: packages above the corpus layer: they write, read or publish corpora, so the corpus may not import them
ABOVE_CORPUS = ("pipeline", "review", "vqa", "publish", "selector", "report", "dicom", "finetune")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, at any depth (lazy imports included)."""
    package = "keyslice.corpus"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against keyslice.corpus
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found += [(node.lineno, module)]
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(path: Path) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} imports {module}" for line, module in imported_modules(path)
            if any(module == f"keyslice.{p}" or module.startswith(f"keyslice.{p}.") for p in ABOVE_CORPUS)]


def test_corpus_imports_nothing_from_the_layers_above_it():
    files = sorted(CORPUS.glob("*.py"))
    assert len(files) > 10  # the walk really sees the corpus modules
    offending = [hit for f in files for hit in upward_imports(f)]
    assert offending == []


def test_the_walk_finds_lazy_and_relative_upward_imports(tmp_path):
    """The check itself: an import inside a function, a relative one and a plain ``import`` are caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from keyslice.review.metrics import cohen_kappa\n"
                     "from ..vqa import consistency\nimport keyslice.pipeline.registry\nfrom . import atomic\n")
    modules = [m for _, m in imported_modules(probe)]
    assert "keyslice.review.metrics" in modules and "keyslice.vqa" in modules
    assert "keyslice.pipeline.registry" in modules and "keyslice.corpus.atomic" in modules
    hits = [m for m in modules if any(m.startswith(f"keyslice.{p}") for p in ABOVE_CORPUS)]
    assert len(hits) >= 3


def test_importing_the_corpus_and_build_api_loads_neither_prefect_nor_the_upper_layers():
    """In a fresh interpreter: every corpus module (and a DuckDB connection with its views) loads no
    pipeline/review/vqa/... module and no Prefect; ``keyslice.build`` is importable without Prefect."""
    script = """
import importlib, json, pkgutil, sys, tempfile
import keyslice.corpus
for info in pkgutil.iter_modules(keyslice.corpus.__path__):
    importlib.import_module("keyslice.corpus." + info.name)
from keyslice.corpus.sql import connect
with tempfile.TemporaryDirectory() as d:
    names = {r[0] for r in connect(d).sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
above = sorted(m for m in sys.modules if m.split(".")[0] == "keyslice" and len(m.split(".")) > 1
               and m.split(".")[1] in %r)
corpus_prefect = any(m == "prefect" or m.startswith("prefect.") for m in sys.modules)
from keyslice import build
import keyslice.pipeline.api
print(json.dumps({"above": above, "corpus_prefect": corpus_prefect, "views": sorted(names),
                  "build_prefect": any(m == "prefect" or m.startswith("prefect.") for m in sys.modules)}))
""" % (ABOVE_CORPUS,)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["above"] == []
    assert result["corpus_prefect"] is False and result["build_prefect"] is False
    # the review views come with every connection, from the corpus layer
    assert {"review_judgements", "review_acceptance_by_model", "selections", "reviews"} <= set(result["views"])
