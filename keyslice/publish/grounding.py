"""Grounding at export (``keyslice publish --grounding --input STUDIES``): the organ's mask on the key slice.

Where a study ships organ masks (TotalSegmentator NIfTI, a folder of per-structure masks or a DICOM-SEG,
found by :func:`keyslice.selector.find_masks` as in the build: the study's own masks, then its folder under
the masks root the build was given, ``keyslice build --masks``, unless ``publish --masks`` names another), each ``findings`` and ``selections`` row
gets ``mask`` (an 8-bit PNG the size of the key slice, 255 inside the union of the finding's organ
labels, world-resampled onto the key slice by :meth:`keyslice.selector.masks.OrganMasks.slice_mask`)
and ``mask_labels`` (the TotalSegmentator labels it shows); ``vqa`` rows get ``mask_labels`` of their
finding, so a question says which organ label grounds it. No mask (no masks in the study, none of the
finding's labels in them, or masks of another frame of reference): ``mask`` is null and
``mask_labels`` empty. Masks are rendered while the shards are written and checked by the privacy
gate's PNG check like every exported image.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from keyslice.publish.context import CONTEXT_CONFIGS, context_name, series_z
from keyslice.publish.dataset_builder import ExportPlan, ExportRow


#: Studies whose organ masks are kept loaded: rows are written in study order, so one study's masks
#: serve all its rows of a shard; more would grow with the corpus (masks hold decoded label volumes).
KEEP_STUDY_MASKS = 2


class Grounding:
    def __init__(self, source, masks_dir: Path | None = None) -> None:
        self.source = source
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self._masks: OrderedDict[str, object] = OrderedDict()
        self.labels: dict[str, list[str]] = {}      # finding_id -> grounding labels
        self._n: dict[str, int] = {}

    def study_masks(self, study_id: str):
        """The study's organ masks as the build finds them, or None when it has none (the last
        :data:`KEEP_STUDY_MASKS` studies' are kept)."""
        from keyslice.selector import find_masks

        if study_id not in self._masks:
            study = self.source.studies[study_id]
            self._masks[study_id] = find_masks(study.path, *study.mask_folders(self.masks_dir))
            while len(self._masks) > KEEP_STUDY_MASKS:
                self._masks.popitem(last=False)
        self._masks.move_to_end(study_id)
        return self._masks[study_id]

    def attach(self, plan: ExportPlan, selections: dict[str, dict], findings: dict[str, dict]) -> None:
        """Set ``mask_labels`` on every row (findings/selections: the labels their mask shows)."""
        from keyslice.selector.masks import MaskError

        for config in CONTEXT_CONFIGS:
            for row in plan.rows[config]:
                fid = row.fields["finding_id"]
                if fid not in self.labels:
                    sel, finding = selections[fid], findings.get(fid) or {}
                    series_z(self.source, sel)  # the series is still the one the selection was made on
                    masks = self.study_masks(sel["study_id"])
                    labels = masks.present_labels(finding.get("ts_labels") or []) if masks is not None else []
                    if labels:
                        try:
                            masks.check_overlap(self.source.volume(sel["study_id"], sel["series_id"],
                                                                   int(sel["n_slices"])))
                        except MaskError:
                            labels = []  # the masks belong to another series / frame of reference
                    self.labels[fid] = labels
                    self._n[fid] = int(sel["n_slices"])
                row.fields["mask_labels"] = list(self.labels[fid])
        for row in plan.rows["vqa"]:
            row.fields["mask_labels"] = list(self.labels.get(row.fields["finding_id"], []))
        plan.grounding = True

    def mask(self, row: ExportRow) -> tuple[str, bytes] | None:
        """(name, PNG) of the row's organ mask on its key slice, or None when it has no grounding."""
        from keyslice.selector.render import mask_png

        f = row.fields
        labels = self.labels.get(f["finding_id"])
        if not labels:
            return None
        top = int(f["top1_index"] if "top1_index" in f else f["slice_index"])
        volume = self.source.volume(f["study_id"], f["series_id"], self._n[f["finding_id"]])
        mask = self.study_masks(f["study_id"]).slice_mask(labels, volume, top)
        return context_name(row, top), mask_png(mask)
