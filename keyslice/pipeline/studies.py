"""Find the studies under an input folder.

Input contract (see README): a study is a folder holding a ``report.txt`` and DICOM
files at any depth (any names, non-DICOM files mixed in); or, with a manifest
(CSV or Parquet with columns ``study`` = folder relative to the input, ``report`` =
report text), every listed folder. A ``manifest.csv``/``manifest.parquet`` at the input
root is used automatically. The study's source key is its relative folder path; only
its keyed-hash pseudonym ever reaches the corpus.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from keyslice.errors import InputError
from keyslice.pseudonym import Pseudonymizer
from keyslice.report.reading import MAX_REPORT_BYTES, read_report_text

REPORT_NAME = "report.txt"


@dataclass(frozen=True)
class Study:
    study_id: str            # pseudonym, safe to store and publish
    source_key: str          # relative folder path: private, never stored
    path: Path
    report_text: str | None  # from the manifest; None means read report.txt

    def read_report(self, max_bytes: int = MAX_REPORT_BYTES) -> str:
        if self.report_text is not None:
            return self.report_text
        report = self.path / REPORT_NAME
        if not report.exists():
            raise InputError(f"study has no {REPORT_NAME}; add one or list the study in a manifest")
        return read_report_text(report, max_bytes)


class ManifestError(InputError, ValueError):
    """The manifest itself is unusable (columns, paths outside the input folder, duplicate rows):
    the whole build is refused before anything is written, since a half-built manifest would be
    a corpus nobody asked for."""


def _read_manifest(path: Path) -> list[tuple[str, str]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    missing = {"study", "report"} - set(table.column_names)
    if missing:
        raise ManifestError(f"manifest {path.name} lacks column(s) {sorted(missing)}; it needs 'study' and 'report'")
    return list(zip(table.column("study").to_pylist(), table.column("report").to_pylist()))


def manifest_folder(rel: object, row: int) -> str:
    """A manifest's ``study`` value as a clean relative folder; refuses paths that leave the input folder.

    Checked on the text, not on the resolved path: a study folder may be a symbolic link the operator
    placed inside the input folder (to data elsewhere), but a manifest row may not name ``..``, an
    absolute path or a home folder.
    """
    text = "" if rel is None else str(rel).strip()
    if not text:
        raise ManifestError(f"manifest row {row}: empty 'study'; give the study folder relative to the input folder")
    posix = text.replace("\\", "/")
    if posix.startswith(("/", "~")) or (len(posix) > 1 and posix[1] == ":"):
        raise ManifestError(f"manifest row {row}: 'study' must be a folder relative to the input folder, "
                            f"not an absolute path")
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../"):
        raise ManifestError(f"manifest row {row}: 'study' leaves the input folder ('..'); "
                            f"studies must lie inside the input folder")
    return norm


def discover_studies(input_dir: Path, pseudonymize: Pseudonymizer, manifest: Path | None = None) -> list[Study]:
    """List the studies of an input folder, sorted by pseudonym for a stable order."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    if manifest is None:
        for name in ("manifest.parquet", "manifest.csv"):
            if (input_dir / name).exists():
                manifest = input_dir / name
    studies: list[Study] = []
    if manifest is not None:
        seen: dict[str, int] = {}
        for row, (rel, text) in enumerate(_read_manifest(Path(manifest)), start=1):
            key = manifest_folder(rel, row)
            if key in seen:
                raise ManifestError(f"manifest rows {seen[key]} and {row} name the same study folder; "
                                    f"list each study once (one report per study)")
            seen[key] = row
            studies.append(Study(pseudonymize("study", key), key, input_dir / key, text if text is not None else ""))
    else:
        visited: set[tuple[int, int]] = set()  # real folders already walked: symbolic links never loop
        for root, dirs, files in os.walk(input_dir, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in visited:
                dirs[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            if REPORT_NAME in files:
                rel = Path(root).relative_to(input_dir).as_posix()
                studies.append(Study(pseudonymize("study", rel), rel, Path(root), None))
                dirs[:] = []  # a study's subfolders belong to it
            else:
                dirs.sort()
    return sorted(studies, key=lambda s: s.study_id)
