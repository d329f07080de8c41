"""Batched image augmentation on HU slices, as torch ops on the training device.

Per batch row, with the parameters drawn from the step's :class:`torch.Generator` (so a resumed
run draws the same augmentations):

1. **random crop / scale**: a box of ``scale`` x the square of the slice's short side (aspect ratio
   in ``crop_ratio``), anywhere in the slice, resampled with ``grid_sample`` (bilinear) to a
   square of the cached short side; with augmentation off the box is the central square, which is
   what the selector's shortest-side resize + centre crop shows. ``scale > 1`` zooms OUT: the box
   is larger than the slice (centred on it, shifted at random by up to the margin) and the part
   outside the slice is air (-1024 HU). This is what a CT reconstructed with a wider display field
   of view looks like (a tightly cropped training CT vs a 500 mm FOV with arms and table);
2. **window jitter**: level ``+- jitter x width``, width ``x exp(+- jitter)`` around the row's
   window; the HU are mapped linearly so that the jittered window becomes [0, 1], then the
   selector's own :func:`~keyslice.selector.preprocess.preprocess_batch` does the windowing
   (clamp, 8-bit rounding), the antialiased bicubic resize to the model size and normalisation;
3. **cutout**: with probability ``cutout_p`` a square of side ``cutout_frac`` x image side is set
   to black (window minimum).

Training slices are cached per source as float32 HU ``[n, H, W]``, downsampled (antialiased)
when the short side exceeds twice the model's input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from keyslice.finetune.config import AugmentConfig
from keyslice.selector.preprocess import preprocess_batch
from keyslice.selector.windows import Window, get_window

_UNIT = Window("unit", 1.0, 0.5)  # low 0, high 1: HU pre-mapped to the (jittered) window
AIR_HU = -1024.0


class SliceBank:
    """HU slices of the training sources on the device, and batch rendering with augmentation."""

    def __init__(self, sources, image_size: int, mean, std, resize_mode: str, device: torch.device):
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_mode = resize_mode
        self.device = device
        self.hu: dict[str, torch.Tensor] = {}
        for s in sources:
            hu = torch.from_numpy(s.volume.hu.astype("float32", copy=False))
            n, h, w = hu.shape
            short = min(h, w)
            if short > 2 * self.image_size:
                f = 2 * self.image_size / short
                hu = F.interpolate(hu[:, None], size=(max(1, round(h * f)), max(1, round(w * f))), mode="bilinear",
                                   align_corners=False, antialias=True)[:, 0]
            self.hu[s.name] = hu.contiguous().to(device)

    def render(self, source_names: list[str], slices: list[int], windows: list[str], cfg: AugmentConfig,
               generator: torch.Generator) -> torch.Tensor:
        """Model input ``[B, 3, S, S]`` for the rows (source, slice, window name)."""
        b = len(slices)
        aug = cfg.enabled
        # every random number is drawn up front, in a fixed order, on the CPU generator
        u = torch.rand(b, 8, generator=generator, dtype=torch.float64)
        out = torch.empty(b, 3, self.image_size, self.image_size, device=self.device)
        for name in dict.fromkeys(source_names):
            rows = [i for i, s in enumerate(source_names) if s == name]
            bank = self.hu[name]
            _, h, w = bank.shape
            hu = bank[torch.tensor([slices[i] for i in rows], device=self.device)]       # [r, H, W]
            side = min(h, w)
            theta = torch.zeros(len(rows), 2, 3, dtype=torch.float64)
            lows, widths = [], []
            for j, i in enumerate(rows):
                if aug:
                    scale = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * float(u[i, 0])
                    lr = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
                    ratio = math.exp(lr[0] + (lr[1] - lr[0]) * float(u[i, 1]))
                    bw = side * math.sqrt(scale * ratio)
                    bh = side * math.sqrt(scale / ratio)
                    if scale <= 1:              # zoom in: the box stays inside the slice
                        bw, bh = min(w, bw), min(h, bh)
                    # inside: anywhere in the slice; larger than the slice: the slice anywhere in the box
                    cx = bw / 2 + (w - bw) * float(u[i, 2])
                    cy = bh / 2 + (h - bh) * float(u[i, 3])
                else:
                    bw = bh = side                     # the central square, on whole pixels
                    cx, cy = (w - side) // 2 + side / 2, (h - side) // 2 + side / 2
                # output normalised coords -> input normalised coords (align_corners=False)
                theta[j, 0, 0] = bw / w
                theta[j, 0, 2] = 2 * cx / w - 1
                theta[j, 1, 1] = bh / h
                theta[j, 1, 2] = 2 * cy / h - 1
                win = get_window(windows[i])
                level, width = win.level, win.width
                if aug and cfg.window_jitter > 0:
                    level = level + (2 * float(u[i, 4]) - 1) * cfg.window_jitter * width
                    width = width * math.exp((2 * float(u[i, 5]) - 1) * cfg.window_jitter)
                lows.append(level - width / 2)
                widths.append(width)
            grid = F.affine_grid(theta.float().to(self.device), [len(rows), 1, side, side], align_corners=False)
            crops = F.grid_sample(hu[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
            if aug and cfg.crop_scale[1] > 1:
                # outside the slice is air; exact (weight 1) wherever the box lies inside the slice
                ones = torch.ones(len(rows), 1, h, w, device=self.device)
                inside = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
                crops = crops * inside + AIR_HU * (1 - inside)
            low = torch.tensor(lows, device=self.device).view(-1, 1, 1)
            wid = torch.tensor(widths, device=self.device).view(-1, 1, 1)
            unit = (crops - low) / wid
            x = preprocess_batch(unit, _UNIT, self.image_size, self.mean, self.std, resize_mode="shortest")
            out[torch.tensor(rows, device=self.device)] = x
        if aug and cfg.cutout_p > 0:
            s = self.image_size
            on = (u[:, 6] < cfg.cutout_p)
            frac = cfg.cutout_frac[0] + (cfg.cutout_frac[1] - cfg.cutout_frac[0]) * torch.rand(
                b, generator=generator, dtype=torch.float64)
            size = (frac * s).round().clamp(min=1)
            y0 = (torch.rand(b, generator=generator, dtype=torch.float64) * (s - size + 1)).floor()
            x0 = (u[:, 7] * (s - size + 1)).floor()
            ar = torch.arange(s, dtype=torch.float64)
            my = (ar[None, :] >= y0[:, None]) & (ar[None, :] < (y0 + size)[:, None])       # [B, S]
            mx = (ar[None, :] >= x0[:, None]) & (ar[None, :] < (x0 + size)[:, None])
            mask = (my[:, :, None] & mx[:, None, :] & on[:, None, None]).to(self.device)    # [B, S, S]
            black = torch.tensor([-m / sd for m, sd in zip(self.mean, self.std)], device=self.device)
            out = torch.where(mask[:, None], black.view(1, 3, 1, 1), out)
        return out
