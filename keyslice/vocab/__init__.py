"""The one vocabulary of keyslice: organs, finding words, abnormality types, ConText rules, phases, planes.

Everything here is data, read from the JSON files beside this module (shipped inside the
wheel as package data) and exposed as frozen dataclasses and plain dicts. Step 1 (report
segmentation), series assignment, VQA generation and fine-tuning prompts all read it, so
that an organ, a synonym or a phase word is added in exactly one place.

``organs.json``
    One record per structure: canonical ``key``; ``tagged`` (step 1 reports it as a
    finding's organ; the other records are structures that questions and grounding may
    name, such as vessels named after an organ, which step 1 recognises only so that
    "hepatic vein" is not read as the liver); TotalSegmentator v2 ``ts_labels`` (with
    ``ts_labels_by_side`` where a side is not a label suffix); body ``regions`` (VQA)
    and fine-tuning ``station``; ``paired`` / ``plural`` / ``negative_ok``;
    display ``synonyms``; ``terms`` (lower-case phrases, nouns and adjectives);
    ``stems`` (regular expressions over one lower-case word, for derived words:
    "perisplenic", "pyelonephritis"); ``combining_forms`` (``nephro`` in
    "nephro-ureterectomy" or "nephroureterectomy", ``broncho`` in "bronchopleural").
    Plus ``multi_organ_terms`` ("hepatosplenomegaly"), ``blockers`` (phrases that look
    like an organ term and are not: "lung window", "femoral hernia"),
    ``excluded_prefixes`` (para-/retro-/extra-/infra-/meso- locations do not name the
    organ), ``vertebral_level_regex`` with ``spinal_context`` / ``not_spinal_context``
    (a level such as "T2" names the spine only in a spinal context, never in
    "T2-weighted" or "T2N0M0").
``findings.json``
    ``finding_terms`` (words that state a finding: ConText's targets),
    ``finding_suffix_regex`` (disease-shaped words: -itis, -oma, -osis...) and
    ``abnormality_types`` (canonical key, display name, group, trigger patterns).
``context.json``
    ConText rules (Chapman et al. 2001; the rule-file shape of medspaCy/pyConText:
    ``literal``, ``category``, ``direction``), the words that end a negation's scope
    after its target, and the cue words of non-finding statements.
``phases.json``
    Canonical series phases of step 2, display words, the phase hints a sentence can
    give (phrase, phase, tier) and the spellings of a phase hint that series assignment
    accepts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ organs
@dataclass(frozen=True)
class Organ:
    key: str
    tagged: bool
    ts_labels: tuple[str, ...]
    regions: tuple[str, ...]
    station: str | None
    paired: bool
    plural: bool
    negative_ok: bool
    synonyms: tuple[str, ...]
    terms: tuple[str, ...]
    stems: tuple[str, ...]
    combining_forms: tuple[str, ...]
    ts_labels_by_side: dict[str, tuple[str, ...]] | None = None

    @property
    def name(self) -> str:
        """The canonical name (the key), as VQA text calls it."""
        return self.key


_ORGAN_DATA = _load("organs.json")

#: every structure of the vocabulary, by key
ORGANS: dict[str, Organ] = {
    rec["key"]: Organ(
        key=rec["key"], tagged=rec["tagged"], ts_labels=tuple(rec["ts_labels"]), regions=tuple(rec["regions"]),
        station=rec["station"], paired=rec["paired"], plural=rec["plural"], negative_ok=rec["negative_ok"],
        synonyms=tuple(rec["synonyms"]), terms=tuple(rec["terms"]), stems=tuple(rec["stems"]),
        combining_forms=tuple(rec["combining_forms"]),
        ts_labels_by_side={k: tuple(v) for k, v in rec["ts_labels_by_side"].items()} if rec.get("ts_labels_by_side")
        else None)
    for rec in _ORGAN_DATA["organs"]
}
#: the organs step 1 tags (the canonical organ vocabulary of the findings table) -> TotalSegmentator labels
ORGAN_TS_LABELS: dict[str, tuple[str, ...]] = {k: o.ts_labels for k, o in ORGANS.items() if o.tagged}
PAIRED_ORGANS = frozenset(k for k, o in ORGANS.items() if o.paired)
ORGAN_BLOCKERS: tuple[str, ...] = tuple(_ORGAN_DATA["blockers"])
EXCLUDED_PREFIXES = frozenset(_ORGAN_DATA["excluded_prefixes"])
VERTEBRAL_LEVEL_REGEX: str = _ORGAN_DATA["vertebral_level_regex"]
SPINAL_CONTEXT = frozenset(_ORGAN_DATA["spinal_context"])
NOT_SPINAL_CONTEXT = frozenset(_ORGAN_DATA["not_spinal_context"])
TS_LABEL_STATIONS: dict[str, str | None] = dict(_ORGAN_DATA["ts_label_stations"])
STATION_WORDS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _ORGAN_DATA["station_words"].items()}


def organ_terms() -> dict[str, tuple[str, ...]]:
    """Every organ phrase -> the organ(s) it names (single-organ terms and multi-organ terms)."""
    out: dict[str, tuple[str, ...]] = {}
    for o in ORGANS.values():
        for t in o.terms:
            out[t] = (o.key,)
    for rec in _ORGAN_DATA["multi_organ_terms"]:
        out[rec["term"]] = tuple(rec["organs"])
    return out


_STEMS = [(re.compile(f"(?:{s})"), o.key) for o in ORGANS.values() for s in o.stems]
_COMBINING = sorted(((cf, o.key) for o in ORGANS.values() for cf in o.combining_forms), key=lambda c: -len(c[0]))
_TERMS = organ_terms()


@lru_cache(maxsize=100_000)
def word_organs(word: str) -> tuple[str, ...]:
    """Organs one lower-case word names by its shape: a term, a stem ("perisplenic"), or a
    compound of combining forms ("bronchopleural" -> lung + pleura, "nephroureterectomy"
    -> kidney + ureter). A bare combining form ("nephro" of "nephro-ureterectomy") names
    its organ. Words starting with an excluded location prefix ("pararenal") name none."""
    if not word.isalpha() or len(word) < 4:
        return ()
    got = _TERMS.get(word)
    if got:
        return got
    for rx, key in _STEMS:
        if rx.fullmatch(word):
            return (key,)
    for cf, key in _COMBINING:
        if word == cf:
            return (key,)
        if word.startswith(cf) and len(word) - len(cf) >= 4:
            rest = word_organs(word[len(cf):]) or word_organs("o" + word[len(cf):])
            if rest:
                return (key,) + tuple(r for r in rest if r != key)
    return ()


def ts_labels_for(organ: str, laterality: str | None) -> list[str]:
    """TotalSegmentator labels of ``organ``, restricted to one side when ``laterality`` is left/right.

    ``None`` and ``"bilateral"`` give both sides. Unknown organs give ``[]``.
    """
    o = ORGANS.get(organ)
    if o is None:
        return []
    if laterality not in ("left", "right"):
        return list(o.ts_labels)
    if o.ts_labels_by_side:
        return list(o.ts_labels_by_side[laterality])
    sided = [lab for lab in o.ts_labels if lab.endswith("_" + laterality)]
    unsided = [lab for lab in o.ts_labels if not (lab.endswith("_left") or lab.endswith("_right"))]
    return sided + unsided if sided else list(o.ts_labels)


# ------------------------------------------------------------------ findings, abnormality types
@dataclass(frozen=True)
class AbnormalityType:
    key: str
    display: str
    group: str          # types of one group overlap in meaning ("mass", "lesion")
    patterns: tuple[str, ...]


_FINDING_DATA = _load("findings.json")
FINDING_TERMS: tuple[str, ...] = tuple(_FINDING_DATA["finding_terms"])
FINDING_SUFFIX_REGEX: str = _FINDING_DATA["finding_suffix_regex"]
#: procedures: finding words too, but a sentence that only tells of a past procedure states no finding
PROCEDURE_TERMS: tuple[str, ...] = tuple(_FINDING_DATA["procedure_terms"])
PROCEDURE_SUFFIX_REGEX: str = _FINDING_DATA["procedure_suffix_regex"]
#: phrases that hold a finding word and state none ("narrow arrow" of a figure legend)
PSEUDO_FINDING_TERMS: tuple[str, ...] = tuple(_FINDING_DATA["pseudo_finding_terms"])
ABNORMALITY_TYPES: dict[str, AbnormalityType] = {
    a["key"]: AbnormalityType(a["key"], a["display"], a["group"], tuple(a["patterns"]))
    for a in _FINDING_DATA["abnormality_types"]
}
ABNORMALITY_GROUP: dict[str, str] = {k: a.group for k, a in ABNORMALITY_TYPES.items()}
_ABN_KEYS = tuple(ABNORMALITY_TYPES)
#: one pass over the text: an alternative per type, in vocabulary order (at one position the
#: earlier type wins, as its alternative is tried first)
_ABN_REGEX = re.compile(
    r"(?<![\w-])(?:" + "|".join(f"(?P<a{i}>{'|'.join(ABNORMALITY_TYPES[k].patterns)})" for i, k in enumerate(_ABN_KEYS))
    + r")(?!\w)", re.I)


def find_abnormality_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, type) of every abnormality-type mention, in text order."""
    return [(m.start(), m.end(), _ABN_KEYS[int(m.lastgroup[1:])]) for m in _ABN_REGEX.finditer(text)]


