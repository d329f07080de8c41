"""The spaCy pipeline of the rule-based segmenter: ``spacy.blank("en")`` plus four own components.

======================  =====================================================================
component               what it adds (``doc.user_data["ks"]``, plain tuples of token indices)
======================  =====================================================================
``ks_sentencizer``      sentence starts (``token.is_sent_start``, so ``doc.sents`` works) and
                        ``"sents"``: (start, end) ranges, robust to clinical text
``ks_terms``            one ``PhraseMatcher`` (attr LOWER) pass over :mod:`keyslice.vocab`
                        and the laterality words, plus word-shape rules: ``"organs"``
                        (label = canonical organs joined by ``+``), ``"laterality"``,
                        ``"phase"`` (label ``phase/tier``), ``"triggers"`` (ConText
                        ``category/direction``), ``"targets"`` (finding words) and
                        ``"statements"`` (non-finding cues); longest match wins in a group
``ks_units``            ``"units"``: finding units = sentences, with compound sentences about
                        two organs split at their conjunction
``ks_context``          ``"context"`` per unit (:mod:`.context`: status, statement kind,
                        modifiers, scopes) and ``"status"``
======================  =====================================================================

Results are tuples rather than ``doc.spans`` because creating a ``Span`` per match
costs more than all the rules; :func:`to_spans` copies them into ``doc.spans`` for
displaCy or debugging. The object is built once per process (:func:`get_nlp`).

Why not medspaCy: the brief asks for medspaCy's clinical sentence rules where they
install cleanly. They do not here: medspacy 1.3.1 (the latest) pins ``spacy<3.8``, and
installing it would downgrade this project's spaCy 3.8 (and numpy) for every step.
``ks_sentencizer`` and ``ks_context`` therefore re-implement the parts used (PyRuSH-style
clinical sentence rules; ConText, see :mod:`.context`) on spaCy 3.8 with no new dependency.
negspacy 1.1 does install beside spaCy 3.8, but implements NegEx only (negation; no
hedging, historical, hypothetical or indication categories, no bidirectional or
bracket-bounded scopes) and works on ``doc.ents``, which this pipeline does not create for
speed. pyConTextNLP 0.7 (last release 2019) installs too, but matches with its own regular
expressions on networkx graphs per sentence, outside spaCy. What both share with medspaCy is
kept: the rules are data, in the shape of medspaCy's ConText rule files (literal,
category, direction), in ``keyslice/vocab/context.json``. Likewise there is
no trained parser: a model such as ``en_core_web_sm`` is a download, and the build must run
offline, so ``ks_units`` splits compound sentences with a shallow clause rule (an organ and
a verb on each side of the conjunction) instead of a dependency parse.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache

import numpy

import spacy
from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.attrs import IDX, LOWER, ORTH, SPACY
from spacy.tokens import Doc, Span
from spacy.util import compile_infix_regex

from keyslice import vocab

from . import lexicon as lx
from .context import MODIFIER_NAMES, Trigger, UnitContext, modifier_of, unit_context

#: characters that mark a bullet at the start of a line (or anywhere for "•")
BULLETS = frozenset({"-", "*", "•", "·", "–", "—", "‣", "▪", "◦"})
_STRONG_BULLETS = frozenset({"•", "‣", "▪", "◦"})
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
        arr = doc.to_array([ORTH, IDX, SPACY]).tolist()
        texts = [strings[a[0]] for a in arr]
        idx = [a[1] for a in arr]
        ws = [" " if a[2] else "" for a in arr]
        text = "".join([t + w for t, w in zip(texts, ws)])
        got = doc.user_data["ks_tok"] = (texts, ws, idx, text)
    return got


def token_lower(doc: Doc) -> list[str]:
    """Lowercased token texts, cached in ``doc.user_data``."""
    got = doc.user_data.get("ks_lower")
    if got is None:
        got = doc.user_data["ks_lower"] = [t.lower() for t in token_arrays(doc)[0]]
    return got


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


_CANDIDATES = frozenset({".", "!", "?", ";"}) | _STRONG_BULLETS | frozenset(lx.SENTENCE_FINAL_ABBREVIATIONS)


def sentence_starts(texts: list[str], ws: list[str]) -> list[int]:
    """Indices of the tokens that start a sentence (rules in :func:`ks_sentencizer`).

    Only candidate tokens are examined (sentence punctuation, final abbreviations,
    bullets, whitespace tokens holding line breaks), not every token.
    """
    n = len(texts)
    starts = [0]  # kept sorted

    def add(i: int) -> None:
        k = bisect.bisect_left(starts, i)
        if k == len(starts) or starts[k] != i:
            starts.insert(k, i)

    def last_start(i: int) -> int:
        return starts[bisect.bisect_right(starts, i) - 1]

    cands = [i for i, t in enumerate(texts)
             if t in _CANDIDATES or t.isspace() or (t[-1] == "." and t.lower() in _CANDIDATES)]
    for c in cands:
        t = texts[c]
        if t in _STRONG_BULLETS:
            if c:
                add(c)
            continue
        j = c + 1
        newlines = t.count("\n") if t.isspace() else 0
        while j < n and texts[j].isspace():
            newlines += texts[j].count("\n")
            j += 1
        if j >= n:
            continue
        if t.isspace():
            p = c - 1
            while p >= 0 and texts[p].isspace():
                p -= 1
            if p < 0 or newlines == 0:
                continue
            if newlines >= 2 or _is_list_marker(texts, ws, j) or (
                j + 1 < n and texts[j + 1] == ":" and texts[j][:1].isupper()
            ):
                add(j)
            elif (texts[j][0].isupper() or texts[j][0].isdigit()) and _is_list_marker(texts, ws, last_start(c)):
                add(j)  # a list item ends at its line break unless the next line continues it
            continue
        if t == ";":
            add(j)
            continue
        nxt = texts[j]
        first = nxt[0]
        if not (first.isupper() or first.isdigit() or nxt in _OPENERS or nxt in _STRONG_BULLETS):
            continue  # "2.3 cm. cyst in the kidney": a lowercase word continues the sentence
        if t == ".":
            # "1. Fatty liver": no boundary right after a list marker "1."
            prev_start = last_start(c)
            if c - prev_start <= 1 and _is_list_marker(texts, ws, prev_start):
                continue
        add(j)
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
    """One PhraseMatcher (attr LOWER) over the vocabulary's phrases, plus cached word-shape rules.

    Groups: ``ORG`` (organ phrases of :mod:`keyslice.vocab`; label = tagged organs joined by
    ``+``, empty for blockers and for structures step 1 does not tag, which are matched only
    so that "hepatic vein" is not read as the liver), ``LAT``, ``PH`` (phase/tier), ``CX``
    (ConText category/direction), ``TGT`` (finding words) and ``ST`` (non-finding statement
    cues). Word-shape rules, evaluated once per distinct word: vertebral levels, derived and
    compound organ words (:func:`keyslice.vocab.word_organs`), disease-shaped words.
    """

    def __init__(self, nlp: Language):
        self.vocab = nlp.vocab
        self.phrases = PhraseMatcher(nlp.vocab, attr="LOWER")
        make = nlp.make_doc

        def add(key: str, terms) -> None:
            self.phrases.add(key, [make(t) for t in terms])

        for term, organs in vocab.organ_terms().items():
            add("ORG|" + _organ_label(organs), [term])
        add("ORG|", vocab.ORGAN_BLOCKERS)
        for term, side in lx.LATERALITY_TERMS.items():
            add("LAT|" + side, [term])
        for term, phase, tier in vocab.PHASE_HINT_TERMS:
            add(f"PH|{phase}/{tier}", [term])
        add("PH|", vocab.PHASE_BLOCKERS)
        for rule in vocab.CONTEXT_RULES:
            add(f"CX|{rule.category}/{rule.direction}", [rule.literal])
        add("TGT|", vocab.FINDING_TERMS)
        add("TGT|pseudo", vocab.PSEUDO_FINDING_TERMS)
        add("TGT|procedure", vocab.PROCEDURE_TERMS)
        for kind, cues in vocab.STATEMENT_CUES.items():
            add("ST|" + kind, cues)
        add("ST|assertion", vocab.ASSERTION_CUES)
        add("ST|passive", vocab.PASSIVE_ASSERTIONS)
        self._level = re.compile(vocab.VERTEBRAL_LEVEL_REGEX)
        self._suffix = re.compile(vocab.FINDING_SUFFIX_REGEX)
        self._procedure = re.compile(vocab.PROCEDURE_SUFFIX_REGEX)
        self._shape_cache: dict[int, tuple[tuple[str, str], ...]] = {}
        self._cache: dict[int, tuple[str, str]] = {}

    def _shapes(self, lower_hash: int) -> tuple[tuple[str, str], ...]:
        got = self._shape_cache.get(lower_hash)
        if got is None:
            word = self.vocab.strings[lower_hash]
            found = []
            if self._level.match(word):
                found.append(("LEVEL", "spine"))
            organs = vocab.word_organs(word)
            if organs:
                found.append(("ORG", _organ_label(organs)))
            if self._procedure.match(word):
                found.append(("TGT", "procedure"))
            elif self._suffix.match(word):
                found.append(("TGT", ""))
            got = tuple(found)
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
        groups: dict[str, list[tuple[int, int, str]]] = {"ORG": [], "LAT": [], "PH": [], "CX": [], "TGT": [],
                                                         "ST": [], "LEVEL": []}
        key = self._key
        for match_id, s, e in self.phrases(doc):
            cat, label = key(match_id)
            groups[cat].append((s, e, label))
        lower_hashes = doc.to_array(LOWER)
        hits = {h: got for h in set(lower_hashes.tolist()) if (got := self._shapes(h))}
        if hits:
            for i in numpy.flatnonzero(numpy.isin(lower_hashes, list(hits))).tolist():
                for cat, label in hits[int(lower_hashes[i])]:
                    groups[cat].append((i, i + 1, label))
        lower = token_lower(doc)
        n = len(lower)
        groups["ORG"].extend(m for m in groups["LEVEL"] if spinal_level(lower, m[0]))
        # blockers and untagged structures win as the longer match and are then dropped;
        # "para-aortic", "retroperitoneal"-style locations do not name the organ
        organs = [m for m in longest_first(groups["ORG"]) if m[2] and not excluded_prefix(lower, m[0])]
        phases = []
        for m in longest_first(groups["PH"]):
            if not m[2]:  # a blocker: "oral contrast", "delayed diagnosis"
                continue
            # "portal venous" is a phase, "portal venous gas" is not
            if m[1] - m[0] <= 2 and " ".join(lower[m[0]:m[1]]) in ("portal venous", "portovenous") and m[1] < n:
                if lower[m[1]] not in vocab.PORTAL_VENOUS_PHASE_NEXT:
                    continue
            phases.append(m)
        ks = doc.user_data.setdefault("ks", {})
        ks["organs"] = organs
        ks["laterality"] = longest_first(groups["LAT"])
        ks["phase"] = phases
        ks["triggers"] = longest_first(groups["CX"])
        ks["targets"] = [m for m in longest_first(groups["TGT"]) if m[2] != "pseudo"]
        ks["statements"] = longest_first(groups["ST"])
        return doc


@lru_cache(maxsize=1024)
def _organ_label(organs: tuple[str, ...]) -> str:
    """``+``-joined tagged organs of a match (empty: the match names no organ step 1 reports)."""
    return "+".join(o for o in organs if vocab.ORGANS[o].tagged)


def excluded_prefix(lower: list[str], i: int) -> bool:
    """Token i follows a location prefix that does not name the organ: "para-aortic", "retro aortic"."""
    if i >= 2 and lower[i - 1] == "-" and lower[i - 2] in vocab.EXCLUDED_PREFIXES:
        return True
    return i >= 1 and lower[i - 1] in vocab.EXCLUDED_PREFIXES


_LEVEL_JOIN = frozenset({"-", "–", "/", "to", "through", "and"})


def spinal_level(lower: list[str], i: int) -> bool:
    """A level token ("T2", "L4") names the spine only in a spinal context within 8 tokens, or
    joined to another level ("T12-L1"), and never beside MRI or tumour-stage words ("T2-weighted",
    "T2 hyperintense", "T2N0M0")."""
    n = len(lower)
    window = lower[max(0, i - 8): i + 9]
    if i + 2 < n and lower[i + 1] == "-" and lower[i + 2].startswith("weight"):
        return False
    if any(w in vocab.NOT_SPINAL_CONTEXT for w in window):
        return False
    if any(w in vocab.SPINAL_CONTEXT for w in window):
        return True
    for j in (i - 2, i + 2):
        if 0 <= j < n and lower[(i + j) // 2] in _LEVEL_JOIN and re.match(vocab.VERTEBRAL_LEVEL_REGEX, lower[j]):
            return True
    return False


def longest_first(matches: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping matches, longer ones first (spaCy's ``filter_spans`` on tuples), in text order."""
    if len(matches) < 2:
        return list(matches)
    ordered = sorted(matches)
    if all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:])):
        return ordered  # nothing overlaps (the common case)
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
    """spaCy factory of :class:`TermMatcher` (a stateful component: it holds the PhraseMatcher)."""
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
        lower = token_lower(doc)
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
def bucket(units, items) -> list[list]:
    """For each unit (sorted, disjoint token ranges), the items (sorted by start) that lie inside it."""
    out: list[list] = [[] for _ in units]
    k, nu = 0, len(units)
    for m in items:
        while k < nu and units[k][1] <= m[0]:
            k += 1
        if k == nu:
            break
        if m[0] >= units[k][0] and m[1] <= units[k][1]:
            out[k].append(m)
    return out


