"""Organ masks shipped with a study, resampled onto a series by WORLD coordinates.

``find_masks(study_dir)`` convention (all optional, all combined):

* a folder named ``segmentations/`` (anywhere in the study) of per-structure binary NIfTI
  files ``<structure>.nii.gz`` — TotalSegmentator's default output;
* multi-label NIfTI files whose name contains ``seg`` (``*seg*.nii.gz`` / ``*seg*.nii``)
  outside such a folder, each with an optional label map JSON beside it named
  ``<stem>.json`` or ``<stem>_labels.json`` (``{"1": "spleen", ...}`` or ``{"spleen": 1}``);
  without one, the TotalSegmentator v2 ``total`` labels (:data:`~keyslice.selector.ts_labels.TOTAL_LABELS`);
* DICOM-SEG files (SOP class Segmentation Storage) anywhere in the study; segment names
  are their SegmentLabel (or the property type's CodeMeaning), lower-cased with ``_`` for
  spaces, so "Liver" answers the TotalSegmentator label ``liver``.

When several sources hold a label, the first in that order (then sorted path) is used; masks
of further folders (``find_masks(study_dir, masks_folder)``: a masks root outside a read-only
input, written by ``keyslice segment``) come after the study's own.

World frames: NIfTI affines are RAS+ (+x toward the patient's right, +y anterior); DICOM
(series and SEG) is LPS+ (+x toward the patient's left, +y posterior). Every NIfTI affine
is converted with ``diag(-1, -1, 1)`` before any comparison. Resampling is nearest-neighbour
in world space: :meth:`OrganMasks.resample` maps each pixel centre of each series slice
(its exact ImagePositionPatient) into the mask's voxel grid; :meth:`OrganMasks.presence` /
:meth:`OrganMasks.z_range` give the same per-slice answer the fast way round (each label
voxel covers its centre +- half its extent along the series normal, within the slice's field
of view). Because only world coordinates are used, a mask on another grid (coarser,
flipped, another series of the same frame of reference) maps correctly, and a mask whose
affine is wrong (the ``example_ct_sm.nii.gz`` trap: slices 82-111 of a CT with the affine of
slice 0 — TotalSegmentator's ``example_seg_fast/`` masks are on that grid) maps to the wrong
place or nowhere, never silently onto slice indices.

Mismatch policy: :meth:`OrganMasks.check_overlap` raises :class:`~keyslice.errors.MaskError`
when no mask's world bounding box intersects the series (the mask belongs to another
study, or its affine is wrong); :meth:`OrganMasks.z_range` returns ``None`` when none of the
requested labels exists in the masks or none of their voxels falls on a series slice.
``select_key_slices`` checks the overlap per series: by default
(``SelectorConfig.on_mask_mismatch="ignore"``) it logs a warning and selects without restriction
(``restricted_to``/``z_range_mm`` stay None) — another series of the study may simply lie
outside the masks — and with ``"raise"`` it raises the MaskError. An unreadable mask file
raises MaskError.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from keyslice.errors import MaskError
from keyslice.selector.ts_labels import TOTAL_LABELS

log = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def normalize_label(name: str) -> str:
    return "_".join(str(name).strip().lower().replace("-", " ").split())


# --------------------------------------------------------------------------- label sources


class _Source:
    """One file (or folder) of masks: answers which world points lie inside given labels."""

    description: str

    def labels(self) -> set[str]:
        raise NotImplementedError

    def full_bbox_world(self) -> np.ndarray:
        raise NotImplementedError

    def sample(self, names: list[str], points: np.ndarray) -> np.ndarray:
        """bool [N]: whether each LPS world point falls in a voxel of one of the labels."""
        raise NotImplementedError

    def voxels(self, names: list[str]):
        """Yield ``(centres [N, 3] LPS, edges [3, 3])``: world centres of the labels' voxels and the
        world edge vectors of one voxel (rows)."""
        raise NotImplementedError


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Voxel-index box [lo-0.5, hi+0.5] corners, [8, 3]."""
    lo = np.asarray(lo, float) - 0.5
    hi = np.asarray(hi, float) + 0.5
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


