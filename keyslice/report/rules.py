"""The rule-based segmenter: sections -> paragraphs -> spaCy -> finding units -> Finding."""

from __future__ import annotations

import bisect
import re

from spacy.tokens import Doc

from ..errors import EmptyReportError, UnsupportedLanguageError
from keyslice import vocab

from . import lexicon as lx
from .context import MODIFIER_NAMES, UnitContext, modifier_of
from .extract import image_refs, measurements_mm
from .language import detect_language
from .model import Finding, ReportConfig
from .pipeline import bucket, get_nlp, token_arrays, token_lower
from .sections import split_sections

SEGMENTER_ID = "rules-v2"
#: the language check reads the first this many characters (enough words, bounded cost on huge reports)
LANGUAGE_SAMPLE_CHARS = 5_000

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENT_END = re.compile(r"(?<=[.!?;])\s+")
_LEAD_MARKER = re.compile(
    r"^\s*(?:[-*•·–—‣▪◦]+\s*|\(?\d{1,2}[.)](?=\s)\s*|\(?[A-Za-z]\)\s+|[A-Za-z]\.\s+(?=[A-Z(]))"
)
_WS = re.compile(r"\s+")
#: words no abnormality-type pattern starts with (positions before a finding word that need no try)
_NOT_PATTERN_START = frozenset({"a", "an", "the", "of", "in", "with", "and", "or", "no", "not", "is", "are", "was",
                                "were", "to", "at", "on", "by", "for", "from", "small", "large", "left", "right",
                                "mild", "severe", "multiple", "there", "this", "that", "its", "without"})
_DIGIT = re.compile(r"\d")
_ALPHA = re.compile(r"[^\W\d_]")
_ALNUM = re.compile(r"[^\W_]")


def require_text(text: str | None) -> None:
    """Refuse an empty or whitespace-only report: it would silently give a study with no findings."""
    if text is None or not str(text).strip():
        raise EmptyReportError("the report text is empty or whitespace only; nothing to segment")


def check_text(text: str | None, config: ReportConfig) -> None:
    """Refuse input the rules cannot segment, with an error that says what to do.

    Besides empty text (:func:`require_text`): non-English text, which the English word
    lists would turn into findings with no organs and the default status, i.e.
    plausible-looking garbage.
    """
    require_text(text)
    if config.check_language:
        lang, scores = detect_language(text[:LANGUAGE_SAMPLE_CHARS])
        if lang != "en":
            shown = {k: round(v, 2) for k, v in scores.items()}
            raise UnsupportedLanguageError(
                f"the report does not look like English (detected {lang!r}, stopword shares {shown}); "
                "the rule-based segmenter supports English only: translate the report, or pass "
                "ReportConfig(check_language=False) if this is a false alarm"
            )


def chunk_paragraphs(body: str, max_chars: int) -> list[str]:
    """Cut a section body at blank lines, and over-long paragraphs at sentence ends (or hard)."""
    out: list[str] = []
    for para in _BLANK_LINE.split(body):
        if not para.strip():
            continue
        while len(para) > max_chars:
            cut = None
            for m in _SENT_END.finditer(para, 0, max_chars):
                cut = m.end()
            if not cut:
                ws = para.rfind(" ", 0, max_chars)
                cut = ws + 1 if ws > 0 else max_chars
            out.append(para[:cut])
            para = para[cut:]
        if para.strip():
            out.append(para)
    return out


def clean_text(text: str) -> str:
    """The unit's text as stored: one line, without list markers ("1.", "-", "a)") or a trailing ","/";".

    Line wraps and markers are layout, not content; removing them makes the same finding
    read the same in every report style (and in VQA questions built from it).
    """
    text = _WS.sub(" ", text).strip()
    prev = None
    while prev != text:
        prev = text
        text = _LEAD_MARKER.sub("", text, count=1).strip()
    return text.rstrip(",;").strip()


def _combine(sides) -> str | None:
    """One laterality for several mentions: left + right (or any "bilateral") is bilateral."""
    s = set(sides)
    if not s:
        return None
    if "bilateral" in s or {"left", "right"} <= s:
        return "bilateral"
    return s.pop()


