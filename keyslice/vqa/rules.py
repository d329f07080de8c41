"""Rule-based VQA generation from finding rows, their key slices and their series.

Answer types: ``closed`` (yes/no, or one word of a small fixed vocabulary: a plane, a
phase, a side; no options), ``open`` (a short free answer) and ``choice`` (the same
question with ``options``: the answer plus up to 3 wrong answers that are certainly wrong,
shuffled). Question families (``question_type``):

* ``plane``       "In which plane is this image shown?"              (series orientation)
* ``phase``       "In which contrast phase was this image acquired?" (series phase, only when known)
* ``organ``       "Is there an abnormality in the liver?" yes/no; "Which organ is abnormal in this image?"
* ``abnormality`` "What is seen in the pancreas?" (open); "What type of abnormality is seen in the liver?"
* ``location``    "Where is the mass located?"
* ``laterality``  "On which side is the abnormality?"                (finding laterality)
* ``size``        "What is the size of the mass?"                    (only when the sentence gives one size)

Plane and phase questions are asked once per slice; a question already asked on a slice
(an impression repeating a finding) is not asked again by a later finding.

Yes/no balance: every "yes" (an organ of an abnormal finding) gets a "no" on the same
slice when a safe negative exists. A negative organ is one the report calls normal, or
one no abnormal or uncertain finding of the study mentions; an organ the report calls
abnormal (or uncertain) is never answered "no". Negatives are taken, in order, from:
normal organs whose own key slice is this slice, normal organs of the same body region,
then unmentioned organs of the same region. Left-over "no" quota goes to the normal
findings' own slices ("Is there an abnormality in the liver?" on the slice chosen for
"The liver is normal.").

Everything random (option order, which negative among equals) comes from
``random.Random(f"{seed}:{finding_id}")``: output is deterministic for a seed and does
not depend on the order of the input rows.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from keyslice.vocab import ABNORMALITY_GROUP, ORGANS, PHASE_CHOICES, PHASE_WORDS, PLANES, find_abnormalities
from keyslice.vqa.lexicon import find_organ_spans, organ_display, regions_of, split_side
from keyslice.vqa.rows import make_row, slice_ref

GENERATOR = "rule"
RULES_VERSION = "vqa_rules.v1"   # recorded in prompt_version: the version of these templates

N_OPTIONS = 4

# abnormality types worth naming in "Where is the X located?"
_LOCATABLE = {
    "mass": "mass", "nodule": "nodule", "lesion": "lesion", "cyst": "cyst", "hematoma": "hematoma",
    "abscess": "abscess", "fluid collection": "fluid collection", "calculus": "stone",
    "calcification": "calcification", "metastasis": "metastasis", "aneurysm": "aneurysm",
    "thrombosis": "thrombus", "infarction": "infarct", "laceration": "laceration",
    "consolidation": "consolidation", "hernia": "hernia", "intussusception": "intussusception",
}

# wrong answers for "what type of abnormality": abnormality type -> body regions it is
# plausible in (empty: anywhere). Types of the finding's own groups are never offered.
_DISTRACTOR_TYPES: dict[str, tuple[str, ...]] = {
    "mass": (), "cyst": (), "hematoma": (), "abscess": (), "calcification": (), "lymphadenopathy": (),
    "aneurysm": ("thorax", "abdomen", "pelvis"), "thrombosis": ("thorax", "abdomen", "pelvis"),
    "calculus": ("abdomen", "pelvis"), "infarction": ("head", "abdomen"), "free air": ("abdomen", "pelvis"),
    "ascites": ("abdomen", "pelvis"), "hernia": ("abdomen", "pelvis"), "dilatation": ("abdomen", "pelvis"),
    "wall thickening": ("abdomen", "pelvis"), "intussusception": ("abdomen",),
    "pleural effusion": ("thorax",), "pneumothorax": ("thorax",), "consolidation": ("thorax",),
    "fibrosis": ("thorax",),
}


@dataclass
class _Finding:
    row: Mapping[str, Any]
    finding_id: str
    order: tuple
    text: str
    status: str
    laterality: str | None
    organs: list[tuple[str, str | None]]          # (canonical organ, side or None)
    selections: list[Mapping[str, Any]] = field(default_factory=list)


def _study_key(f: Mapping[str, Any]) -> str:
    if f.get("study_id"):
        return str(f["study_id"])
    return str(f["finding_id"]).rsplit(":", 1)[0]


def _order(f: Mapping[str, Any]) -> tuple:
    idx = f.get("finding_index")
    return (0 if idx is None else 1, idx if idx is not None else 0, str(f["finding_id"]))


def _parse_organs(f: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    lat = f.get("laterality")
    out: list[tuple[str, str | None]] = []
    for raw in f.get("organs") or []:
        organ, side = split_side(str(raw))
        info = ORGANS.get(organ)
        if side is None and lat in ("left", "right", "bilateral") and info is not None and info.paired:
            side = lat
        if (organ, side) not in out:
            out.append((organ, side))
    return out


_VERBS = re.compile(
    r"\b(?:shows?|showing|showed|shown|demonstrat(?:es|ing|ed|e)|reveal(?:s|ing|ed)?|depict(?:s|ing)|"
    r"confirm(?:s|ing)|evidences|indicating|outlining|illustrat(?:es|ing))\b\s*", re.I)
_IMAGING = re.compile(r"\b(?:ct|cect|ncct|scan|image|tomograph\w*|view|section|slice|cta|angiogra\w*)\b", re.I)


def _clean_phrase(text: str) -> str:
    """The finding's content as a short answer: caption boilerplate and pointers removed.

    "CT scan showing hypovascular lesion in left lobe of liver (arrow)." ->
    "hypovascular lesion in left lobe of liver".
    """
    t = re.sub(r"\s*\([^)]*\)", "", text)
    t = re.sub(r"\s+", " ", t).strip()
    m = _VERBS.search(t)
    if m and _IMAGING.search(t[:m.start()]):
        t = t[m.end():]
    else:
        m = re.match(r"^([^:]{0,80}):\s*", t)               # "Abdominal CT-scan: splenomegaly ..."
        if m and _IMAGING.search(m.group(1)):
            t = t[m.end():]
        else:
            m = re.search(r"\bwith\b\s*", t, re.I)          # "CT of the pelvis with large pelvic mass"
            if m and _IMAGING.search(t[:m.start()]) and not re.search(r"contrast", t[m.end():m.end() + 12], re.I):
                t = t[m.end():]
    t = re.sub(r"^(?:that|there (?:is|are)|the presence of|presence of)\s+", "", t, flags=re.I)
    t = re.sub(r"^(?:an?|the)\s+", "", t, flags=re.I)
    t = t.strip(" .;:,")
    if t and not (len(t) > 1 and t[1].isupper()):
        t = t[0].lower() + t[1:]
    return t


_QUAL = (r"(?:left|right|caudate|quadrate|upper|lower|mid|middle|posterior|anterior|inferior|superior|"
         r"lateral|medial|proximal|distal)")
# a part of an organ: "lower pole", "tail", "posterior wall" (generic words need a qualifier)
_SUB = (rf"(?:(?:{_QUAL}\s+){{0,2}}(?:lobe|pole|head|neck|body|tail|dome|uncinate process|hilum|segment\s+[ivx\d]+)"
        rf"|(?:{_QUAL}\s+){{1,2}}(?:wall|aspect|portion|part|third|segment))")
_SUB_BEFORE = re.compile(rf"(?P<sub>{_SUB})\s+of\s+(?:the\s+)?(?:(?P<side>left|right)\s+)?$", re.I)
_LUNG_LOBE = re.compile(r"\b(?P<side>left|right)\s+(?P<lobe>upper|middle|lower)(?:[- ]lobe)?\b", re.I)
_LIVER_LOBE = re.compile(r"\b(?P<lobe>left|right|caudate)\s+(?:hepatic\s+)?lobe\b(?:\s+of\s+(?:the\s+)?liver)?", re.I)
_PANCREAS_PART = re.compile(r"\b(?:(?P<a>(?:(?:head|neck|body|tail)\s*/\s*)?(?:head|neck|body|tail|uncinate process))\s+of\s+(?:the\s+)?pancreas"
                            r"|pancreatic\s+(?P<b>head|neck|body|tail))\b|\b(?P<c>uncinate process)\b", re.I)
_SEGMENTED = {
    "aorta": re.compile(r"\b(?P<q>ascending|descending|thoracic|abdominal|infrarenal|suprarenal)\s+(?:thoracic\s+)?aort", re.I),
    "colon": re.compile(r"\b(?P<q>ascending|descending|transverse|sigmoid)\s+colon", re.I),
}


def _location(text: str, organ: str, side: str | None) -> str:
    """"left lobe of the liver", "tail of the pancreas", "lower pole of the right kidney"."""
    if organ == "liver":
        m = _LIVER_LOBE.search(text)
        if m:
            return f"{m.group('lobe').lower()} lobe of the liver"
    if organ == "lung":
        m = _LUNG_LOBE.search(text)
        if m:
            return f"{m.group('side').lower()} {m.group('lobe').lower()} lobe of the lung"
    if organ == "pancreas":
        m = _PANCREAS_PART.search(text)
        if m:
            return f"{(m.group('a') or m.group('b') or m.group('c')).lower()} of the pancreas"
    if organ in _SEGMENTED:
        m = _SEGMENTED[organ].search(text)
        if m:
            return f"{m.group('q').lower()} {organ}"
    for name, start, _ in find_organ_spans(text, first_only=False):
        if name != organ:
            continue
        m = _SUB_BEFORE.search(text[:start])
        if m:
            sub = re.sub(r"\s+", " ", m.group("sub").lower())
            s = (m.group("side") or (side if side in ("left", "right") else "") or "").lower()
            return f"{sub} of the {s + ' ' if s else ''}{organ}"
    return _bare(organ_display(organ, side))


def _bare(display: str) -> str:
    """"the left kidney" -> "left kidney"; "both kidneys" -> "both kidneys"."""
    return display[len("the "):] if display.startswith("the ") else display


_NUM = r"\d+(?:[.,]\d+)?"
_SIZE = re.compile(
    rf"(?<![\w.,])(?P<dims>{_NUM}(?:\s*(?:mm|cm))?(?:\s*(?:[x×∗*]|by)\s*{_NUM}(?:\s*(?:mm|cm))?){{0,2}})"
    rf"\s*-?\s*(?P<unit>mm|cm)s?(?!\w)", re.I)


def _size(text: str) -> str | None:
    """The one size the sentence gives ("5.3 × 4.4 cm"), or None when none or several."""
    found = list(_SIZE.finditer(text))
    if len(found) != 1:
        return None
    m = found[0]
    dims = re.findall(_NUM, m.group("dims"))
    return " × ".join(d.replace(",", ".") for d in dims) + " " + m.group("unit").lower()


_TEXT_REGIONS = (
    ("pelvis", re.compile(r"\bpelv\w*", re.I)),
    ("abdomen", re.compile(r"\babdom\w*|\bretroperitone\w*|\bintraperitone\w*", re.I)),
    ("thorax", re.compile(r"\bchest\b|\bthora\w*|\bmediastin\w*|\bhemithora\w*", re.I)),
    ("neck", re.compile(r"\bneck\b|\bcervical\b|\bsupraclavicular\b", re.I)),
    ("head", re.compile(r"\bhead\b|\bbrain\b|\bcrani\w*|\bintracranial\b", re.I)),
)


def _regions(organs: Sequence[tuple[str, str | None]], text: str) -> set[str]:
    """Body regions a finding's slice lies in: those of its specific organs (a lymph node or
    the spine could be anywhere), else the region words of its sentence, else any of its
    organs' regions."""
    specific = {r for o, _ in organs if 0 < len(regions_of(o)) <= 2 for r in regions_of(o)}
    if specific:
        return specific
    from_text = {name for name, pattern in _TEXT_REGIONS if pattern.search(text)}
    if from_text:
        return from_text
    return {r for o, _ in organs for r in regions_of(o)}


