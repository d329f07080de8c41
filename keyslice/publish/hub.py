"""Incremental upload of a staged dataset folder to a Hugging Face dataset repository.

``datasets``' own ``DatasetDict.push_to_hub`` re-uploads every shard of a configuration on
every push. keyslice stages the exact repository content instead (the ``--dry-run`` folder:
Parquet shards + ``README.md``), compares each file's content hash with what the Hub already
holds (``list_repo_tree``: the LFS sha256 of data files, the git blob id of small files), and
sends ONE commit (``HfApi.create_commit``) with only the new or changed files plus the deletion
of shards that no longer exist. Nothing changed -> no commit, nothing uploaded. The commit is
pinned to the head it was planned against (``parent_commit``), so a concurrent push fails
instead of being silently overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from keyslice.publish.dataset_builder import CONFIGS, PublishError

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
MANAGED_PREFIXES = tuple(f"{c}/" for c in CONFIGS) + ("README.md", "stats/")


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.fullmatch(repo_id or "") or ".." in repo_id or "--" in repo_id:
        raise PublishError(f"--repo-id must be ORG/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")
    return repo_id


@dataclass(frozen=True)
class LocalFile:
    path: str
    size: int
    sha256: str
    git_sha1: str


def hash_file(path: Path, chunk: int = 1 << 20) -> tuple[int, str, str]:
    """(size, sha256, git blob sha1) of a file, streamed: shards can be hundreds of MB."""
    size = Path(path).stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\x00" % size)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha256.update(block)
            sha1.update(block)
    return size, sha256.hexdigest(), sha1.hexdigest()


def local_files(folder: Path) -> dict[str, LocalFile]:
    """Every file of a staged dataset folder with its hashes (what the Hub compares against)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            out[rel] = LocalFile(rel, *hash_file(path))
    return out


@dataclass
class PushPlan:
    upload: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.upload and not self.delete


def plan_against(files: dict[str, LocalFile], remote: dict[str, dict[str, Any]]) -> PushPlan:
    """What to send, given remote ``{path: {"sha256"|"git_sha1": ..., "size": ...}}``.

    Remote files outside keyslice's own folders (``vqa/``, ``findings/``, ``selections/``, ``stats/``,
    ``README.md``),
    e.g. a ``.gitattributes`` or files a maintainer added, are left alone.
    """
    plan = PushPlan()
    for path, f in files.items():
        r = remote.get(path)
        same = r is not None and r.get("size") == f.size and (
            r.get("sha256") == f.sha256 if r.get("sha256") else r.get("git_sha1") == f.git_sha1)
        (plan.unchanged if same else plan.upload).append(path)
    plan.delete = sorted(p for p in remote if p not in files and p.startswith(MANAGED_PREFIXES))
    return plan


def remote_files(api, repo_id: str, revision: str) -> dict[str, dict[str, Any]]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True):
        if isinstance(entry, RepoFile):
            out[entry.path] = {"size": entry.size, "sha256": entry.lfs.sha256 if entry.lfs else None,
                               "git_sha1": entry.blob_id}
    return out


@dataclass
class PushResult:
    repo_id: str
    commit: str | None          # the new commit, None when nothing changed
    head: str | None            # the repo's head after the push
    plan: PushPlan
    uploaded_bytes: int


def push_folder(folder: Path, repo_id: str, *, private: bool, commit_message: str, commit_description: str = "",
                token: str | None = None, endpoint: str | None = None, tag: str | None = None,
                tag_message: str = "") -> PushResult:
    """Create the dataset repo if needed and commit the files of ``folder`` that the Hub lacks.

    ``tag``: also tag the resulting head (the new commit, or the unchanged head) as a release; a tag
    the Hub already has is refused before anything is uploaded (releases are never moved).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        info = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)  # None: org default
        info = api.repo_info(repo_id, repo_type="dataset")
    if private and info.private is False:
        raise PublishError(f"{repo_id} already exists and is PUBLIC, but --private was asked for; nothing was "
                           f"uploaded. Make the repository private on the Hub (Settings) or choose another --repo-id.")
    if tag is not None:
        existing = {t.name: t.target_commit for t in api.list_repo_refs(repo_id, repo_type="dataset").tags}
        if tag in existing:
            raise PublishError(f"{repo_id} already has the tag {tag!r} (commit {existing[tag]}); a release is never "
                               f"moved or reused: choose a new --tag. Nothing was uploaded.")
    files = local_files(folder)
    remote = remote_files(api, repo_id, info.sha) if info.sha else {}
    plan = plan_against(files, remote)
    if plan.empty:
        if tag is not None:
            api.create_tag(repo_id, tag=tag, revision=info.sha, repo_type="dataset", tag_message=tag_message or None)
        return PushResult(repo_id, None, info.sha, plan, 0)
    operations: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(Path(folder) / p))
                             for p in plan.upload]
    operations += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
    commit = api.create_commit(repo_id, operations=operations, repo_type="dataset", commit_message=commit_message,
                               commit_description=commit_description, parent_commit=info.sha)
    if tag is not None:
        api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset", tag_message=tag_message or None)
    return PushResult(repo_id, commit.oid, commit.oid, plan, sum(files[p].size for p in plan.upload))


# --------------------------------------------------------------------------- the publish manifest


def manifest_path(corpus_dir: Path, repo_id: str) -> Path:
    return Path(corpus_dir) / "publish" / (repo_id.replace("/", "__") + ".json")


def read_manifest(corpus_dir: Path, repo_id: str) -> dict[str, Any] | None:
    path = manifest_path(corpus_dir, repo_id)
    return json.loads(path.read_text()) if path.exists() else None


def manifest_remote(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The previous publish's files in the shape :func:`plan_against` compares with."""
    if not manifest:
        return {}
    return {p: {"size": f["size"], "sha256": f["sha256"]} for p, f in manifest.get("files", {}).items()}


def write_manifest(corpus_dir: Path, repo_id: str, data: dict[str, Any]) -> Path:
    from keyslice.corpus.atomic import write_bytes_atomic

    path = manifest_path(corpus_dir, repo_id)
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=_json_default).encode())
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def files_record(files: Iterable[LocalFile], rows: dict[str, int]) -> dict[str, dict[str, Any]]:
    return {f.path: {"size": f.size, "sha256": f.sha256, **({"rows": rows[f.path]} if f.path in rows else {})}
            for f in files}
