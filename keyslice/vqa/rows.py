"""Building VQA rows (the ``vqa`` table minus ``study_id`` and ``created_at``)."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

ANSWER_TYPES = ("closed", "open", "choice")
# what an answer rests on (vqa table v2, column answer_source): a finding of the report, the
# series header (plane, phase), or organ masks on the slice (an assumption, off by default)
ANSWER_SOURCES = ("finding", "series", "mask")
QUESTION_TYPES = ("plane", "phase", "organ", "abnormality", "location", "laterality", "size", "other")


def qa_id(finding_id: str, question: str, answer_type: str, generator: str) -> str:
    """Deterministic id: hash of finding id and question (whitespace and case folded).

    The answer type is part of the hash because the closed and the multiple-choice variant
    of one question share the question text (they differ by their ``options``); the
    generator is, because the rules and an LLM may ask the same question of one finding.
    """
    key = "\x1f".join((finding_id, generator, answer_type, " ".join(question.split()).lower()))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def slice_ref(selection: Mapping[str, Any]) -> dict[str, Any]:
    """The slice a selection row points at, as VQA row fields."""
    return {
        "series_id": str(selection["series_id"]),
        "slice_index": int(selection["top1_index"]),
        "image_path": str(selection["image_path"]),
    }


def make_row(
    *,
    finding_id: str,
    question: str,
    answer: str,
    answer_type: str,
    question_type: str,
    options: Sequence[str] = (),
    generator: str,
    prompt_version: str | None,
    ref: Mapping[str, Any],
    organ: str | None = None,
    organ_side: str | None = None,
    abnormality: str | None = None,
    evidence_finding_id: str | None = None,
    answer_source: str = "finding",
) -> dict[str, Any]:
    """One row. ``organ``, ``organ_side``, ``abnormality``, ``evidence_finding_id`` and
    ``answer_source`` record what the answer rests on, for :mod:`keyslice.vqa.consistency`."""
    if answer_source not in ANSWER_SOURCES:
        raise ValueError(f"answer_source must be one of {ANSWER_SOURCES}, got {answer_source!r}")
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    if answer_type == "choice" and answer not in options:
        raise ValueError(f"choice answer {answer!r} is not among its options {list(options)!r}")
    return {
        "finding_id": finding_id,
        "qa_id": qa_id(finding_id, question, answer_type, generator),
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
        "question_type": question_type,
        "options": [str(o) for o in options],
        "generator": generator,
        "prompt_version": prompt_version,
        "series_id": ref["series_id"],
        "slice_index": int(ref["slice_index"]),
        "image_path": ref["image_path"],
        "organ": organ,
        "organ_side": organ_side,
        "abnormality": abnormality,
        "evidence_finding_id": evidence_finding_id,
        "answer_source": answer_source,
    }