class _NiftiLabels(_Source):
    """A NIfTI label image: multi-label (value -> name) or one binary structure."""

    def __init__(self, path: Path, names: dict[int, str] | None = None, single: str | None = None):
        self.path = Path(path)
        self.single = single
        self.names = names
        self.description = str(self.path)
        self._data = None
        self._lock = threading.Lock()
        try:
            import nibabel as nib

            self._img = nib.load(str(self.path))
        except Exception as e:
            raise MaskError(f"cannot read mask {self.path.name}: {e}") from e
        if len(self._img.shape) < 3:
            raise MaskError(f"mask {self.path.name} is not 3-D (shape {self._img.shape})")
        self.affine = RAS_TO_LPS @ self._img.affine          # LPS world from voxel (i, j, k)
        self.inv = np.linalg.inv(self.affine)
        self.shape = tuple(self._img.shape[:3])
        if single is None:
            self.by_name = {normalize_label(v): int(k) for k, v in (names or {}).items()}

    @property
    def data(self) -> np.ndarray:
        with self._lock:
            if self._data is None:
                try:
                    d = np.asanyarray(self._img.dataobj)
                except Exception as e:
                    raise MaskError(f"cannot read mask data of {self.path.name}: {e}") from e
                if d.ndim == 4 and d.shape[3] == 1:
                    d = d[..., 0]
                if d.ndim != 3:
                    raise MaskError(f"mask {self.path.name} is not 3-D (shape {d.shape})")
                if d.dtype.kind == "f":
                    d = np.rint(d).astype(np.int32)
                self._data = d
            return self._data

    def labels(self) -> set[str]:
        if self.single is not None:
            return {self.single}
        return set(self.by_name)

    def _values(self, names: list[str]) -> list[int]:
        if self.single is not None:
            return [1] if self.single in names else []
        return [self.by_name[n] for n in names if n in self.by_name]

    def _hit(self, vals: np.ndarray, values: list[int]) -> np.ndarray:
        if self.single is not None:
            return vals > 0
        return np.isin(vals, values)

    def full_bbox_world(self) -> np.ndarray:
        return self._to_world(_corners(np.zeros(3), np.array(self.shape) - 1))

    def voxels(self, names: list[str]):
        values = self._values(names)
        if not values:
            return
        ijk = np.argwhere(self._hit(self.data, values))
        if len(ijk):
            yield self._to_world(ijk.astype(np.float64)), self.affine[:3, :3].T.copy()

    def _to_world(self, ijk: np.ndarray) -> np.ndarray:
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def sample(self, names: list[str], points: np.ndarray) -> np.ndarray:
        values = self._values(names)
        out = np.zeros(len(points), dtype=bool)
        if not values:
            return out
        ijk = np.rint(points @ self.inv[:3, :3].T + self.inv[:3, 3]).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        if inside.any():
            d = self.data
            sel = ijk[inside]
            out[inside] = self._hit(d[sel[:, 0], sel[:, 1], sel[:, 2]], values)
        return out


class _StructureFolder(_Source):
    """TotalSegmentator-style folder: one binary NIfTI per structure (all of a folder, or the listed files)."""

    def __init__(self, folder: Path | None = None, files: list[Path] | None = None):
        self.folder = Path(folder) if folder is not None else None
        paths = sorted(self.folder.iterdir()) if self.folder is not None else [Path(f) for f in files or []]
        self.description = str(self.folder) if self.folder is not None else ", ".join(p.name for p in paths)
        self.files: dict[str, Path] = {}
        for p in paths:
            if p.name.endswith(".nii.gz") or p.name.endswith(".nii"):
                stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.name[:-4]
                self.files[normalize_label(stem)] = p
        self._open: dict[str, _NiftiLabels] = {}
        self._lock = threading.Lock()

    def _get(self, name: str) -> _NiftiLabels:
        with self._lock:
            if name not in self._open:
                self._open[name] = _NiftiLabels(self.files[name], single=name)
            return self._open[name]

    def labels(self) -> set[str]:
        return set(self.files)

    def full_bbox_world(self) -> np.ndarray:
        if not self.files:
            return np.zeros((0, 3))
        return self._get(next(iter(self.files))).full_bbox_world()

    def sample(self, names: list[str], points: np.ndarray) -> np.ndarray:
        out = np.zeros(len(points), dtype=bool)
        for n in names:
            if n in self.files:
                out |= self._get(n).sample([n], points)
        return out

    def voxels(self, names: list[str]):
        for n in names:
            if n in self.files:
                yield from self._get(n).voxels([n])


