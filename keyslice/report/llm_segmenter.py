"""Optional LLM segmenter behind the same interface as the rules (``ReportConfig(segmenter="llm")``).

It exists for the languages and report styles the rules miss, so unlike the rules it
accepts any language: the units keep the report's own words, the organs are the
canonical (English) vocabulary, and ``Finding.language`` records the report's language.

The model (any OpenAI-compatible endpoint, ``ReportConfig.llm``: a
:class:`keyslice.llm_endpoint.LLMEndpoint`, through :mod:`keyslice.llm_client`) returns
units with section, text, organs, status, laterality and phase hint (prompt
``prompts/segment_report.v1.md``). The code then keeps only units whose text occurs in the
report (an invented sentence is sent back for repair), only vocabulary organs, and derives
TotalSegmentator labels, measurements and image references itself, so they are computed
exactly as in the rules path and the model cannot invent numbers.
"""

from __future__ import annotations

import re
from typing import Any

from keyslice.llm_client import chat_json, load_prompt, schema_errors
from keyslice.vocab import ORGAN_TS_LABELS, ts_labels_for

from .extract import image_refs, measurements_mm
from .language import detect_language
from .model import LATERALITIES, PHASES, STATUSES, Finding, ReportConfig
from .rules import LANGUAGE_SAMPLE_CHARS, require_text


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["findings"],
    "properties": {
        "language": {"type": "string", "pattern": "^[a-z]{2}$"},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["section", "text", "organs", "status"],
                "properties": {
                    "section": {"enum": ["findings", "impression"]},
                    "text": {"type": "string", "minLength": 1},
                    "organs": {"type": "array", "items": {"type": "string"}},
                    "status": {"enum": [s for s in STATUSES if s != "non_finding"]},
                    "laterality": {"enum": [*LATERALITIES, None]},
                    "phase_hint": {"enum": [*PHASES, None]},
                },
            },
        }
    },
}

_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def segment_report_llm(text: str, config: ReportConfig) -> list[Finding]:
    """Segment ``text`` with the LLM; same output as the rules (see :func:`keyslice.report.segment_report`).

    Raises EmptyReportError before any request, and keyslice.llm_client's LLMError family
    when the endpoint fails or no valid answer comes back after ``config.llm_max_repairs`` rounds.
    """
    endpoint = config.llm
    if endpoint is None:
        raise ValueError("ReportConfig(segmenter='llm') needs llm=LLMEndpoint(base_url=..., model=...)")
    endpoint.require("the LLM segmenter")
    require_text(text)
    report_norm = _norm(text)

    def check(answer: Any) -> list[tuple[str, str]]:
        problems = [("schema", m) for m in schema_errors(answer, ANSWER_SCHEMA)]
        if problems:
            return problems
        for k, unit in enumerate(answer["findings"]):
            if _norm(unit["text"]) not in report_norm:
                problems.append(("ungrounded", f"findings[{k}].text is not copied verbatim from the report"))
        return problems

    prompt = load_prompt(config.llm_prompt_version)
    messages = prompt.messages(organs=", ".join(ORGAN_TS_LABELS), report=text)
    answer, _, _ = chat_json(endpoint.client(), endpoint, messages=messages, check=check,
                             max_repairs=config.llm_max_repairs)
    # the model's ISO 639-1 code when it gave one, else the stopword heuristic's ("und": undetermined)
    guess = detect_language(text[:LANGUAGE_SAMPLE_CHARS])[0]
    language = answer.get("language") or (guess if guess != "non-latin" else "und")
    out: list[Finding] = []
    for unit in answer["findings"]:
        if unit["section"] not in config.sections:
            continue
        lat = unit.get("laterality")
        organs = [o for o in dict.fromkeys(unit["organs"]) if o in ORGAN_TS_LABELS]
        ts: list[str] = []
        for organ in organs:
            ts += [lab for lab in ts_labels_for(organ, lat) if lab not in ts]
        out.append(Finding(
            finding_index=len(out), section=unit["section"], text=_WS.sub(" ", unit["text"]).strip(),
            organs=organs, ts_labels=ts, status=unit["status"], laterality=lat,
            measurements_mm=measurements_mm(unit["text"]), phase_hint=unit.get("phase_hint"),
            image_refs=image_refs(unit["text"]), language=language,
            segmenter=f"llm-v1:{config.llm_prompt_version}:{endpoint.model}",
        ))
    return out
