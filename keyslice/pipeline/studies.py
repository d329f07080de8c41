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

from keyslice.deid import Deidentified, deidentify
from keyslice.errors import InputError, LimitExceededError
from keyslice.pseudonym import Pseudonymizer
from keyslice.report.reading import MAX_REPORT_BYTES, read_report_text

REPORT_NAME = "report.txt"


@dataclass(frozen=True)
class Study:
    study_id: str            # pseudonym, safe to store and publish
    source_key: str          # relative folder path: private, never stored
    path: Path
    report_text: str | None  # from the manifest; None means read report.txt

    def masks_folder(self, masks_root: Path) -> Path:
        """This study's folder under a masks root that mirrors the input (``keyslice segment --masks``)."""
        return Path(masks_root) / self.source_key

    def mask_folders(self, masks_root: Path | str | None) -> tuple[Path, ...]:
        """The folders ``find_masks(study.path, *folders)`` reads after the study's own: its folder under
        ``masks_root`` when there is one (a build's ``masks_dir``), else none."""
        return (self.masks_folder(masks_root),) if masks_root else ()

    def private_strings(self) -> tuple[str, ...]:
        """The forms in which this study's folder can show up in an error message: never to be stored."""
        forms = {self.source_key, str(self.path), self.path.as_posix(), self.path.name}
        try:
            forms.add(str(self.path.resolve()))
        except OSError:
            pass
        return tuple(f for f in forms if f and f != ".")

    def read_report(self, max_bytes: int = MAX_REPORT_BYTES) -> str:
        """The report, de-identified: the only form in which report text leaves this class."""
        return self.read_report_deid(max_bytes).text

    def read_report_deid(self, max_bytes: int = MAX_REPORT_BYTES) -> Deidentified:
        """The de-identified report and how many spans of each kind were masked (:mod:`keyslice.deid`).

        The file is read with a size bound and its encoding detected (:mod:`keyslice.report.reading`);
        de-identification happens here, as the text is read, so segmentation, LLM prompts, caches and
        every table only ever see ``[NAME]``, ``[DATE]``...; the raw report is never stored or returned.
        """
        if self.report_text is not None:
            if len(self.report_text.encode("utf-8", "surrogatepass")) > max_bytes:
                raise LimitExceededError(f"the manifest's report is larger than {max_bytes} bytes (max_report_bytes); "
                                         "check it, or raise the limit in the build config")
            return deidentify(self.report_text)
        report = self.path / REPORT_NAME
        if not report.exists():
            raise InputError(f"study has no {REPORT_NAME}; add one or list the study in a manifest")
        return deidentify(read_report_text(report, max_bytes))


@dataclass(frozen=True)
class SkippedFolder:
    """An input folder that was not taken as a study. ``folder_id`` is the keyed-hash pseudonym of
    its relative path (folder names can be patient names); ``reason`` never contains the name."""

    folder_id: str
    source_key: str          # relative folder path: private, never stored
    reason: str


class Discovery(list):
    """The studies of an input folder (a list, in stable order) and, in ``skipped``, every folder
    that holds files but was not taken as a study, with the reason: the two add up to
    ``n_folders``, the folders found.

    It remembers what it was made from (input folder, manifest, pseudonym key fingerprint), so that a build
    handed a discovery made earlier (:func:`keyslice.pipeline.api.preflight`) can tell it belongs to it.
    """

    def __init__(self, studies: list[Study], skipped: list[SkippedFolder], *, input_dir: Path | None = None,
                 manifest: Path | None = None, key_fingerprint: str | None = None):
        super().__init__(studies)
        self.skipped = skipped
        self.made_from = (input_dir, manifest, key_fingerprint)

    @property
    def n_folders(self) -> int:
        return len(self) + len(self.skipped)

    def made_for(self, input_dir: Path, manifest: Path | None, pseudonymize: Pseudonymizer) -> bool:
        """Whether this is the discovery :func:`discover_studies` makes of these arguments."""
        return self.made_from == (Path(input_dir), Path(manifest) if manifest is not None else None,
                                  pseudonymize.fingerprint)


DICOM_SNIFF_LIMIT = 50   # files looked at per skipped folder to tell "no DICOM" from "no report"


def _skipped_folder(input_dir: Path, folder: Path, files: list[str], pseudonymize: Pseudonymizer,
                    ) -> SkippedFolder | None:
    """Why a folder that holds files but no report is not a study; None for the input root when
    it holds no DICOM (a README or listing beside the studies is not a missing study)."""
    from keyslice.dicom.headers import looks_like_dicom

    rel = folder.relative_to(input_dir).as_posix()
    has_dicom = any(looks_like_dicom(folder / name) for name in files[:DICOM_SNIFF_LIMIT])
    if rel == "." and not has_dicom:
        return None
    reason = f"no {REPORT_NAME}" if has_dicom else f"no {REPORT_NAME}, no DICOM"
    return SkippedFolder(pseudonymize("folder", rel), rel, reason)


def _unreadable_folder(input_dir: Path, error: OSError, pseudonymize: Pseudonymizer) -> SkippedFolder:
    rel = Path(error.filename).relative_to(input_dir).as_posix() if error.filename else "?"
    return SkippedFolder(pseudonymize("folder", rel), rel, f"unreadable ({type(error).__name__})")


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


def discover_studies(input_dir: Path, pseudonymize: Pseudonymizer, manifest: Path | None = None) -> Discovery:
    """List the studies of an input folder, sorted by pseudonym for a stable order, with the
    folders that were not taken as studies (:class:`Discovery`). Folders reached twice through
    symbolic links are walked once."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    made_from = {"input_dir": input_dir, "manifest": Path(manifest) if manifest is not None else None,
                 "key_fingerprint": pseudonymize.fingerprint}
    if manifest is None:
        for name in ("manifest.parquet", "manifest.csv"):
            if (input_dir / name).exists():
                manifest = input_dir / name
    studies: list[Study] = []
    skipped: list[SkippedFolder] = []
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
        def unreadable(error: OSError) -> None:
            skipped.append(_unreadable_folder(input_dir, error, pseudonymize))

        visited: set[tuple[int, int]] = set()  # real folders already walked: symbolic links never loop
        for root, dirs, files in os.walk(input_dir, followlinks=True, onerror=unreadable):
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
                visible = sorted(f for f in files if not f.startswith("."))
                if visible and (folder := _skipped_folder(input_dir, Path(root), visible, pseudonymize)):
                    skipped.append(folder)
    return Discovery(sorted(studies, key=lambda s: s.study_id), sorted(skipped, key=lambda f: f.folder_id),
                     **made_from)
