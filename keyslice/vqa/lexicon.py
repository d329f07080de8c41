"""Organ and abnormality look-ups on plain text for the VQA generators, over :mod:`keyslice.vocab`.

Organ names are the vocabulary's keys (lower-case English with spaces, "adrenal gland"),
so that the organs of a finding row, the questions and the grounding check speak one
vocabulary with step 1. Matching: the vocabulary's multi-word phrases first (longest
wins, so "splenic vein" is not read as "spleen" and "lung window" is no organ at all),
then each remaining word by :func:`keyslice.vocab.word_organs` (terms, derived words,
compounds). A word after an excluded location prefix ("para-aortic") names no organ.

A finding may name a paired organ with its side ("left kidney", "kidney_left"):
:func:`split_side` separates the two.
"""

from __future__ import annotations

import re
from functools import lru_cache

from keyslice.vocab import EXCLUDED_PREFIXES, ORGAN_BLOCKERS, ORGANS, organ_terms, word_organs

_SIDE_RE = re.compile(r"^(?:(left|right)[ _]+)?(.*?)(?:[ _]+(left|right))?$")
_WORD = re.compile(r"[a-z]+")
_EXCLUDED = re.compile(rf"(?<![a-z])(?:{'|'.join(sorted(EXCLUDED_PREFIXES))})[- ]$")


@lru_cache(maxsize=1)
def _phrases() -> tuple[re.Pattern[str], dict[str, tuple[str, ...]]]:
    """One regex over every multi-word organ phrase and blocker (longest first) and its organs."""
    table: dict[str, tuple[str, ...]] = {}
    for term, organs in organ_terms().items():
        if " " in term or "-" in term:
            table[term] = organs
    for term in ORGAN_BLOCKERS:
        table[term] = ()
    alts = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in sorted(table, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alts})(?!\w)"), table


def _split(text: str) -> tuple[str, str | None]:
    text = re.sub(r"[_\s]+", " ", text.strip().lower())
    m = _SIDE_RE.match(text)
    return m.group(2).strip(), m.group(1) or m.group(3)


def split_side(name: str) -> tuple[str, str | None]:
    """``"kidney_left"`` / ``"left kidney"`` -> ``("kidney", "left")``; other names unchanged."""
    base, side = _split(name)
    return canonical_organ(base) or base, side


def find_organs(text: str) -> list[str]:
    """Canonical organs named in ``text``, in order of first appearance."""
    return [name for name, _, _ in find_organ_spans(text)]


def find_organ_spans(text: str, *, first_only: bool = True) -> list[tuple[str, int, int]]:
    """(organ, start, end) of organ mentions (the first of each organ unless ``first_only``
    is false). Multi-word phrases win over the single words inside them."""
    low = text.lower()
    rx, table = _phrases()
    hits: list[tuple[str, int, int]] = []
    taken: list[tuple[int, int]] = []
    for m in rx.finditer(low):
        taken.append(m.span())
        hits.extend((organ, m.start(), m.end()) for organ in table[re.sub(r"\s+", " ", m.group(0))])
    for m in _WORD.finditer(low):
        if any(a <= m.start() < b for a, b in taken):
            continue
        if _EXCLUDED.search(low[max(0, m.start() - 8):m.start()]):
            continue
        hits.extend((organ, m.start(), m.end()) for organ in word_organs(m.group(0)))
    hits.sort(key=lambda h: h[1])
    if not first_only:
        return hits
    seen: dict[str, tuple[str, int, int]] = {}
    for h in hits:
        seen.setdefault(h[0], h)
    return list(seen.values())


def canonical_organ(name: str) -> str | None:
    """The canonical organ a free-form organ name denotes, or None when unknown."""
    text = re.sub(r"[_\s]+", " ", name.strip().lower())
    if text in ORGANS:
        return text
    found = find_organs(text)
    return found[0] if found else None


def organ_display(name: str, side: str | None = None) -> str:
    """Human wording of an organ for question text: ``"the left kidney"``, ``"the lymph nodes"``."""
    organ = ORGANS.get(name)
    words = name.replace("_", " ")
    if organ is not None and organ.plural:
        words = {"lymph node": "lymph nodes", "rib": "ribs"}.get(name, words + "s")
    if side == "bilateral" and organ is not None and organ.paired:
        plural = {"kidney": "kidneys", "adrenal gland": "adrenal glands", "lung": "lungs",
                  "ureter": "ureters", "ovary": "ovaries", "breast": "breasts",
                  "psoas muscle": "psoas muscles"}.get(name, name + "s")
        return f"both {plural}"
    if side in ("left", "right") and (organ is None or organ.paired):
        words = f"{side} {words}"
    return f"the {words}"


def regions_of(name: str) -> tuple[str, ...]:
    organ = ORGANS.get(name)
    return organ.regions if organ else ()


# ---------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)")


def numbers_in(text: str) -> set[str]:
    """Numbers written with digits, normalised (``"2,5"`` -> ``"2.5"``, ``"2.0"`` -> ``"2"``)."""
    out: set[str] = set()
    for raw in _NUMBER_RE.findall(text):
        value = raw.replace(",", ".")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        out.add(value.lstrip("0") or "0")
    return out
