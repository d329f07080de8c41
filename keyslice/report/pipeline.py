"""The spaCy pipeline of the rule-based segmenter: ``spacy.blank("en")`` plus four own components.

======================  =====================================================================
component               what it adds to the ``Doc``
======================  =====================================================================
``ks_sentencizer``      sentence starts (``token.is_sent_start``) robust to clinical text
``ks_terms``            one ``PhraseMatcher`` (LOWER) + one ``Matcher`` pass: ``doc.spans``
                        groups ``ks_organs`` (label = canonical organs joined by ``+``),
                        ``ks_laterality``, ``ks_phase`` (label ``phase/tier``),
                        ``ks_triggers`` (label = ConText kind) and ``ks_targets``
``ks_units``            ``doc.spans["ks_units"]``: finding units = sentences, with compound
                        sentences about two organs split at their conjunction
``ks_context``          ConText-style scopes inside each unit; each unit's span label
                        becomes its status (abnormal / normal / uncertain), and each target
                        gets ``AFFIRMED`` / ``NEGATED`` / ``UNCERTAIN`` in ``ks_targets``
======================  =====================================================================

The object is built once per process (:func:`get_nlp`, ``lru_cache``).
"""

from __future__ import annotations

import re
from functools import lru_cache

import spacy
from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.attrs import IDX, LOWER, SPACY
from spacy.attrs import ORTH as ORTH_ATTR
from spacy.symbols import ORTH
from spacy.tokens import Doc, Span
from spacy.util import compile_infix_regex

from . import lexicon as lx

#: characters that mark a bullet at the start of a line (or anywhere for "•")
BULLETS = frozenset({"-", "*", "•", "·", "–", "—", "‣", "▪", "◦"})
_STRONG_BULLETS = frozenset({"•", "‣", "▪", "◦"})
_SENT_PUNCT = frozenset({".", "!", "?"})
_OPENERS = frozenset({"(", "[", '"', "“", "'", "‘"})


# --------------------------------------------------------------------------- token arrays
def token_arrays(doc: Doc) -> tuple[list[str], list[str], list[int], str]:
    """(texts, trailing whitespace, char offsets) of all tokens and the doc's text, cached in ``doc.user_data``.

    Built from ``Doc.to_array`` and slices of ``doc.text``: creating a Python ``Token``
    per token costs more than all the rules together.
    """
    got = doc.user_data.get("ks_tok")
    if got is None:
        strings = doc.vocab.strings
        arr = doc.to_array([ORTH_ATTR, IDX, SPACY]).tolist()
        texts = [strings[a[0]] for a in arr]
        idx = [a[1] for a in arr]
        ws = [" " if a[2] else "" for a in arr]
        text = "".join([t + w for t, w in zip(texts, ws)])
        got = doc.user_data["ks_tok"] = (texts, ws, idx, text)
    return got


def span_text(doc: Doc, start: int, end: int) -> str:
    """Text of tokens [start, end) without their final whitespace (like ``Span.text``)."""
    if end <= start:
        return ""
    texts, _, idx, text = token_arrays(doc)
    return text[idx[start]: idx[end - 1] + len(texts[end - 1])]


# --------------------------------------------------------------------------- sentencizer
def _is_list_marker(texts: list[str], ws: list[str], i: int) -> bool:
    """Token i starts a list item: a bullet, "1." / "1)" / "(1)" / "a)" / "A."."""
    t = texts[i]
    if t in BULLETS:
        return True
    n = len(texts)
    if len(t) == 2 and t[1] == "." and t[0].isalpha():  # "A." is one token (tokenizer exception)
        return bool(ws[i])
    if (t.isdigit() and len(t) <= 2) or (len(t) == 1 and t.isalpha()):
        if i + 1 < n and (texts[i + 1] == ")" or (texts[i + 1] == "." and ws[i + 1])):
            return True
    if t == "(" and i + 2 < n and texts[i + 2] == ")":
        inner = texts[i + 1]
        return (inner.isdigit() and len(inner) <= 2) or (len(inner) == 1 and inner.isalpha())
    return False