def _choice(rng: random.Random, answer: str, distractors: Sequence[str], n: int = N_OPTIONS) -> list[str] | None:
    pool = [d for d in dict.fromkeys(distractors) if d != answer]
    if not pool:
        return None
    picks = rng.sample(pool, min(n - 1, len(pool)))
    options = [answer, *picks]
    rng.shuffle(options)
    return options


class _Blocked:
    """Organs some abnormal or uncertain finding of the study mentions: never a 'no'."""

    def __init__(self, findings: Iterable[_Finding]):
        self.entries: set[tuple[str, str | None]] = set()
        for f in findings:
            if f.status != "normal":
                self.entries.update(f.organs)

    def blocks(self, organ: str, side: str | None) -> bool:
        for o, s in self.entries:
            if o != organ:
                continue
            if s in (None, "bilateral") or side in (None, "bilateral") or s == side:
                return True
        return False


def _slice_key(sel: Mapping[str, Any]) -> tuple[str, int]:
    return (str(sel["series_id"]), int(sel["top1_index"]))


def generate_rule_vqa(
    findings: list[dict],
    selections: list[dict],
    series: list[dict],
    *,
    seed: int = 0,
) -> list[dict]:
    """Rule-based VQA rows for findings that have a key slice. See the module docstring."""
    series_by_id = {str(s["series_id"]): s for s in series}
    sels: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in selections:
        sels[str(s["finding_id"])].append(s)
    by_study: dict[str, list[_Finding]] = defaultdict(list)
    for f in findings:
        fid = str(f["finding_id"])
        item = _Finding(
            row=f, finding_id=fid, order=_order(f), text=str(f.get("text") or ""),
            status=str(f.get("status") or "uncertain").lower(), laterality=f.get("laterality"),
            organs=_parse_organs(f),
            selections=sorted(sels.get(fid, []), key=_slice_key),
        )
        by_study[_study_key(f)].append(item)
    rows: list[dict] = []
    for study in sorted(by_study):
        rows.extend(_study_rows(sorted(by_study[study], key=lambda x: x.order), series_by_id, seed))
    return rows


