"""Batched, device-side image preprocessing: stored CT values -> the tensor a CLIP model expects.

One pipeline over a chunk of slices, all ``torch`` ops on the encoder's device
(:func:`prepare_chunk`)::

    stored (int16/uint16 as read from the files)
      -> window      per display window, straight from stored values (window_stored): with
                     RescaleSlope 1, clamp(stored + (RescaleIntercept - low), 0, width) / width
                     in 8-bit steps, per slice; one float conversion shared by all windows
      -> resize      antialiased bicubic, shortest side to ``image_size``, centre crop
      -> normalise   repeat to 3 channels, (x - mean) / std

With a ``spatial`` hook (a callable [B, H, W] HU -> [B, H', W'] HU: resampling, crop), the
window is applied to HU instead: hu_from_stored (stored * RescaleSlope + RescaleIntercept,
float32, exact) -> spatial -> clamp((HU - low) / width, 0, 1) in 8-bit steps (window_levels).
Both give the same 8-bit levels, bit for bit (the stored-value form is the HU form with the
intercept and the window's lower bound folded into one whole-number shift); the stored-value
form saves the HU image and one full-resolution pass per window.

It reproduces open_clip's eval transform (``Resize(image_size, bicubic)`` of the shortest
side, ``CenterCrop(image_size)``, ``ToTensor``, ``Normalize(mean, std)``) applied to the
8-bit windowed grayscale image that :func:`keyslice.selector.render.render_png` writes.
The resize is two matrix products per slice (columns, then rows) with the weights of
``F.interpolate(..., mode="bicubic", antialias=True)`` (PIL's bicubic filter), computed
once per size by interpolating an identity matrix, cut to the crop window first and split
into bands of outputs that skip the matrix's zeros. Like
PIL, each pass is clamped and rounded to 8-bit levels. Matrix products run at BLAS/tensor
core speed on CPU and GPU; ``F.interpolate``'s antialiased kernel was the largest host cost
(about 1 ms per 512x512 slice on one core). Several windows share one float conversion.

Tolerance: against :func:`reference_preprocess` (the per-slice PIL + torchvision path,
used by tests and the benchmark's reference loop) at most one 8-bit level on any pixel,
and on fewer than 1 % of them (PIL resamples in fixed point).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from keyslice.selector.windows import Window

#: Bumped whenever preprocessing changes, so cached embeddings are not reused across versions.
PREPROCESS_VERSION = "2"

#: HU of a slice whose pixel data could not be decoded (kept blank, never selected).
AIR_HU = -1024.0

#: ``spatial`` hook of :func:`prepare_chunk`: float32 HU ``[B, H, W]`` -> float32 HU ``[B, H', W']``.
SpatialStep = Callable[[torch.Tensor], torch.Tensor]


def _resized_size(h: int, w: int, size: int, mode: str) -> tuple[int, int]:
    if mode == "squash":
        return size, size
    if mode == "longest":
        scale = size / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    # torchvision Resize(int): the short side becomes `size`, the long side int(size * long / short)
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def hu_from_stored(stored: torch.Tensor, slope, intercept, valid=None) -> torch.Tensor:
    """float32 HU ``[B, H, W]`` from stored values and per-slice RescaleSlope/Intercept.

    Computed as ``float32(stored) * float32(slope) + float32(intercept)``, the same float32
    operations as ``pixel_array.astype(float32) * slope + intercept`` in numpy, so the HU are
    bit-identical. Rows with ``valid`` False become :data:`AIR_HU`. Never modifies ``stored``.
    """
    hu = _rescale(stored_as_float(stored), slope, intercept, inplace=True)
    if valid is not None:
        bad = ~np.asarray(valid, dtype=bool).reshape(-1)
        if bad.any():
            hu[torch.from_numpy(bad).to(hu.device)] = AIR_HU
    return hu


def stored_as_float(stored: torch.Tensor) -> torch.Tensor:
    """A float32 copy of stored values (uint16 widened through int16's bits on accelerators,
    whose unsigned 16-bit kernels are sparse)."""
    if stored.dtype == torch.uint16 and stored.device.type != "cpu":
        stored = stored.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
    return stored.to(torch.float32, copy=True)


def air_level(window: Window) -> float:
    """The display level of :data:`AIR_HU` (what a slice that could not be decoded shows)."""
    return float(window_levels(torch.tensor([AIR_HU]), window)[0])


def window_stored(stored: torch.Tensor, slope, intercept, window: Window, valid=None, *,
                  inplace: bool = False) -> torch.Tensor:
    """Display levels (whole 8-bit steps in ``[0, 255]``) straight from float stored values ``[B, H, W]``,
    equal to ``window_levels(hu_from_stored(...))`` value for value, without making an HU image.

    When RescaleSlope is 1 and RescaleIntercept and the window's lower bound are whole numbers
    (CT as written by every scanner in the test data, and the named windows), every sum is an
    integer below 2**24, so ``stored + (intercept - low)`` is exactly the HU path's
    ``(stored + intercept) - low`` in float32, and clamping it to ``[0, width]`` before dividing by the width gives exactly the
    HU path's ``clamp((HU - low) / width, 0, 1)``: one add, one clamp, then the same divide,
    multiply and round. Otherwise the HU path's own operations are used. Several windows can
    share one :func:`stored_as_float` copy; ``inplace`` overwrites it (the last window). Rows
    with ``valid`` False get the level of :data:`AIR_HU`.
    """
    slope = np.asarray(slope, dtype=np.float64).reshape(-1)
    intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
    shift = intercept - window.low
    whole = np.all(intercept == np.round(intercept)) and float(window.low).is_integer()
    if np.all(slope == 1) and whole and np.all(np.abs(intercept) < 2 ** 20) and abs(window.low) < 2 ** 20:
        x = stored if inplace else stored.clone()
        if np.all(shift == shift[0]):  # the usual case: one rescale for the whole series
            x.add_(float(shift[0]))
        else:
            x.add_(torch.from_numpy(shift.astype(np.float32)).to(x.device).view(-1, 1, 1))
        x = x.clamp_(0.0, float(window.width)).div_(window.width).mul_(255.0).round_()
    else:
        x = window_levels(_rescale(stored, slope, intercept, inplace), window, inplace=True)
    if valid is not None:
        bad = ~np.asarray(valid, dtype=bool).reshape(-1)
        if bad.any():
            x[torch.from_numpy(bad).to(x.device)] = air_level(window)
    return x


def _rescale(values: torch.Tensor, slope, intercept, inplace: bool) -> torch.Tensor:
    """float32 ``values * slope + intercept`` per slice (the operations of :func:`hu_from_stored`)."""
    slope = np.asarray(slope, dtype=np.float32).reshape(-1)
    intercept = np.asarray(intercept, dtype=np.float32).reshape(-1)
    hu = values if inplace else values.clone()
    if np.any(slope != 1):
        hu.mul_(torch.from_numpy(slope).to(hu.device).view(-1, 1, 1))
    if np.any(intercept != 0):
        hu.add_(torch.from_numpy(intercept).to(hu.device).view(-1, 1, 1))
    return hu


def window_levels(hu: torch.Tensor, window: Window, quantize: bool = True, *, inplace: bool = False) -> torch.Tensor:
    """HU -> display levels in ``[0, 255]`` (whole 8-bit steps when ``quantize``: the PNG's values)."""
    x = hu.sub_(window.low) if inplace else hu - window.low
    x = x.div_(window.width).clamp_(0.0, 1.0).mul_(255.0)
    return x.round_() if quantize else x


@functools.lru_cache(maxsize=64)
def _resize_weights(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """``[n_in, n_out]``: output j = sum_i x_i W[i, j], the weights of torch's antialiased bicubic."""
    eye = torch.eye(n_in, dtype=torch.float32).view(n_in, 1, 1, n_in)
    w = F.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=False, antialias=True)
    return w.view(n_in, n_out).contiguous().to(device)


@functools.lru_cache(maxsize=64)
def _resize_bands(n_in: int, n_out: int, lo: int, hi: int, device: str) -> tuple:
    """Output columns ``lo..hi`` of the resize in blocks, each with the input range its weights touch:
    ``(in_start, in_stop, out_start, out_stop, weights)``. The weights are a narrow band (a
    512 -> 64 reduction touches 32 inputs per output), so blocks skip the zeros of the full matrix."""
    w = _resize_weights(n_in, n_out, "cpu")[:, lo:hi]
    n = hi - lo
    block = max(8, -(-n // 8))
    bands = []
    for o0 in range(0, n, block):
        o1 = min(n, o0 + block)
        rows = torch.nonzero(w[:, o0:o1].abs().sum(dim=1)).flatten()
        i0, i1 = int(rows.min()), int(rows.max()) + 1
        bands.append((i0, i1, o0, o1, w[i0:i1, o0:o1].contiguous().to(device)))
    if sum((i1 - i0) * (o1 - o0) for i0, i1, o0, o1, _ in bands) * 2 > n_in * n:
        return ((0, n_in, 0, n, w.contiguous().to(device)),)  # not sparse enough to gain from blocks
    return tuple(bands)


def _resize_last_axis(x: torch.Tensor, n_out: int, lo: int, hi: int) -> torch.Tensor:
    """Resize the last axis of ``x`` to ``n_out`` and keep outputs ``lo..hi`` (matrix products per band)."""
    bands = _resize_bands(x.shape[-1], n_out, lo, hi, str(x.device))
    if len(bands) == 1:
        return torch.matmul(x, bands[0][4])
    out = x.new_empty((*x.shape[:-1], hi - lo))
    for i0, i1, o0, o1, w in bands:
        out[..., o0:o1] = torch.matmul(x[..., i0:i1], w)
    return out


def _clamp_round(x: torch.Tensor, quantize: bool) -> torch.Tensor:
    x = x.clamp_(0.0, 255.0)
    return x.round_() if quantize else x


def _resize_crop(x: torch.Tensor, image_size: int, resize_mode: str, quantize: bool) -> torch.Tensor:
    """``[B, H, W]`` levels -> ``[B, S, S]``: resize (two passes, each clamped and rounded like PIL's),
    then centre crop or pad; only the rows and columns inside the crop are computed."""
    _, h, w = x.shape
    nh, nw = _resized_size(h, w, image_size, resize_mode)
    if resize_mode == "longest":
        rows, cols = (0, nh), (0, nw)
    else:
        top = int(round((nh - image_size) / 2.0))
        left = int(round((nw - image_size) / 2.0))
        rows, cols = (top, top + image_size), (left, left + image_size)
    if (nh, nw) == (h, w):
        x = x[:, rows[0]:rows[1], cols[0]:cols[1]]
    else:
        if nw != w:
            x = _clamp_round(_resize_last_axis(x, nw, *cols), quantize)
        else:
            x = x[:, :, cols[0]:cols[1]]
        if nh != h:
            x = _clamp_round(_resize_last_axis(x.transpose(1, 2), nh, *rows).transpose(1, 2), quantize)
        else:
            x = x[:, rows[0]:rows[1], :]
    if resize_mode == "longest":
        pad_h, pad_w = image_size - nh, image_size - nw
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return x


def _normalise(x: torch.Tensor, mean, std, out_dtype: torch.dtype) -> torch.Tensor:
    x = x.div_(255.0).unsqueeze(1)                                         # [B, 1, S, S] in [0, 1]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.sub(x, m).div_(s).to(out_dtype).contiguous()  # one [B, 3, S, S] made, divided in place


def levels_to_input(levels: torch.Tensor, image_size: int, mean, std, *, resize_mode: str = "shortest",
                    quantize: bool = True, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Windowed levels ``[B, H, W]`` (0..255) -> normalised model input ``[B, 3, S, S]``."""
    return _normalise(_resize_crop(levels, image_size, resize_mode, quantize), mean, std, out_dtype)


def prepare_chunk(stored: torch.Tensor, slope, intercept, windows: Sequence[Window], image_size: int, mean, std,
                  *, valid=None, spatial: SpatialStep | None = None, resize_mode: str = "shortest",
                  out_dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The whole pipeline over a chunk of slices: stored values ``[B, H, W]`` (on the device that
    should do the work) -> one normalised ``[B, 3, S, S]`` model input per window, in order.

    Without ``spatial`` the windows are applied to the stored values (:func:`window_stored`);
    with it, to the HU it returns (see the module docstring)."""
    if stored.ndim != 3:
        raise ValueError(f"expected stored values [B, H, W], got {tuple(stored.shape)}")
    if spatial is not None:
        hu = spatial(hu_from_stored(stored, slope, intercept, valid))
    else:
        values = stored_as_float(stored)
    out = []
    for i, window in enumerate(windows):
        last = i == len(windows) - 1
        levels = (window_levels(hu, window, inplace=last) if spatial is not None
                  else window_stored(values, slope, intercept, window, valid, inplace=last))
        out.append(levels_to_input(levels, image_size, mean, std, resize_mode=resize_mode, out_dtype=out_dtype))
    return out


def preprocess_batch(hu: torch.Tensor, window: Window, image_size: int, mean, std, *,
                     resize_mode: str = "shortest", quantize: bool = True,
                     out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``hu``: float ``[B, H, W]`` (on any device) -> ``[B, 3, S, S]`` normalised model input."""
    if hu.ndim != 3:
        raise ValueError(f"expected [B, H, W] HU, got {tuple(hu.shape)}")
    levels = window_levels(hu.float(), window, quantize)
    return levels_to_input(levels, image_size, mean, std, resize_mode=resize_mode, quantize=quantize,
                           out_dtype=out_dtype)


def to_uint8(hu: np.ndarray, window: Window) -> np.ndarray:
    """Window a 2-D HU slice to an 8-bit image (the same rounding as :func:`window_levels`)."""
    x = np.clip((hu.astype(np.float32) - np.float32(window.low)) / np.float32(window.width), 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8)


def reference_preprocess(hu_slice: np.ndarray, window: Window, image_size: int, mean, std) -> torch.Tensor:
    """The straightforward per-slice path: 8-bit PIL image -> open_clip's torchvision eval transform."""
    from PIL import Image
    from torchvision import transforms as T

    img = Image.fromarray(to_uint8(hu_slice, window)).convert("RGB")
    tf = T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    return tf(img)
