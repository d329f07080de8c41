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
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from keyslice.deid import Deidentified, deidentify
from keyslice.errors import InputError
from keyslice.pseudonym import Pseudonymizer

REPORT_NAME = "report.txt"


@dataclass(frozen=True)
class Study:
    study_id: str            # pseudonym, safe to store and publish
    source_key: str          # relative folder path: private, never stored
    path: Path
    report_text: str | None  # from the manifest; None means read report.txt

    def private_strings(self) -> tuple[str, ...]:
        """The forms in which this study's folder can show up in an error message: never to be stored."""
        forms = {self.source_key, str(self.path), self.path.as_posix(), self.path.name}
        try:
            forms.add(str(self.path.resolve()))
        except OSError:
            pass
        return tuple(f for f in forms if f and f != ".")

    def read_report(self) -> str:
        """The report, de-identified: the only form in which report text leaves this class."""
        return self.read_report_deid().text

    def read_report_deid(self) -> Deidentified:
        """The de-identified report and how many spans of each kind were masked (:mod:`keyslice.deid`).

        De-identification happens here, as the text is read, so segmentation, LLM prompts, caches and
        every table only ever see ``[NAME]``, ``[DATE]``...; the raw report is never stored or returned.
        """
        if self.report_text is not None:
            return deidentify(self.report_text)
        report = self.path / REPORT_NAME
        if not report.exists():
            raise InputError(f"study has no {REPORT_NAME}; add one or list the study in a manifest")
        return deidentify(report.read_text(encoding="utf-8", errors="replace"))


def _read_manifest(path: Path) -> list[tuple[str, str]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    missing = {"study", "report"} - set(table.column_names)
    if missing:
        raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; it needs 'study' and 'report'")
    return list(zip(table.column("study").to_pylist(), table.column("report").to_pylist()))


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
        for rel, text in _read_manifest(Path(manifest)):
            folder = (input_dir / rel)
            studies.append(Study(pseudonymize("study", Path(rel).as_posix()), Path(rel).as_posix(), folder,
                                 text if text is not None else ""))
    else:
        for root, dirs, files in os.walk(input_dir, followlinks=True):
            if REPORT_NAME in files:
                rel = Path(root).relative_to(input_dir).as_posix()
                studies.append(Study(pseudonymize("study", rel), rel, Path(root), None))
                dirs[:] = []  # a study's subfolders belong to it
            else:
                dirs.sort()
    return sorted(studies, key=lambda s: s.study_id)
