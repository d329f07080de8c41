"""Measurements and image references (regular expressions over one unit's text)."""

from __future__ import annotations

import re

_NUM = r"\d+(?:[.,]\d+)?"
_UNIT = r"(?P<unit>mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?|cms)(?![a-z0-9²³])"
_SEP = r"\s*(?:x|×|\*|∗|by)\s*"
#: "2.3 x 1.5 cm", "15 × 12-mm", "4 cm x 3 cm", "8,5 × 7,6 cm", "10mm" (not "cm2"/"cm3")
MEASURE_RE = re.compile(
    rf"(?<![\w.])(?P<nums>{_NUM}(?:\s*(?:mm|cm)?{_SEP}{_NUM})*)\s*-?\s*{_UNIT}", re.IGNORECASE
)
_SPLIT_NUMS = re.compile(rf"{_NUM}")

_S = r"(?:series|ser\.?|se\.?|s)"
_I = r"(?:images?|img\.?|im\.?|instances?|slices?|i)"
_NUMLIST = r"(?P<ims>\d+(?:\s*(?:,|and|-|–|to|through)\s*\d+)*)"
#: "series 3, image 45", "se 2 im 40", "Se:2 Im:40", "series 4 images 10 and 12"
SER_IM_RE = re.compile(rf"\b{_S}\s*[:#]?\s*(?P<se>\d+)\s*[,;/]?\s*{_I}\s*[:#]?\s*{_NUMLIST}", re.IGNORECASE)
#: "image 112 of series 4", "image 112, series 4", "im 40 se 2"
IM_SER_RE = re.compile(rf"\b{_I}\s*[:#]?\s*(?P<im>\d+)\s*(?:,|of|on|in|/)?\s*{_S}\s*[:#]?\s*(?P<se>\d+)", re.IGNORECASE)
#: "(8:63)", "[8:63]", "(series/image 8/63)", "(image 8:63)"
PAREN_RE = re.compile(
    r"[(\[]\s*(?:(?:series\s*/\s*image|se\s*/\s*im|image|img|im)\s*)?(?P<se>\d{1,4})\s*[:/]\s*(?P<im>\d{1,5})\s*[)\]]",
    re.IGNORECASE,
)


def _to_float(s: str) -> float:
    return float(s.replace(",", "."))


def measurements_mm(text: str) -> list[float]:
    """All lengths of the text in mm, in order: "2.3 x 1.5 cm" -> [23.0, 15.0]."""
    out: list[float] = []
    for m in MEASURE_RE.finditer(text):
        unit = m.group("unit").lower()
        factor = 10.0 if unit.startswith("c") else 1.0
        for n in _SPLIT_NUMS.findall(m.group("nums")):
            out.append(round(_to_float(n) * factor, 3))
    return out


#: cheap pre-check: no image reference without one of these
_HINT = re.compile(r"(?i)\b(?:s|se|ser|series|i|im|img|images?|instances?|slices?)\b|[(\[]\s*\d+\s*[:/]")


def image_refs(text: str) -> list[tuple[int, int]]:
    """(series, instance) pairs, in text order, without duplicates. Ranges give both ends."""
    if _HINT.search(text) is None:
        return []
    hits: list[tuple[int, tuple[int, int]]] = []
    taken: list[tuple[int, int]] = []

    def free(m: re.Match) -> bool:
        return all(m.end() <= a or m.start() >= b for a, b in taken)

    for m in SER_IM_RE.finditer(text):
        se = int(m.group("se"))
        for im in re.findall(r"\d+", m.group("ims")):
            hits.append((m.start(), (se, int(im))))
        taken.append(m.span())
    for rx in (IM_SER_RE, PAREN_RE):
        for m in rx.finditer(text):
            if free(m):
                hits.append((m.start(), (int(m.group("se")), int(m.group("im")))))
                taken.append(m.span())
    seen: set[tuple[int, int]] = set()
    out = []
    for _, ref in sorted(hits, key=lambda h: h[0]):
        if ref not in seen:
            seen.add(ref)
            out.append(ref)
    return out
