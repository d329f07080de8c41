"""Section detection: split a report into (section, text) parts by its headers.

Headers are recognised at the start of a line or after a sentence end, in any case,
followed by ":" (or " -", or alone on their line): "FINDINGS:", "Findings -",
"IMPRESSION", "Clinical information:", "COMPARISON: none." ... Text before the first
header counts as "findings" unless a FINDINGS header follows (then it is a title or
preamble and is dropped). A report with no header at all is all findings, except its leading
exam-title lines ("CT abdomen with contrast.", "CT CHEST W/O IV CONTRAST"), which are its technique.
"""

from __future__ import annotations

import re

# header spelling -> section; longest alternatives first in the regex
SECTION_HEADERS: dict[str, str] = {
    "findings and impression": "findings",
    "findings/impression": "findings",
    "findings": "findings",
    "finding": "findings",
    "report": "findings",
    "results": "findings",
    "result": "findings",
    "ct findings": "findings",
    "impressions": "impression",
    "impression": "impression",
    "conclusions": "impression",
    "conclusion": "impression",
    "summary": "impression",
    "opinion": "impression",
    "diagnosis": "impression",
    "assessment": "impression",
    "technique": "technique",
    "techniques": "technique",
    "procedure": "technique",
    "protocol": "technique",
    "examination": "technique",
    "exam": "technique",
    "contrast": "technique",
    "history": "history",
    "clinical history": "history",
    "medical history": "history",
    "indication": "clinical_information",
    "indications": "clinical_information",
    "clinical indication": "clinical_information",
    "clinical indications": "clinical_information",
    "clinical information": "clinical_information",
    "clinical info": "clinical_information",
    "clinical details": "clinical_information",
    "clinical data": "clinical_information",
    "reason for exam": "clinical_information",
    "reason for examination": "clinical_information",
    "reason for study": "clinical_information",
    "comparison": "comparison",
    "comparisons": "comparison",
    "prior studies": "comparison",
    "recommendation": "recommendation",
    "recommendations": "recommendation",
}

_alts = "|".join(
    re.escape(h).replace(r"\ ", r"[ \t]+") for h in sorted(SECTION_HEADERS, key=len, reverse=True)
)
# (1) at a line start or after a sentence end; (2) optional markdown/bullet decoration;
# (3) the header; (4) ":" / " -" / "—", or end of line.
HEADER_RE = re.compile(
    rf"(?:^|(?<=[.!?;])[ \t]+)[ \t]*[#*_\-]*[ \t]*(?P<h>{_alts})[ \t]*[*_]*[ \t]*(?:[:：]|[ \t]+[-–—](?:[ \t]+|[ \t]*$)|[ \t]*$)",
    re.IGNORECASE | re.MULTILINE,
)


def _norm(header: str) -> str:
    return re.sub(r"\s+", " ", header.strip().lower())


# an exam title: modality, then only region/contrast/technique words, on a line of its own
TITLE_RE = re.compile(
    r"^[ \t]*(?:(?:contrast[- ]enhanced|non[- ]?contrast|unenhanced|low[- ]dose|helical|multi[- ]?phase)[ \t]+)?"
    r"(?:CT|CTA|MDCT|HRCT|PET[-/ ]?CT|CT[ \t]+angiography|computed[ \t]+tomography)\b"
    r"(?:[ \t,/&+-]+(?:of|the|and|with|without|w|wo|w/o|iv|oral|contrast|enhanced|non|plain|abdomen|abdominal|pelvis|"
    r"chest|thorax|thoracic|head|brain|neck|spine|cervical|thoracic|lumbar|whole|body|upper|lower|renal|liver|"
    r"pancreas|angiography|angiogram|protocol|study|scan|triple|phase|multiphase|arterial|venous|portal|delayed|"
    r"low|dose|high|resolution))*[ \t]*[.:]?[ \t]*$",
    re.IGNORECASE,
)


def split_sections(text: str) -> list[tuple[str, str]]:
    """Return [(section, body)] in document order. Bodies keep their line breaks."""
    hits = list(HEADER_RE.finditer(text))
    if not hits:
        lines = text.splitlines(keepends=True)
        n_title = 0
        while n_title < len(lines) and (not lines[n_title].strip() or TITLE_RE.match(lines[n_title])):
            n_title += 1
        if n_title < len(lines) and any(line.strip() for line in lines[:n_title]):
            return [("technique", "".join(lines[:n_title])), ("findings", "".join(lines[n_title:]))]
        return [("findings", text)]
    parts: list[tuple[str, str]] = []
    pre = text[: hits[0].start()]
    has_findings = any(SECTION_HEADERS[_norm(m.group("h"))] == "findings" for m in hits)
    if pre.strip():
        parts.append(("preamble" if has_findings else "findings", pre))
    for k, m in enumerate(hits):
        end = hits[k + 1].start() if k + 1 < len(hits) else len(text)
        parts.append((SECTION_HEADERS[_norm(m.group("h"))], text[m.end(): end]))
    return parts
