"""The segmenter's output unit and its options."""

from __future__ import annotations

from dataclasses import dataclass, field

from keyslice.llm_endpoint import LLMEndpoint
from keyslice.vocab import HINT_PHASES, STATEMENTS

#: phases a sentence can ask for (``Finding.phase_hint``)
PHASES = HINT_PHASES

#: "non_finding": the sentence states no finding (communication, technique, comparison,
#: recommendation, clinical history without an imaging finding, title); never selected or asked about
STATUSES = ("abnormal", "normal", "uncertain", "non_finding")
LATERALITIES = ("left", "right", "bilateral")


@dataclass(frozen=True)
class Finding:
    """One finding unit of a report: a sentence, or one clause of a compound sentence.

    ``to_row()`` gives the ``findings`` table row (schemas/tables/findings.v2.json)
    without ``study_id``, ``finding_id`` and ``created_at``, which the caller adds.
    """

    finding_index: int
    section: str                 # "findings" or "impression"
    text: str
    organs: list[str]            # canonical organ names (keyslice.vocab.ORGAN_TS_LABELS keys), first mention first
    ts_labels: list[str]         # TotalSegmentator labels of those organs, laterality-aware
    status: str                  # "abnormal" | "normal" | "uncertain" | "non_finding"
    laterality: str | None       # "left" | "right" | "bilateral" | None
    measurements_mm: list[float]
    phase_hint: str | None       # "non_contrast" | "arterial" | "portal_venous" | "delayed" | None
    image_refs: list[tuple[int, int]]  # (series_number, instance_number)
    language: str = "en"         # ISO 639-1 code ("en" for the rules, which accept English only)
    segmenter: str = "rules-v2"
    statement: str | None = None  # non_finding only: one of keyslice.vocab.STATEMENTS
    abnormalities: list[str] = field(default_factory=list)           # vocab abnormality types asserted present
    negated_abnormalities: list[str] = field(default_factory=list)   # vocab abnormality types negated
    modifiers: list[str] = field(default_factory=list)               # ConText modifiers that applied

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Finding.status must be one of {STATUSES}, got {self.status!r}")
        if (self.statement is None) != (self.status != "non_finding") or (
                self.statement is not None and self.statement not in STATEMENTS):
            raise ValueError(f"Finding.statement must be one of {STATEMENTS} exactly when status is 'non_finding', "
                             f"got status {self.status!r} with statement {self.statement!r}")

    def to_row(self) -> dict:
        return {
            "finding_index": int(self.finding_index),
            "section": self.section,
            "text": self.text,
            "organ": self.organs[0] if self.organs else None,  # primary organ (schema column "organ")
            "organs": list(self.organs),
            "ts_labels": list(self.ts_labels),
            "status": self.status,
            "statement": self.statement,
            "abnormalities": list(self.abnormalities),
            "negated_abnormalities": list(self.negated_abnormalities),
            "modifiers": list(self.modifiers),
            "laterality": self.laterality,
            "measurements_mm": [float(m) for m in self.measurements_mm],
            "phase_hint": self.phase_hint,
            "image_refs": [
                {"series_number": int(s), "instance_number": int(i)} for s, i in self.image_refs
            ],
            "language": self.language,
            "segmenter": self.segmenter,
        }


@dataclass(frozen=True)
class ReportConfig:
    """Options of :func:`keyslice.report.segment_report`; the defaults suit CT reports and captions.

    sections: sections that produce findings. Header-less text counts as "findings".
    split_compound: split "The liver is normal and the spleen is enlarged." in two units.
    min_chars: units with fewer letters/digits than this are dropped ("1.", "-").
    check_language: raise UnsupportedLanguageError on non-English text (rules only: the LLM
        segmenter takes any language and records it in ``Finding.language``).
    infer_phase: derive phase hints from findings when no phase or contrast is named
        ("hypervascular" -> arterial, "calcification"/"stone" -> non_contrast).
    inherit_sentence_phase: the clauses of a split sentence share its named phase.
    max_chunk_chars: paragraphs longer than this are cut at sentence ends before spaCy
        sees them (memory and spaCy's max_length stay bounded on huge reports).
    segmenter: "rules" (default) or "llm" (needs ``llm``, the endpoint; a build passes its ``llm`` endpoint).
    llm: the OpenAI-compatible endpoint of the LLM segmenter (:class:`keyslice.llm_endpoint.LLMEndpoint`).
    llm_prompt_version: the LLM segmenter's prompt file (``prompts/segment_report.v1.md``), recorded in
        ``Finding.segmenter``.
    llm_max_repairs: re-asks after an answer that is not valid or not copied from the report.
    """

    sections: tuple[str, ...] = ("findings", "impression")
    split_compound: bool = True
    min_chars: int = 3
    check_language: bool = True
    infer_phase: bool = True
    inherit_sentence_phase: bool = True
    max_chunk_chars: int = 20_000
    segmenter: str = "rules"
    llm: LLMEndpoint | None = None
    llm_prompt_version: str = "segment_report.v1"
    llm_max_repairs: int = 1

    def __post_init__(self) -> None:
        if self.segmenter not in ("rules", "llm"):
            raise ValueError(f"ReportConfig.segmenter must be 'rules' or 'llm', got {self.segmenter!r}")
        if self.min_chars < 0 or self.max_chunk_chars < 1000:
            raise ValueError("ReportConfig: min_chars must be >= 0 and max_chunk_chars >= 1000")
