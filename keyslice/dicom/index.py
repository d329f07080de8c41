"""Index a study folder: read every file's header in parallel, group, describe, filter."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from keyslice.dicom.headers import Header, NotDicomError, read_headers
from keyslice.dicom.phase import headers_silent, infer_phase, totalsegmentator_phase
from keyslice.dicom.series import Instance, SeriesGroup, build_series, group_instances
from keyslice.errors import DicomReadError, LimitExceededError

log = logging.getLogger(__name__)

# files that are never DICOM: skipped without opening them
_SKIP_NAMES = {"report.txt", "manifest.csv", "manifest.parquet", ".ds_store", "thumbs.db"}
_SKIP_SUFFIXES = {".txt", ".json", ".csv", ".parquet", ".md", ".nii", ".gz", ".nrrd", ".png", ".jpg", ".jpeg",
                  ".pdf", ".xml", ".html", ".zip", ".py", ".yaml", ".yml", ".mha", ".mhd"}


@dataclass
class SeriesRecord:
    row: dict                     # series.v1 minus study_id/created_at; series_id is the pseudonym
    files: list[Path]             # sorted along the slice normal; in memory only (paths may hold PHI)
    positions_mm: list[float]     # position of each file along the normal, same order
    instance_numbers: list[int | None]

    def __repr__(self) -> str:  # never print paths
        r = self.row
        return (f"SeriesRecord(series_id={r['series_id']!r}, n_slices={r['n_slices']}, kept={r['kept']}, "
                f"drop_reason={r['drop_reason']!r}, phase={r['phase']!r})")


@dataclass
class StudyIndex:
    n_files: int
    n_dicom: int
    patient_key: str | None                      # raw PatientID (memory only; the caller pseudonymises it)
    modalities: list[str]
    series: list[SeriesRecord] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)   # (relative path, reason)
    # every DICOM file's header as read here (memory only): step 3 reads pixels with them, not again
    headers: dict[Path, Header] = field(default_factory=dict, repr=False)

    def kept(self) -> list[SeriesRecord]:
        return [s for s in self.series if s.row["kept"]]

    def series_files(self) -> dict[str, list[Path]]:
        """Each series' files in slice order, by series pseudonym."""
        return {rec.row["series_id"]: rec.files for rec in self.series}

    def __repr__(self) -> str:
        return (f"StudyIndex(n_files={self.n_files}, n_dicom={self.n_dicom}, series={len(self.series)}, "
                f"kept={len(self.kept())}, skipped={len(self.skipped_files)})")


