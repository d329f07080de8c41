"""ConText (Chapman et al. 2001; Harkema et al. 2009) over one finding unit, with the rules of
:mod:`keyslice.vocab` (``context.json``).

Targets are finding words (``vocab.FINDING_TERMS`` and disease-shaped words). Each
modifier trigger has a category and a direction:

* ``FORWARD`` triggers scope over the words after them, ``BACKWARD`` ones over the words
  before them, ``BIDIRECTIONAL`` ones both ways;
* a scope ends at a ``TERMINATE`` phrase ("but", "however", "which", ", and", "and the"...),
  at the unit's ends, and at the bracket that encloses the trigger: a figure note "(not
  shown)" or a reference range "(normal > 22 degrees)" speaks only of itself;
* a negation's forward scope also ends at the first verb after the first target it covers
  ("no tumour could be detected around the stenosis": the stenosis stays asserted);
* ``PSEUDO`` phrases ("no change", "without contrast", "not shown", "than normal") are
  matched as longer phrases and so hide the trigger words inside them;
* ``ABSENCE`` ("absence of", "is absent") negates a finding, but said of an organ with no
  finding word ("absence of the inferior vena cava") it states an anomaly;
* ``NORMAL`` ("normal", "unremarkable") has no scope, except over a finding word right
  after it ("normal uptake"); inside brackets it is a reference range, not a statement.

A target's modifier: ``historical`` / ``hypothetical`` / ``indication`` (the finding is
not what the image shows) before ``negated`` before ``possible``; else ``affirmed``.

Unit status: ``abnormal`` when a target is affirmed (ConText's default: a finding that is
mentioned is present) or an organ is absent; else ``uncertain`` when a target is
possible, historical, hypothetical or an indication; else ``normal`` when targets are all
negated. A unit with no target is ``normal`` on a normality or negation cue, ``uncertain``
on a hedge or a history, indication or outcome cue (a complaint or an outcome the
vocabulary does not name), ``abnormal`` when it presents something ("showing", "note the", "presence of") or
gives a value beside a bracketed reference range,
and otherwise states no finding: ``non_finding``, with its kind (communication,
recommendation, comparison, history, technique or title). A communication ("Discussed with
Dr. X") or a figure reference ("See Figure 2") is ``non_finding`` whatever it names, and so
are a recommendation that asserts nothing and a sentence that tells only of a past
procedure ("She underwent nephrectomy"). An indication scope that holds a
passive assertion ("a patient with effusion and consolidation are seen on CT") is void
for an indication.
"""

from __future__ import annotations

from typing import NamedTuple

from keyslice.vocab import SCOPE_END_VERBS

#: target modifier -> name in ``findings.modifiers``
MODIFIER_NAMES = {"NEGATED_EXISTENCE": "negated", "ABSENCE": "negated", "NORMAL": "normal",
                  "POSSIBLE_EXISTENCE": "possible", "TIMING": "historical",
                  "HISTORICAL": "historical", "HYPOTHETICAL": "hypothetical", "INDICATION": "indication"}
_NOT_IMAGE = ("HISTORICAL", "HYPOTHETICAL", "INDICATION", "TIMING")
_NEG = ("NEGATED_EXISTENCE", "ABSENCE", "NORMAL")
_SCOPED_DIRECTIONS = ("FORWARD", "BACKWARD", "BIDIRECTIONAL")
_NEGATION_WORDS = frozenset({"no", "not", "without", "negative", "never", "nor", "nothing"})
_SKIP_BEFORE_ORGAN = frozenset({"the", "a", "an", "left", "right", "both", "of", "any", "normal"})


class Trigger(NamedTuple):
    start: int
    end: int
    category: str
    direction: str


class UnitContext(NamedTuple):
    status: str                                  # abnormal | normal | uncertain | non_finding
    statement: str | None                        # kind of non_finding statement, else None
    modifiers: tuple[str, ...]                   # modifier names that applied, in a fixed order
    scopes: tuple[tuple[int, int, str], ...]     # (start, end, category) token ranges
    absent_organ: bool                           # an organ itself is stated absent (an anomaly)


def bracket_ranges(lower: list[str], s: int, e: int) -> list[tuple[int, int]]:
    """(open, close) token indices of the bracketed parts of [s, e) (unclosed: to the end)."""
    out, stack = [], []
    for i in range(s, e):
        t = lower[i]
        if t in ("(", "["):
            stack.append(i)
        elif t in (")", "]") and stack:
            out.append((stack.pop(), i))
    out.extend((o, e) for o in stack)
    return out


def _enclosing(brackets: list[tuple[int, int]], i: int) -> tuple[int, int] | None:
    best = None
    for a, b in brackets:
        if a < i < b and (best is None or a > best[0]):
            best = (a, b)
    return best


def modifier_of(s: int, e: int, scopes) -> str | None:
    """The ConText category that governs tokens [s, e), or None (affirmed)."""
    cats = {c for a, b, c in scopes if a <= s and e <= b}
    if not cats:
        return None
    for c in _NOT_IMAGE + _NEG + ("POSSIBLE_EXISTENCE",):
        if c in cats:
            return c
    return None