class _DicomSeg(_Source):
    """A DICOM Segmentation (BINARY, FRACTIONAL or LABELMAP) of single planes in LPS world."""

    def __init__(self, path: Path):
        import pydicom

        self.path = Path(path)
        self.description = str(self.path)
        try:
            ds = pydicom.dcmread(self.path)
            frames = ds.pixel_array
        except Exception as e:
            raise MaskError(f"cannot read DICOM-SEG {self.path.name}: {e}") from e
        if frames.ndim == 2:
            frames = frames[None]
        seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
        if seg_type == "FRACTIONAL":
            frames = frames > (int(ds.get("MaximumFractionalValue", 255)) / 2)
        try:
            shared = ds.SharedFunctionalGroupsSequence[0]
            per_frame = ds.PerFrameFunctionalGroupsSequence
        except (AttributeError, IndexError) as e:
            raise MaskError(f"DICOM-SEG {self.path.name} lacks functional groups: {e}") from e

        def group(fg, name):
            return getattr(fg, name, None) or getattr(shared, name, None)

        self.segments: dict[str, int] = {}
        for seg in ds.SegmentSequence:
            label = seg.get("SegmentLabel") or ""
            try:
                meaning = seg.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
            except (AttributeError, IndexError):
                meaning = ""
            for nm in (label, meaning):
                if nm:
                    self.segments.setdefault(normalize_label(nm), int(seg.SegmentNumber))
        # planes: (segment number or None for LABELMAP, origin, row cosine, col cosine, spacing, 2-D mask)
        self.planes = []
        for f, fg in enumerate(per_frame):
            try:
                ipp = np.asarray(group(fg, "PlanePositionSequence")[0].ImagePositionPatient, float)
                iop = np.asarray(group(fg, "PlaneOrientationSequence")[0].ImageOrientationPatient, float)
                ps = np.asarray(group(fg, "PixelMeasuresSequence")[0].PixelSpacing, float)
            except (TypeError, AttributeError, IndexError) as e:
                raise MaskError(f"DICOM-SEG {self.path.name} frame {f} lacks plane geometry: {e}") from e
            seg_id = group(fg, "SegmentIdentificationSequence")
            number = int(seg_id[0].ReferencedSegmentNumber) if seg_id and seg_type != "LABELMAP" else None
            self.planes.append((number, ipp, iop, ps, np.asarray(frames[f])))
        try:
            pm = shared.PixelMeasuresSequence[0]
            thick = float(pm.get("SliceThickness") or pm.get("SpacingBetweenSlices") or 0) or None
        except (AttributeError, IndexError):
            thick = None
        self.half_thickness = (thick or 1.0) / 2.0
        self.shape = (len(self.planes),) + frames.shape[1:]

    def labels(self) -> set[str]:
        return set(self.segments)

    def _frames_for(self, names: list[str]):
        numbers = {self.segments[n] for n in names if n in self.segments}
        for number, ipp, iop, ps, frame in self.planes:
            if number is None:  # LABELMAP: pixel values are segment numbers
                m = np.isin(frame, list(numbers))
            elif number in numbers:
                m = frame > 0
            else:
                continue
            yield ipp, iop, ps, m

    @staticmethod
    def _plane_world(ipp, iop, ps, i, j):
        return ipp + np.outer(i, iop[:3] * ps[1]).reshape(-1, 3) + np.outer(j, iop[3:] * ps[0]).reshape(-1, 3)

    def full_bbox_world(self) -> np.ndarray:
        pts = []
        for _, ipp, iop, ps, frame in self.planes:
            r, c = frame.shape
            n = np.cross(iop[:3], iop[3:])
            for i in (-0.5, c - 0.5):
                for j in (-0.5, r - 0.5):
                    p = ipp + i * iop[:3] * ps[1] + j * iop[3:] * ps[0]
                    pts += [p - n * self.half_thickness, p + n * self.half_thickness]
        return np.array(pts)

    def voxels(self, names: list[str]):
        for ipp, iop, ps, m in self._frames_for(names):
            j, i = np.nonzero(m)
            if len(i):
                n = np.cross(iop[:3], iop[3:])
                pts = ipp + np.outer(i, iop[:3] * ps[1]) + np.outer(j, iop[3:] * ps[0])
                yield pts, np.stack([iop[:3] * ps[1], iop[3:] * ps[0], n * 2 * self.half_thickness])

    def sample(self, names: list[str], points: np.ndarray) -> np.ndarray:
        out = np.zeros(len(points), dtype=bool)
        for ipp, iop, ps, m in self._frames_for(names):
            n = np.cross(iop[:3], iop[3:])
            rel = points - ipp
            near = np.abs(rel @ n) <= self.half_thickness + 1e-4
            if not near.any():
                continue
            i = np.rint(rel[near] @ iop[:3] / ps[1]).astype(np.int64)
            j = np.rint(rel[near] @ iop[3:] / ps[0]).astype(np.int64)
            ok = (i >= 0) & (i < m.shape[1]) & (j >= 0) & (j < m.shape[0])
            hit = np.zeros(len(i), dtype=bool)
            hit[ok] = m[j[ok], i[ok]]
            idx = np.nonzero(near)[0]
            out[idx] |= hit
        return out


