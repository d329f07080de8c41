"""SYNTHETIC phantom studies for the load and fault benchmarks (no real patient, no real report).

Each study is a folder ``synthetic_NNNNN/`` with

* one axial CT series of ``slices`` uncompressed 16-bit slices (default 8 of 64x64): an
  elliptical water "body" with a low-density "lesion" that grows and shrinks along z, plus
  seeded noise. Every identifying field says SYNTHETIC (PatientName ``SYNTHETIC^PHANTOM``,
  PatientID ``SYNTHETIC-NNNNN``, SeriesDescription ``SYNTHETIC PHANTOM``); UIDs are derived
  from the study number, so the same ``--seed`` always writes the same files;
* a ``report.txt`` generated from a few sentence templates (organs, sizes, normal findings),
  headed ``SYNTHETIC REPORT``.

They are small on purpose: the benchmarks measure the orchestration and memory of a build
over many studies, not the speed of the model on realistic volumes (see bench_selector.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

UID_ROOT = "2.25."  # UUID-derived UIDs (ISO/IEC 9834-8): no organisation root needed
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

ABNORMAL = [
    "There is a {size} cm hypodense lesion in the right lobe of the liver.",
    "A {size} cm cyst is seen in the left kidney.",
    "The spleen is enlarged, measuring {size} cm.",
    "There is a {size} cm nodule in the right lower lobe of the lung.",
    "Mild wall thickening of the sigmoid colon is noted.",
    "A {size} cm mass is seen in the head of the pancreas.",
]
NORMAL = [
    "The gallbladder is unremarkable.",
    "No abnormality of the urinary bladder.",
    "The adrenal glands are normal.",
    "The aorta is normal in caliber.",
]
PHASES = ["portal venous phase", "arterial phase", "non-contrast"]


def synthetic_report(rng: random.Random) -> str:
    """A short generated report: 1-3 abnormal and 1-2 normal findings, and an impression."""
    abnormal = [s.format(size=f"{rng.uniform(0.5, 6.0):.1f}") for s in rng.sample(ABNORMAL, rng.randint(1, 3))]
    normal = rng.sample(NORMAL, rng.randint(1, 2))
    return ("SYNTHETIC REPORT (generated for a benchmark; no patient)\n\n"
            f"TECHNIQUE: CT abdomen, {rng.choice(PHASES)}.\n\n"
            "FINDINGS:\n" + "\n".join(abnormal + normal) + "\n\n"
            "IMPRESSION:\n" + abnormal[0] + "\n")


def _uid(*parts: int) -> str:
    """A deterministic UID under 2.25 (decimal of a 128-bit number built from the parts)."""
    import hashlib

    digest = hashlib.sha256(("synthetic:" + ":".join(map(str, parts))).encode()).digest()[:16]
    return UID_ROOT + str(int.from_bytes(digest, "big"))


def write_phantom_series(folder: Path, study_no: int, slices: int = 8, size: int = 64,
                         seed: int = 0) -> list[Path]:
    """Write one SYNTHETIC axial CT series (uncompressed, explicit VR little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    rng = np.random.default_rng([seed, study_no])
    yy, xx = np.mgrid[0:size, 0:size]
    body = (yy - size / 2) ** 2 / (0.38 * size) ** 2 + (xx - size / 2) ** 2 / (0.45 * size) ** 2 < 1
    cy, cx = rng.uniform(0.35, 0.6) * size, rng.uniform(0.3, 0.6) * size
    study_uid, series_uid = _uid(seed, study_no), _uid(seed, study_no, 1)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(slices):
        img = np.full((size, size), -1000.0)
        img[body] = 40.0
        r = 0.15 * size * np.exp(-((k - slices / 2) / max(slices / 4, 1)) ** 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = -20.0
        img += rng.normal(0, 10, img.shape)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _uid(seed, study_no, 1, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = _uid(seed, study_no, 2)
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = "SYNTHETIC^PHANTOM", f"SYNTHETIC-{study_no:05d}"
        ds.StudyDescription = ds.SeriesDescription = "SYNTHETIC PHANTOM"
        ds.StudyDate = ds.SeriesDate = "20000101"
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, 1
        ds.ImagePositionPatient = [-0.5 * size, -0.5 * size, -100.0 + 5.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        ds.ConvolutionKernel = "B30f"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.clip(img, -1024, 3071) + 1024).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_synthetic_studies(root: Path, n: int, *, slices: int = 8, size: int = 64, seed: int = 0,
                            start: int = 0) -> list[Path]:
    """Write studies ``start .. start+n-1`` under ``root`` (existing complete ones are kept)."""
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(start, start + n):
        folder = root / f"synthetic_{i:05d}"
        report = folder / "report.txt"
        if not report.exists():  # the report is written last: its presence means the study is complete
            write_phantom_series(folder / "series_1", i, slices=slices, size=size, seed=seed)
            report.write_text(synthetic_report(random.Random(f"{seed}:{i}")), encoding="utf-8")
        folders.append(folder)
    return folders