class _DocInfo:
    """The pipeline's span groups of one Doc as plain tuples (read once, used per unit)."""

    __slots__ = ("lower", "texts", "idx", "text", "organs", "lats", "phases")

    def __init__(self, doc: Doc):
        ks = doc.user_data["ks"]
        self.texts, _, self.idx, self.text = token_arrays(doc)
        self.lower = token_lower(doc)
        self.organs = ks["organs"]
        self.phases = []
        for s, e, label in ks["phase"]:
            phase, tier = label.split("/")
            self.phases.append((s, e, phase, int(tier)))
        lower, n = self.lower, len(self.lower)
        lats = []
        for s, e, label in ks["laterality"]:
            nxt = lower[e] if e < n else ""
            if nxt == "-" and e + 1 < n:
                nxt = lower[e + 1]
            if nxt not in lx.LATERALITY_BLOCK_NEXT:  # "left ventricle" is a chamber, not a side
                lats.append((s, label))
        for i in range(n - 1):  # "both kidneys", "both the lungs"
            if lower[i] == "both":
                j = i + 1 if lower[i + 1] != "the" else i + 2
                if j < n and lower[j] in lx.BOTH_PLURALS:
                    lats.append((i, "bilateral"))
        self.lats = sorted(lats)

    def span_text(self, s: int, e: int) -> str:
        if e <= s:
            return ""
        return self.text[self.idx[s]: self.idx[e - 1] + len(self.texts[e - 1])]

    def phase(self, s: int, e: int, infer: bool) -> tuple[str | None, int]:
        """(phase, tier) of tokens [s, e) by the policy of :mod:`keyslice.report`; (None, -1) when none.

        With ``infer`` off, the finding-derived tiers (0 calcium, 1 hypervascular) are ignored.
        A sentence that names two different phases ("CT pulmonary arteriography with venous
        phase imaging") asks for none: (None, 3).
        """
        best = None  # (tier, -start, phase): highest tier, then first mention
        named: set[str] = set()
        for ps, pe, phase, tier in self.phases:
            if ps < s or pe > e or (not infer and tier in (0, 1)):
                continue
            if tier == 3:
                named.add(phase)
            key = (tier, -ps, phase)
            if best is None or key > best:
                best = key
        if len(named) > 1:
            return None, 3
        return (None, -1) if best is None else (best[2], best[0])


def abnormality_types(info: _DocInfo, s: int, e: int, ctx: UnitContext, targets: list[tuple[int, int]]
                      ) -> tuple[list[str], list[str]]:
    """(asserted, negated) abnormality types of tokens [s, e): each mention of a type in the
    vocabulary takes the ConText modifier of the scope it lies in.

    A mention starts at a finding word or at most two words before one ("free intraperitoneal
    air", "enlarged lymph nodes"), so only those positions are tried: the type patterns are
    matched where they can start instead of being searched through the whole sentence.
    """
    asserted: list[str] = []
    negated: list[str] = []
    if ctx.status == "non_finding" or not targets:
        return asserted, negated
    idx, text, lower = info.idx, info.text, info.lower
    starts = sorted({k for g0, _ in targets for k in (g0 - 2, g0 - 1, g0)
                     if s <= k < e and (k == g0 or (lower[k].isalpha() and lower[k] not in _NOT_PATTERN_START))})
    done_until = -1
    for k in starts:
        pos = idx[k]
        if pos < done_until:
            continue
        hit = vocab.abnormality_at(text, pos)
        if hit is None:
            continue
        end, key = hit
        done_until = end
        tb = bisect.bisect_left(idx, end, k, e)
        mod = modifier_of(k, tb, ctx.scopes)
        name = MODIFIER_NAMES.get(mod) if mod else None
        out = asserted if name is None else negated if name == "negated" else None
        if out is not None and key not in out:
            out.append(key)
    return asserted, [k for k in negated if k not in asserted]