# --------------------------------------------------------------------------- OrganMasks


class OrganMasks:
    """Masks of one study from one or more sources; answers per-series questions by world coordinates."""

    def __init__(self, sources: list[_Source]):
        self.sources = list(sources)
        self._memo: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OrganMasks({[s.description for s in self.sources]})"

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_nifti(cls, path: Path, labels: dict[int, str] | Path | None = None) -> "OrganMasks":
        """A multi-label NIfTI; ``labels`` is a dict or a JSON file (default: TotalSegmentator total labels)."""
        if isinstance(labels, (str, Path)):
            labels = read_label_json(Path(labels))
        return cls([_NiftiLabels(Path(path), names=labels or TOTAL_LABELS)])

    @classmethod
    def from_folder(cls, folder: Path) -> "OrganMasks":
        """A folder of per-structure binary NIfTI files (TotalSegmentator's output)."""
        return cls([_StructureFolder(Path(folder))])

    @classmethod
    def from_files(cls, files: list[Path]) -> "OrganMasks":
        """Listed per-structure binary NIfTI files (the structure name is the file name)."""
        return cls([_StructureFolder(files=[Path(f) for f in files])])

    @classmethod
    def from_dicom_seg(cls, path: Path) -> "OrganMasks":
        return cls([_DicomSeg(Path(path))])

    # ------------------------------------------------------------ queries
    def labels(self) -> set[str]:
        out: set[str] = set()
        for s in self.sources:
            out |= s.labels()
        return out

    def _resolve(self, ts_labels) -> list[tuple[_Source, list[str]]]:
        wanted = [normalize_label(x) for x in ts_labels]
        plan, done = [], set()
        for s in self.sources:
            have = [n for n in wanted if n in s.labels() and n not in done]
            if have:
                plan.append((s, have))
                done |= set(have)
        return plan

    def present_labels(self, ts_labels) -> list[str]:
        return sorted({n for _, names in self._resolve(ts_labels) for n in names})

    def check_overlap(self, volume) -> None:
        """Raise MaskError when no mask source's world extent intersects the series' extent."""
        vlo, vhi = _volume_bounds(volume)
        for s in self.sources:
            box = s.full_bbox_world()
            if len(box) and np.all(box.max(0) >= vlo - 1e-3) and np.all(box.min(0) <= vhi + 1e-3):
                return
        descr = "; ".join(
            f"{Path(s.description).name}: {np.round(s.full_bbox_world().min(0), 1).tolist()}.."
            f"{np.round(s.full_bbox_world().max(0), 1).tolist()}" for s in self.sources)
        raise MaskError(
            f"no organ mask overlaps the series in world coordinates (series LPS extent "
            f"{np.round(vlo, 1).tolist()}..{np.round(vhi, 1).tolist()} mm; masks {descr}). The mask belongs to "
            f"another series/frame of reference or its affine is wrong (NIfTI must be RAS, DICOM is LPS).")

    def presence(self, ts_labels, volume) -> np.ndarray:
        """bool [n_slices]: whether any of the labels is present on each series slice (world-resampled)."""
        key = ("presence", tuple(sorted(normalize_label(x) for x in ts_labels)), _geometry_key(volume))
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        out = np.zeros(volume.n_slices, dtype=bool)
        for source, names in self._resolve(ts_labels):
            for centres, edges in source.voxels(names):
                out |= _slices_hit(centres, edges, volume)
        with self._lock:
            self._memo[key] = out
        return out

    def z_range(self, ts_labels, volume) -> tuple[float, float] | None:
        """(z_min_mm, z_max_mm) along the series normal of the slices holding any of the labels,
        or None when no label is in the masks or none falls on a slice of this series."""
        p = self.presence(ts_labels, volume)
        if not p.any():
            return None
        z = np.asarray(volume.z_mm)[p]
        return float(z.min()), float(z.max())

    def resample(self, ts_labels, volume, stride: int = 1) -> np.ndarray:
        """bool [n, rows/stride, cols/stride]: the labels' union on the series grid (nearest neighbour)."""
        return np.stack([self.slice_mask(ts_labels, volume, k, stride) for k in range(volume.shape[0])])

    def slice_mask(self, ts_labels, volume, index: int, stride: int = 1) -> np.ndarray:
        """bool [rows/stride, cols/stride]: the labels' union on one slice of the series (nearest neighbour)."""
        _, rows, cols = volume.shape
        jj, ii = np.meshgrid(np.arange(0, rows, stride), np.arange(0, cols, stride), indexing="ij")
        return self.points_mask(ts_labels, volume.slice_world(index, ii.ravel(), jj.ravel())).reshape(jj.shape)

    def points_mask(self, ts_labels, points: np.ndarray) -> np.ndarray:
        """bool [N]: whether each LPS world point lies in one of the labels (nearest voxel of each mask's own
        grid; a plane between two series slices is sampled exactly where it lies, the mask never interpolated)."""
        out = np.zeros(len(points), dtype=bool)
        for source, names in self._resolve(ts_labels):
            out |= source.sample(names, points)
        return out