def sentence_starts(texts: list[str], ws: list[str]) -> list[int]:
    """Indices of the tokens that start a sentence (see :func:`ks_sentencizer`)."""
    n = len(texts)
    starts: list[int] = []
    prev = -1            # index of the previous non-space token
    newlines = 0         # newlines seen since prev
    sent_sig = 0         # non-space tokens in the current sentence
    first_is_marker = False
    final_abbr = lx.SENTENCE_FINAL_ABBREVIATIONS
    for i in range(n):
        text = texts[i]
        if text.isspace():
            newlines += text.count("\n")
            continue
        if i and "\n" in ws[i - 1]:
            newlines += 1
        start = False
        if prev < 0:
            start = True
        else:
            ptext = texts[prev]
            if newlines >= 2 or ptext == ";":
                start = True
            elif ptext in _SENT_PUNCT or (ptext[-1] == "." and ptext.lower() in final_abbr):
                first = text[0]
                if first.isupper() or first.isdigit() or text in _OPENERS or text in _STRONG_BULLETS:
                    # "1. Fatty liver": no boundary right after the marker "1."
                    start = not (first_is_marker and sent_sig <= 2 and ptext == ".")
            if not start and newlines >= 1:
                if _is_list_marker(texts, ws, i):
                    start = True
                elif i + 1 < n and texts[i + 1] == ":" and text[0].isupper():
                    start = True
            if not start and text in _STRONG_BULLETS:
                start = True
        if start:
            starts.append(i)
            sent_sig = 0
            first_is_marker = _is_list_marker(texts, ws, i)
        sent_sig += 1
        prev = i
        newlines = 0
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return starts


@Language.component("ks_sentencizer")
def ks_sentencizer(doc: Doc) -> Doc:
    """Sentence boundaries for clinical text.

    A sentence starts after ``.``/``!``/``?`` when the next word is capitalised, a digit
    or an opening bracket (so "2.3 cm. cyst" stays one sentence), after every ``;``, after a
    blank line, at a list marker that starts a line (or any "•"), and at a line that
    starts with ``WORD:`` (structured reports). A single line break inside a sentence is
    not a boundary. Abbreviations are single tokens (tokenizer special cases) and never
    end a sentence, except those in ``SENTENCE_FINAL_ABBREVIATIONS`` before a capital.
    """
    n = len(doc)
    if n == 0:
        return doc
    texts, ws, _, _ = token_arrays(doc)
    # only the starts are set: tokens left unset (0) continue the sentence for Doc.sents, and
    # setting every token costs one O(n) annotation check per token
    starts = sentence_starts(texts, ws)
    for i in starts:
        doc[i].is_sent_start = True
    doc.user_data.setdefault("ks", {})["sents"] = list(zip(starts, starts[1:] + [n]))
    return doc


