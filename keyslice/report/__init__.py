"""Step 1: segment a free-text CT report (or figure caption) into finding units.

Entry point :func:`segment_report` (rules by default; an optional LLM segmenter sits
behind the same interface, see :mod:`.llm_segmenter`). Each :class:`Finding` carries
its section, organs (with TotalSegmentator labels), status, laterality, measurements,
phase hint and image references. Errors: :class:`keyslice.errors.EmptyReportError`,
:class:`keyslice.errors.UnsupportedLanguageError`.
"""

from __future__ import annotations

from .lexicon import ORGAN_TS_LABELS, ts_labels_for
from .model import Finding, ReportConfig


def segment_report(text: str, config: ReportConfig | None = None) -> list[Finding]:
    """Split ``text`` into findings. Headers-less text is all findings.

    Raises EmptyReportError (empty / whitespace-only) and UnsupportedLanguageError (not English).
    """
    config = config or ReportConfig()
    if config.segmenter == "llm":
        from .llm_segmenter import segment_report_llm

        return segment_report_llm(text, config)
    from .rules import segment_report_rules

    return segment_report_rules(text, config)


__all__ = ["Finding", "ReportConfig", "segment_report", "ORGAN_TS_LABELS", "ts_labels_for"]
