"""Spatial normalisation of CT slices: a fixed physical pixel size and a field of view centred on the body.

Why: a CLIP model sees pixels, not millimetres. A CT reconstructed at 0.98 mm pixels with a 500 mm display field
of view (arms and table in view) and one at 3 mm pixels cropped tightly around the body show the same organ at
sizes that differ by a factor of two or more after the encoder's resize to its input size. The selector and the
fine-tuning both normalise every slice the same way, between the HU and the windowing/resizing:

1. **body mask** (:func:`body_mask`): HU above ``body_hu`` (default -500, between air and fat), the largest
   3-D connected component (:func:`scipy.ndimage.label`), so the table, the air and small outside objects drop out;
2. **body box** (:func:`body_box`): the rows/columns of that component over all slices of the series (one box per
   series, so every slice of a series gets the same geometry and masks line up slice to slice);
3. **resample** (:meth:`SpatialPlan.apply`): each slice to ``pixel_mm`` mm per pixel (antialiased bilinear
   ``torch.nn.functional.interpolate`` for HU, nearest for label masks), then a square of ``fov_mm`` mm centred on
   the body box is cut out, air (-1024 HU) where it extends past the image. With ``fov_mm`` None the square is the
   body box's longer side (the body fills the image whatever its size).

The plan is pure data (:class:`SpatialPlan`, from :func:`plan_spatial`), so HU slices and organ masks of one series
go through exactly the same transform. :meth:`SpatialPlan.apply` is batched torch on any device; :meth:`apply_numpy`
wraps it for numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1024.0


@dataclass(frozen=True)
class SpatialConfig:
    """Spatial normalisation settings (shared by :class:`~keyslice.selector.select.SelectorConfig` and the
    fine-tuning config's ``spatial`` section)."""

    enabled: bool = False
    pixel_mm: float = 1.5            # output pixel size, mm
    fov_mm: float | None = 400.0     # side of the square around the body, mm; None: the body box's longer side
    body_hu: float = -500.0          # body = largest connected component above this HU
    plan_slices: int = 24            # slices (evenly spaced) used to find the body box

    def __post_init__(self) -> None:
        if self.pixel_mm <= 0:
            raise ValueError(f"spatial.pixel_mm must be > 0, got {self.pixel_mm}")
        if self.fov_mm is not None and self.fov_mm <= 0:
            raise ValueError(f"spatial.fov_mm must be > 0 or null, got {self.fov_mm}")

    def key(self) -> str:
        """Identity of the transform for embedding memo and cache keys ("" when off)."""
        if not self.enabled:
            return ""
        return f"spatial:{self.pixel_mm:g}:{self.fov_mm if self.fov_mm is None else f'{self.fov_mm:g}'}:{self.body_hu:g}"


# --------------------------------------------------------------------------- body mask and box


def body_mask(hu: np.ndarray, body_hu: float = -500.0) -> np.ndarray:
    """bool mask of the body: the largest connected component of ``hu > body_hu`` (2-D ``[H, W]`` or 3-D
    ``[n, H, W]``, face connectivity). All False when nothing is above the threshold."""
    from scipy import ndimage

    fg = np.asarray(hu) > body_hu
    if not fg.any():
        return fg
    labels, n = ndimage.label(fg)
    if n == 1:
        return fg
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def body_box(hu: np.ndarray, body_hu: float = -500.0) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive, of the body over all slices of ``hu`` (``[H, W]`` or
    ``[n, H, W]``); the whole image when no body is found."""
    m = body_mask(hu, body_hu)
    h, w = m.shape[-2:]
    if not m.any():
        return 0, h, 0, w
    plane = m.reshape(-1, h, w).any(0)
    rows = np.nonzero(plane.any(1))[0]
    cols = np.nonzero(plane.any(0))[0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SpatialPlan:
    """The transform of one series: source grid ``(H, W)`` at ``spacing`` (row, col mm) -> a square of
    ``out_size`` pixels of ``pixel_mm`` mm centred on the body box."""

    src_hw: tuple[int, int]
    spacing: tuple[float, float]
    box: tuple[int, int, int, int]
    pixel_mm: float
    out_size: int

    @property
    def scaled_hw(self) -> tuple[int, int]:
        h, w = self.src_hw
        return max(1, round(h * self.spacing[0] / self.pixel_mm)), max(1, round(w * self.spacing[1] / self.pixel_mm))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the output square in the resampled image (may be negative: air around)."""
        sh, sw = self.scaled_hw
        h, w = self.src_hw
        r0, r1, c0, c1 = self.box
        cy = (r0 + r1) / 2 * sh / h
        cx = (c0 + c1) / 2 * sw / w
        return int(round(cy - self.out_size / 2)), int(round(cx - self.out_size / 2))

    def apply(self, x, fill: float = AIR_HU, mode: str = "bilinear"):
        """``x``: torch ``[B, H, W]`` (float HU or a 0/1 mask) -> ``[B, out_size, out_size]`` on the same device.
        ``mode``: "bilinear" (antialiased when shrinking) for HU, "nearest" for masks."""
        import torch
        import torch.nn.functional as F

        if x.ndim != 3 or tuple(x.shape[-2:]) != tuple(self.src_hw):
            raise ValueError(f"expected [B, {self.src_hw[0]}, {self.src_hw[1]}], got {tuple(x.shape)}")
        sh, sw = self.scaled_hw
        dtype = x.dtype
        y = x.float()[:, None]
        if (sh, sw) != tuple(self.src_hw):
            if mode == "nearest":
                y = F.interpolate(y, size=(sh, sw), mode="nearest-exact")
            else:
                shrink = sh < self.src_hw[0] or sw < self.src_hw[1]
                y = F.interpolate(y, size=(sh, sw), mode="bilinear", align_corners=False, antialias=shrink)
        y = y[:, 0]
        s = self.out_size
        top, left = self.offset
        out = torch.full((x.shape[0], s, s), float(fill), dtype=y.dtype, device=y.device)
        r0, r1 = max(0, top), min(sh, top + s)
        c0, c1 = max(0, left), min(sw, left + s)
        if r1 > r0 and c1 > c0:
            out[:, r0 - top:r1 - top, c0 - left:c1 - left] = y[:, r0:r1, c0:c1]
        return out if dtype.is_floating_point else out.round().to(dtype)

    def apply_numpy(self, x: np.ndarray, fill: float = AIR_HU, mode: str = "bilinear") -> np.ndarray:
        """numpy ``[H, W]`` or ``[B, H, W]`` in, numpy out (same rank), via :meth:`apply`."""
        import torch

        arr = np.asarray(x)
        batch = arr[None] if arr.ndim == 2 else arr
        src = torch.from_numpy(np.ascontiguousarray(batch.astype(np.float32)))
        out = self.apply(src, fill=fill, mode=mode).numpy()
        if arr.dtype == bool:
            out = out > 0.5
        return out[0] if arr.ndim == 2 else out

    def to_source(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel centres -> source pixel coordinates (for mapping a choice back to the original slice)."""
        sh, sw = self.scaled_hw
        top, left = self.offset
        h, w = self.src_hw
        return ((np.asarray(rows) + top + 0.5) * h / sh - 0.5, (np.asarray(cols) + left + 0.5) * w / sw - 0.5)


def plan_spatial(hu: np.ndarray, pixel_spacing: tuple[float, float], config: SpatialConfig) -> SpatialPlan:
    """The plan of a series from its HU (``[n, H, W]``, or a subset of its slices) and pixel spacing
    (row, col mm)."""
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    box = body_box(hu, config.body_hu)
    sr, sc = float(pixel_spacing[0]), float(pixel_spacing[1])
    if config.fov_mm is not None:
        out = max(1, int(round(config.fov_mm / config.pixel_mm)))
    else:
        r0, r1, c0, c1 = box
        out = max(1, int(round(max((r1 - r0) * sr, (c1 - c0) * sc) / config.pixel_mm)))
    return SpatialPlan((int(hu.shape[1]), int(hu.shape[2])), (sr, sc), box, float(config.pixel_mm), out)


def plan_for_volume(volume, config: SpatialConfig) -> SpatialPlan:
    """:func:`plan_spatial` of a :class:`~keyslice.selector.volume.Volume` from ``config.plan_slices`` evenly
    spaced decoded slices (waits only for those)."""
    n = volume.n_slices
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max(1, config.plan_slices))).round().astype(int))
    valid = np.asarray(volume.valid, dtype=bool)
    slabs = []
    for k in idx:
        s = volume.slab(int(k), int(k) + 1)
        if valid[k]:
            slabs.append(np.asarray(s, dtype=np.float32))
    hu = np.concatenate(slabs) if slabs else np.asarray(volume.slab(0, 1), dtype=np.float32)
    return plan_spatial(hu, volume.pixel_spacing, config)
