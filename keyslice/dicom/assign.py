"""Choose, for each finding, the series it is read on (assignments table).

Order of preference (a lexicographic score, highest wins):

1. phase: the phase the finding asks for (``phase_hint``; an ``arterial`` hint accepts any
   arterial sub-phase, an exact sub-phase match ranks first); with no hint, or when the
   asked phase is not available, portal venous; otherwise phase does not matter
   (a higher phase confidence breaks ties);
2. kernel: soft-tissue over lung/bone kernels; for lung findings (an organ containing
   ``lung``) a lung kernel first, then soft tissue;
3. slice thickness: 1-5 mm first, then thinner than 1 mm, then thicker than 5 mm, then unknown;
4. geometry: uniform spacing and no gantry tilt; more slices (coverage);
5. ties: lowest series number, then series_id (deterministic).

Findings with status ``non_finding`` are not assigned.

Kernel families come from ConvolutionKernel (Siemens B/Br/I/Q/H + number, GE names,
Philips letters, Canon FC numbers) and description words ('lung', 'bone', 'weichteil'...).
"""

from __future__ import annotations

import re
from typing import Any

from keyslice.errors import NoUsableSeriesError
from keyslice.vocab import PHASE_ALIASES

_LUNG_K = re.compile(r"(?<![a-z])(?:lung\w*|lunge\w*|pulmo\w*|chest|bl\d+|yc|yb|fc5\d|fc8\d|l|la|lb|lc|ld|le|detail\w*)(?![a-z])")
_BONE_K = re.compile(r"(?<![a-z])(?:bone\w*|boneplus|knochen|osteo\w*|edge|sharp|ya|yd|ye|fc3\d|h[67]\d\w*|d|e|br?[6-9]\d\w*|i[6-9]\d\w*|ur[6-9]\d\w*|hr[6-9]\d\w*|qr[6-9]\d\w*)(?![a-z])")
_SOFT_K = re.compile(r"(?<![a-z])(?:standard|std|soft\w*|weichteil\w*|mediastin\w*|smooth|body|abd\w*|b|c|a|ub|ua|fc0\d|fc1\d|fc2\d|br?[1-4]\d\w*|i[1-4]\d\w*|qr[1-4]\d\w*|hr?[1-4]\d\w*|j[1-4]\d\w*|[bh]r?5\d\w*|stnd)(?![a-z])")
_LUNG_DESC = re.compile(r"(?<![a-z])(?:lung\w*|lunge\w*|pulmo\w*|hrct|parenchym\w*)(?![a-z])")
_BONE_DESC = re.compile(r"(?<![a-z])(?:bone\w*|knochen\w*|osteo\w*|skelet\w*)(?![a-z])")
_SOFT_DESC = re.compile(r"(?<![a-z])(?:soft[\s\-_]?tissue|weichteil\w*|mediastin\w*|standard)(?![a-z])")


def kernel_family(kernel: str | None, description: str | None = None) -> str:
    """'lung', 'bone', 'soft' or 'unknown' from the kernel name and the description."""
    d = (description or "").lower()
    if _LUNG_DESC.search(d):
        return "lung"
    if _BONE_DESC.search(d):
        return "bone"
    k = (kernel or "").lower().split("\\")[0].strip()
    if k:
        if _LUNG_K.search(k):
            return "lung"
        if _BONE_K.search(k):
            return "bone"
        if _SOFT_K.search(k):
            return "soft"
    if _SOFT_DESC.search(d):
        return "soft"
    return "unknown"


def normalise_phase_hint(hint: str | None) -> str | None:
    """The canonical phase a finding's phase hint asks for (``keyslice.vocab.PHASE_ALIASES``), or None."""
    if not hint:
        return None
    key = re.sub(r"[\s\-]+", "_", str(hint).strip().lower())
    return PHASE_ALIASES.get(key, PHASE_ALIASES.get(key.replace("_phase", ""), None))


def _family(phase: str) -> str:
    return "arterial" if phase.startswith("arterial") else phase


def _is_lung_finding(f: dict) -> bool:
    organs = [str(o).lower() for o in (f.get("organs") or [])]
    if f.get("organ"):
        organs.append(str(f["organ"]).lower())
    return any("lung" in o or o in ("pulmonary", "lungs") for o in organs)


def _thickness_rank(t: float | None) -> int:
    if t is None:
        return 1
    if 1.0 <= t <= 5.0:
        return 4
    if t < 1.0:
        return 3
    return 2


def _phase_rank(phase: str, want: str | None) -> int:
    if want:
        if phase == want:
            return 5
        if want == "arterial" and _family(phase) == "arterial":
            return 5
        if _family(phase) == _family(want):
            return 4
    if phase == "portal_venous":
        return 2
    return 0


