"""The spaCy pipeline of the rule-based segmenter: ``spacy.blank("en")`` plus four own components.

======================  =====================================================================
component               what it adds (``doc.user_data["ks"]``, plain tuples of token indices)
======================  =====================================================================
``ks_sentencizer``      sentence starts (``token.is_sent_start``, so ``doc.sents`` works) and
                        ``"sents"``: (start, end) ranges, robust to clinical text
``ks_terms``            one ``PhraseMatcher`` (attr LOWER) pass over every word list of
                        :mod:`.lexicon`: ``"organs"`` (label = canonical organs joined by
                        ``+``), ``"laterality"``, ``"phase"`` (label ``phase/tier``),
                        ``"triggers"`` (ConText kind) and ``"targets"`` (finding words);
                        longest match wins inside each group
``ks_units``            ``"units"``: finding units = sentences, with compound sentences about
                        two organs split at their conjunction
``ks_context``          ``"status"`` per unit (abnormal / normal / uncertain) from ConText-style
                        scopes, and ``"target_mods"`` (AFFIRMED / NEGATED / UNCERTAIN)
======================  =====================================================================

Results are tuples rather than ``doc.spans`` because creating a ``Span`` per match
costs more than all the rules; :func:`to_spans` copies them into ``doc.spans`` for
displaCy or debugging. The object is built once per process (:func:`get_nlp`).

Why not medspaCy: the brief asks for medspaCy's clinical sentence rules where they
install cleanly. They do not here: medspacy 1.3.1 (the latest) pins ``spacy<3.8``, and
installing it would downgrade this project's spaCy 3.8 (and numpy) for every step.
``ks_sentencizer`` and ``ks_context`` therefore re-implement the parts used (PyRuSH-style
clinical sentence rules, ConText-style modifiers with pre/post/bidirectional scopes,
pseudo-triggers and terminators) on spaCy 3.8 with no new dependency. Likewise there is
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

from . import lexicon as lx

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
        lower_hashes = doc.to_array(LOWER)
        hits = {h: got for h in set(lower_hashes.tolist()) if (got := self._shapes(h))}
        if hits:
            for i in numpy.flatnonzero(numpy.isin(lower_hashes, list(hits))).tolist():
                for cat, label in hits[int(lower_hashes[i])]:
                    groups[cat].append((i, i + 1, label))
        lower = token_lower(doc)
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
_PRE = {"NEG_PRE": "NEG", "ABSENT_PRE": "ABSENT", "UNC_PRE": "UNC", "HIST_PRE": "UNC"}
_POST = {"NEG_POST": "NEG", "ABSENT_POST": "ABSENT", "UNC_POST": "UNC"}
_NEG_KINDS = frozenset({"NEG_PRE", "NEG_POST", "ABSENT_PRE", "ABSENT_POST"})
_UNC_KINDS = frozenset({"UNC_PRE", "UNC_POST", "UNC_BI", "HIST_PRE"})


def unit_status(s: int, e: int, triggers, targets, organs) -> tuple[str, list[str]]:
    """ConText over one unit [s, e). Returns (status, per-target modifier).

    ``triggers``, ``targets``, ``organs``: (start, end, label) tuples inside the unit;
    PSEUDO triggers already removed. Pre-triggers scope forward to the next
    terminator (TERM: "but", "however", "which"...) or the unit's end; post-triggers
    backward to the previous terminator or the unit's start.

    status: ``abnormal`` if any target is affirmed (ConText's default: a finding that
    is mentioned is present); else ``uncertain`` if any target is hedged, historical or
    hypothetical; else ``normal`` if targets exist and are all negated. With no target:
    ``abnormal`` when an absence word covers an organ itself ("absence of the IVC" is an
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
        # a scope includes the trigger's own tokens: "not enlarged" negates "enlarged"
        if kind in _PRE:
            end = min([x for x in term_starts if x >= te], default=e)
            scopes.append((ts, end, _PRE[kind]))
        elif kind in _POST:
            begin = max([x for x in term_ends if x <= ts], default=s)
            scopes.append((begin, te, _POST[kind]))
        elif kind == "UNC_BI":
            begin = max([x for x in term_ends if x <= ts], default=s)
            end = min([x for x in term_starts if x >= te], default=e)
            scopes.append((begin, end, "UNC"))
    mods = []
    for gs, ge, _ in targets:
        mod = "AFFIRMED"
        for a, b, m in scopes:
            if a <= gs and ge <= b:
                if m == "NEG" or m == "ABSENT":
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
    if "NORMAL" not in kinds and any(a <= o[0] and o[1] <= b for o in organs for a, b, m in scopes if m == "ABSENT"):
        return "abnormal", mods
    if "NORMAL" in kinds or kinds & _NEG_KINDS:
        return "normal", mods
    if kinds & _UNC_KINDS:
        return "uncertain", mods
    return "abnormal", mods


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
    """Status of each unit: ``doc.user_data["ks"]["status"]`` (parallel to units), target modifiers in
    ``["target_mods"]`` (parallel to targets: AFFIRMED / NEGATED / UNCERTAIN)."""
    ks = doc.user_data["ks"]
    units = ks["units"]
    triggers = bucket(units, [t for t in ks["triggers"] if t[2] != "PSEUDO"])
    targets = bucket(units, ks["targets"])
    organs = bucket(units, ks["organs"])
    statuses = []
    mods_all: dict[tuple[int, int], str] = {}
    for k, (s, e, _) in enumerate(units):
        tg = targets[k]
        status, mods = unit_status(s, e, triggers[k], tg, organs[k])
        statuses.append(status)
        mods_all.update(((t[0], t[1]), m) for t, m in zip(tg, mods))
    ks["status"] = statuses
    ks["target_mods"] = [mods_all.get((t[0], t[1]), "AFFIRMED") for t in ks["targets"]]
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
    """Abbreviations become single tokens, so their period is never read as a sentence end."""
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