def unit_context(lower: list[str], s: int, e: int, triggers: list[Trigger], targets: list[tuple[int, int]],
                 organs: list[tuple[int, int]], statements: list[tuple[int, int, str]],
                 procedures: list[tuple[int, int]] = ()) -> UnitContext:
    """ConText over the unit [s, e) (see the module docstring). ``procedures``: the targets that
    are procedures ("nephrectomy", "bypass")."""
    passive = [a for a, _, k in statements if k == "passive"]
    brackets = bracket_ranges(lower, s, e) if ("(" in lower[s:e] or "[" in lower[s:e]) else []
    term_starts = [t.start for t in triggers if t.category == "TERMINATE"]
    term_ends = [t.end for t in triggers if t.category == "TERMINATE"]
    scopes: list[tuple[int, int, str]] = []
    absent_organ = False
    pseudo: set[str] = set()
    normal_cue = False
    for t in triggers:
        if t.category == "PSEUDO":
            words = lower[t.start:t.end]
            if any("normal" in w for w in words):
                pseudo.add("pseudo_normal")
            elif any(w in _NEGATION_WORDS for w in words):
                pseudo.add("pseudo_negation")
            else:
                pseudo.add("pseudo_hedge")
            continue
        enc = _enclosing(brackets, t.start) if brackets else None
        lo, hi = (enc[0] + 1, enc[1]) if enc else (s, e)
        if t.category == "NORMAL":
            if enc is not None:  # "(normal > 22 degrees)": a reference range, not a statement about this patient
                pseudo.add("pseudo_normal")
                continue
            normal_cue = True
            # "normal uptake", "normal-appearing enhancement": the finding word right after is normal
            k = t.end + 1 if t.end < e and lower[t.end] == "-" else t.end
            nxt = next((g for g in targets if g[0] == k), None)
            if nxt is not None:
                scopes.append((t.start, nxt[1], "NORMAL"))
            continue
        if t.direction not in _SCOPED_DIRECTIONS:
            continue
        begin, end = t.start, t.end  # a scope includes the trigger's own tokens: "not enlarged"
        if t.direction in ("FORWARD", "BIDIRECTIONAL"):
            end = min([x for x in term_starts if x >= t.end] + [hi])
            if t.category in _NEG:
                first = next((g for g in targets if t.end <= g[0] and g[1] <= end), None)
                if first is not None:
                    end = next((i for i in range(first[1], end) if lower[i] in SCOPE_END_VERBS), end)
            if t.category == "INDICATION" and any(t.end <= p < end for p in passive):
                continue  # "a patient with effusion and consolidation are seen on CT": on the image after all
            if t.category == "ABSENCE":
                k = t.end
                while k < end and lower[k] in _SKIP_BEFORE_ORGAN:
                    k += 1
                if any(o[0] == k for o in organs):
                    absent_organ = True
                    end = next(o[1] for o in organs if o[0] == k)
                elif not any(t.end <= g[0] and g[1] <= end for g in targets) and \
                        any(t.end <= o[0] and o[1] <= end for o in organs):
                    absent_organ = True  # "absence of neck, body and tail of the pancreas"
        if t.direction in ("BACKWARD", "BIDIRECTIONAL"):
            begin = max([x for x in term_ends if x <= t.start] + [lo])
            if t.category == "ABSENCE" and not any(begin <= g[0] and g[1] <= t.start for g in targets) \
                    and any(begin <= o[0] and o[1] <= t.start for o in organs):
                absent_organ = True
        scopes.append((begin, end, t.category))

    mods = [modifier_of(a, b, scopes) for a, b in targets]
    used = {MODIFIER_NAMES[m] for m in mods if m}
    if not targets:  # no finding word: the modifiers present describe the sentence itself
        used = {MODIFIER_NAMES[c] for _, _, c in scopes
                if c in MODIFIER_NAMES and not (c == "ABSENCE" and absent_organ)}
    cats = {t.category for t in triggers}
    names = [n for n in ("pseudo_negation", "pseudo_normal", "pseudo_hedge") if n in pseudo]
    names += [n for n in ("negated", "normal", "possible", "historical", "hypothetical", "indication") if n in used]
    stmt_kinds = {k for _, _, k in statements}

    def done(status: str, statement: str | None = None) -> UnitContext:
        return UnitContext(status, statement, tuple(names), tuple(scopes), absent_organ)

    if "communication" in stmt_kinds:
        return done("non_finding", "communication")
    if "title" in stmt_kinds:  # "See Figure 2 for ...", "In Table 2, case No. 9."
        return done("non_finding", "title")
    if absent_organ:
        return done("abnormal")
    findings = [m for g, m in zip(targets, mods) if g not in procedures]
    if targets and not findings:
        if normal_cue:  # "normal CT scans, 2 months after chemotherapy"
            return done("normal")
        if "INDICATION" not in cats and "assertion" not in stmt_kinds:
            # "She underwent nephrectomy.", "CT after 5 cycles of chemotherapy": a procedure, no finding
            return done("non_finding", "history")
    if None in mods:
        return done("abnormal")
    if "recommendation" in stmt_kinds:
        return done("non_finding", "recommendation")
    if targets:
        if "POSSIBLE_EXISTENCE" in mods or any(m in _NOT_IMAGE for m in mods):
            return done("uncertain")
        return done("normal")
    if normal_cue or cats & set(_NEG):
        return done("normal")
    if "POSSIBLE_EXISTENCE" in cats:
        return done("uncertain")
    if "assertion" in stmt_kinds or "pseudo_normal" in pseudo:
        # "showing a huge urinary bladder": a finding the vocabulary does not name; a value given
        # beside its reference range ("anteversion of 12 degrees (normal > 22 degrees)") is one too
        return done("abnormal")
    if cats & {"HISTORICAL", "HYPOTHETICAL", "INDICATION"}:
        return done("uncertain")  # "presented with vocal cord immobility", "Histology TRCC 6p21."
    for kind in ("comparison", "history"):
        if kind in stmt_kinds:
            return done("non_finding", kind)
    return done("non_finding", "technique" if "technique" in stmt_kinds else "title")
