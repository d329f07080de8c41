"""Batched, device-side image preprocessing: HU slices -> the tensor a CLIP model expects.

It reproduces open_clip's eval transform (``Resize(image_size, bicubic)`` of the shortest
side, ``CenterCrop(image_size)``, ``ToTensor``, ``Normalize(mean, std)``) applied to the
8-bit windowed grayscale image that :func:`keyslice.selector.render.render_png` writes, but as
a few ``torch.nn.functional`` ops on a whole batch, on the model's device:

1. window: ``x = clamp((HU - low) / width, 0, 1)``, rounded to 1/255 steps (the 8-bit image);
2. resize the shortest side to ``image_size`` with antialiased bicubic interpolation
   (``F.interpolate(..., mode="bicubic", antialias=True)``, PIL's bicubic filter), in two
   separable passes clamped and 8-bit-rounded like PIL's;
3. center crop (torchvision's rounding), repeat to 3 channels, normalise.

:func:`reference_preprocess` is the per-slice PIL + torchvision version used by tests and
the benchmark's reference loop; the two agree to within one 8-bit step
(1/255) on nearly every pixel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from keyslice.selector.windows import Window

#: Bumped whenever preprocessing changes, so cached embeddings are not reused across versions.
PREPROCESS_VERSION = "1"


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


def window_to_unit(hu: torch.Tensor, window: Window, quantize: bool = True) -> torch.Tensor:
    x = ((hu - window.low) / window.width).clamp_(0.0, 1.0)
    if quantize:
        x = torch.round(x * 255.0).div_(255.0)
    return x


def _clamp_round(x: torch.Tensor, quantize: bool) -> torch.Tensor:
    x = x.clamp_(0.0, 1.0)
    return torch.round(x * 255.0).div_(255.0) if quantize else x


def preprocess_batch(hu: torch.Tensor, window: Window, image_size: int, mean, std, *,
                     resize_mode: str = "shortest", quantize: bool = True,
                     out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``hu``: float ``[B, H, W]`` (on any device) -> ``[B, 3, S, S]`` normalised model input."""
    if hu.ndim != 3:
        raise ValueError(f"expected [B, H, W] HU, got {tuple(hu.shape)}")
    b, h, w = hu.shape
    x = window_to_unit(hu.float(), window, quantize).unsqueeze(1)       # [B, 1, H, W]
    nh, nw = _resized_size(h, w, image_size, resize_mode)
    if (nh, nw) != (h, w):
        # Two separable passes like PIL (horizontal, then vertical), each clamped (and, for the
        # 8-bit image, rounded) as PIL does between and after passes: without this, overshoot at
        # sharp edges (air/skin, bone) differs from the reference by up to ~8/255.
        if nw != w:
            x = F.interpolate(x, size=(h, nw), mode="bicubic", align_corners=False, antialias=True)
            x = _clamp_round(x, quantize)
        if nh != h:
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            x = _clamp_round(x, quantize)
    if resize_mode == "longest":
        pad_h, pad_w = image_size - nh, image_size - nw
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    else:
        top = int(round((nh - image_size) / 2.0))
        left = int(round((nw - image_size) / 2.0))
        x = x[:, :, top:top + image_size, left:left + image_size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(out_dtype).contiguous()


def to_uint8(hu: np.ndarray, window: Window) -> np.ndarray:
    """Window a 2-D HU slice to an 8-bit image (the same rounding as :func:`window_to_unit`)."""
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
