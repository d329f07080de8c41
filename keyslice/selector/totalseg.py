"""Organ masks for a series that shipped none: TotalSegmentator run through its python API.

A *segmenter* is a callable ``segmenter(ct_nifti, labelmap)`` that reads a CT written as NIfTI
(:func:`volume_to_nifti`: RAS affine, HU as int16) and writes one multi-label NIfTI on the
same grid whose values are TotalSegmentator ``total`` labels
(:data:`~keyslice.selector.ts_labels.TOTAL_LABELS`). :func:`totalsegmentator_segmenter` is the
real one; tests and other tools can pass their own.

:func:`segment_volume` writes a series' labelmap where :func:`keyslice.selector.masks.find_masks`
reads it: ``<folder>/totalseg_seg.nii.gz`` (the name holds ``seg``) with its label map
``totalseg_seg.json`` beside it, both written atomically (a killed run leaves no half mask).
:mod:`keyslice.pipeline.organ_masks` (``keyslice segment``) chooses the series and the folder.

TotalSegmentator is an optional extra (``pip install 'keyslice[totalsegmentator]'``) and its
weights are a separate download that this machine may not be allowed to make: the weights are
looked up where TotalSegmentator itself looks (``$TOTALSEG_WEIGHTS_PATH``, else
``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``) *before*
TotalSegmentator runs, so a machine without them gets :class:`~keyslice.errors.ModelWeightsMissingError`
saying what to do instead of a download attempt.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from keyslice.errors import ModelWeightsMissingError
from keyslice.selector.masks import RAS_TO_LPS, OrganMasks
from keyslice.selector.ts_labels import TOTAL_LABELS

#: ``segmenter(ct_nifti, labelmap)``: read the CT NIfTI, write a multi-label NIfTI of ``total`` labels on its grid
Segmenter = Callable[[Path, Path], None]

LABELMAP_NAME = "totalseg_seg.nii.gz"
LABELS_NAME = "totalseg_seg.json"

#: nnU-Net datasets of TotalSegmentator v2's ``total`` task: 3 mm (``--fast``) and the five 1.5 mm parts
WEIGHT_DATASETS = {True: ("Dataset297",), False: ("Dataset291", "Dataset292", "Dataset293", "Dataset294",
                                                   "Dataset295")}


def weights_dir() -> Path:
    """Where TotalSegmentator reads its weights (the same environment variables it honours)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = os.environ.get("TOTALSEG_HOME_DIR")
    return (Path(home) if home else Path.home() / ".totalsegmentator") / "nnunet" / "results"


def check_totalsegmentator(fast: bool = True) -> None:
    """Raise ModelWeightsMissingError, saying what to install or copy where, unless TotalSegmentator
    and the weights of its ``total`` task (``fast``: the 3 mm model) are on this machine."""
    task = "total_fast" if fast else "total"
    try:
        importlib.import_module("totalsegmentator.python_api")
    except ImportError as e:
        raise ModelWeightsMissingError(
            "TotalSegmentator is not installed: `pip install 'keyslice[totalsegmentator]'` (TotalSegmentator==2.18.0), "
            f"then `totalseg_download_weights -t {task}` on a machine with network and copy the weights folder "
            "to $TOTALSEG_WEIGHTS_PATH (or $TOTALSEG_HOME_DIR/nnunet/results; default ~/.totalsegmentator/nnunet/"
            "results). Or ship precomputed masks with the study (segmentations/*.nii.gz, *seg*.nii.gz or a "
            "DICOM-SEG; see keyslice.selector.masks)") from e
    folder = weights_dir()
    missing = [d for d in WEIGHT_DATASETS[fast] if not (folder.is_dir() and any(folder.glob(f"{d}_*")))]
    if missing:
        raise ModelWeightsMissingError(
            f"TotalSegmentator weights of task {task!r} ({', '.join(missing)}) are not in {folder}: run "
            f"`totalseg_download_weights -t {task}` on a machine with network and copy them there, or set "
            "TOTALSEG_WEIGHTS_PATH (or TOTALSEG_HOME_DIR) to the folder that holds them")


def totalsegmentator_segmenter(*, fast: bool = True, device: str = "gpu") -> Segmenter:
    """The real segmenter: TotalSegmentator's ``total`` task written as one multi-label file (``ml=True``).

    Every call checks the install and the weights first (:func:`check_totalsegmentator`), so that a
    missing download is an error that says what to do, never a network call."""

    def segment(ct_nifti: Path, labelmap: Path) -> None:
        check_totalsegmentator(fast)
        from totalsegmentator.python_api import totalsegmentator

        totalsegmentator(str(ct_nifti), str(labelmap), ml=True, fast=fast, device=device, task="total", quiet=True)

    return segment


def volume_to_nifti(volume, path: Path) -> Path:
    """Write a Volume as NIfTI (RAS affine, HU as int16) for tools such as TotalSegmentator."""
    import nibabel as nib

    data = np.transpose(volume.hu, (2, 1, 0))  # [i, j, k]
    nib.save(nib.Nifti1Image(data.astype(np.int16), RAS_TO_LPS @ volume.affine), str(path))
    return Path(path)


def segment_volume(volume, folder: Path, segmenter: Segmenter) -> OrganMasks:
    """Segment one series into ``folder`` (see the module docstring) and return its masks.

    The CT NIfTI and the segmenter's output live in a temporary folder (never under ``folder``, where
    ``find_masks`` looks); the labelmap is checked (the CT's grid) before it is written into place,
    label map first, each file atomically."""
    import nibabel as nib

    from keyslice.corpus.atomic import write_bytes_atomic
    from keyslice.errors import MaskError

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="keyslice-segment-") as tmp:
        ct = volume_to_nifti(volume, Path(tmp) / "ct.nii.gz")
        out = Path(tmp) / LABELMAP_NAME
        segmenter(ct, out)
        if not out.is_file():
            raise MaskError(f"the segmenter wrote no labelmap ({out.name})")
        shape = nib.load(str(out)).shape
        expected = tuple(volume.shape[::-1])
        if tuple(shape[:3]) != expected:
            raise MaskError(f"the segmenter's labelmap has shape {tuple(shape)}, not the CT's {expected}")
        folder.mkdir(parents=True, exist_ok=True)  # only now: a failed study leaves no folder behind
        write_bytes_atomic(folder / LABELS_NAME, json.dumps({str(k): v for k, v in TOTAL_LABELS.items()},
                                                            indent=0).encode())
        write_bytes_atomic(folder / LABELMAP_NAME, out.read_bytes())
    return OrganMasks.from_nifti(folder / LABELMAP_NAME, folder / LABELS_NAME)