def abnormality_at(text: str, pos: int) -> tuple[int, str] | None:
    """(end, type) of an abnormality-type mention that starts exactly at ``pos``, or None."""
    m = _ABN_REGEX.match(text, pos)
    return (m.end(), _ABN_KEYS[int(m.lastgroup[1:])]) if m else None


def find_abnormalities(text: str) -> list[str]:
    """Canonical abnormality types named in ``text``, in order of first appearance."""
    out: list[str] = []
    for _, _, key in find_abnormality_spans(text):
        if key not in out:
            out.append(key)
    return out


# ------------------------------------------------------------------ ConText
@dataclass(frozen=True)
class ContextRule:
    literal: str
    category: str      # NEGATED_EXISTENCE, ABSENCE, POSSIBLE_EXISTENCE, HISTORICAL, HYPOTHETICAL, INDICATION,
    #                    NORMAL, PSEUDO, TERMINATE
    direction: str     # FORWARD, BACKWARD, BIDIRECTIONAL, NONE, PSEUDO, TERMINATE


_CONTEXT_DATA = _load("context.json")
CONTEXT_RULES: tuple[ContextRule, ...] = tuple(ContextRule(**r) for r in _CONTEXT_DATA["rules"])
SCOPE_END_VERBS = frozenset(_CONTEXT_DATA["scope_end_verbs"])
#: passive assertions ("are seen"): inside a history or indication scope they show the finding is on the image
PASSIVE_ASSERTIONS: tuple[str, ...] = tuple(_CONTEXT_DATA["passive_assertions"])
#: statement kind -> cue phrases of sentences that state no finding
STATEMENT_CUES: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _CONTEXT_DATA["statements"].items()}
#: phrases that present something on the image ("showing", "note the", "presence of"): a sentence with
#: one of them but no known finding word still states a finding
ASSERTION_CUES: tuple[str, ...] = tuple(_CONTEXT_DATA["assertion_cues"])
STATEMENTS = ("communication", "technique", "comparison", "recommendation", "history", "title")