def _geometry_key(volume) -> tuple:
    """Identity of a series grid for memoisation (never ``id()``: ids are reused after GC)."""
    import hashlib

    h = hashlib.sha1(np.ascontiguousarray(volume.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(volume.orientation, dtype=np.float64).tobytes())
    return tuple(volume.shape), tuple(volume.pixel_spacing), h.hexdigest()


def _volume_bounds(volume) -> tuple[np.ndarray, np.ndarray]:
    n, rows, cols = volume.shape
    pts = []
    for k in (0, n - 1):
        pts.append(volume.slice_world(k, np.array([-0.5, cols - 0.5, -0.5, cols - 0.5]),
                                      np.array([-0.5, -0.5, rows - 0.5, rows - 0.5])))
    pts = np.concatenate(pts)
    half = volume.normal * ((volume.slice_thickness or 1.0) / 2.0)
    pts = np.concatenate([pts - half, pts + half])
    return pts.min(0), pts.max(0)


def _slices_hit(centres: np.ndarray, edges: np.ndarray, volume) -> np.ndarray:
    """bool [n_slices]: series slices that a nearest-neighbour resampling would give a label voxel.

    Each mask voxel covers ``centre +- h`` along the series normal (``h`` = half its extent
    projected on the normal); a slice at ``z`` is hit when some voxel covers ``z`` and the
    voxel centre falls inside the slice's field of view. Vectorised over all voxels:
    the same answer as resampling every pixel of every slice, at a fraction of the cost.
    """
    n_sl, rows, cols = volume.shape
    z = np.asarray(volume.z_mm, dtype=np.float64)
    normal = volume.normal
    h = 0.5 * float(np.abs(edges @ normal).sum())
    zc = centres @ normal
    lo = np.searchsorted(z, zc - h - 1e-6, side="left")
    hi = np.searchsorted(z, zc + h + 1e-6, side="right")
    # in-plane field of view, measured on the slice nearest to each voxel (exact for tilted series)
    kn = np.clip(np.searchsorted(z, zc), 1, max(1, n_sl - 1))
    kn = np.where(np.abs(z[kn - 1] - zc) <= np.abs(z[np.minimum(kn, n_sl - 1)] - zc), kn - 1, kn)
    kn = np.clip(kn, 0, n_sl - 1)
    rel = centres - volume.positions[kn]
    o = volume.orientation
    ps_row, ps_col = volume.pixel_spacing
    i = rel @ o[:3] / ps_col
    j = rel @ o[3:] / ps_row
    ok = (hi > lo) & (i >= -0.5) & (i <= cols - 0.5) & (j >= -0.5) & (j <= rows - 0.5)
    count = np.zeros(n_sl + 1, dtype=np.int64)
    np.add.at(count, lo[ok], 1)
    np.add.at(count, hi[ok], -1)
    return np.cumsum(count)[:n_sl] > 0


def read_label_json(path: Path) -> dict[int, str]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MaskError(f"cannot read label map {path}: {e}") from e
    if isinstance(data, list):
        return {i + 1: str(v) for i, v in enumerate(data)}
    if isinstance(data, dict):
        try:
            if all(str(k).lstrip("-").isdigit() for k in data):
                return {int(k): str(v) for k, v in data.items()}
            return {int(v): str(k) for k, v in data.items()}
        except (TypeError, ValueError) as e:
            raise MaskError(f"label map {path} is neither {{value: name}} nor {{name: value}}") from e
    raise MaskError(f"label map {path} is not a JSON object or list")


# --------------------------------------------------------------------------- discovery


def _is_seg_nifti(p: Path) -> bool:
    n = p.name.lower()
    return (n.endswith(".nii.gz") or n.endswith(".nii")) and "seg" in n


def _labels_for(p: Path) -> dict[int, str]:
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.name[:-4]
    for cand in (p.with_name(stem + ".json"), p.with_name(stem + "_labels.json")):
        if cand.is_file():
            return read_label_json(cand)
    return TOTAL_LABELS


def _is_dicom_seg(p: Path) -> bool:
    """Cheap test first (the SEG SOP class UID sits in the file meta of the first KiB), then parse."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(2048)
        if len(head) < 132 or head[128:132] != b"DICM" or SEG_SOP_CLASS.encode() not in head:
            return False
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
        return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"
    except Exception:
        return False


def find_masks(study_dir: Path, *more: Path) -> OrganMasks | None:
    """Precomputed masks shipped with a study (see the module docstring), or None when there are none.

    ``more``: further folders holding masks of the same study, read after the study's own (a
    separate masks root that ``keyslice segment`` wrote; a folder that does not exist holds none,
    a folder given twice is read once)."""
    sources: list[_Source] = []
    seen: set[Path] = set()
    for folder in (study_dir, *more):
        folder = Path(folder)
        if not folder.is_dir() or folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        sources += _sources_in(folder)
    return OrganMasks(sources) if sources else None


def _sources_in(study_dir: Path) -> list[_Source]:
    folders, niftis, segs = [], [], []
    for root, dirs, files in os.walk(study_dir):
        dirs.sort()
        root_p = Path(root)
        if root_p.name == "segmentations" and root_p != study_dir:
            folders.append(root_p)
            dirs[:] = []
            continue
        for name in sorted(files):
            p = root_p / name
            if not p.is_file():  # a named pipe or device would block or never end when read
                continue
            if _is_seg_nifti(p):
                niftis.append(p)
            elif not name.lower().endswith((".nii", ".nii.gz", ".json", ".txt", ".png", ".jpg", ".csv", ".md")):
                if _is_dicom_seg(p):
                    segs.append(p)
    sources: list[_Source] = [_StructureFolder(f) for f in folders]
    sources += [_NiftiLabels(p, names=_labels_for(p)) for p in niftis]
    sources += [_DicomSeg(p) for p in segs]
    return sources
