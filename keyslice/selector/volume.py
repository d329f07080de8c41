"""Read one CT series (a list of DICOM files) or a NIfTI image into a :class:`Volume`.

Geometry
    Slices are sorted by their position along the slice normal
    ``n = row_cosine x column_cosine`` (from ImageOrientationPatient), not by file name or
    InstanceNumber. ``z_mm[k] = ImagePositionPatient_k . n``. ``positions[k]`` keeps each
    slice's exact ImagePositionPatient, so irregular spacing and gantry tilt are
    represented exactly; ``affine`` (LPS world from voxel index ``(i=col, j=row, k=slice)``)
    uses the mean step between first and last slice and is exact for regular series.
    HU = stored value * RescaleSlope + RescaleIntercept (float32). Compressed transfer
    syntaxes (JPEG 2000 via pylibjpeg-openjpeg, JPEG-LS/JPEG via pylibjpeg plugins or
    gdcm when installed, RLE natively) are decoded by pydicom's pixel handlers.

Decoding ahead
    :func:`load_volume` reads and validates every header first (thread pool), then
    decodes pixel data in a background thread pool in slice order. ``Volume.slab(a, b)``
    waits only for slices ``a..b``, so the selector encodes batch 0 while later slices are
    still being decoded. ``Volume.hu`` waits for all. ``decode="eager"`` decodes before
    returning.

Bad input policy
    * A file that is not DICOM, has no pixel data, is not a single-frame grayscale image
      (RGB secondary capture, multi-frame), lacks ImagePositionPatient /
      ImageOrientationPatient, has truncated uncompressed pixel data, or duplicates the
      position of an earlier slice (lower InstanceNumber wins) is left out and recorded in
      ``Volume.skipped`` as ``(file name, reason)``.
    * A slice whose header is fine but whose compressed pixel data cannot be decoded is
      kept in place as a blank slice (HU -1024), marked ``valid[k] = False`` (never
      selected) and recorded in ``skipped`` with a reason starting "pixel data cannot be
      decoded". Keeping it keeps every index and z position stable.
    * :class:`~keyslice.errors.DicomReadError` when no file survives, when every slice
      fails to decode, when the surviving slices have different Rows/Columns or different
      orientations (the series must be split first), or when pixel spacing differs.
    * A series of one slice is valid (its slice step is SliceThickness, or 1 mm).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keyslice.errors import DicomReadError

log = logging.getLogger(__name__)

AIR_HU = -1024.0
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


@dataclass(eq=False)
class Volume:
    """A CT series on a regular in-plane grid. ``hu`` is ``float32 [z, y, x]``."""

    z_mm: np.ndarray                       # float64 [n], position along the normal, ascending
    instance_numbers: list[int | None]
    pixel_spacing: tuple[float, float]     # (row spacing, column spacing) in mm
    affine: np.ndarray                     # 4x4, LPS world from (i=col, j=row, k=slice)
    skipped: list[tuple[str, str]]
    positions: np.ndarray                  # float64 [n, 3] ImagePositionPatient per slice (LPS)
    orientation: np.ndarray                # float64 [6] row cosine, column cosine
    shape: tuple[int, int, int]            # (n, rows, cols)
    files: list[Path] = field(default_factory=list)
    slice_thickness: float | None = None
    valid: np.ndarray | None = None        # bool [n]; False = decode failed (blank)
    source: str = "dicom"
    _hu: np.ndarray | None = field(default=None, repr=False)
    _futures: list[Future] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _emb_memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.valid is None:
            self.valid = np.ones(self.shape[0], dtype=bool)

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    @property
    def normal(self) -> np.ndarray:
        o = self.orientation
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)

    def wait(self, start: int = 0, stop: int | None = None) -> None:
        """Wait until slices ``start..stop`` are decoded (all by default)."""
        futs = self._futures
        if futs is None:
            return
        stop = self.n_slices if stop is None else stop
        for f in futs[start:stop]:
            f.result()
        if start == 0 and stop >= self.n_slices:
            self._check_any_valid()

    def _check_any_valid(self) -> None:
        if not self.valid.any():
            raise DicomReadError(f"no slice of the series could be decoded: {self.skipped[:3]}")

    @property
    def hu(self) -> np.ndarray:
        self.wait()
        return self._hu

    def slab(self, start: int, stop: int) -> np.ndarray:
        """HU of slices ``start..stop`` (a view), waiting only for those to be decoded."""
        self.wait(start, stop)
        return self._hu[start:stop]

    def slice_world(self, k: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """LPS world coordinates of pixel (column i, row j) on slice k (exact per-slice position)."""
        o = self.orientation
        ps_row, ps_col = self.pixel_spacing
        return (self.positions[k][None, :] + np.asarray(i, float)[:, None] * (o[:3] * ps_col)[None, :]
                + np.asarray(j, float)[:, None] * (o[3:] * ps_row)[None, :])


# --------------------------------------------------------------------------- DICOM


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    from keyslice.dicom.headers import NotDicomError, open_regular

    try:
        with open_regular(path) as fh:
            ds = pydicom.dcmread(fh)
    except NotDicomError as e:  # a named pipe or device put where a slice was
        return None, str(e)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as e:  # truncated / corrupt file
        return None, f"cannot be read: {type(e).__name__}: {str(e)[:120]}"
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        return None, "no pixel data"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None, f"not grayscale (SamplesPerPixel={ds.get('SamplesPerPixel')}, {ds.get('PhotometricInterpretation')})"
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None, "multi-frame image (not supported: split enhanced CT into single frames first)"
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None, "no ImagePositionPatient/ImageOrientationPatient (localizer or secondary capture?)"
    if ds.get("PixelSpacing") is None:
        return None, "no PixelSpacing"
    rows, cols = int(ds.Rows), int(ds.Columns)
    tsuid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
    if tsuid in _UNCOMPRESSED and "PixelData" in ds:
        need = rows * cols * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < need:
            return None, f"truncated pixel data ({len(ds.PixelData)} of {need} bytes)"
    return ds, None


def _decode(ds) -> np.ndarray:
    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ValueError(f"decoded array has shape {arr.shape}, expected 2-D")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= slope
    if intercept != 0.0:
        out += intercept
    return out


def load_volume(files: list[Path], *, decode: str = "background", workers: int | None = None) -> Volume:
    """Read a series' files into a :class:`Volume` (see the module docstring for the bad-input policy).

    ``files`` may come in any order and may contain non-DICOM files (they are skipped).
    ``decode="background"`` (default) returns once headers are validated while pixel data
    is decoded ahead in a thread pool; ``"eager"`` returns fully decoded.
    """
    files = [Path(f) for f in files]
    if not files:
        raise DicomReadError("empty series: no files given")
    workers = workers or default_workers()
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyslice-hdr") as pool:
        headers = list(pool.map(_read_header, files))
    kept = []
    for f, (ds, reason) in zip(files, headers):
        if ds is None:
            skipped.append((f.name, reason))
        else:
            kept.append((f, ds))
    if not kept:
        raise DicomReadError(f"no readable image slice among {len(files)} file(s): "
                             f"{Counter(r for _, r in skipped).most_common(3)}")

    shapes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in kept)
    if len(shapes) > 1:
        raise DicomReadError(f"the series mixes image sizes {dict(shapes)}; split it into one series per size")
    orients = Counter(tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 3)) for _, ds in kept)
    if len(orients) > 1:
        raise DicomReadError(f"the series mixes {len(orients)} orientations; split it (localizer mixed in?)")
    spacings = Counter(tuple(np.round(np.asarray(ds.PixelSpacing, float), 4)) for _, ds in kept)
    if len(spacings) > 1:
        raise DicomReadError(f"the series mixes pixel spacings {list(spacings)}; split it")

    iop = np.asarray(kept[0][1].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)

    def inst(ds) -> int | None:
        v = ds.get("InstanceNumber")
        try:
            return int(v) if v is not None and str(v) != "" else None
        except (TypeError, ValueError):
            return None

    entries = []
    for f, ds in kept:
        pos = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        entries.append((float(pos @ normal), inst(ds) if inst(ds) is not None else 1 << 30, f.name, f, ds, pos))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    unique = []
    for e in entries:
        if unique and abs(e[0] - unique[-1][0]) < 1e-3:
            skipped.append((e[3].name, f"duplicate position {e[0]:.3f} mm (kept {unique[-1][3].name})"))
            continue
        unique.append(e)

    n = len(unique)
    ds0 = unique[0][4]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    ps = tuple(float(x) for x in ds0.PixelSpacing)
    positions = np.stack([e[5] for e in unique])
    z = np.array([e[0] for e in unique], dtype=np.float64)
    thickness = ds0.get("SliceThickness")
    thickness = float(thickness) if thickness not in (None, "") else None
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * ps[1]
    affine[:3, 1] = iop[3:] * ps[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (n - 1) if n > 1 else normal * (thickness or 1.0)
    affine[:3, 3] = positions[0]

    vol = Volume(
        z_mm=z, instance_numbers=[e[1] if e[1] != 1 << 30 else None for e in unique], pixel_spacing=ps,
        affine=affine, skipped=skipped, positions=positions, orientation=iop, shape=(n, rows, cols),
        files=[e[3] for e in unique], slice_thickness=thickness, source="dicom",
    )
    vol._hu = np.empty((n, rows, cols), dtype=np.float32)
    datasets = [e[4] for e in unique]

    def work(k: int) -> None:
        ds = datasets[k]
        try:
            vol._hu[k] = _decode(ds)
        except Exception as e:  # corrupt compressed stream, missing codec...
            vol._hu[k] = AIR_HU
            vol.valid[k] = False
            with vol._lock:
                vol.skipped.append((unique[k][3].name, f"pixel data cannot be decoded ({type(e).__name__}: "
                                                       f"{str(e)[:120]}); kept blank, never selected"))
        finally:
            datasets[k] = None  # free the encoded bytes

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyslice-decode")
    vol._futures = [pool.submit(work, k) for k in range(n)]
    pool.shutdown(wait=False)
    if decode == "eager":
        vol.wait()
    elif decode != "background":
        raise ValueError(f"decode must be 'background' or 'eager', not {decode!r}")
    return vol


# --------------------------------------------------------------------------- NIfTI

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_from_nifti(path: Path) -> Volume:
    """A :class:`Volume` from a NIfTI CT (RAS world), reoriented to DICOM-like axes (columns toward
    patient left, rows toward posterior, slices toward superior, as closely as the grid allows)
    with an LPS affine, so masks and DICOM series share one world frame."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise DicomReadError(f"cannot read NIfTI {path.name}: {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DicomReadError(f"{path.name}: expected a 3-D image, got shape {data.shape}")
    ornt = io_orientation(img.affine)
    # nibabel axcodes are RAS-based labels of where each axis points: L, P, S = LPS directions.
    tr = ornt_transform(ornt, axcodes2ornt(("L", "P", "S")))
    data = apply_orientation(data, tr)
    aff_ras = img.affine @ inv_ornt_aff(tr, img.shape[:3])
    aff = _RAS_TO_LPS @ aff_ras                      # LPS world from (i, j, k)
    hu = np.ascontiguousarray(np.transpose(data, (2, 1, 0)).astype(np.float32))  # [k, j, i]
    n, rows, cols = hu.shape
    col_vec, row_vec, slc_vec = aff[:3, 0], aff[:3, 1], aff[:3, 2]
    ps = (float(np.linalg.norm(row_vec)), float(np.linalg.norm(col_vec)))
    iop = np.concatenate([col_vec / ps[1], row_vec / ps[0]])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    positions = aff[:3, 3][None, :] + np.arange(n)[:, None] * slc_vec[None, :]
    z = positions @ normal
    if n > 1 and z[1] < z[0]:  # cannot happen after LPS reorientation, kept as a guard
        raise DicomReadError(f"{path.name}: slice axis runs against the normal")
    vol = Volume(z_mm=z, instance_numbers=[None] * n, pixel_spacing=ps, affine=aff, skipped=[],
                 positions=positions, orientation=iop, shape=(n, rows, cols), files=[path],
                 slice_thickness=float(abs(slc_vec @ normal)), source="nifti")
    vol._hu = hu
    return vol