# ------------------------------------------------------------------ phases, planes
_PHASE_DATA = _load("phases.json")
#: series phases of step 2
PHASES: tuple[str, ...] = tuple(_PHASE_DATA["phases"])
#: phases a sentence can ask for (findings.phase_hint)
HINT_PHASES: tuple[str, ...] = tuple(_PHASE_DATA["hint_phases"])
PHASE_WORDS: dict[str, str] = dict(_PHASE_DATA["display"])
PHASE_CHOICES: tuple[str, ...] = tuple(_PHASE_DATA["choices"])
PLANES: tuple[str, ...] = tuple(_PHASE_DATA["planes"])
#: (phrase, phase, tier): the phase hints of a sentence; the highest tier wins (see keyslice.report)
PHASE_HINT_TERMS: tuple[tuple[str, str, int], ...] = tuple(
    (t, h["phase"], h["tier"]) for h in _PHASE_DATA["sentence_hints"] for t in h["terms"])
PORTAL_VENOUS_PHASE_NEXT = frozenset(_PHASE_DATA["portal_venous_phase_next"])
#: phrases that hold a phase word and ask for no series phase ("oral contrast", "delayed diagnosis",
#: "with and without contrast": two phases)
PHASE_BLOCKERS: tuple[str, ...] = tuple(_PHASE_DATA["blockers"])
#: spellings of a phase hint -> canonical phase (series assignment accepts these)
PHASE_ALIASES: dict[str, str] = dict(_PHASE_DATA["aliases"])