# --------------------------------------------------------------------------- term matcher
class TermMatcher:
    """One PhraseMatcher (attr LOWER) over all the lexicon's categories, plus cached word-shape regexes."""

    def __init__(self, nlp: Language):
        self.vocab = nlp.vocab
        self.phrases = PhraseMatcher(nlp.vocab, attr="LOWER")
        make = nlp.make_doc

        def add(key: str, terms) -> None:
            self.phrases.add(key, [make(t) for t in terms])

        for term, organs in lx.ORGAN_TERMS.items():
            add("ORG|" + "+".join(organs), [term])
        add("ORG|", lx.ORGAN_BLOCKERS)
        for term, side in lx.LATERALITY_TERMS.items():
            add("LAT|" + side, [term])
        for term, phase, tier in lx.PHASE_TERMS:
            add(f"PH|{phase}/{tier}", [term])
        for kind, terms in lx.CONTEXT_TERMS.items():
            add("CX|" + kind, terms)
        add("TGT|", lx.TARGET_TERMS)
        # word-shape rules (vertebral levels "L4", disease-shaped words "-itis", "-oma"...):
        # the same regexes a Matcher {"LOWER": {"REGEX": ...}} pattern would run, but
        # evaluated once per distinct word (cached by its LOWER hash) instead of per token.
        self._shape_rules = [(re.compile(lx.VERTEBRAL_LEVEL_REGEX), "ORG", "spine"),
                             (re.compile(lx.TARGET_SUFFIX_REGEX), "TGT", "")]
        self._shape_cache: dict[int, tuple[tuple[str, str], ...]] = {}
        self._cache: dict[int, tuple[str, str]] = {}

    def _shapes(self, lower_hash: int) -> tuple[tuple[str, str], ...]:
        got = self._shape_cache.get(lower_hash)
        if got is None:
            word = self.vocab.strings[lower_hash]
            got = tuple((cat, label) for rx, cat, label in self._shape_rules if rx.match(word))
            if len(self._shape_cache) < 200_000:
                self._shape_cache[lower_hash] = got
        return got

    def _key(self, match_id: int) -> tuple[str, str]:
        got = self._cache.get(match_id)
        if got is None:
            cat, _, label = self.vocab.strings[match_id].partition("|")
            got = self._cache[match_id] = (cat, label)
        return got

    def __call__(self, doc: Doc) -> Doc:
        groups: dict[str, list[tuple[int, int, str]]] = {"ORG": [], "LAT": [], "PH": [], "CX": [], "TGT": []}
        key = self._key
        for match_id, s, e in self.phrases(doc):
            cat, label = key(match_id)
            groups[cat].append((s, e, label))
        shapes = self._shapes
        for i, h in enumerate(doc.to_array(LOWER).tolist()):
            for cat, label in shapes(h):
                groups[cat].append((i, i + 1, label))
        lower = [t.lower() for t in token_arrays(doc)[0]]
        n = len(lower)
        # blockers ("lung window") win as the longer match and are then dropped; "T2-weighted" is MRI
        organs = [m for m in longest_first(groups["ORG"]) if m[2]
                  and not (m[2] == "spine" and m[1] + 1 < n and lower[m[1]] == "-" and lower[m[1] + 1].startswith("weight"))]
        phases = []
        for m in longest_first(groups["PH"]):
            # "portal venous" is a phase, "portal venous gas" is not
            if m[1] - m[0] <= 2 and " ".join(lower[m[0]:m[1]]) in ("portal venous", "portovenous") and m[1] < n:
                if lower[m[1]] not in lx.PORTAL_VENOUS_PHASE_NEXT:
                    continue
            phases.append(m)
        ks = doc.user_data.setdefault("ks", {})
        ks["organs"] = organs
        ks["laterality"] = longest_first(groups["LAT"])
        ks["phase"] = phases
        ks["triggers"] = longest_first(groups["CX"])
        ks["targets"] = longest_first(groups["TGT"])
        return doc


