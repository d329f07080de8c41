"""Named, immutable releases of a published dataset (``keyslice publish --tag v1``).

A release is a Hub tag on the commit a publish produced (or found unchanged), plus a record in the
corpus, ``CORPUS/publish/<org>__<name>.releases.json``: the tag, the commit, the corpus state it came
from, every file's sha256, the rows per configuration and split, and the exported studies'
pseudonyms (kept in the corpus only; the card gives counts). A tag is never moved or reused: a
second release under the same name is refused, locally and when the Hub already has the tag.

A dry run with ``--tag`` records the release it would make (``"dry_run": true``, no commit), so the
card and the changes since the previous release can be checked before anything is uploaded; a
later dry run or real release of the same tag replaces that dry-run record.

The card lists what changed since the previous release (studies added and removed, rows per
configuration): the previous real release for a real publish, the latest recorded one for a dry run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Mapping

from keyslice.publish.dataset_builder import CONFIGS, ExportPlan, PublishError

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = {"main", "HEAD"}


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag or "") or tag in RESERVED or ".." in tag or tag.endswith((".", ".lock")):
        raise PublishError(f"--tag must be a release name such as v1 or 2026-06 (letters, digits, '.', '_', '-'; "
                           f"not main), got {tag!r}")
    return tag


def releases_path(corpus_dir: Path, repo_id: str) -> Path:
    return Path(corpus_dir) / "publish" / (repo_id.replace("/", "__") + ".releases.json")


def read_releases(corpus_dir: Path, repo_id: str) -> list[dict[str, Any]]:
    """The recorded releases of ``repo_id``, oldest first."""
    path = releases_path(corpus_dir, repo_id)
    return json.loads(path.read_text())["releases"] if path.exists() else []


def check_new_release(records: list[dict[str, Any]], tag: str) -> None:
    """Refuse a tag that an earlier real release already used (releases are immutable)."""
    for r in records:
        if r["tag"] == tag and not r["dry_run"]:
            raise PublishError(f"release {tag!r} already exists (commit {r['commit']}, corpus state "
                               f"{r['corpus_state'][:12]}, {r['created_at']}); a release is never moved or "
                               f"reused: choose a new --tag")


def previous_release(records: list[dict[str, Any]], *, dry_run: bool, tag: str | None) -> dict[str, Any] | None:
    """The release the card compares with: the latest real one (a dry run also looks at dry-run records)."""
    for r in reversed(records):
        if r["tag"] != tag and (dry_run or not r["dry_run"]):
            return r
    return None


def exported_studies(plan: ExportPlan) -> list[str]:
    return sorted({r.fields["study_id"] for rows in plan.rows.values() for r in rows})


def release_changes(plan: ExportPlan, previous: Mapping[str, Any]) -> dict[str, Any]:
    """Studies added and removed, and rows per configuration (before, now), since ``previous``."""
    now, before = set(exported_studies(plan)), set(previous["studies"])
    return {"previous_tag": previous["tag"], "studies_added": len(now - before),
            "studies_removed": len(before - now),
            "rows": {c: (sum(previous["counts"].get(c, {}).values()), len(plan.rows[c])) for c in CONFIGS}}


def record_release(corpus_dir: Path, repo_id: str, *, tag: str, dry_run: bool, commit: str | None,
                   state: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]],
                   counts: Mapping[str, Mapping[str, int]], plan: ExportPlan) -> dict[str, Any]:
    """Append the release to the corpus' record (replacing a dry-run record of the same tag)."""
    from keyslice.corpus.atomic import write_bytes_atomic

    records = [r for r in read_releases(corpus_dir, repo_id) if r["tag"] != tag]
    record = {"tag": tag, "dry_run": dry_run, "commit": commit,
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), **dict(state),
              "files": {p: f["sha256"] for p, f in sorted(files.items())},
              "counts": {c: dict(s) for c, s in counts.items()}, "studies": exported_studies(plan)}
    records.append(record)
    write_bytes_atomic(releases_path(corpus_dir, repo_id),
                       json.dumps({"repo_id": repo_id, "releases": records}, indent=1, sort_keys=True).encode())
    return record
