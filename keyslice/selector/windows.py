"""CT display windows and the choice of one per query.

A window maps Hounsfield units to display intensity: ``[L - W/2, L + W/2] -> [0, 1]``.
The selector renders each slice with the window that a radiologist would use for the
organ of the finding, because CLIP-style models only "see" what the window shows (a
lung nodule is invisible in a W400/L40 abdomen window). The names below are the
window names stored in ``selections.window``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    name: str
    width: float
    level: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


WINDOWS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("abdomen", 400.0, 40.0),
        Window("liver", 150.0, 30.0),
        Window("lung", 1500.0, -600.0),
        Window("mediastinum", 350.0, 50.0),
        Window("bone", 1800.0, 400.0),
        Window("brain", 80.0, 40.0),
    )
}

#: Window used when a query names no organ and the model declares no training window.
DEFAULT_WINDOW = "abdomen"

# Keyword -> window. Checked in order; the first keyword contained in an organ name wins.
# Organ names come from the report step (free words such as "liver", "left lung",
# "spine") or TotalSegmentator labels ("lung_upper_lobe_left", "vertebrae_L1").
_ORGAN_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("lung", "lung"), ("lobe", "lung"), ("pulmon", "lung"), ("bronch", "lung"),
    ("pleura", "lung"), ("trachea", "lung"), ("airway", "lung"),
    ("brain", "brain"), ("cerebr", "brain"), ("intracran", "brain"), ("skull base", "brain"),
    ("bone", "bone"), ("vertebra", "bone"), ("spine", "bone"), ("spinal", "bone"),
    ("rib", "bone"), ("skull", "bone"), ("femur", "bone"), ("humerus", "bone"),
    ("sacrum", "bone"), ("sternum", "bone"), ("clavicula", "bone"), ("scapula", "bone"),
    ("hip", "bone"), ("pelvic bone", "bone"), ("skelet", "bone"), ("costal", "bone"),
    ("liver", "liver"), ("hepat", "liver"),
    ("heart", "mediastinum"), ("cardi", "mediastinum"), ("aort", "mediastinum"),
    ("mediastin", "mediastinum"), ("esophag", "mediastinum"), ("thyroid", "mediastinum"),
    ("atri", "mediastinum"), ("pulmonary_vein", "mediastinum"), ("vena_cava", "mediastinum"),
)


def window_for_organ(organ: str) -> str | None:
    """The window name for one organ word, or None when the organ has no specific window."""
    o = organ.lower().replace("-", "_")
    if "pulmonary_vein" in o or "pulmonary_arter" in o or "pulmonary arter" in o:
        return "mediastinum"
    for key, window in _ORGAN_KEYWORDS:
        if key in o:
            return window
    return None


def choose_window(organs: list[str] | tuple[str, ...], default: str | None = None) -> str:
    """The window for a query: that of its first organ with a specific window, else an
    abdominal organ's -> ``abdomen``, else ``default`` (the model's training window) or
    ``DEFAULT_WINDOW``."""
    for organ in organs:
        w = window_for_organ(organ)
        if w is not None:
            return w
    if organs:
        return "abdomen"
    return default or DEFAULT_WINDOW


def get_window(name: str) -> Window:
    """Look up a window by name; also accepts ``"W<width>L<level>"`` (e.g. ``W400L40``, ``W1500L-600``)."""
    if name in WINDOWS:
        return WINDOWS[name]
    import re

    m = re.fullmatch(r"[wW](\d+(?:\.\d+)?)[lL](-?\d+(?:\.\d+)?)", name.strip())
    if m:
        return Window(name, float(m.group(1)), float(m.group(2)))
    raise ValueError(f"unknown window {name!r}; use one of {sorted(WINDOWS)} or 'W<width>L<level>'")