@Language.component("ks_context")
def ks_context(doc: Doc) -> Doc:
    """ConText per unit (:func:`keyslice.report.context.unit_context`): ``doc.user_data["ks"]["context"]``,
    one :class:`~keyslice.report.context.UnitContext` per unit, and ``["status"]`` (their statuses)."""
    ks = doc.user_data["ks"]
    units = ks["units"]
    lower = token_lower(doc)
    triggers = bucket(units, ks["triggers"])
    targets = bucket(units, ks["targets"])
    organs = bucket(units, ks["organs"])
    statements = bucket(units, ks["statements"])
    contexts: list[UnitContext] = []
    for k, (s, e, _) in enumerate(units):
        trig = [Trigger(a, b, *_split_kind(lab)) for a, b, lab in triggers[k]]
        contexts.append(unit_context(lower, s, e, trig, [(a, b) for a, b, _ in targets[k]],
                                     [(a, b) for a, b, _ in organs[k]], statements[k],
                                     procedures=[(a, b) for a, b, lab in targets[k] if lab == "procedure"]))
    ks["context"] = contexts
    ks["status"] = [c.status for c in contexts]
    return doc


@lru_cache(maxsize=64)
def _split_kind(label: str) -> tuple[str, str]:
    category, _, direction = label.partition("/")
    return category, direction


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
    target_labels = []
    for (s, e, _), ctxs in zip(ks["targets"], _unit_of(ks, ks["targets"])):
        mod = modifier_of(s, e, ctxs.scopes) if ctxs else None
        target_labels.append(MODIFIER_NAMES[mod] if mod else "affirmed")
    doc.spans["ks_targets"] = [Span(doc, s, e, label=lab) for (s, e, _), lab in zip(ks["targets"], target_labels)]
    doc.spans["ks_statements"] = [Span(doc, s, e, label=lab) for s, e, lab in ks["statements"]]
    doc.spans["ks_units"] = [Span(doc, s, e, label=st) for (s, e, _), st in zip(ks["units"], ks["status"])]
    return doc


def _unit_of(ks: dict, items) -> list[UnitContext | None]:
    """The context of the unit each item (sorted token ranges) lies in, or None."""
    out: list[UnitContext | None] = []
    for s, e, _ in items:
        k = next((k for k, u in enumerate(ks["units"]) if u[0] <= s and e <= u[1]), None)
        out.append(ks["context"][k] if k is not None else None)
    return out


# --------------------------------------------------------------------------- build
def _add_special_cases(nlp: Language) -> None:
    """Abbreviations become single tokens, so their period is never read as a sentence end."""
    for abbr in lx.ABBREVIATIONS + lx.SLASH_ABBREVIATIONS:
        nlp.tokenizer.add_special_case(abbr, [{ORTH: abbr}])
    # "mass.Regions": a period glued between two words is a sentence end with a missing space
    # "kidney(K)", "nodes(L)": a bracket glued to a word is a token of its own
    infixes = list(nlp.Defaults.infixes) + [r"(?<=[a-z]{2})\.(?=[A-Z][a-z])", r"(?<=[A-Za-z])[(\[]", r"[)\]]"]
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
