"""Corpora on object stores (``s3://``, ``gs://``, ...): DuckDB views over URLs and an fsspec mirror.

A build writes its checkpoints to a POSIX filesystem (local disk, or a shared volume such as
NFS/EFS/Filestore that every worker mounts): the checkpoint protocol relies on atomic
``rename`` and on ``flock`` for the corpus lock, which object stores do not offer. Object stores
come in at two places:

* :func:`sync_corpus` mirrors a corpus to any fsspec URL (``s3://bucket/corpus`` with ``s3fs``,
  ``gs://`` with ``gcsfs``, ``file://``, ``memory://``), in an order that keeps the remote copy
  consistent for readers at every instant: table files first, deletions of per-study files that
  compaction absorbed next, stage markers last. The pseudonymisation key (``.keyslice/``) and
  the cache are never uploaded. Run ``keyslice compact`` first so that the mirror holds a few
  large files instead of millions of small ones (``keyslice compact --out C --sync-to URL``).
* :func:`keyslice.corpus.sql.connect` opens DuckDB views over a corpus path *or* URL; for ``s3://``/
  ``gs://``/``https://`` it loads DuckDB's ``httpfs`` extension and creates a secret from the usual
  environment variables (see infra/README.md); other fsspec schemes are registered with DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from keyslice.corpus.schemas import sql_literal

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_COLLAPSED_URL = re.compile(r"^(s3|s3a|gs|gcs|r2|az|abfss|https?|file|memory):/(?!/)")
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "r2", "http", "https", "az", "abfss")
SYNCED_DIRS = ("tables", "images", "stages")


def normalize(root: str | os.PathLike) -> str | Path:
    """A corpus location as given on the command line: a URL string, or a local :class:`Path`.

    Repairs URLs that went through :class:`pathlib.Path` (``s3://b/c`` becomes ``s3:/b/c``).
    """
    text = os.fspath(root)
    text = _COLLAPSED_URL.sub(lambda m: f"{m.group(1)}://", text)
    return text.rstrip("/") if is_url(text) else Path(text)


def is_url(root: str | os.PathLike) -> bool:
    return bool(_URL.match(os.fspath(root)))


def scheme(root: str | os.PathLike) -> str:
    m = _URL.match(os.fspath(root))
    return m.group(1).lower() if m else "file"


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a path or URL with ``/``."""
    base = os.fspath(root) if is_url(root) else Path(root).as_posix()
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def table_pattern(root: str | os.PathLike, table: str) -> str:
    return join(root, "tables", table, "*.parquet")


# -- DuckDB ---------------------------------------------------------------------------------------------
def prepare_duckdb(con: Any, root: str | os.PathLike) -> None:
    """Make ``root`` readable by DuckDB (no-op for local paths).

    ``s3://``, ``gs://``, ``https://`` ...: DuckDB's own ``httpfs`` extension, with a secret from
    the environment (:func:`secret_sql`). Any other URL scheme (``memory://``, ``abfs://``, ...):
    the fsspec filesystem of that scheme is registered with DuckDB, so the same views work on it.
    """
    kind = scheme(root)
    if kind == "file":
        return
    if kind not in REMOTE_SCHEMES:
        import fsspec

        con.register_filesystem(fsspec.filesystem(kind))
        return
    try:
        con.execute("LOAD httpfs")
    except Exception:  # noqa: BLE001 - not installed yet: INSTALL needs the extension repository
        con.execute("INSTALL httpfs")
        con.execute("LOAD httpfs")
    statement = secret_sql(kind, os.environ)
    if statement:
        con.execute(statement)


def secret_sql(kind: str, env: Mapping[str, str]) -> str | None:
    """The ``CREATE SECRET`` statement for a URL scheme, from environment variables (None: no secret).

    ``s3``/``r2``: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``,
    ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO/R2: path-style URLs, SSL as the endpoint says);
    without them DuckDB's ``credential_chain`` provider (instance roles, ``~/.aws``; needs the
    ``aws`` extension). ``gs``: HMAC keys ``GCS_ACCESS_KEY_ID``/``GCS_SECRET_ACCESS_KEY``.
    """
    if kind in ("s3", "s3a", "r2"):
        if not env.get("AWS_ACCESS_KEY_ID"):
            return "CREATE OR REPLACE SECRET keyslice_s3 (TYPE s3, PROVIDER credential_chain)"
        opts = {"KEY_ID": env["AWS_ACCESS_KEY_ID"], "SECRET": env.get("AWS_SECRET_ACCESS_KEY", "")}
        if env.get("AWS_SESSION_TOKEN"):
            opts["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
        if env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
            opts["REGION"] = env.get("AWS_REGION") or env["AWS_DEFAULT_REGION"]
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            host = re.sub(r"^https?://", "", endpoint).rstrip("/")
            opts.update({"ENDPOINT": host, "URL_STYLE": "path",
                         "USE_SSL": "false" if endpoint.startswith("http://") else "true"})
        body = ", ".join(f"{k} {sql_literal(v)}" if k != "USE_SSL" else f"{k} {v}" for k, v in opts.items())
        return f"CREATE OR REPLACE SECRET keyslice_s3 (TYPE s3, {body})"
    if kind in ("gs", "gcs") and env.get("GCS_ACCESS_KEY_ID"):
        return (f"CREATE OR REPLACE SECRET keyslice_gcs (TYPE gcs, KEY_ID {sql_literal(env['GCS_ACCESS_KEY_ID'])}, "
                f"SECRET {sql_literal(env.get('GCS_SECRET_ACCESS_KEY', ''))})")
    return None


def has_files(con: Any, pattern: str) -> bool:
    """Whether a glob (path or URL) matches at least one file, asked of DuckDB itself."""
    return con.execute(f"SELECT count(*) FROM glob({sql_literal(pattern)})").fetchall()[0][0] > 0


# -- mirroring with fsspec ------------------------------------------------------------------------------
def _state_file(local: Path, url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return local / ".keyslice" / f"sync-{digest}.json"


def _local_files(local: Path, top: str) -> dict[str, os.stat_result]:
    base = local / top
    found = {}
    if base.exists():
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith("."):  # .*.tmp are half-written files
                found[p.relative_to(local).as_posix()] = p.stat()
    return found


def sync_corpus(local: str | os.PathLike, url: str, fs: Any = None) -> dict[str, int]:
    """Mirror ``local`` corpus to ``url`` (any fsspec URL); returns counts of uploads and deletions.

    Incremental: a file is uploaded again only when its size or mtime changed since the last
    sync to the same URL (recorded in ``.keyslice/sync-*.json``). Remote files under ``tables/``
    that no longer exist locally (absorbed by compaction) are deleted after the new shards are up.
    """
    import fsspec

    local = Path(local)
    url = str(normalize(url))
    if fs is None:
        fs, _ = fsspec.core.url_to_fs(url)
    base = fs._strip_protocol(url).rstrip("/")
    state_path = _state_file(local, url)
    state: dict[str, list[int]] = json.loads(state_path.read_text()) if state_path.exists() else {}
    current = {top: _local_files(local, top) for top in SYNCED_DIRS}
    uploaded = deleted = 0

    def put(rel: str, st: os.stat_result) -> None:
        nonlocal uploaded
        sig = [st.st_size, st.st_mtime_ns]
        if state.get(rel) == sig:
            return
        target = f"{base}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local / rel), target)
        state[rel] = sig
        uploaded += 1

    def remote_files(top: str) -> list[str]:
        folder = f"{base}/{top}"
        found = fs.find(folder) if fs.exists(folder) else []
        return [p.split(f"{base}/", 1)[-1] if not p.startswith(base + "/") else p[len(base) + 1:] for p in found]

    def drop_stale(top: str) -> None:
        nonlocal deleted
        for rel in remote_files(top):
            if rel not in current[top]:
                fs.rm_file(f"{base}/{rel}")
                state.pop(rel, None)
                deleted += 1

    # 0. markers invalidated locally go first (their stage is being recomputed),
    # 1. table files (compacted shards first) and images, 2. files compaction absorbed, 3. markers
    drop_stale("stages")
    tables = current["tables"]
    for rel in sorted(tables, key=lambda r: (not Path(r).name.startswith("compacted-"), r)):
        put(rel, tables[rel])
    for rel, st in sorted(current["images"].items()):
        put(rel, st)
    drop_stale("tables")
    drop_stale("images")
    for rel, st in sorted(current["stages"].items()):
        put(rel, st)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state))
    return {"uploaded": uploaded, "deleted": deleted}
