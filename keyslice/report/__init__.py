"""Step 1: segment a free-text CT report (or figure caption) into finding units.

Entry point :func:`segment_report` (rules by default; an optional LLM segmenter sits
behind the same interface, ``ReportConfig(segmenter="llm", llm=LLMEndpoint(...))``
(:mod:`.llm_segmenter`); a build picks it with ``segmenter: llm`` in its config, see
:func:`report_config_for_build`). Each :class:`Finding` carries its section, organs (with
TotalSegmentator labels), status, laterality, measurements, phase hint and image
references; ``Finding.to_row()`` is a ``findings`` table row without study_id,
finding_id and created_at. Errors: :class:`keyslice.errors.EmptyReportError`,
:class:`keyslice.errors.UnsupportedLanguageError`.

How the rules work (modules):

* :mod:`.sections` - headers (FINDINGS, IMPRESSION, TECHNIQUE, HISTORY, CLINICAL
  INFORMATION, COMPARISON, ... in common spellings) split the text; only findings and
  impression give units; header-less text is all findings.
* :mod:`.pipeline` - ``spacy.blank("en")`` with tokenizer special cases for
  abbreviations and four own components: ``ks_sentencizer`` (clinical sentence rules),
  ``ks_terms`` (one ``PhraseMatcher`` on LOWER for organs, laterality, phases, ConText
  triggers, finding words and non-finding cues, plus word-shape rules), ``ks_units``
  (compound-sentence split) and ``ks_context`` (ConText status, :mod:`.context`). Built
  once per process (``lru_cache``); texts go through
  ``nlp.pipe`` paragraph by paragraph (paragraphs over 20,000 characters are cut at
  sentence ends), so 100k-character reports stay cheap.
* :mod:`keyslice.vocab` - the medical vocabulary as data (organs with synonyms, derived
  words, compounds and TotalSegmentator labels; finding words and abnormality types;
  ConText rules; phase words), shared with series assignment, VQA and fine-tuning.
* :mod:`.lexicon` - the English-text lists (laterality, clause verbs, abbreviations).
* :mod:`.context` - ConText over one unit.
* :mod:`.extract` - measurements (mm) and image references.
* :mod:`.language` - the English check (stopword shares; documented there).

Status (one per unit, :mod:`.context`): ``abnormal`` when a finding is asserted present
(ConText's default), ``normal`` when everything mentioned is negated or stated normal,
``uncertain`` when the findings are only hedged ("possible", "cannot exclude", "likely",
"suspicious for", "versus") or only historical, hypothetical or an indication ("history
of", "biopsy revealed", "if ...", "presented with"), ``non_finding`` when the sentence
states no finding; ``statement`` then says what it is (communication, technique,
comparison, recommendation, history, title). Each unit also lists the abnormality types it
asserts and negates and the ConText modifiers that applied (findings schema v2).

Phase hint policy (per unit; the highest tier present wins, then the first mention;
words in ``keyslice/vocab/phases.json``): 3 a named phase ("arterial phase", "late
arterial", CTA/angiogram -> arterial; "portal venous", "venous phase", nephrographic ->
portal_venous; "delayed", "excretory" -> delayed; "non-contrast", "unenhanced", "plain
CT", "without contrast" -> non_contrast), and two different named phases give none;
2 generic contrast ("CECT", "contrast-enhanced", "with IV contrast", "enhancing") ->
portal_venous, the routine phase; 1 an arterial finding word ("hypervascular",
"arterially enhancing", "active extravasation") -> arterial; 0 "calcification",
"calculus", "stone" -> non_contrast, ONLY when nothing above is present: calcium is best
judged on the unenhanced series, but a named phase always wins. The clauses of a split
compound sentence inherit the sentence's named phase.
"""

from __future__ import annotations

from keyslice.llm_endpoint import LLMEndpoint
from keyslice.vocab import ORGAN_TS_LABELS, ts_labels_for

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


def report_config_for_build(segmenter: str, llm: LLMEndpoint) -> ReportConfig:
    """The ReportConfig of a build (``BuildConfig.segmenter`` and ``BuildConfig.llm``).

    A build has one OpenAI-compatible endpoint (``llm``), shared with VQA generation, so that
    ``segmenter: llm`` needs no second one and both send requests alike (same timeout,
    retries, key variable); the segmenter keeps its own prompt (``ReportConfig.llm_prompt_version``).
    """
    if segmenter == "rules":
        return ReportConfig()
    if segmenter != "llm":
        raise ValueError(f"segmenter must be 'rules' or 'llm', got {segmenter!r}")
    llm.require("segmenter 'llm'")
    return ReportConfig(segmenter="llm", llm=llm)


__all__ = ["Finding", "ReportConfig", "segment_report", "report_config_for_build", "ORGAN_TS_LABELS",
           "ts_labels_for"]
