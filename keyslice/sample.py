"""Materialise the bundled sample corpus (``samples/studies.json``) from the real data in ``shared/data``.

Nothing of the data is copied into the repository or the sample folder: study folders
hold symbolic links to the real DICOM series, and reports are assembled at run time
from real ROCO caption sentences (located by caption id and sentence number, checked
against a few words so silent drift in the data is caught) plus a few sentences we
wrote, which the spec marks as ``written``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from keyslice.resources import _REPO_ROOT

DATA_ENV = "KEYSLICE_DATA_DIR"
SPEC = _REPO_ROOT / "samples" / "studies.json"
CAPTIONS = Path("roco_ct_captions") / "captions.json"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def data_dir() -> Path:
    """The real test data: ``$KEYSLICE_DATA_DIR``, else ``shared/data`` beside the checkout."""
    candidates = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    candidates += [_REPO_ROOT.parent / "shared" / "data", _REPO_ROOT / "shared" / "data"]
    for candidate in candidates:
        if (candidate / CAPTIONS).exists():
            return candidate
    raise FileNotFoundError(
        "the real sample data was not found (looked in: " + ", ".join(map(str, candidates)) +
        f"); set {DATA_ENV} to the folder that holds roco_ct_captions/ and the DICOM sets"
    )


def caption_sentence(captions: dict[str, dict], roco_id: str, index: int, check: str) -> str:
    sentences = _SENTENCE_SPLIT.split(captions[roco_id]["caption"].strip())
    sentence = sentences[index]
    if check not in sentence:
        raise ValueError(f"{roco_id} sentence {index} no longer contains {check!r}: the caption data changed")
    return sentence


def materialize_samples(dest: Path, data: Path | None = None) -> list[Path]:
    """Create one study folder per sample in ``dest`` (links + report.txt); returns the folders."""
    data = data or data_dir()
    spec = json.loads(SPEC.read_text())
    captions = {item["roco_id"]: item for item in json.loads((data / CAPTIONS).read_text())}
    folders = []
    for study in spec["studies"]:
        folder = Path(dest) / study["name"]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "dicom"
        if not link.exists():
            link.symlink_to((data / study["dicom"]).resolve(), target_is_directory=True)
        for extra in study.get("extra_files", []):
            target = folder / Path(extra).name
            if not target.exists():
                target.symlink_to((data / extra).resolve())
        lines, provenance = [], []
        for section, items in study["report"].items():
            lines.append(f"{section.upper()}:")
            for item in items:
                if "written" in item:
                    lines.append(item["written"])
                    provenance.append({"text": item["written"], "source": "written for the keyslice sample"})
                else:
                    text = caption_sentence(captions, item["roco"], item["sentence"], item["check"])
                    cap = captions[item["roco"]]
                    lines.append(text)
                    provenance.append({"text": text, "roco_id": item["roco"], "pmc_image": cap["pmc_image"],
                                       "license": cap["license"], "source": cap["source"]})
            lines.append("")
        (folder / "report.txt").write_text("\n".join(lines))
        (folder / "report_provenance.json").write_text(json.dumps(provenance, indent=1))
        folders.append(folder)
    return folders