def _study_rows(findings: list[_Finding], series_by_id: Mapping[str, Mapping[str, Any]], seed: int) -> list[dict]:
    blocked = _Blocked(findings)
    mentioned = {o for f in findings for o, _ in f.organs}
    # normal organs (not blocked), with the slices of the findings that state them
    normal_organs: dict[tuple[str, str | None], set[tuple[str, int]]] = defaultdict(set)
    for f in findings:
        if f.status == "normal":
            for organ, side in f.organs:
                if not blocked.blocks(organ, side):
                    normal_organs[(organ, side)].update(_slice_key(s) for s in f.selections)

    rows: list[dict] = []
    seen: set[tuple] = set()
    slices_done: set[tuple[str, int]] = set()
    n_yes = n_no = 0
    for f in findings:
        rng = random.Random(f"{seed}:{f.finding_id}")
        for sel in f.selections:
            key = _slice_key(sel)
            ref = slice_ref(sel)
            ser = series_by_id.get(key[0], {})
            emit = _Emitter(f.finding_id, ref, rows, seen)
            if key not in slices_done:
                slices_done.add(key)
                _slice_questions(emit, ser, rng)
            if f.status != "abnormal":
                continue
            positives = list(f.organs)
            asked = sum(emit(f"Is there an abnormality in {organ_display(organ, side)}?", "yes", "closed", "organ")
                        for organ, side in positives)
            n_yes += asked
            answered_no = 0
            regions = _regions(positives, f.text)
            for organ, side in _negative_candidates(positives, regions, key, normal_organs, blocked, mentioned, rng):
                if answered_no >= asked:
                    break
                if emit(f"Is there an abnormality in {_neg_display(organ, side)}?", "no", "closed", "organ"):
                    answered_no += 1
            n_no += answered_no
            _abnormal_questions(emit, f, blocked, rng)

    # left-over "no" quota: normal findings asked about their own organ on their own slice
    for f in findings:
        if n_no >= n_yes:
            break
        if f.status != "normal":
            continue
        for sel in f.selections:
            for organ, side in f.organs:
                if n_no >= n_yes:
                    break
                if blocked.blocks(organ, side):
                    continue
                emit = _Emitter(f.finding_id, slice_ref(sel), rows, seen)
                if emit(f"Is there an abnormality in {_neg_display(organ, side)}?", "no", "closed", "organ"):
                    n_no += 1
    return rows