def unit_to_finding(info: _DocInfo, unit: tuple[int, int], sent: tuple[int, int], ctx: UnitContext, index: int,
                    section: str, config: ReportConfig, targets: list[tuple[int, int]]) -> Finding | None:
    """The Finding of one unit, or None when it is only a marker or punctuation.

    A laterality word applies to the organ it stands next to ("cyst in the left kidney
    and a liver lesion": only the kidney is left), so TotalSegmentator labels are chosen
    per organ; a paired organ with no side of its own takes the unit's side.
    """
    s, e = unit
    raw = info.span_text(s, e)
    text = clean_text(raw)
    if _ALPHA.search(text) is None or len(_ALNUM.findall(text, 0, 4 * config.min_chars + 8)) < config.min_chars:
        return None
    lats = [(p, lab) for p, lab in info.lats if s <= p < e]
    texts = info.texts
    organs: list[str] = []
    organ_sides: dict[str, list[str]] = {}
    for os_, oe, label in info.organs:
        if os_ < s or oe > e:
            continue
        # the mention's own side: a laterality word at most 4 tokens before it with no ",;." between,
        # else one right after it ("kidney, left" / "kidney left")
        local = [lab for pos, lab in lats if os_ - 4 <= pos < os_
                 and not any(texts[k] in (",", ";", ".") for k in range(pos, os_))]
        if not local:
            local = [lab for pos, lab in lats if oe <= pos <= oe + 1]
        side = ("bilateral" if "bilateral" in local else local[-1]) if local else None
        for organ in label.split("+"):
            if organ not in organs:
                organs.append(organ)
            if side:
                organ_sides.setdefault(organ, []).append(side)
    unit_lat = _combine(lab for _, lab in lats)
    ts: list[str] = []
    for organ in organs:
        side = _combine(organ_sides.get(organ, ()))
        if side is None and organ in vocab.PAIRED_ORGANS:
            side = unit_lat
        for lab in vocab.ts_labels_for(organ, side):
            if lab not in ts:
                ts.append(lab)
    phase, tier = info.phase(s, e, config.infer_phase)
    if config.inherit_sentence_phase and tier < 3 and sent != unit:
        sphase, stier = info.phase(sent[0], sent[1], config.infer_phase)
        if stier == 3:
            phase = sphase
    has_digit = _DIGIT.search(raw) is not None
    asserted, negated = abnormality_types(info, s, e, ctx, targets)
    return Finding(
        finding_index=index,
        section=section,
        text=text,
        organs=organs,
        ts_labels=ts,
        status=ctx.status,
        statement=ctx.statement,
        abnormalities=asserted,
        negated_abnormalities=negated,
        modifiers=list(ctx.modifiers),
        laterality=unit_lat,
        measurements_mm=measurements_mm(raw) if has_digit else [],
        phase_hint=phase,
        image_refs=image_refs(raw) if has_digit else [],
        language="en",
        segmenter=SEGMENTER_ID,
    )


def segment_report_rules(text: str, config: ReportConfig | None = None) -> list[Finding]:
    """The default segmenter (see :func:`keyslice.report.segment_report`).

    All chunks of a report go through one ``nlp.pipe`` call, so spaCy's per-call overhead
    is paid once per report, not once per paragraph.
    """
    config = config or ReportConfig()
    check_text(text, config)
    chunks: list[tuple[str, str]] = []
    for section, body in split_sections(text):
        if section not in config.sections:
            continue
        chunks.extend((section, c) for c in chunk_paragraphs(body, config.max_chunk_chars))
    nlp = get_nlp(config.split_compound)
    findings: list[Finding] = []
    docs = nlp.pipe(c for _, c in chunks)
    for (section, _), doc in zip(chunks, docs):
        info = _DocInfo(doc)
        ks = doc.user_data["ks"]
        sents = ks["sents"]
        targets = bucket(ks["units"], ks["targets"])
        for (s, e, si), ctx, tg in zip(ks["units"], ks["context"], targets):
            f = unit_to_finding(info, (s, e), sents[si], ctx, len(findings), section, config,
                                [(a, b) for a, b, _ in tg])
            if f is not None:
                findings.append(f)
    return findings
