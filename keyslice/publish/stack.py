"""Fixed-length stacks resampled along z (``keyslice publish --stack N --input STUDIES``).

3D-RAD gives each question an ordered stack of slices and M3D resamples every volume to 32 slices; a
model trained on those expects N slices evenly spaced in z, not N neighbours whose spacing changes with
the scanner. Per ``findings`` and ``selections`` row the export adds ``stack``: N images evenly spaced in
z, in ascending z, over

* the finding's organ: the z-range of its organ mask that the selector restricted its search to
  (``selections.z_range_mm``, from the study's TotalSegmentator / DICOM-SEG masks at build time),
  widened by :data:`ORGAN_MARGIN_MM` on each side so the organ's edges are shown with what surrounds
  them (``stack_range = "organ"``);
* otherwise (no masks, no organ label, masks of another frame of reference): a window of
  +-:data:`KEY_HALF_RANGE_MM` around the key slice, 12 cm, which covers an abdominal organ, a lung lobe or
  a vertebral segment with its neighbours (``stack_range = "key_slice"``);

clipped to the series' extent, and always holding the key slice's z. Each stack slice's HU is the linear
interpolation along z between the two real slices around its position (their exact z, so an irregular
series is resampled correctly; a slice that could not be decoded is never interpolated from), then
windowed like the key slice (the row's window, by the one renderer :func:`keyslice.selector.render.hu_png`).
The row records ``stack_z_mm``, ``stack_spacing_mm``, ``stack_range``, ``stack_window`` and its centre and
width in HU. With ``--grounding``, ``stack_mask`` holds the finding's organ mask on every stack slice,
sampled where the plane lies in the mask's own grid (nearest, never interpolated), with the row's
``mask_labels``.

The stack reads the selection's series from the studies folder, so the publisher first checks that
series as its DICOM headers say now (:func:`keyslice.publish.context.drop_unsafe_input_series`): a
burned-in or secondary-capture series never gives a stack. Stacks are rendered while their shard is
written and every PNG passes the privacy gate's PNG check.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from keyslice.publish.context import CONTEXT_CONFIGS, series_z
from keyslice.publish.dataset_builder import ExportPlan, ExportRow, PublishError

ORGAN_MARGIN_MM = 10.0
KEY_HALF_RANGE_MM = 60.0
MAX_STACK = 512


@dataclass(frozen=True)
class StackGeometry:
    """Where the N slices of one finding's stack lie in its series."""

    n_slices: int            # series length the selection was made on
    z_mm: np.ndarray         # float64 [N] ascending
    lower: np.ndarray        # int [N] index of the real slice at or below each position
    upper: np.ndarray        # int [N] index of the real slice above it (== lower on a slice or at an end)
    weight: np.ndarray       # float64 [N] share of ``upper`` in the linear interpolation
    rule: str                # how the range was chosen: ``organ`` or ``key_slice``


def stack_range(z: np.ndarray, key_index: int, organ_range) -> tuple[float, float, str]:
    """(low, high, rule) of a stack in mm along the series normal; rule ``organ`` or ``key_slice``."""
    key = float(z[key_index])
    if organ_range is not None:
        lo, hi = min(float(organ_range[0]), key), max(float(organ_range[1]), key)
        lo, hi, rule = lo - ORGAN_MARGIN_MM, hi + ORGAN_MARGIN_MM, "organ"
    else:
        lo, hi, rule = key - KEY_HALF_RANGE_MM, key + KEY_HALF_RANGE_MM, "key_slice"
    return max(lo, float(z[0])), min(hi, float(z[-1])), rule


def stack_geometry(z: np.ndarray, n: int, lo: float, hi: float, rule: str) -> StackGeometry:
    """N positions evenly spaced from ``lo`` to ``hi`` and the real slices each is interpolated from."""
    z = np.asarray(z, dtype=np.float64)
    targets = np.linspace(lo, hi, n)
    upper = np.clip(np.searchsorted(z, targets, side="right"), 0, len(z) - 1)
    lower = np.clip(upper - 1, 0, len(z) - 1)
    gap = z[upper] - z[lower]
    weight = np.where(gap > 0, np.clip((targets - z[lower]) / np.where(gap > 0, gap, 1.0), 0.0, 1.0), 0.0)
    lower = np.where(weight >= 1.0, upper, lower)   # on a real slice: that slice alone
    upper = np.where(weight <= 0.0, lower, upper)
    weight = np.where((weight <= 0.0) | (weight >= 1.0), 0.0, weight)
    return StackGeometry(len(z), targets, lower, upper, weight, rule)


def stack_name(row: ExportRow, position: int) -> str:
    """File name of a stack slice: study and series pseudonyms, the finding's index, the stack position."""
    f = row.fields
    return f"{f['study_id']}_{f['series_id']}_{f['finding_id'].rsplit(':', 1)[1]}_stack{position:03d}.png"