class _Emitter:
    """Appends rows for one finding on one slice. ``seen`` is shared by the whole study: a
    question is asked once per slice and answer type, by the first finding that asks it
    (an impression sentence repeating a finding on the same slice adds nothing)."""

    def __init__(self, finding_id: str, ref: Mapping[str, Any], rows: list[dict], seen: set[tuple]):
        self.finding_id, self.ref, self.rows, self.seen = finding_id, ref, rows, seen

    def __call__(self, question: str, answer: str, answer_type: str, question_type: str,
                 options: Sequence[str] | None = None) -> bool:
        row = make_row(finding_id=self.finding_id, question=question, answer=answer,
                       answer_type=answer_type, question_type=question_type, options=options or (),
                       generator=GENERATOR, prompt_version=RULES_VERSION, ref=self.ref)
        key = (self.ref["series_id"], int(self.ref["slice_index"]), answer_type, " ".join(question.lower().split()))
        if key in self.seen:
            return False
        self.seen.add(key)
        self.rows.append(row)
        return True


def _neg_display(organ: str, side: str | None) -> str:
    info = ORGANS.get(organ)
    if side is None and info is not None and info.paired:
        return organ_display(organ, "bilateral").replace("both ", "the ")
    return organ_display(organ, side)


def _slice_questions(emit: _Emitter, ser: Mapping[str, Any], rng: random.Random) -> None:
    plane = str(ser.get("orientation") or "unknown").lower()
    if plane in (*PLANES, "oblique"):
        q = "In which plane is this image shown?"
        emit(q, plane, "closed", "plane")
        opts = _choice(rng, plane, [p for p in PLANES if p != plane])
        if opts:
            emit(q, plane, "choice", "plane", opts)
    phase = PHASE_WORDS.get(str(ser.get("phase") or "unknown").lower())
    if phase:
        q = "In which contrast phase was this image acquired?"
        emit(q, phase, "closed", "phase")
        others = [p for p in PHASE_CHOICES if p != phase and not (phase.endswith("arterial") and p == "arterial")]
        opts = _choice(rng, phase, others)
        if opts:
            emit(q, phase, "choice", "phase", opts)