def longest_first(matches: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping matches, longer ones first (spaCy's ``filter_spans`` on tuples), in text order."""
    if len(matches) < 2:
        return list(matches)
    taken: set[int] = set()
    out = []
    for m in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
        r = range(m[0], m[1])
        if not taken.isdisjoint(r):
            continue
        taken.update(r)
        out.append(m)
    out.sort()
    return out


@Language.factory("ks_terms")
def make_ks_terms(nlp: Language, name: str) -> TermMatcher:
    return TermMatcher(nlp)


# --------------------------------------------------------------------------- units (compound split)
def clause_split_points(lower: list[str], s: int, e: int, organ_starts: list[int]) -> list[int]:
    """Token indices of conjunctions where [s, e) is split into independent clauses.

    A conjunction splits when the part before it (since the last split) names an organ
    and has a verb, and the part after it names an organ and has a verb:
    "The liver is normal and the spleen is enlarged" splits; "cyst in the liver and
    kidney" does not (no verb on either side), nor does "The liver and spleen are normal"
    (no verb before "and").
    """
    conj = [i for i in range(s + 1, e - 1) if lower[i] in lx.SPLIT_CONJUNCTIONS]
    if not conj:
        return []
    verbs = [i for i in range(s, e) if lower[i] in lx.CLAUSE_VERBS]
    if len(verbs) < 2:
        return []
    organ_starts = [o for o in organ_starts if s <= o < e]
    points = []
    seg = s
    for k, c in enumerate(conj):
        nxt = conj[k + 1] if k + 1 < len(conj) else e
        left_ok = any(seg <= o < c for o in organ_starts) and any(seg <= v < c for v in verbs)
        right_ok = any(c < o < nxt for o in organ_starts) and any(c < v < nxt for v in verbs)
        if not right_ok and nxt != e:  # the right clause may run past the next conjunction
            right_ok = any(c < o < e for o in organ_starts) and any(c < v < e for v in verbs)
        if left_ok and right_ok:
            points.append(c)
            seg = c + 1
    return points


@Language.factory("ks_units", default_config={"split_compound": True})
def make_ks_units(nlp: Language, name: str, split_compound: bool):
    """Finding units: one per sentence, or one per clause of a compound sentence about two organs.

    ``doc.user_data["ks"]["units"]``: (start, end, sentence index) token ranges.
    """

    def ks_units(doc: Doc) -> Doc:
        ks = doc.user_data["ks"]
        texts = token_arrays(doc)[0]
        lower = [t.lower() for t in texts]
        organ_starts = [m[0] for m in ks["organs"]]
        units = []
        for si, (s, e) in enumerate(ks["sents"]):
            cur = s
            for p in clause_split_points(lower, s, e, organ_starts) if split_compound else ():
                end = p - 1 if p - 1 > cur and texts[p - 1] == "," else p
                units.append((cur, end, si))
                cur = p + 1
            units.append((cur, e, si))
        ks["units"] = units
        return doc

    return ks_units


# --------------------------------------------------------------------------- ConText
_PRE = {"NEG_PRE": "NEG", "UNC_PRE": "UNC", "HIST_PRE": "UNC"}
_POST = {"NEG_POST": "NEG", "UNC_POST": "UNC"}
_UNC_KINDS = frozenset({"UNC_PRE", "UNC_POST", "HIST_PRE"})


def unit_status(s: int, e: int, triggers, targets, organs) -> tuple[str, list[str]]:
    """ConText over one unit [s, e). Returns (status, per-target modifier).

    ``triggers``, ``targets``, ``organs``: (start, end, label) tuples inside the unit;
    PSEUDO triggers already removed. Pre-triggers scope forward to the next
    terminator (TERM: "but", "however", "which"...) or the unit's end; post-triggers
    backward to the previous terminator or the unit's start.

    status: ``abnormal`` if any target is affirmed (ConText's default: a finding that
    is mentioned is present); else ``uncertain`` if any target is hedged, historical or
    hypothetical; else ``normal`` if targets exist and are all negated. With no target:
    ``abnormal`` when a negation covers an organ itself ("absence of the IVC" is an
    anomaly) and no normality cue is present; ``normal`` on a normality or negation cue
    ("The liver is unremarkable"); ``uncertain`` on a hedge/history cue; else
    ``abnormal``.
    """
    term_starts = [t[0] for t in triggers if t[2] == "TERM"]
    term_ends = [t[1] for t in triggers if t[2] == "TERM"]
    scopes: list[tuple[int, int, str]] = []
    kinds = set()
    for ts, te, kind in triggers:
        kinds.add(kind)
        if kind in _PRE:
            end = min([x for x in term_starts if x >= te], default=e)
            scopes.append((te, end, _PRE[kind]))
        elif kind in _POST:
            begin = max([x for x in term_ends if x <= ts], default=s)
            scopes.append((begin, ts, _POST[kind]))
    mods = []
    for gs, ge, _ in targets:
        mod = "AFFIRMED"
        for a, b, m in scopes:
            if a <= gs and ge <= b:
                if m == "NEG":
                    mod = "NEGATED"
                    break
                mod = "UNCERTAIN"
        mods.append(mod)
    if targets:
        if "AFFIRMED" in mods:
            return "abnormal", mods
        if "UNCERTAIN" in mods:
            return "uncertain", mods
        return "normal", mods
    if "NORMAL" not in kinds and any(a <= o[0] and o[1] <= b for o in organs for a, b, m in scopes if m == "NEG"):
        return "abnormal", mods
    if "NORMAL" in kinds or "NEG_PRE" in kinds or "NEG_POST" in kinds:
        return "normal", mods
    if kinds & _UNC_KINDS:
        return "uncertain", mods
    return "abnormal", mods


def _inside(items, s: int, e: int):
    return [m for m in items if m[0] >= s and m[1] <= e]


@Language.component("ks_context")
def ks_context(doc: Doc) -> Doc:
    """Status of each unit: ``doc.user_data["ks"]["status"]`` (parallel to units), target modifiers in
    ``["target_mods"]`` (parallel to targets: AFFIRMED / NEGATED / UNCERTAIN)."""
    ks = doc.user_data["ks"]
    triggers = [t for t in ks["triggers"] if t[2] != "PSEUDO"]
    targets = ks["targets"]
    organs = ks["organs"]
    statuses = []
    mods_all: dict[tuple[int, int], str] = {}
    for s, e, _ in ks["units"]:
        tg = _inside(targets, s, e)
        status, mods = unit_status(s, e, _inside(triggers, s, e), tg, _inside(organs, s, e))
        statuses.append(status)
        mods_all.update(((t[0], t[1]), m) for t, m in zip(tg, mods))
    ks["status"] = statuses
    ks["target_mods"] = [mods_all.get((t[0], t[1]), "AFFIRMED") for t in targets]
    return doc


# --------------------------------------------------------------------------- inspection
def to_spans(doc: Doc) -> Doc:
    """Copy the components' results into ``doc.spans`` (for displaCy / debugging).

    The components keep plain tuples in ``doc.user_data["ks"]`` because creating
    ``Span`` objects for every match costs more than the rules themselves.
    """
    ks = doc.user_data["ks"]
    doc.spans["ks_organs"] = [Span(doc, s, e, label=lab) for s, e, lab in ks["organs"]]
    doc.spans["ks_laterality"] = [Span(doc, s, e, label=lab) for s, e, lab in ks["laterality"]]
    doc.spans["ks_phase"] = [Span(doc, s, e, label=lab) for s, e, lab in ks["phase"]]
    doc.spans["ks_triggers"] = [Span(doc, s, e, label=lab) for s, e, lab in ks["triggers"]]
    doc.spans["ks_targets"] = [Span(doc, s, e, label=m) for (s, e, _), m in zip(ks["targets"], ks["target_mods"])]
    doc.spans["ks_units"] = [Span(doc, s, e, label=st) for (s, e, _), st in zip(ks["units"], ks["status"])]
    return doc


# --------------------------------------------------------------------------- build
def _add_special_cases(nlp: Language) -> None:
    for abbr in lx.ABBREVIATIONS + lx.SLASH_ABBREVIATIONS:
        nlp.tokenizer.add_special_case(abbr, [{ORTH: abbr}])
    # "mass.Regions": a period glued between two words is a sentence end with a missing space
    infixes = list(nlp.Defaults.infixes) + [r"(?<=[a-z]{2})\.(?=[A-Z][a-z])"]
    nlp.tokenizer.infix_finditer = compile_infix_regex(infixes).finditer


@lru_cache(maxsize=4)
def get_nlp(split_compound: bool = True) -> Language:
    """The pipeline, built once per process and option set."""
    nlp = spacy.blank("en")
    _add_special_cases(nlp)
    nlp.add_pipe("ks_sentencizer")
    nlp.add_pipe("ks_terms")
    nlp.add_pipe("ks_units", config={"split_compound": split_compound})
    nlp.add_pipe("ks_context")
    nlp.max_length = 2_000_000
    return nlp