class Stacks:
    """Attach and render the fixed-length stacks (and their masks) of the rows of an export plan."""

    def __init__(self, source, n: int, grounding=None) -> None:
        if not 2 <= n <= MAX_STACK:
            raise PublishError(f"--stack must be between 2 and {MAX_STACK} slices, got {n}")
        self.source = source
        self.n = n
        self.grounding = grounding
        self.geometry: dict[str, StackGeometry] = {}     # finding_id -> stack geometry
        self._recent: OrderedDict[tuple, np.ndarray] = OrderedDict()   # last decoded real slices, at most 2N

    def attach(self, plan: ExportPlan, selections: dict[str, dict]) -> None:
        """Set the stack columns of every findings/selections row (positions, spacing, range rule, window)."""
        from keyslice.selector.windows import get_window

        rows = sorted((r for c in CONTEXT_CONFIGS for r in plan.rows[c]),
                      key=lambda r: (r.fields["study_id"], r.fields["series_id"]))
        for row in rows:
            fid = row.fields["finding_id"]
            if fid not in self.geometry:
                sel = selections[fid]
                z = np.asarray(series_z(self.source, sel), dtype=np.float64)
                lo, hi, rule = stack_range(z, int(sel["top1_index"]), sel.get("z_range_mm"))
                self.geometry[fid] = stack_geometry(z, self.n, lo, hi, rule)
            geo = self.geometry[fid]
            window = get_window(row.fields["window"])
            row.fields.update({
                "stack_z_mm": [float(v) for v in geo.z_mm],
                "stack_spacing_mm": float((geo.z_mm[-1] - geo.z_mm[0]) / (self.n - 1)),
                "stack_range": geo.rule, "stack_window": window.name, "stack_window_center": window.level,
                "stack_window_width": window.width})
        plan.stack_slices = self.n

    def _hu(self, row: ExportRow):
        """(position, HU) of each stack slice. The real slices it needs (at most 2N) are decoded in runs of
        consecutive indices, and the last 2N decoded are kept for the next row, so memory is bounded by the
        stack length, never the series' or the number of findings."""
        f = row.fields
        geo = self.geometry[f["finding_id"]]
        volume = self.source.volume(f["study_id"], f["series_id"], geo.n_slices)
        series = (f["study_id"], f["series_id"])
        needed = sorted({int(k) for k in geo.lower} | {int(k) for k in geo.upper})
        decoded = {k: self._recent[(series, k)] for k in needed if (series, k) in self._recent}
        missing = [k for k in needed if k not in decoded]
        start = 0
        for i in range(1, len(missing) + 1):
            if i == len(missing) or missing[i] != missing[i - 1] + 1:
                run = volume.slab(missing[start], missing[i - 1] + 1)
                # copies: a view would keep its whole run alive after the slice leaves the cache
                decoded.update({missing[start] + m: run[m].copy() for m in range(len(run))})
                start = i
        for k in needed:  # the findings and selections rows of a finding, and neighbouring findings, share slices
            self._recent[(series, k)] = decoded[k]
            self._recent.move_to_end((series, k))
        while len(self._recent) > 2 * self.n:
            self._recent.popitem(last=False)
        for j in range(self.n):
            lo, hi, w = int(geo.lower[j]), int(geo.upper[j]), float(geo.weight[j])
            if hi == lo or not volume.valid[hi]:
                yield j, decoded[lo]
            elif not volume.valid[lo]:
                yield j, decoded[hi]
            else:
                yield j, decoded[lo] * np.float32(1.0 - w) + decoded[hi] * np.float32(w)

    def images(self, row: ExportRow) -> list[tuple[str, bytes]]:
        """(name, PNG) of the row's stack slices, ascending z, windowed like its key slice."""
        from keyslice.selector.render import hu_png

        return [(stack_name(row, j), hu_png(hu, row.fields["window"])) for j, hu in self._hu(row)]

    def masks(self, row: ExportRow) -> list[tuple[str, bytes]] | None:
        """(name, PNG) of the organ mask on each stack slice (255 = organ), or None when ungrounded."""
        from keyslice.selector.render import mask_png

        f = row.fields
        labels = self.grounding.labels.get(f["finding_id"]) if self.grounding is not None else None
        if not labels:
            return None
        geo = self.geometry[f["finding_id"]]
        volume = self.source.volume(f["study_id"], f["series_id"], geo.n_slices)
        masks = self.grounding.study_masks(f["study_id"])
        _, rows, cols = volume.shape
        jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        in_plane = volume.slice_world(0, ii.ravel(), jj.ravel()) - volume.positions[0]
        out = []
        for j in range(self.n):
            lo, hi, w = int(geo.lower[j]), int(geo.upper[j]), float(geo.weight[j])
            origin = volume.positions[lo] * (1.0 - w) + volume.positions[hi] * w   # the stack plane's corner
            mask = masks.points_mask(labels, in_plane + origin).reshape(rows, cols)
            out.append((stack_name(row, j), mask_png(mask)))
        return out
