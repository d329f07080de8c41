"""Group instance headers into series, compute their geometry, decide keep/drop.

Grouping
--------
* ``uid``: by SeriesInstanceUID (and StudyInstanceUID). A UID series holding several
  stacks (different orientation or matrix) is split into one series per stack.
* ``fallback`` (SeriesInstanceUID missing or empty): by StudyInstanceUID-or-(StudyDate,
  StudyTime), SeriesNumber, SeriesDescription, FrameOfReferenceUID, rounded
  ImageOrientationPatient, matrix, ConvolutionKernel and SeriesDate (the last five not for
  secondary captures, whose images mix them), and Modality. AcquisitionNumber splits a fallback
  group only when two acquisitions repeat the same slice positions (a dynamic or
  repeated scan); sequential scanners write one acquisition number per rotation, and
  those slices stay one series.

Duplicates: the same SOPInstanceUID twice (uid mode), or, without SOPInstanceUIDs, the
same position + InstanceNumber + AcquisitionNumber; the extra copies are dropped and a
warning is recorded. Different instances at the same position (not duplicates) keep one
file per position in ``files`` (lowest InstanceNumber) and a warning.

Geometry
--------
The slice normal is row x column of ImageOrientationPatient, turned to point to the head
(+z) for axial-ish normals. ``positions_mm`` are IPP . normal, sorted ascending.
Orientation: axial when the normal is within 30 deg of z (a gantry-tilted axial stays
axial), coronal / sagittal within 30 deg of y / x, else oblique; ``unknown`` without
IOP. ``z_min_mm``/``z_max_mm``: patient z (IPP[2]) range of the slices.
``slice_spacing_mm``: median step between sorted distinct positions (along the normal);
``spacing_uniform``: every step within max(0.1 mm, 5 %) of that median.
``gantry_tilt_deg``: GantryDetectorTilt when present, else the angle between the normal and
the stacking direction (the shear a tilted gantry leaves), else None.

Drop reasons (first that applies): ``secondary_capture``, ``non_ct``, ``localizer``,
``reformat``, ``derived``, ``multiframe``, ``burned_in``, ``no_geometry``, ``non_axial``,
``too_few_slices`` (fewer than ``min_slices``, default 3: the 3-slice dcmqi series is kept;
fewer than 3 positions leave no slice choice and no spacing check).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from keyslice.dicom.headers import Header

CT_IMAGE_SOPS = {
    "1.2.840.10008.5.1.4.1.1.2",      # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",    # Legacy Converted Enhanced CT
}
MULTIFRAME_CT_SOPS = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"     # Secondary Capture family (.7, .7.1-.7.4)
DOSE_SR_SOPS = {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.22"}

LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM", "PILOT", "REF_SURVIEW"}
LOCALIZER_DESC = re.compile(r"(?<![a-z])(?:scout|topogram|topo|surview|localizer|localiser|scanogram|pilot|survey|scout view)(?![a-z])")
REFORMAT_TYPES = {"MIP", "MINIP", "MPR", "VR", "VRT", "REFORMATTED", "PROJECTION IMAGE", "CURVED", "CPR", "3D",
                  "VOLUME", "SSD", "MAXIMUM", "AVERAGE", "CINEMATIC", "THICK_MIP"}
# description words only for what geometry cannot tell (an axial MIP looks axial); coronal and
# sagittal reformats are caught by their orientation instead, so a mislabelled description
# cannot drop a real axial series
REFORMAT_DESC = re.compile(r"(?<![a-z])(?:mip|minip|mpr|vrt|3d|volume render\w*|reformat\w*|curved|cpr|mip\d+)(?![a-z])")
# not plain 'dose': 'Low Dose Thorax' is a real axial series
SECONDARY_DESC = re.compile(r"(?<![a-z])(?:dose[\s_]?(?:report|info\w*|summary|sr)|dosis[\s_]?(?:report|bericht|info\w*)|"
                            r"patient[\s_]protocol|exam[\s_]summary|screen[\s_]?save\w*|screenshot\w*|protocol[\s_]sheet|"
                            r"secondary[\s_]capture)(?![a-z])")

AXIAL_MAX_DEG = 30.0


@dataclass
class Instance:
    path: Path
    rel: str
    hdr: Header


@dataclass
class SeriesGroup:
    key: str                       # private: UID or fallback key (never stored)
    grouping: str                  # 'uid' or 'fallback'
    instances: list[Instance] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _mode(values: Iterable[Any]) -> Any:
    vals = [v for v in values if v not in (None, "", [], ())]
    if not vals:
        return None
    counts = Counter(tuple(v) if isinstance(v, list) else v for v in vals)
    best = counts.most_common(1)[0][0]
    return list(best) if isinstance(best, tuple) else best


def _iop(h: Header) -> tuple[float, ...] | None:
    v = h.floats("ImageOrientationPatient")
    return tuple(v) if v and len(v) == 6 else None


def _ipp(h: Header) -> tuple[float, float, float] | None:
    v = h.floats("ImagePositionPatient")
    return (v[0], v[1], v[2]) if v and len(v) == 3 else None


def _round_iop(iop: tuple[float, ...] | None) -> str:
    return "none" if iop is None else ",".join(f"{v:.2f}" for v in iop).replace("-0.00", "0.00")


def tm_seconds(tm: str | None) -> float | None:
    """DICOM TM (HHMMSS.ffffff, or HH:MM:SS) to seconds after midnight."""
    if not tm:
        return None
    s = str(tm).strip().replace(":", "")
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?", s)
    if not m:
        return None
    h, mi, se, frac = m.group(1), m.group(2) or "0", m.group(3) or "0", m.group(4) or ""
    return int(h) * 3600 + int(mi) * 60 + int(se) + (float(frac) if frac else 0.0)


def bolus_delay_s(acq_time: str | None, start_time: str | None) -> float | None:
    """Acquisition time minus ContrastBolusStartTime in seconds (midnight wrap handled)."""
    a, s = tm_seconds(acq_time), tm_seconds(start_time)
    if a is None or s is None:
        return None
    d = a - s
    if d < -12 * 3600:
        d += 24 * 3600
    elif d > 12 * 3600:
        d -= 24 * 3600
    return round(d, 3)


def first_time(hs: list[Header], date_key: str, time_key: str,
               datetime_key: str | None = None) -> tuple[bool, float] | None:
    """Earliest (date, time) of a series as (dated, seconds); None when no instance has the time.

    ``dated`` is True when every timed instance also has a date; ``seconds`` then counts
    from 0001-01-01, else from midnight. Only offsets between series are ever stored
    (times of day and dates identify an exam; see :func:`keyslice.dicom.index.time_offsets`).
    """
    found: list[tuple[str | None, float]] = []
    for h in hs:
        t, d = h.text(time_key), h.text(date_key)
        dtv = h.text(datetime_key) if datetime_key else None
        if not t and dtv and len(dtv) > 8:
            d, t = dtv[:8], dtv[8:]
        sec = tm_seconds(t)
        if sec is not None:
            found.append((d, sec))
    if not found:
        return None
    days = [_date_ordinal(d) for d, _ in found]
    if all(o is not None for o in days):
        return True, min(o * 86400.0 + sec for o, (_, sec) in zip(days, found))
    return False, min(sec for _, sec in found)


def _date_ordinal(da: str | None) -> int | None:
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", (da or "").strip().replace("-", "").replace(".", ""))
    if not m:
        return None
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))).toordinal()
    except ValueError:
        return None


def _normal(iop: tuple[float, ...]) -> tuple[float, float, float] | None:
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(x * x for x in n))
    if norm < 1e-6:
        return None
    n = tuple(x / norm for x in n)
    # orient to the head for axial-ish, to +y / +x otherwise (stable sort direction)
    axis = max(range(3), key=lambda i: abs(n[i]))
    if n[axis] < 0:
        n = tuple(-x for x in n)
    return n  # type: ignore[return-value]


def classify_orientation(iop: tuple[float, ...] | None) -> tuple[str, float | None]:
    """('axial'|'coronal'|'sagittal'|'oblique'|'unknown', angle of the normal to z in degrees)."""
    if iop is None:
        return "unknown", None
    n = _normal(iop)
    if n is None:
        return "unknown", None
    angles = [math.degrees(math.acos(min(1.0, abs(c)))) for c in n]  # to x, y, z
    if angles[2] <= AXIAL_MAX_DEG:
        return "axial", angles[2]
    if angles[1] <= AXIAL_MAX_DEG:
        return "coronal", angles[2]
    if angles[0] <= AXIAL_MAX_DEG:
        return "sagittal", angles[2]
    return "oblique", angles[2]


def _f32(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


# --------------------------------------------------------------------------- grouping


def group_instances(instances: list[Instance]) -> list[SeriesGroup]:
    groups: dict[str, SeriesGroup] = {}
    for inst in instances:
        h = inst.hdr
        series_uid = h.text("SeriesInstanceUID")
        if series_uid:
            key = f"uid|{h.text('StudyInstanceUID') or ''}|{series_uid}"
            grouping = "uid"
        else:
            study = h.text("StudyInstanceUID") or f"{h.text('StudyDate') or ''} {h.text('StudyTime') or ''}"
            parts = [study, h.text("SeriesNumber") or "", h.text("SeriesDescription") or "", h.text("Modality") or ""]
            if _is_secondary(h):
                # secondary captures stay one series: an 'Exam Summary' mixes sizes and orientations,
                # and only some of its images carry a frame of reference or a series date
                parts.append("secondary")
            else:  # SeriesTime is left out: it can change per instance (Philips)
                parts += [h.text("FrameOfReferenceUID") or "", _round_iop(_iop(h)), f"{h.int('Rows')}x{h.int('Columns')}",
                          h.text("ConvolutionKernel") or "", h.text("SeriesDate") or ""]
            key = "fallback|" + "|".join(parts)
            grouping = "fallback"
        groups.setdefault(key, SeriesGroup(key, grouping)).instances.append(inst)
    out: list[SeriesGroup] = []
    for g in groups.values():
        out.extend(_split_stacks(g) if g.grouping == "uid" else _split_acquisitions(g))
    return out


def _is_secondary(h: Header) -> bool:
    sop = h.text("SOPClassUID") or h.extra.get("media_sop_class") or ""
    return sop.startswith(SC_SOP_PREFIX) or "SECONDARY" in [t.upper() for t in h.strings("ImageType")]


def _split_stacks(g: SeriesGroup) -> list[SeriesGroup]:
    """Split a UID series that holds several image stacks (orientation or matrix differ).

    Only geometric image series are split, and only when at least two stacks have two or
    more slices each; secondary captures and odd single images stay one series (with a
    warning) so a mixed 'Exam Summary' is one dropped series, not several.
    """
    by: dict[str, list[Instance]] = defaultdict(list)
    for inst in g.instances:
        h = inst.hdr
        by[f"{_round_iop(_iop(h))}|{h.int('Rows')}x{h.int('Columns')}"].append(inst)
    if len(by) <= 1:
        return [g]
    secondary = any(_is_secondary(i.hdr) for i in g.instances)
    stacks = [k for k, v in by.items() if len(v) >= 2 and not k.startswith("none")]
    if secondary or len(stacks) < 2:
        g.warnings.append(f"series mixes {len(by)} orientations/matrix sizes")
        return [g]
    parts = []
    for sub, insts in sorted(by.items()):
        ng = SeriesGroup(f"{g.key}|stack={sub}", g.grouping, insts)
        ng.warnings.append(f"series UID holds {len(by)} stacks (orientation/matrix differ); split into separate series")
        parts.append(ng)
    return parts


def _split_acquisitions(g: SeriesGroup) -> list[SeriesGroup]:
    by: dict[str, list[Instance]] = defaultdict(list)
    for inst in g.instances:
        by[inst.hdr.text("AcquisitionNumber") or ""].append(inst)
    if len(by) <= 1:
        return [g]
    # split only if two acquisitions share a slice position
    seen: dict[tuple, str] = {}
    collide = False
    for acq, insts in by.items():
        for inst in insts:
            p = _ipp(inst.hdr)
            if p is None:
                continue
            k = tuple(round(x, 2) for x in p)
            if k in seen and seen[k] != acq:
                collide = True
                break
            seen[k] = acq
        if collide:
            break
    if not collide:
        return [g]
    return [SeriesGroup(f"{g.key}|acq={acq}", g.grouping, insts) for acq, insts in sorted(by.items())]


def dedupe(g: SeriesGroup) -> None:
    """Drop duplicate instances in place and record a warning."""
    seen: set = set()
    kept: list[Instance] = []
    dups = 0
    for inst in sorted(g.instances, key=lambda i: i.rel):
        h = inst.hdr
        sop = h.text("SOPInstanceUID")
        if sop:
            k: tuple = ("sop", sop)
        else:
            p = _ipp(h)
            k = ("pos", tuple(round(x, 3) for x in p) if p else inst.rel, h.text("InstanceNumber"),
                 h.text("AcquisitionNumber"))
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        kept.append(inst)
    if dups:
        how = "same SOPInstanceUID" if g.grouping == "uid" else "same position and InstanceNumber"
        g.warnings.append(f"{dups} duplicate instance(s) dropped ({how})")
    g.instances = kept


# --------------------------------------------------------------------------- rows


@dataclass
class Built:
    row: dict
    files: list[Path]
    positions_mm: list[float]
    instance_numbers: list[int | None]


def build_series(g: SeriesGroup, pseudonymize: Callable[[str, str], str], *, min_slices: int = 3) -> Built:
    dedupe(g)
    hs = [i.hdr for i in g.instances]
    warnings = list(g.warnings)
    iop = _mode(_iop(h) for h in hs)
    iop = tuple(iop) if iop else None
    orientation, normal_to_z = classify_orientation(iop)
    normal = _normal(iop) if iop else None

    # --- positions
    entries = []
    for inst in g.instances:
        h = inst.hdr
        ipp = _ipp(h)
        if normal is not None and ipp is not None:
            pos = sum(a * b for a, b in zip(ipp, normal))
        else:
            pos = h.float("SliceLocation")
        entries.append((pos, h.int("InstanceNumber"), inst, ipp))
    have_pos = [e for e in entries if e[0] is not None]
    no_pos = [e for e in entries if e[0] is None]
    have_pos.sort(key=lambda e: (e[0], e[1] if e[1] is not None else 1 << 30, e[2].rel))
    no_pos.sort(key=lambda e: (e[1] if e[1] is not None else 1 << 30, e[2].rel))
    # one file per distinct position
    distinct: list[tuple] = []
    repeated = 0
    for e in have_pos:
        if distinct and abs(e[0] - distinct[-1][0]) < 0.01:
            repeated += 1
            if (e[1] or 1 << 30) < (distinct[-1][1] or 1 << 30):
                distinct[-1] = e
            continue
        distinct.append(e)
    if repeated:
        warnings.append(f"{repeated} instance(s) repeat a slice position (different SOP instances); "
                        f"one file per position is used")
    if have_pos:
        files_entries = distinct
    else:
        files_entries = no_pos
    if have_pos and no_pos:
        warnings.append(f"{len(no_pos)} instance(s) without position ignored for geometry")
    files = [e[2].path for e in files_entries]
    positions = [round(float(e[0]), 4) for e in files_entries] if have_pos else []
    inums = [e[1] for e in files_entries]
    n_slices = len(distinct) if have_pos else (len(no_pos) if no_pos else 0)

    steps = [b - a for a, b in zip(positions, positions[1:])]
    spacing = statistics.median(steps) if steps else None
    uniform = None
    if steps:
        tol = max(0.1, 0.05 * spacing)
        uniform = all(abs(s - spacing) <= tol for s in steps)
        if not uniform:
            warnings.append(f"uneven slice spacing: steps {min(steps):.2f}-{max(steps):.2f} mm (median {spacing:.2f} mm)")
    zs = [e[3][2] for e in files_entries if e[3] is not None]

    # --- tilt
    tilt_hdr = _mode(h.float("GantryDetectorTilt") for h in hs if h.float("GantryDetectorTilt") is not None)
    shear = None
    ipps = [e[3] for e in distinct if e[3] is not None] if have_pos else []
    if normal is not None and len(ipps) >= 2:
        d = [b - a for a, b in zip(ipps[0], ipps[-1])]
        dn = math.sqrt(sum(x * x for x in d))
        if dn > 1e-3:
            cosang = abs(sum(a * b for a, b in zip(d, normal))) / dn
            shear = math.degrees(math.acos(min(1.0, cosang)))
    gantry_tilt = None
    if tilt_hdr is not None and (abs(tilt_hdr) > 0 or shear is None):
        gantry_tilt = float(tilt_hdr)
        if shear is not None and abs(abs(tilt_hdr) - shear) > 1.0:
            warnings.append(f"GantryDetectorTilt {tilt_hdr:g} deg but the slice geometry shears by {shear:.1f} deg")
    elif shear is not None:
        gantry_tilt = round(shear, 2)
        if tilt_hdr is not None and shear > 1.0:
            warnings.append(f"GantryDetectorTilt 0 but the slice geometry shears by {shear:.1f} deg")
    if gantry_tilt is not None and abs(gantry_tilt) > 0.5:
        warnings.append(f"gantry tilt {gantry_tilt:g} deg: slices are sheared against the stack; resample before 3D use")

    # --- header fields
    thickness = _mode(h.float("SliceThickness") for h in hs)
    if thickness is not None and spacing is not None and spacing > 0:
        if abs(thickness - spacing) > max(0.1, 0.1 * spacing):
            kind = "overlapping slices" if thickness > spacing else "gaps between slices"
            warnings.append(f"slice thickness {thickness:g} mm != position step {spacing:.2f} mm ({kind})")
    pixel_spacing = _mode(h.floats("PixelSpacing") for h in hs)
    has_rescale = all(h.float("RescaleSlope") is not None and h.float("RescaleIntercept") is not None for h in hs)
    modality = _mode(h.text("Modality") for h in hs)
    if not has_rescale and modality == "CT":
        warnings.append("RescaleSlope/RescaleIntercept missing: stored values may not be HU")
    burned = [h.text("BurnedInAnnotation") for h in hs]
    burned_in = True if any((b or "").upper() == "YES" for b in burned) else (
        False if all((b or "").upper() == "NO" for b in burned) else None)
    acq_times = [h.text("AcquisitionTime") for h in hs if h.text("AcquisitionTime")]
    if not acq_times:
        acq_times = [h.text("AcquisitionDateTime")[8:] for h in hs
                     if h.text("AcquisitionDateTime") and len(h.text("AcquisitionDateTime")) > 8]
    start = _mode(h.text("ContrastBolusStartTime") for h in hs)
    delay = None
    if start and acq_times:
        delays = [d for d in (bolus_delay_s(t, start) for t in acq_times) if d is not None]
        delay = min(delays) if delays else None
    image_type = _mode(h.strings("ImageType") for h in hs)
    kernel = _mode(h.text("ConvolutionKernel") for h in hs)
    sop_class = _mode(h.text("SOPClassUID") or h.extra.get("media_sop_class") for h in hs)
    if g.truncated:
        warnings.append(f"{len(g.truncated)} truncated file(s) excluded")

    row: dict[str, Any] = {
        "series_id": pseudonymize("series", g.key),
        "grouping": g.grouping,
        "series_number": _mode(h.int("SeriesNumber") for h in hs),
        "modality": modality,
        "sop_class": sop_class,
        "description": _mode(h.text("SeriesDescription") for h in hs),
        "protocol": _mode(h.text("ProtocolName") for h in hs),
        "image_type": image_type,
        "body_part": _mode(h.text("BodyPartExamined") for h in hs),
        "kernel": kernel,
        "manufacturer": _mode(h.text("Manufacturer") for h in hs),
        "transfer_syntax": _mode(h.transfer_syntax for h in hs),
        "slice_thickness_mm": _f32(thickness),
        "pixel_spacing_mm": [float(x) for x in pixel_spacing] if pixel_spacing else None,
        "rows": _mode(h.int("Rows") for h in hs),
        "columns": _mode(h.int("Columns") for h in hs),
        "orientation": orientation,
        "gantry_tilt_deg": _f32(gantry_tilt, 2),
        "n_instances": len(hs),
        "n_slices": int(n_slices),
        "z_min_mm": round(min(zs), 4) if zs else None,
        "z_max_mm": round(max(zs), 4) if zs else None,
        "slice_spacing_mm": _f32(spacing),
        "spacing_uniform": uniform,
        "has_rescale": has_rescale,
        "burned_in_annotation": burned_in,
        "contrast_agent": _mode(h.text("ContrastBolusAgent") for h in hs),
        "contrast_route": _mode(h.text("ContrastBolusRoute") for h in hs),
        "bolus_delay_s": _f32(delay, 3),
        "acquisition_offset_s": None,   # set per study by the index (offsets between series)
        "series_offset_s": None,
        "phase": "unknown",
        "phase_confidence": 0.0,
        "phase_evidence": [],
        "kept": True,
        "drop_reason": None,
        "warnings": warnings,
    }
    n_frames = _mode(h.int("NumberOfFrames") for h in hs)
    reason = drop_reason(row, n_frames=n_frames, min_slices=min_slices, normal_to_z=normal_to_z)
    row["kept"] = reason is None
    row["drop_reason"] = reason
    row["_contrast_start_time"] = start
    row["_acquisition_time"] = first_time(hs, "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime")
    row["_series_time"] = first_time(hs, "SeriesDate", "SeriesTime")
    return Built(row, files, positions, inums)


def drop_reason(row: dict, *, n_frames: int | None = None, min_slices: int = 3,
                normal_to_z: float | None = None) -> str | None:
    """Why a series is unusable for key-slice selection, or None when it is kept."""
    itype = [t.upper() for t in (row.get("image_type") or [])]
    itype_set = set(itype)
    desc = (row.get("description") or "").lower()
    sop = row.get("sop_class") or ""
    modality = (row.get("modality") or ("CT" if sop in CT_IMAGE_SOPS else "")).upper()
    if sop.startswith(SC_SOP_PREFIX) or sop in DOSE_SR_SOPS or "SECONDARY" in itype_set \
            or (modality in ("CT", "OT", "") and SECONDARY_DESC.search(desc)):
        return "secondary_capture"
    if modality != "CT" or (sop and sop not in CT_IMAGE_SOPS):
        return "non_ct"
    if itype_set & LOCALIZER_TYPES or LOCALIZER_DESC.search(desc):
        return "localizer"
    if itype_set & REFORMAT_TYPES or REFORMAT_DESC.search(desc):
        return "reformat"
    if itype and itype[0] == "DERIVED" and not ("PRIMARY" in itype_set and "AXIAL" in itype_set):
        return "derived"
    if (n_frames or 1) > 1 or sop in MULTIFRAME_CT_SOPS:
        return "multiframe"
    if row.get("burned_in_annotation"):
        return "burned_in"
    if row.get("orientation") == "unknown":
        return "no_geometry"
    if row.get("orientation") != "axial":
        return "non_axial"
    if (row.get("n_slices") or 0) < min_slices:
        return "too_few_slices"
    return None
