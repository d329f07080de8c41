"""Contrast phase of a CT series from its headers, with confidence and evidence.

Input of :func:`infer_phase`: a mapping (a series row of ``series.v1`` works as is, or a
plain dict) with any of these keys; absent keys count as silent:

================================  ==========================================================
``description``                   SeriesDescription
``protocol``                      ProtocolName
``contrast_agent``                ContrastBolusAgent
``contrast_route``                ContrastBolusRoute
``bolus_delay_s``                 acquisition time minus ContrastBolusStartTime, seconds
``contrast_start_time``           raw ContrastBolusStartTime (only used for the evidence text)
================================  ==========================================================

A pydicom ``Dataset`` (or anything with DICOM keyword attributes) is also accepted; it
is converted with :func:`fields_from_dataset`.

Signals and their strength (the call is the strongest signal; the rules below say how
conflicts are settled):

1. **Timing** (bolus start -> acquisition, per series): < 25 s arterial_early, 25-45 s
   arterial_late, 45-55 s arterial_late (weak), 55-60 s portal_venous (weak), 60-90 s
   portal_venous, 90-150 s portal_venous (weak: late portal / nephrographic),
   >= 150 s delayed. A clearly negative delay (scan before the injection) means
   non_contrast. Confidence 0.85 inside the core windows.
2. **SeriesDescription keywords** (English, German, French, Spanish, Italian, Dutch,
   Portuguese spellings and common abbreviations): phase words 0.75; a generic
   "with contrast" word (``KM``, ``+C``, ``w/ contrast``, ``con contraste``...) gives
   portal_venous at 0.35, because a single contrast series of the body is usually portal.
3. **ProtocolName keywords**: same table at lower weight (0.5 / 0.3), used only when the
   description has no phase word (the protocol is shared by every series of the exam).
4. **ContrastBolusAgent/Route**: an agent (not ``NONE``/``NO``/...) means contrast was
   given (portal_venous at 0.3 when nothing else is known), and so does an IV route with an
   empty agent (the Contrast/Bolus module is written only when contrast was used); an
   oral-only route is not IV contrast and is reported as such.

Conflict rule (documented, tested): when the signals disagree on contrast vs. no
contrast, *timing* wins if it exists (it is measured per acquisition); otherwise the
*series-specific description* wins over the agent tag (scanners copy the agent onto
every later series of an exam, including reconstructions of a native scan). Either way
the confidence is lowered (x0.6) and the losing evidence is kept with a ``conflict:``
prefix. Two different contrast phases from description keywords vs. timing: timing wins,
confidence x0.7.

When every header is silent, :func:`totalsegmentator_phase` is the image-based fallback
(TotalSegmentator's ``get_ct_contrast_phase``). It needs TotalSegmentator, xgboost and the
fast "total" weights; without them it returns ``unknown`` with the evidence
``"unknown (TotalSegmentator not installed / weights missing): ..."``.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from keyslice.vocab import PHASES


@dataclass
class PhaseCall:
    phase: str
    confidence: float
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; expected one of {PHASES}")
        self.confidence = round(float(self.confidence), 3)


# --------------------------------------------------------------------------- keyword table

_B = r"(?<![a-z0-9])"      # word start (digits count as word characters: 'pv70' is not 'pv')
_E = r"(?![a-z])"          # word end (a digit may follow: 'art35s')

# (phase, pattern, label) checked in order; the first phase family found at the *earliest
# specificity* wins, see _keyword_calls. Text is lower-cased and umlauts folded both ways.
KEYWORDS: list[tuple[str, str, str]] = [
    # --- non-contrast
    ("non_contrast", _B + r"non[\s\-_]?(?:con|contrast|contr|enhanced|ce)" + _E, "non-contrast"),
    ("non_contrast", _B + r"un[\s\-_]?enhanced" + _E, "unenhanced"),
    ("non_contrast", _B + r"pre[\s\-_]?(?:contrast|con|km|iv|injection)" + _E, "pre-contrast"),
    ("non_contrast", _B + r"(?:w/o|wo|without|ohne|sin|sans|senza|zonder|sem)[\s\-_/]*(?:i\.?v\.?\s*)?(?:contrast[a-z]*|kontrast[a-z]*|km|cm|contraste|contrasto|injection|iv|mdc|mezzo di contrasto)" + _E, "without contrast"),
    # US shorthand 'CT HEAD C-' (not the 'C-A-P' of chest-abdomen-pelvis)
    ("non_contrast", _B + r"c\s?-(?![a-z0-9])", "C-"),
    ("non_contrast", _B + r"w/o" + _E, "without contrast"),
    ("non_contrast", _B + r"nati(?:v|ve|f|vo|va)" + _E, "native"),
    ("non_contrast", _B + r"nat" + _E, "nat"),
    ("non_contrast", _B + r"(?:nc|ncct|ncect|nce|noncon)" + _E, "NC"),
    ("non_contrast", _B + r"plain" + _E, "plain"),
    ("non_contrast", _B + r"(?:leer|leeraufnahme|nativphase|nativserie)" + _E, "leer/nativ"),
    ("non_contrast", _B + r"(?:ca[\s\-_]?score|calcium[\s\-_]?scor\w*|cacs|agatston)" + _E, "calcium score"),
    ("non_contrast", _B + r"blanco" + _E, "blanco"),
    ("non_contrast", _B + r"(?:sin|sans|senza|zonder|sem)\s+(?:contraste|contrasto|contrast)" + _E, "without contrast"),
    # --- arterial, early / late first
    ("arterial_early", _B + r"(?:early|fruh|frueh|precoce|temprana|precoz)[\s\-_]*(?:arterial|arteriell\w*|art|arteria\w*|arteriel\w*)" + _E, "early arterial"),
    # Romance languages put the adjective after: 'fase arterial precoz', 'phase artérielle précoce'
    ("arterial_early", _B + r"(?:arterial|arteriale|arteriel\w*)[\s\-_]+(?:precoce|precoz|temprana|temprano)" + _E, "early arterial"),
    ("arterial_early", _B + r"(?:fruharteriell\w*|fruehartriell\w*|fruehaterielle\w*|frueharteriell\w*)" + _E, "frueharteriell"),
    ("arterial_early", _B + r"(?:cta|angio\w*|ct[\s\-_]?angio\w*|aort\w*|pe|lae|runoff|run[\s\-_]off|tavi|tavr|pulmonary[\s\-_]angio\w*)" + _E, "angiography"),
    ("arterial_late", _B + r"(?:late|spat|spaet|tardiv\w*|tardia)[\s\-_]*(?:arterial|arteriell\w*|art|arteria\w*|arteriel\w*)" + _E, "late arterial"),
    ("arterial_late", _B + r"(?:arterial|arteriale|arteriel\w*)[\s\-_]+(?:tardia|tardio|tardiva|tardive|tardif)" + _E, "late arterial"),
    ("arterial_late", _B + r"(?:spatarteriell\w*|spaetarteriell\w*)" + _E, "spaetarteriell"),
    ("arterial_late", _B + r"(?:pancreatic|pankrea\w*|pancreas[\s\-_]phase)" + _E, "pancreatic/late arterial"),
    ("arterial", _B + r"(?:art|arterial|arteriell\w*|arteriel\w*|arteria|arteriale|arterieel|arteriele|arterielle|arter)" + _E, "arterial"),
    ("arterial", _B + r"(?:aph|art[\s\-_]?phase)" + _E, "arterial phase"),
    # --- delayed before portal ('late venous' -> delayed; 'venous' alone -> portal)
    ("delayed", _B + r"(?:delay\w*|late|spat\w*|spaet\w*|spaetphase|equilibrium|equil|tardia|tardiva|tardive|tardio|tardif|retard\w*|verzog\w*|laat)" + _E, "delayed"),
    ("delayed", _B + r"(?:excretory|excretion|exkret\w*|ausscheid\w*|urogra\w*|uro|ctu|pyelo\w*|nephro[\s\-_]?excret\w*|escretor\w*|excretor\w*)" + _E, "excretory/urographic"),
    ("delayed", r"(?<![0-9a-z.])(?:[3-9]|1[0-9]|20)[\s\-_]?(?:min|minutes|minuten)" + _E, "minutes after injection"),
    # --- portal venous
    ("portal_venous", _B + r"(?:pv|pvp|pvct|portal\w*|portoven\w*|porto[\s\-_]?venous|pfortader\w*|portale|portalvenos\w*|portalvenoes\w*)" + _E, "portal venous"),
    ("portal_venous", _B + r"(?:ven|venous|venos|venoes|venose|venoese|venosa|venoso|veneuze|veineu\w*|venosus|vp|vph)" + _E, "venous"),
    ("portal_venous", _B + r"nephrogra\w*" + _E, "nephrographic"),
    ("portal_venous", _B + r"(?:hepatic[\s\-_]?phase|parenchym\w*)" + _E, "parenchymal"),
    # --- generic contrast (phase unknown)
    ("contrast", _B + r"(?:km|kontrast\w*|contrast\w*|contraste|contrasto|mdc|iv|i\.v\.|enhanced|ce|cect|post[\s\-_]?contrast|post[\s\-_]?km)" + _E, "contrast"),
    ("contrast", r"(?:\+\s*c|c\s*\+|\+\s*km|\+\s*kb|\+\s*iv|w/\s*(?:i\.?v\.?\s*)?(?:contrast|c)|(?<![a-z])w\s+con(?:trast)?(?![a-z])|com\s+contraste|with\s+(?:iv\s+)?contrast|mit\s+km|mit\s+kontrast\w*|con\s+contraste|con\s+mdc|avec\s+(?:injection|contraste)|met\s+contrast)", "with contrast"),
]
_COMPILED = [(ph, re.compile(p), label) for ph, p, label in KEYWORDS]
_SECONDS = re.compile(r"(?<![0-9a-z.])(\d{2,3})[\s\-_]?(?:s|sec|secs|second|seconds|sek|sekunden)(?![a-z])")

_NEGATIVE_AGENT = re.compile(r"^(?:none|no|n|nein|non|0|n/a|na|null|native|nativ|without|keine?|-+)$")
_FAMILY = {"arterial_early": "arterial", "arterial_late": "arterial", "arterial": "arterial"}


def _fold(text: str) -> str:
    """Lower case without diacritics ('Venös' -> 'venos', 'Arteriële' -> 'arteriele', 'ß' -> 'ss')."""
    t = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss"))
    return "".join(ch for ch in t if not unicodedata.combining(ch))


def _variants(text: str) -> list[str]:
    """The folded text plus a variant with German digraphs (ae/oe/ue) collapsed."""
    t = _fold(text)
    t2 = t.replace("ae", "a").replace("oe", "o").replace("ue", "u")
    return [t] if t2 == t else [t, t2]


def keyword_phase(text: str | None) -> tuple[str | None, str | None]:
    """(phase, matched label) of the most specific keyword in ``text``, or (None, None).

    ``phase`` may be ``"contrast"`` (contrast given, phase not said). Non-contrast words
    win over generic contrast words ('KM nativ'); a specific phase word wins over both
    non-contrast and generic words only when no non-contrast word is present.
    """
    if not text:
        return None, None
    found: dict[str, tuple[int, str, str]] = {}
    for variant in _variants(text):
        for order, (ph, rx, label) in enumerate(_COMPILED):
            m = rx.search(variant)
            if m and ph not in found:
                found[ph] = (order, label, m.group(0))
        m = _SECONDS.search(variant)
        if m and "timing_text" not in found:
            found["timing_text"] = (999, f"{m.group(1)} s in text", m.group(0))
    if not found:
        return None, None
    # 'late arterial' also matches the plain 'late' (delayed) and 'arterial' patterns: drop
    # the generic ones that are part of a more specific match
    if "arterial_late" in found:
        found.pop("delayed", None)
        found.pop("arterial", None)
    if "arterial_early" in found:
        found.pop("arterial", None)
    if "non_contrast" in found:
        phases = {p for p in found if p not in ("non_contrast", "contrast", "timing_text")}
        if not phases:
            return "non_contrast", f"'{found['non_contrast'][2]}' ({found['non_contrast'][1]})"
        # both a no-contrast word and a phase word: 'pre' words lose against explicit phases
        label = found["non_contrast"][1]
        if label in ("pre-contrast", "native", "nat", "NC", "C-", "without contrast", "non-contrast", "unenhanced"):
            return "conflict", "; ".join(f"'{v[2]}' ({v[1]})" for v in found.values())
    specific = [(v[0], p) for p, v in found.items() if p in PHASES]
    if specific:
        # more than one family -> prefer the one matched by the most specific rule (lowest order)
        specific.sort()
        ph = specific[0][1]
        others = sorted({_FAMILY.get(p, p) for _, p in specific} - {_FAMILY.get(ph, ph)})
        label = f"'{found[ph][2]}' ({found[ph][1]})"
        if others:
            label += f"; also {', '.join(others)} words"
        return ph, label
    if "timing_text" in found:
        secs = int(re.match(r"\d+", found["timing_text"][1]).group(0))
        call = timing_phase(float(secs))
        if call is not None:
            return call[0], f"'{found['timing_text'][2]}' (delay written in the text)"
    if "contrast" in found:
        return "contrast", f"'{found['contrast'][2]}' ({found['contrast'][1]})"
    return None, None


def timing_phase(delay_s: float) -> tuple[str, float] | None:
    """Phase and confidence from the seconds between bolus start and acquisition."""
    if delay_s is None:
        return None
    if delay_s < -5:
        return "non_contrast", 0.8
    if delay_s < 0:
        return None  # clocks within a few seconds: say nothing
    if delay_s < 25:
        return "arterial_early", 0.85
    if delay_s < 45:
        return "arterial_late", 0.85
    if delay_s < 55:
        return "arterial_late", 0.5
    if delay_s < 60:
        return "portal_venous", 0.5
    if delay_s < 90:
        return "portal_venous", 0.85
    if delay_s < 150:
        return "portal_venous", 0.6
    if delay_s < 6 * 3600:
        return "delayed", 0.8
    return None  # > 6 h: the start time belongs to another day or exam


def agent_given(agent: str | None) -> bool | None:
    """True if the ContrastBolusAgent says contrast was given, False if it says none, None if absent."""
    if agent is None or not str(agent).strip():
        return None
    return not _NEGATIVE_AGENT.match(str(agent).strip().lower())


def fields_from_dataset(ds: Any) -> dict[str, Any]:
    """Phase input fields from a pydicom Dataset (or an object with DICOM keyword attributes)."""
    from keyslice.dicom.series import bolus_delay_s  # local import: avoid a cycle

    def g(name):
        v = getattr(ds, name, None)
        return None if v is None else str(v).strip() or None

    return {
        "description": g("SeriesDescription"),
        "protocol": g("ProtocolName"),
        "contrast_agent": g("ContrastBolusAgent"),
        "contrast_route": g("ContrastBolusRoute"),
        "contrast_start_time": g("ContrastBolusStartTime"),
        "bolus_delay_s": bolus_delay_s(g("AcquisitionTime"), g("ContrastBolusStartTime")),
    }


def infer_phase(header_fields: Mapping[str, Any] | Any) -> PhaseCall:
    """Contrast phase from header fields (see the module docstring for keys and rules)."""
    if not isinstance(header_fields, Mapping):
        header_fields = fields_from_dataset(header_fields)
    f = header_fields
    evidence: list[str] = []
    desc, proto = f.get("description"), f.get("protocol")
    agent, route = f.get("contrast_agent"), f.get("contrast_route")
    delay = f.get("bolus_delay_s")

    # --- tag evidence
    given = agent_given(agent)
    oral_only = bool(route) and re.search(r"oral|po\b|per os", str(route).lower()) is not None \
        and re.search(r"\biv\b|intraven|i\.v\.", str(route).lower()) is None
    if given:
        evidence.append(f"ContrastBolusAgent='{agent}'")
    elif given is False:
        evidence.append(f"ContrastBolusAgent='{agent}' (none)")
    if route:
        evidence.append(f"ContrastBolusRoute='{route}'" + (" (oral only: not IV contrast)" if oral_only else ""))
    if oral_only:
        given = False
    elif given is None and route and re.search(r"\biv\b|intraven|i\.v\.|intra-?arter|\bia\b", str(route).lower()):
        # the Contrast/Bolus module is only written when contrast was used; its agent is type 2 (may be empty)
        given = True
        evidence.append("IV route recorded without an agent name: contrast was given")
    tcall = None
    if delay is not None and (given is not False or oral_only is False):
        tcall = timing_phase(float(delay))
        start = f.get("contrast_start_time")
        evidence.append(f"bolus start -> acquisition {float(delay):.0f} s" + (f" (ContrastBolusStartTime {start})" if start else "")
                        + (f" => {tcall[0]}" if tcall else " (no phase from this delay)"))
    if oral_only and tcall is not None and tcall[0] != "non_contrast":
        tcall = None

    # --- keyword evidence
    dphase, dlabel = keyword_phase(desc)
    pphase, plabel = keyword_phase(proto)
    if dphase:
        evidence.append(f"SeriesDescription {dlabel} => {dphase}")
    if pphase:
        evidence.append(f"ProtocolName {plabel} => {pphase}")

    # text call: description first, protocol only when the description says nothing specific
    text_call: tuple[str, float, str] | None = None
    if dphase and dphase not in ("contrast", "conflict"):
        text_call = (dphase, 0.75, "description")
    elif dphase == "conflict":
        text_call = None
    elif pphase and pphase not in ("contrast", "conflict"):
        text_call = (pphase, 0.5, "protocol")
    generic_contrast = dphase == "contrast" or (pphase == "contrast" and not text_call)

    # --- combine
    if tcall is not None:
        phase, conf = tcall
        if text_call is not None:
            t_nc = text_call[0] == "non_contrast"
            c_nc = phase == "non_contrast"
            if t_nc != c_nc:
                evidence.append(f"conflict: {text_call[2]} says {text_call[0]}, timing says {phase}; timing wins")
                conf *= 0.6
            elif _FAMILY.get(text_call[0], text_call[0]) != _FAMILY.get(phase, phase):
                evidence.append(f"conflict: {text_call[2]} says {text_call[0]}, timing says {phase}; timing wins")
                conf *= 0.7
            else:
                conf = min(0.95, conf + 0.1)
                if text_call[0] in ("arterial_early", "arterial_late") and phase in ("arterial_early", "arterial_late") \
                        and text_call[0] != phase and text_call[2] == "description":
                    evidence.append(f"description says {text_call[0]}, timing says {phase}; timing wins")
        elif given is False and phase != "non_contrast":
            evidence.append("conflict: agent tag says none, timing says contrast; timing wins")
            conf *= 0.6
        return PhaseCall(phase, conf, evidence)

    if text_call is not None:
        phase, conf, src = text_call
        if given and phase == "non_contrast":
            evidence.append(f"conflict: ContrastBolusAgent says contrast, {src} says non_contrast; the series "
                            f"{src} wins (the agent tag is often copied onto every series of an exam)")
            conf *= 0.6
        elif given is False and phase != "non_contrast" and not oral_only:
            evidence.append(f"conflict: ContrastBolusAgent says none, {src} says {phase}; the {src} wins")
            conf *= 0.6
        elif given and phase != "non_contrast":
            conf = min(0.9, conf + 0.05)
        if src == "description" and pphase and pphase not in ("contrast", "conflict") \
                and (pphase == "non_contrast") != (phase == "non_contrast"):
            evidence.append(f"conflict: protocol says {pphase}; the series description wins")
            conf *= 0.8
        return PhaseCall(phase, conf, evidence)

    if dphase == "conflict":
        evidence.append("conflict: the description has both non-contrast and contrast-phase words")
        if given:
            return PhaseCall("portal_venous", 0.25, evidence)
        return PhaseCall("unknown", 0.0, evidence)

    if given or generic_contrast:
        if given is False and generic_contrast:
            evidence.append("conflict: agent tag says none, text says contrast; text wins with low confidence")
            return PhaseCall("portal_venous", 0.2, evidence)
        evidence.append("contrast given, phase not stated: assumed portal venous (the usual single-phase body CT)")
        return PhaseCall("portal_venous", 0.35 if generic_contrast and given else 0.3, evidence)

    if given is False or oral_only:
        evidence.append("no IV contrast according to the tags")
        return PhaseCall("non_contrast", 0.6, evidence)

    evidence.append("headers silent: no contrast tags, no phase words")
    return PhaseCall("unknown", 0.0, evidence)


def headers_silent(call: PhaseCall) -> bool:
    return call.phase == "unknown" and call.confidence == 0.0 and any("headers silent" in e for e in call.evidence)


# --------------------------------------------------------------------------- TotalSegmentator fallback

TS_UNKNOWN = "unknown (TotalSegmentator not installed / weights missing)"
_TS_MAP = {"native": "non_contrast", "arterial_early": "arterial_early", "arterial_late": "arterial_late",
           "portal_venous": "portal_venous", "delayed": "delayed"}


def totalsegmentator_available() -> tuple[bool, str]:
    """Whether TotalSegmentator's phase classifier can run here, and why not."""
    for mod in ("totalsegmentator", "xgboost", "nibabel"):
        if importlib.util.find_spec(mod) is None:
            return False, f"python package {mod!r} not installed"
    try:
        from totalsegmentator.config import get_weights_dir  # type: ignore

        weights = Path(get_weights_dir())
    except Exception as exc:  # pragma: no cover - depends on the installed version
        return False, f"cannot locate TotalSegmentator weights ({type(exc).__name__}: {exc})"
    if not weights.is_dir() or not any(weights.glob("Dataset297_*")):
        return False, f"fast 'total' weights (Dataset297) not found under {weights}"
    return True, "ok"


