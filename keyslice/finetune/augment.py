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

Training slices are cached per source as float32 HU ``[n, H, W]``, spatially normalised first when the
config asks for it (:mod:`keyslice.selector.spatial`: fixed mm per pixel, a square centred on the body, the
same transform as the selector's), then downsampled (antialiased) when the short side exceeds twice the
model's input size.

**Regions** (anatomy-level alignment): a row may name an organ whose region it shows. Its image is a masked
crop: the square around the organ's in-plane mask on that slice (plus ``REGION_MARGIN`` of its side), every
pixel outside the mask set to below the window (black), resampled to the model's input; window jitter and
cutout apply, the random crop does not. Pixels outside the mask cannot change the image, hence the embedding.
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
OUTSIDE_HU = -100000.0            # outside a region's mask: below any window
REGION_MARGIN = 0.1


class SliceBank:
    """HU slices of the training sources on the device, and batch rendering with augmentation."""

    def __init__(self, sources, image_size: int, mean, std, resize_mode: str, device: torch.device,
                 spatial=None):
        from keyslice.selector.spatial import plan_for_volume

        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_mode = resize_mode
        self.device = device
        self.sources = {s.name: s for s in sources}
        self.hu: dict[str, torch.Tensor] = {}
        self.plans: dict[str, object] = {}
        self._regions: dict[tuple[str, str], torch.Tensor] = {}
        for s in sources:
            hu = torch.from_numpy(s.volume.hu.astype("float32", copy=False))
            if spatial is not None and spatial.enabled:
                plan = plan_for_volume(s.volume, spatial)
                self.plans[s.name] = plan
                hu = plan.apply(hu)
            self.hu[s.name] = self._shrink(hu, "bilinear").contiguous().to(device)

    def _shrink(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        n, h, w = x.shape
        short = min(h, w)
        if short <= 2 * self.image_size:
            return x
        f = 2 * self.image_size / short
        size = (max(1, round(h * f)), max(1, round(w * f)))
        if mode == "nearest":
            return F.interpolate(x[:, None].float(), size=size, mode="nearest-exact")[:, 0]
        return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]

    def region_mask(self, source: str, organ: str) -> torch.Tensor:
        """bool ``[n, H, W]`` on the bank's grid: the organ's in-plane mask (spatially normalised like the HU)."""
        key = (source, organ)
        if key not in self._regions:
            from keyslice.finetune.prompts import organ_ts_labels

            src = self.sources[source]
            m = torch.from_numpy(src.masks.resample(list(organ_ts_labels(organ)), src.volume).astype("float32"))
            if source in self.plans:
                m = self.plans[source].apply(m, fill=0.0, mode="nearest")
            self._regions[key] = (self._shrink(m, "nearest") > 0.5).to(self.device)
        return self._regions[key]

    def has_region(self, source: str, organ: str | None, k: int) -> bool:
        if organ is None or self.sources[source].masks is None:
            return False
        return bool(self.region_mask(source, organ)[k].any())

    def render(self, source_names: list[str], slices: list[int], windows: list[str], cfg: AugmentConfig,
               generator: torch.Generator, regions: list[str | None] | None = None) -> torch.Tensor:
        """Model input ``[B, 3, S, S]`` for the rows (source, slice, window name[, region organ])."""
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
                organ = regions[i] if regions is not None else None
                if organ is not None:
                    m = self.region_mask(name, organ)[slices[i]]
                    if not bool(m.any()):
                        raise ValueError(f"row {i}: {organ!r} has no pixel on slice {slices[i]} of {name}")
                    hu[j] = torch.where(m, hu[j], torch.full_like(hu[j], OUTSIDE_HU))
                    ys, xs = torch.nonzero(m, as_tuple=True)
                    y0, y1 = float(ys.min()), float(ys.max()) + 1
                    x0, x1 = float(xs.min()), float(xs.max()) + 1
                    bw = bh = max(y1 - y0, x1 - x0, 4.0) * (1 + REGION_MARGIN)
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                elif aug:
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