def _negative_candidates(
    positives: list[tuple[str, str | None]],
    regions: set[str],
    key: tuple[str, int],
    normal_organs: Mapping[tuple[str, str | None], set[tuple[str, int]]],
    blocked: _Blocked,
    mentioned: set[str],
    rng: random.Random,
) -> list[tuple[str, str | None]]:
    """Safe "no" organs for a slice, best first (see the module docstring for the order)."""
    if not positives:
        return []
    pos_organs = {o for o, _ in positives}
    tiers: list[list[tuple[str, str | None]]] = [[], [], []]
    for (organ, side), slices in sorted(normal_organs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if organ in pos_organs and not _other_side_ok(organ, side, positives):
            continue
        if key in slices:
            tiers[0].append((organ, side))
        elif not regions or set(regions_of(organ)) & regions or not regions_of(organ):
            tiers[1].append((organ, side))
    for organ, info in ORGANS.items():
        if not info.negative_ok or not (set(info.regions) & regions):
            continue
        if organ in pos_organs:
            # the other side of a paired organ ("left kidney" when the right one is abnormal)
            for _, side in positives:
                if info.paired and side in ("left", "right"):
                    other = "left" if side == "right" else "right"
                    if not blocked.blocks(organ, other) and organ not in _normal_names(normal_organs):
                        tiers[2].append((organ, other))
            continue
        if organ in mentioned or blocked.blocks(organ, None):
            continue
        tiers[2].append((organ, None))
    chosen: list[tuple[str, str | None]] = []
    for tier in tiers:
        tier = list(dict.fromkeys(tier))
        rng.shuffle(tier)
        for cand in tier:
            if cand[0] not in {c[0] for c in chosen}:
                chosen.append(cand)
    return chosen


def _normal_names(normal_organs: Mapping[tuple[str, str | None], Any]) -> set[str]:
    return {o for o, _ in normal_organs}


def _other_side_ok(organ: str, side: str | None, positives: list[tuple[str, str | None]]) -> bool:
    """A normal paired organ may be a negative beside an abnormal one of the other side."""
    info = ORGANS.get(organ)
    if info is None or not info.paired or side not in ("left", "right"):
        return False
    return all(o != organ or (s in ("left", "right") and s != side) for o, s in positives)


def _abnormal_questions(emit: _Emitter, f: _Finding, blocked: _Blocked, rng: random.Random) -> None:
    organs = f.organs
    types = find_abnormalities(f.text)
    abn = types[0] if types else None
    distinct = list(dict.fromkeys(o for o, _ in organs))
    organ, side = organs[0] if organs else (None, None)

    # organ: which organ (single-organ findings only: otherwise two answers are right)
    if len(distinct) == 1 and organ is not None:
        answer = _bare(organ_display(organ, side)).removeprefix("both ")
        emit("Which organ is abnormal in this image?", answer, "open", "organ")
        regions = _regions(organs, f.text)
        pool = [o for o, info in ORGANS.items()
                if o != organ and info.negative_ok and set(info.regions) & regions and not blocked.blocks(o, None)]
        opts = _choice(rng, answer, pool)
        if opts:
            emit("Which organ is abnormal in this image?", answer, "choice", "organ", opts)

    # abnormality: open description, and the type
    where = organ_display(organ, side) if len(distinct) == 1 and organ else None
    phrase = _clean_phrase(f.text)
    if where and phrase:
        emit(f"What is seen in {where}?", phrase, "open", "abnormality")
    if abn:
        q = f"What type of abnormality is seen in {where}?" if where else "What abnormality is seen in this image?"
        emit(q, abn, "open", "abnormality")
        groups = {ABNORMALITY_GROUP[t] for t in types}
        regions = _regions(organs, f.text)
        pool = [t for t, where_ok in _DISTRACTOR_TYPES.items()
                if ABNORMALITY_GROUP.get(t) not in groups and (not where_ok or not regions or set(where_ok) & regions)]
        opts = _choice(rng, abn, pool)
        if opts:
            emit(q, abn, "choice", "abnormality", opts)

    # location
    if len(distinct) == 1 and organ is not None:
        loc = _location(f.text, organ, side)
        thing = _LOCATABLE.get(abn or "", "abnormality")
        q = f"Where is the {thing} located?"
        emit(q, loc, "open", "location")
        regions = _regions(organs, f.text)
        pool = [_bare(_neg_display(o, None)) for o, info in ORGANS.items()
                if o != organ and info.negative_ok and set(info.regions) & regions and not blocked.blocks(o, None)]
        opts = _choice(rng, loc, pool)
        if opts:
            emit(q, loc, "choice", "location", opts)

    # size: only when the sentence gives exactly one size and names a lesion-like thing
    size = _size(f.text)
    if size and abn in _LOCATABLE:
        emit(f"What is the size of the {_LOCATABLE[abn]}?", size, "open", "size")

    # laterality
    lat = (f.laterality or "").lower()
    if lat in ("left", "right", "bilateral"):
        thing = _LOCATABLE.get(abn or "", "abnormality")
        q = f"On which side is the {thing}?"
        emit(q, lat, "closed", "laterality")
        opts = _choice(rng, lat, [s for s in ("left", "right", "bilateral") if s != lat], n=3)
        if opts:
            emit(q, lat, "choice", "laterality", opts)