def totalsegmentator_phase(files: Sequence[Path], *, loader: Callable[[Sequence[Path]], Any] | None = None) -> PhaseCall:
    """Image-based phase via TotalSegmentator's ``get_ct_contrast_phase`` (decodes pixels).

    Returns ``unknown`` with the evidence :data:`TS_UNKNOWN` when it cannot run; never raises
    for a missing install. ``loader`` turns the files into a NIfTI image (default:
    :func:`series_to_nifti`).
    """
    ok, why = totalsegmentator_available()
    if not ok:
        return PhaseCall("unknown", 0.0, [f"{TS_UNKNOWN}: {why}"])
    try:
        from totalsegmentator.bin.totalseg_get_phase import get_ct_contrast_phase  # type: ignore

        img = (loader or series_to_nifti)(files)
        res = get_ct_contrast_phase(img)
    except Exception as exc:
        return PhaseCall("unknown", 0.0, [f"unknown (TotalSegmentator phase prediction failed: {type(exc).__name__}: {exc})"])
    phase = _TS_MAP.get(str(res.get("phase")), "unknown")
    prob = float(res.get("probability", 0.0))
    return PhaseCall(phase, 0.6 * prob,
                     [f"TotalSegmentator phase: {res.get('phase')} (pi_time {res.get('pi_time')} s, "
                      f"probability {prob}, stddev {res.get('stddev')})"])


