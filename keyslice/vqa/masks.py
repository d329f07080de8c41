"""Organs that a study's segmentation masks show on its key slices (opt-in "no" answers).

With ``vqa_mask_negatives: true`` in the build config, the rules may answer "no" for an
organ visible on a key slice that the report never mentions (``answer_source = "mask"``):
the assumption that a report silent about a visible organ found it normal. It is off by
default because a report's silence is not a statement; rows made this way are marked so
that a dataset user can drop them (``WHERE answer_source <> 'mask'``).

Only organs that are plausible "Is there an abnormality in X?" subjects (the VQA lexicon's
``negative_ok``) are reported, through their TotalSegmentator labels
(``keyslice.report.lexicon.ORGAN_TS_LABELS``); the masks are those the selector uses
(:func:`keyslice.selector.find_masks`), resampled onto each series by world coordinates.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from keyslice.vocab import ORGANS

SliceKey = tuple[str, int]


def organ_labels() -> dict[str, tuple[str, ...]]:
    """Canonical organ -> its TotalSegmentator labels, for organs asked about in "no" answers."""
    from keyslice.vocab import ORGAN_TS_LABELS

    return {organ: tuple(labels) for organ, labels in ORGAN_TS_LABELS.items()
            if organ in ORGANS and ORGANS[organ].negative_ok and labels}


def visible_organs(masks, volumes: Mapping[str, Any], slices: Iterable[SliceKey]) -> dict[SliceKey, set[str]]:
    """Organs whose mask covers each (series_id, slice_index), for series with a volume."""
    labels = organ_labels()
    out: dict[SliceKey, set[str]] = defaultdict(set)
    for series_id, index in sorted(set(slices)):
        volume = volumes.get(series_id)
        if volume is None:
            continue
        for organ, names in labels.items():
            if masks.present_labels(names) and masks.presence(names, volume)[index]:
                out[(series_id, index)].add(organ)
    return dict(out)


def study_mask_organs(study_dir: Path, selections: list[Mapping[str, Any]],
                      pseudonymize: Callable[[str, str], str], mask_folders: Sequence[Path] = ()
                      ) -> dict[SliceKey, set[str]]:
    """:func:`visible_organs` for a study folder's key slices; {} when the study has no masks.
    ``mask_folders``: further folders of the study's masks (a masks root, see ``find_masks``).

    Reads the selected series' headers again (only their geometry is needed)."""
    from keyslice.dicom import index_study
    from keyslice.selector import find_masks, load_volume

    masks = find_masks(Path(study_dir), *mask_folders)
    if masks is None or not selections:
        return {}
    slices = [(str(s["series_id"]), int(s["top1_index"])) for s in selections]
    records = {rec.row["series_id"]: rec
               for rec in index_study(Path(study_dir), pseudonymize, image_phase=False).series}
    volumes = {sid: load_volume(records[sid].files) for sid in {s for s, _ in slices} if sid in records}
    return visible_organs(masks, volumes, slices)