def list_files(study_dir: Path, max_files: int | None = None) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Every regular file under the folder, sorted, hidden ones left out: ``(listed, skipped)``.

    ``listed``: (path, relative posix path). ``skipped``: (relative path, reason) of what is never
    opened: named pipes, sockets and devices (opening a pipe waits forever), and a folder reached
    again through a symbolic link (``a -> .`` would otherwise be walked 40 levels deep): folders are
    tracked by their real identity (device, inode), so each is walked once. Symbolic links to
    folders elsewhere are still followed (studies may link to their DICOM). More than ``max_files``
    files raise :class:`LimitExceededError`.
    """
    out: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    base = os.fspath(study_dir)
    cut = len(base.rstrip(os.sep)) + 1
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(base, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((root[cut:].replace(os.sep, "/") or ".", "folder reached again through a symbolic link"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            rel = full[cut:].replace(os.sep, "/")
            try:
                mode = os.stat(full).st_mode
            except OSError as exc:  # a dangling link, a permission problem
                skipped.append((rel, f"unreadable file ({type(exc).__name__}: {exc.strerror or exc})"))
                continue
            if not stat.S_ISREG(mode):
                skipped.append((rel, "not a regular file (named pipe, socket or device); skipped unread"))
                continue
            out.append((Path(full), rel))
            if max_files is not None and len(out) > max_files:
                raise LimitExceededError(f"the study folder holds more than {max_files} files (max_files_per_study); "
                                         "split it or raise the limit in the build config")
    return out, skipped


def _prefiltered(path: Path) -> str | None:
    name = path.name.lower()
    if name in _SKIP_NAMES:
        return "not DICOM (known non-DICOM file name)"
    if path.suffix.lower() in _SKIP_SUFFIXES:
        return f"not DICOM (suffix {path.suffix.lower()})"
    return None


def _read_all(paths: list[Path], reader: str) -> list[tuple[Header | None, str | None]]:
    """(header, None) or (None, why it is skipped) per path, in order; known non-DICOM names unopened."""
    reasons = [_prefiltered(p) for p in paths]
    headers = read_headers([p for p, r in zip(paths, reasons) if r is None], reader)
    out: list[tuple[Header | None, str | None]] = []
    for reason in reasons:
        if reason is not None:
            out.append((None, reason))
            continue
        hdr = next(headers)
        out.append((None, str(hdr)) if isinstance(hdr, NotDicomError) else (hdr, None))
    return out


def index_study(study_dir: Path, pseudonymize: Callable[[str, str], str], *,
                min_slices: int = 3, reader: str = "fast", image_phase: bool = True,
                max_files: int | None = None) -> StudyIndex:
    """Index every file under ``study_dir`` (headers only) into series with keep/drop and phase.

    ``pseudonymize(kind, value)`` turns the series' grouping key into ``series_id``.
    ``reader``: ``"fast"`` (default) or ``"pydicom"``, see :mod:`keyslice.dicom.headers`.
    Headers are read in this thread (:func:`~keyslice.dicom.headers.read_headers` says why).
    ``image_phase``: for kept series whose headers say nothing about contrast, ask
    TotalSegmentator (only when it is installed with weights; otherwise the phase stays
    ``unknown`` with that evidence). Raises :class:`DicomReadError` when no file is DICOM, and
    :class:`LimitExceededError` beyond ``max_files`` files.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise DicomReadError(f"study folder {study_dir} does not exist or is not a folder")
    listed, unlisted = list_files(study_dir, max_files)
    paths = [p for p, _ in listed]
    results = _read_all(paths, reader)

    instances: list[Instance] = []
    skipped: list[tuple[str, str]] = list(unlisted)
    truncated: list[Instance] = []
    for (path, rel), (hdr, reason) in zip(listed, results):
        if hdr is None:
            skipped.append((rel, reason or "unreadable"))
            continue
        inst = Instance(path, rel, hdr)
        if hdr.truncated:
            skipped.append((rel, f"truncated DICOM ({hdr.truncated})"))
            truncated.append(inst)
            continue
        instances.append(inst)

    if not instances:
        tried = ", ".join(f"{r} ({why})" for r, why in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        raise DicomReadError(
            f"no readable DICOM instance under the study folder: tried {len(paths)} file(s): {tried or 'none'}{more}")

    groups = _attach_truncated(group_instances(instances + truncated))
    records: list[SeriesRecord] = []
    times: list[tuple] = []
    for g in groups:
        b = build_series(g, pseudonymize, min_slices=min_slices)
        start = b.row.pop("_contrast_start_time", None)
        times.append((b.row.pop("_acquisition_time", None), b.row.pop("_series_time", None)))
        call = infer_phase({**b.row, "contrast_start_time": start})
        if image_phase and b.row["kept"] and headers_silent(call):
            ts = totalsegmentator_phase(b.files)
            call.evidence.extend(ts.evidence)
            if ts.phase != "unknown":
                call.phase, call.confidence = ts.phase, ts.confidence
        b.row["phase"], b.row["phase_confidence"], b.row["phase_evidence"] = call.phase, float(call.confidence), call.evidence
        records.append(SeriesRecord(b.row, b.files, b.positions_mm, b.instance_numbers))
    for key, offsets in (("acquisition_offset_s", time_offsets([t[0] for t in times])),
                         ("series_offset_s", time_offsets([t[1] for t in times]))):
        for rec, off in zip(records, offsets):
            rec.row[key] = off
    records.sort(key=lambda r: (r.row["series_number"] if r.row["series_number"] is not None else 1 << 30,
                                r.row["series_id"]))
    for r in records:
        for w in r.row["warnings"]:
            log.info("series %s: %s", r.row["series_id"], w)

    pids = Counter(i.hdr.text("PatientID") for i in instances if i.hdr.text("PatientID"))
    modalities = sorted({i.hdr.text("Modality") for i in instances if i.hdr.text("Modality")})
    return StudyIndex(
        n_files=len(paths), n_dicom=len(instances) + len(truncated),
        patient_key=pids.most_common(1)[0][0] if pids else None,
        modalities=modalities, series=records, skipped_files=skipped,
        headers={i.path: i.hdr for i in instances + truncated})


def time_offsets(times: list[tuple[bool, float] | None]) -> list[float | None]:
    """Seconds from the study's earliest time to each series' earliest time (None when unknown).

    Offsets, not times: they order the acquisitions of a multi-phase exam (arterial about
    20-40 s after the native scan, portal venous later) without storing a time of day or
    a date. Dates are used when every timed series has them; otherwise times of day on one
    day are assumed (a study that crosses midnight without dates gets wrong offsets).
    """
    known = [t for t in times if t is not None]
    if not known:
        return [None] * len(times)
    dated = all(d for d, _ in known)
    vals = [None if t is None else (t[1] if dated else t[1] % 86400.0) for t in times]
    ref = min(v for v in vals if v is not None)
    return [None if v is None else round(v - ref, 3) for v in vals]


def _attach_truncated(groups: list[SeriesGroup]) -> list[SeriesGroup]:
    """Move truncated instances out of their series (noted on it); drop series left empty."""
    out = []
    for g in groups:
        bad = [i for i in g.instances if i.hdr.truncated]
        if bad:
            g.instances = [i for i in g.instances if not i.hdr.truncated]
            g.truncated = [i.rel for i in bad]
        if g.instances:
            out.append(g)
    return out