def series_to_nifti(files: Sequence[Path]):
    """Stack sorted slices into a NIfTI image in RAS (decodes pixels: fallback use only)."""
    import nibabel as nib
    import numpy as np
    import pydicom

    dss = [pydicom.dcmread(str(p)) for p in files]
    vol = np.stack([d.pixel_array.astype(np.float32) * float(getattr(d, "RescaleSlope", 1) or 1)
                    + float(getattr(d, "RescaleIntercept", 0) or 0) for d in dss], axis=-1)
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    ps = [float(v) for v in dss[0].PixelSpacing]
    p0 = np.array([float(v) for v in dss[0].ImagePositionPatient])
    if len(dss) > 1:
        step = (np.array([float(v) for v in dss[-1].ImagePositionPatient]) - p0) / (len(dss) - 1)
    else:
        step = np.cross(row, col) * float(getattr(dss[0], "SliceThickness", 1) or 1)
    affine = np.eye(4)
    # voxel (i=column, j=row, k=slice) -> LPS, then LPS -> RAS
    affine[:3, 0] = row * ps[1]
    affine[:3, 1] = col * ps[0]
    affine[:3, 2] = step
    affine[:3, 3] = p0
    affine = np.diag([-1, -1, 1, 1]) @ affine
    return nib.Nifti1Image(np.transpose(vol, (1, 0, 2)), affine)