def _label(row: dict) -> str:
    num = row.get("series_number")
    desc = row.get("description")
    bits = [f"series {num}" if num is not None else f"series {row['series_id']}"]
    if desc:
        bits.append(f"'{desc}'")
    return " ".join(bits)


_LOST_ON = ("phase", "kernel", "thickness", "geometry", "phase confidence", "coverage")


def _lost_on(theirs: tuple, ours: tuple, row: dict) -> str:
    """The first criterion on which a series ranked below the chosen one, in words."""
    i = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), len(ours))
    if i >= len(_LOST_ON):
        return "tie, lower series number wins"
    what = _LOST_ON[i]
    if what == "phase":
        return f"phase {row['phase']}"
    if what == "kernel":
        return f"{kernel_family(row.get('kernel'), row.get('description'))} kernel"
    if what == "thickness":
        t = row.get("slice_thickness_mm")
        return "slice thickness unknown" if t is None else f"{t:g} mm slices, 1-5 mm preferred"
    if what == "geometry":
        return "uneven spacing or gantry tilt"
    if what == "phase confidence":
        return f"phase confidence {float(row.get('phase_confidence') or 0):.2f}"
    return f"{row.get('n_slices') or 0} slices"


def assign_series(findings: list[dict], series_rows: list[dict]) -> list[dict]:
    """One assignments row (finding_id, series_id, phase, reason) per finding.

    Rows with status ``non_finding`` (a sentence that states no finding: communication,
    technique, comparison...) get no series, hence no key slice and no questions.
    """
    kept = [r for r in series_rows if r.get("kept")]
    if not kept:
        why = "; ".join(f"{_label(r)}: {r.get('drop_reason') or 'dropped'}" for r in series_rows) or "no series at all"
        raise NoUsableSeriesError(f"no usable series in the study ({why})")
    findings = [f for f in findings if f.get("status") != "non_finding"]
    available = sorted({r["phase"] for r in kept})
    out: list[dict[str, Any]] = []
    for f in findings:
        want = normalise_phase_hint(f.get("phase_hint"))
        lung = _is_lung_finding(f)

        def score(r: dict) -> tuple:
            kf = kernel_family(r.get("kernel"), r.get("description"))
            if lung:
                krank = {"lung": 3, "soft": 2, "bone": 2, "unknown": 1}[kf]  # sharp kernels also serve the lung
            else:
                krank = {"soft": 3, "unknown": 2, "lung": 0, "bone": 0}[kf]
            geom = (1 if r.get("spacing_uniform") is not False else 0) + (1 if abs(r.get("gantry_tilt_deg") or 0) <= 0.5 else 0)
            num = r.get("series_number")
            return (_phase_rank(r["phase"], want), krank, _thickness_rank(r.get("slice_thickness_mm")), geom,
                    round(float(r.get("phase_confidence") or 0), 2), r.get("n_slices") or 0,
                    -(num if num is not None else 1 << 30), r["series_id"])

        best = max(kept, key=score)
        s = score(best)
        parts: list[str] = []
        raw_hint = f.get("phase_hint")
        if want:
            if s[0] >= 4:
                parts.append(f"finding asks for {want}; {best['phase']} series available")
            else:
                fb = "portal venous" if best["phase"] == "portal_venous" else "best available series"
                parts.append(f"finding asks for {want} but no such series (phases: {', '.join(available)}); fell back to {fb}")
        elif raw_hint:
            parts.append(f"phase hint {raw_hint!r} not understood; default preference")
        if not want or s[0] < 4:
            if best["phase"] == "portal_venous":
                parts.append("portal venous preferred by default")
            elif "portal_venous" not in available:
                parts.append(f"no portal venous series; best axial series by kernel/thickness (phase {best['phase']})")
        kf = kernel_family(best.get("kernel"), best.get("description"))
        parts.append(f"{kf} kernel" + (f" {best['kernel']}" if best.get("kernel") else "") + (" (lung finding)" if lung else ""))
        t = best.get("slice_thickness_mm")
        parts.append(f"{t:g} mm slices" if t is not None else "slice thickness unknown")
        if len(kept) > 1:
            losers = [f"{_label(r)} ({_lost_on(score(r), s, r)})" for r in kept if r is not best]
            parts.append(f"chosen among {len(kept)} usable series over " + ", ".join(losers))
        out.append({
            "finding_id": f["finding_id"],
            "series_id": best["series_id"],
            "phase": best["phase"],
            "reason": f"{_label(best)}: " + "; ".join(parts),
        })
    return out
