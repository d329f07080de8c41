"""Read one CT series (a list of DICOM files) or a NIfTI image into a :class:`Volume`.

Geometry
    Slices are sorted by their position along the slice normal
    ``n = row_cosine x column_cosine`` (from ImageOrientationPatient), not by file name or
    InstanceNumber. ``z_mm[k] = ImagePositionPatient_k . n``. ``positions[k]`` keeps each
    slice's exact ImagePositionPatient, so irregular spacing and gantry tilt are
    represented exactly; ``affine`` (LPS world from voxel index ``(i=col, j=row, k=slice)``)
    uses the mean step between first and last slice and is exact for regular series.
    HU = stored value * RescaleSlope + RescaleIntercept (float32).

Reading
    Headers come from step 2's byte-level reader (:func:`keyslice.dicom.headers.read_header`,
    threads), which also gives each file's transfer syntax and Pixel Data offset. Pixels are
    read by :mod:`keyslice.selector.pixels`: uncompressed data with one read per file into a
    preallocated buffer, compressed data (JPEG 2000, JPEG lossless, JPEG-LS, RLE) by
    imagecodecs in a thread pool, anything else by pydicom.

Streaming
    :func:`load_volume` reads and validates headers only. Pixels are decoded when they are
    used: :meth:`Volume.chunks` streams stored values in fixed-size chunks, decoded ahead by
    ``workers`` threads into a few reused (pinned, for CUDA) buffers, so memory stays bounded
    whatever the number of slices; the selector encodes chunk k while chunk k+1 is decoded.
    :meth:`Volume.slab` decodes a few slices on demand (a key-slice PNG), ``Volume.hu``
    decodes the whole series once and keeps it (mask export, fine-tuning); ``decode="eager"``
    does that before returning.

Bad input policy
    * A file that is not DICOM (or is a DICOMDIR), has no pixel data, is not a single-frame
      grayscale image (RGB secondary capture, multi-frame), lacks ImagePositionPatient /
      ImageOrientationPatient or PixelSpacing, has truncated pixel data, or duplicates the
      position of an earlier slice (lower InstanceNumber wins) is left out and recorded in
      ``Volume.skipped`` as ``(file name, reason)``.
    * A slice whose header is fine but whose pixel data cannot be decoded is kept in place
      as a blank slice (HU -1024), marked ``valid[k] = False`` (never selected) and recorded
      in ``skipped`` with a reason starting "pixel data cannot be decoded". Keeping it keeps
      every index and z position stable. Validity is known once every slice has been
      decoded (:meth:`Volume.wait` decodes the rest if needed).
    * :class:`~keyslice.errors.DicomReadError` when no file survives, when every slice
      fails to decode, when the surviving slices have different Rows/Columns or different
      orientations (the series must be split first), or when pixel spacing differs.
    * A series of one slice is valid (its slice step is SliceThickness, or 1 mm).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from keyslice.dicom.headers import Header, NotDicomError, read_headers
from keyslice.errors import DicomReadError
from keyslice.selector import pixels as pixel_io
from keyslice.selector.pixels import Chunk, ChunkStream, SlicePixels
from keyslice.selector.preprocess import hu_from_stored

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Volume:
    """A CT series on a regular in-plane grid; HU as ``float32 [z, y, x]`` through :meth:`chunks`,
    :meth:`slab` or ``hu``."""

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
    pixels: list[SlicePixels] | None = field(default=None, repr=False)  # DICOM: where each slice's pixels are
    slope: np.ndarray | None = field(default=None, repr=False)          # float64 [n] RescaleSlope
    intercept: np.ndarray | None = field(default=None, repr=False)      # float64 [n] RescaleIntercept
    workers: int | None = None             # decode threads (None: pixels.decode_workers())
    _hu: np.ndarray | None = field(default=None, repr=False)
    _decoded: np.ndarray | None = field(default=None, repr=False)       # bool [n]: decoded at least once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _emb_memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = self.shape[0]
        if self.valid is None:
            self.valid = np.ones(n, dtype=bool)
        if self.slope is None:
            self.slope = np.ones(n)
        if self.intercept is None:
            self.intercept = np.zeros(n)
        self._decoded = np.zeros(n, dtype=bool) if self.pixels is not None else np.ones(n, dtype=bool)

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    @property
    def normal(self) -> np.ndarray:
        o = self.orientation
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)

    @property
    def stored_dtype(self) -> np.dtype:
        """One dtype that holds every slice's stored values (float32 HU for NIfTI)."""
        if self.pixels is None:
            return np.dtype(np.float32)
        return np.result_type(*{p.dtype for p in self.pixels})

    # ------------------------------------------------------------------ pixels

    def _decode_slice(self, k: int, out: np.ndarray) -> None:
        pixel_io.read_stored(self.pixels[k], out)
        self._decoded[k] = True

    def _decode_failed(self, k: int, exc: BaseException) -> None:
        with self._lock:
            self._decoded[k] = True
            if self.valid[k]:
                self.valid[k] = False
                self.skipped.append((self.files[k].name, f"pixel data cannot be decoded ({type(exc).__name__}: "
                                                         f"{str(exc)[:120]}); kept blank, never selected"))

    def chunks(self, size: int, *, start: int = 0, stop: int | None = None, buffers: int = 3,
               pin: bool = False, release_on_next: bool = True) -> Iterator[Chunk]:
        """Stored values of slices ``start..stop`` in chunks of ``size``, decoded ahead by the worker
        pool into at most ``buffers`` reused buffers (pinned host memory when ``pin``). Call
        ``chunk.release()`` when done with a chunk's buffer (``release_on_next=False``: only
        then is it reused; see :class:`~keyslice.selector.pixels.ChunkStream`). HU:
        ``hu_from_stored(chunk.stored, volume.slope[chunk.start:chunk.stop], ...)``;
        ``chunk.start``/``stop`` are volume indices."""
        stop = self.n_slices if stop is None else stop
        if self.pixels is None:  # NIfTI: HU already in memory
            for s in range(start, stop, size):
                e = min(stop, s + size)
                yield Chunk(s, e, self._hu[s:e], np.asarray(self.valid[s:e]).copy())
            return
        _, rows, cols = self.shape
        dtype = self.stored_dtype

        def allocate(n: int):
            t = torch.empty((n, rows, cols), dtype=_torch_dtype(dtype), pin_memory=pin)
            return t, t.numpy()

        stream = ChunkStream(stop - start, size, lambda i, out: self._decode_slice(start + i, out), allocate,
                             workers=self.workers, buffers=buffers, release_on_next=release_on_next,
                             on_error=lambda i, exc: self._decode_failed(start + i, exc))
        for chunk in stream:
            chunk.start += start
            chunk.stop += start
            yield chunk

    def _hu_of(self, chunk: Chunk) -> np.ndarray:
        s, e = chunk.start, chunk.stop
        hu = hu_from_stored(torch.from_numpy(chunk.stored), self.slope[s:e], self.intercept[s:e],
                            self.valid[s:e] & chunk.valid)
        return hu.numpy()

    def slab(self, start: int, stop: int) -> np.ndarray:
        """HU of slices ``start..stop`` (decoded now unless the whole series is in memory)."""
        if self._hu is not None:
            return self._hu[start:stop]
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.float32)
        for chunk in self.chunks(max(1, stop - start), start=start, stop=stop, buffers=1):
            out[chunk.start - start:chunk.stop - start] = self._hu_of(chunk)
            chunk.release()
        return out

    @property
    def hu(self) -> np.ndarray:
        """HU of the whole series, decoded once and kept (n x rows x cols x 4 bytes)."""
        if self._hu is None:
            hu = np.empty(self.shape, dtype=np.float32)
            for chunk in self.chunks(32):
                hu[chunk.start:chunk.stop] = self._hu_of(chunk)
                chunk.release()
            self._check_any_valid()
            self._hu = hu
        return self._hu

    def wait(self) -> None:
        """Make sure every slice has been decoded once (so ``valid`` is final), decoding the ones
        that were not; raise :class:`DicomReadError` when none could be."""
        if not self._decoded.all():
            todo = np.flatnonzero(~self._decoded)
            for chunk in self.chunks(32, start=int(todo[0]), stop=int(todo[-1]) + 1):
                chunk.release()
        self._check_any_valid()

    def _check_any_valid(self) -> None:
        if not self.valid.any():
            raise DicomReadError(f"no slice of the series could be decoded: {self.skipped[:3]}")

    def slice_world(self, k: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """LPS world coordinates of pixel (column i, row j) on slice k (exact per-slice position)."""
        o = self.orientation
        ps_row, ps_col = self.pixel_spacing
        return (self.positions[k][None, :] + np.asarray(i, float)[:, None] * (o[:3] * ps_col)[None, :]
                + np.asarray(j, float)[:, None] * (o[3:] * ps_row)[None, :])


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype


# --------------------------------------------------------------------------- DICOM


def _usable(path: Path, hdr: Header) -> tuple:
    """(Header, SlicePixels) of one file, or (None, the reason it is left out of the volume)."""
    if hdr.truncated:
        return None, f"truncated pixel data ({hdr.truncated})"
    if not hdr.extra.get("pixel_data", False):
        return None, "no pixel data"
    if (hdr.int("SamplesPerPixel") or 1) != 1:
        return None, (f"not grayscale (SamplesPerPixel={hdr.int('SamplesPerPixel')}, "
                      f"{hdr.text('PhotometricInterpretation')})")
    if (hdr.int("NumberOfFrames") or 1) != 1:
        return None, "multi-frame image (not supported: split enhanced CT into single frames first)"
    ipp, iop = hdr.floats("ImagePositionPatient"), hdr.floats("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None, "no ImagePositionPatient/ImageOrientationPatient (localizer or secondary capture?)"
    spacing = hdr.floats("PixelSpacing")
    if not spacing or len(spacing) != 2:
        return None, "no PixelSpacing"
    rows, cols, bits = hdr.int("Rows"), hdr.int("Columns"), hdr.int("BitsAllocated")
    if not rows or not cols or bits not in (8, 16, 32):
        return None, f"no usable Rows/Columns/BitsAllocated ({rows}, {cols}, {bits})"
    sp = SlicePixels.from_header(path, hdr)
    if sp.method == "native" and sp.length < rows * cols * bits // 8:
        return None, f"truncated pixel data ({sp.length} of {rows * cols * bits // 8} bytes)"
    return (hdr, sp), None


def load_volume(files: list[Path], *, decode: str = "stream", workers: int | None = None,
                headers: Mapping[Path, Header] | None = None) -> Volume:
    """Read a series' headers into a :class:`Volume` (see the module docstring for the bad-input policy).

    ``files`` may come in any order and may contain non-DICOM files (they are skipped).
    ``decode="stream"`` (default) returns once headers are validated; pixels are decoded when
    used. ``"eager"`` decodes the whole series into ``Volume.hu`` before returning.
    ``workers``: decode threads (default :func:`keyslice.selector.pixels.decode_workers`).
    ``headers``: file -> :class:`~keyslice.dicom.headers.Header` already read by step 2's index
    (:attr:`keyslice.dicom.StudyIndex.headers`); those files' headers are not read again (each
    costs about 0.2 ms of pure-Python parsing, as much as reading its pixels), the others are
    read by :func:`~keyslice.dicom.headers.read_headers`.
    """
    if decode not in ("stream", "eager"):
        raise ValueError(f"decode must be 'stream' or 'eager', not {decode!r}")
    files = [Path(f) for f in files]
    if not files:
        raise DicomReadError("empty series: no files given")
    skipped: list[tuple[str, str]] = []
    known = headers or {}
    todo = [f for f in files if f not in known]
    read = dict(zip(todo, read_headers(todo)))
    kept = []
    for f in files:
        hdr = known[f] if f in known else read[f]
        item, reason = (None, str(hdr)) if isinstance(hdr, NotDicomError) else _usable(f, hdr)
        if item is None:
            skipped.append((f.name, reason))
        else:
            kept.append((f, *item))
    if not kept:
        raise DicomReadError(f"no readable image slice among {len(files)} file(s): "
                             f"{Counter(r for _, r in skipped).most_common(3)}")

    shapes = Counter((sp.rows, sp.cols) for _, _, sp in kept)
    if len(shapes) > 1:
        raise DicomReadError(f"the series mixes image sizes {dict(shapes)}; split it into one series per size")
    orients = Counter(tuple(np.round(np.asarray(h.floats("ImageOrientationPatient"), float), 3)) for _, h, _ in kept)
    if len(orients) > 1:
        raise DicomReadError(f"the series mixes {len(orients)} orientations; split it (localizer mixed in?)")
    spacings = Counter(tuple(np.round(np.asarray(h.floats("PixelSpacing"), float), 4)) for _, h, _ in kept)
    if len(spacings) > 1:
        raise DicomReadError(f"the series mixes pixel spacings {list(spacings)}; split it")

    iop = np.asarray(kept[0][1].floats("ImageOrientationPatient"), dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)

    entries = []
    for f, h, sp in kept:
        pos = np.asarray(h.floats("ImagePositionPatient"), dtype=np.float64)
        inst = h.int("InstanceNumber")
        entries.append((float(pos @ normal), inst if inst is not None else 1 << 30, f.name, f, h, sp, pos))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    unique = []
    for e in entries:
        if unique and abs(e[0] - unique[-1][0]) < 1e-3:
            skipped.append((e[3].name, f"duplicate position {e[0]:.3f} mm (kept {unique[-1][3].name})"))
            continue
        unique.append(e)

    n = len(unique)
    h0, sp0 = unique[0][4], unique[0][5]
    rows, cols = sp0.rows, sp0.cols
    ps = tuple(float(x) for x in h0.floats("PixelSpacing"))
    positions = np.stack([e[6] for e in unique])
    z = np.array([e[0] for e in unique], dtype=np.float64)
    thickness = h0.float("SliceThickness")
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * ps[1]
    affine[:3, 1] = iop[3:] * ps[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (n - 1) if n > 1 else normal * (thickness or 1.0)
    affine[:3, 3] = positions[0]

    vol = Volume(
        z_mm=z, instance_numbers=[e[1] if e[1] != 1 << 30 else None for e in unique], pixel_spacing=ps,
        affine=affine, skipped=skipped, positions=positions, orientation=iop, shape=(n, rows, cols),
        files=[e[3] for e in unique], slice_thickness=thickness, source="dicom",
        pixels=[e[5] for e in unique], workers=workers,
        slope=np.array([e[4].float("RescaleSlope") or 1.0 for e in unique]),
        intercept=np.array([e[4].float("RescaleIntercept") or 0.0 for e in unique]),
    )
    if decode == "eager":
        vol.hu
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
