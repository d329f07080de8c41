"""Rule-based VQA generation from the structured fields of finding rows.

Every question and answer comes from what step 1 recorded for a finding: ``status``,
``organs``, ``laterality``, ``measurements_mm``, ``abnormalities`` (types the sentence
asserts) and ``negated_abnormalities`` (types it negates). The sentence text is never
re-read for what is present or absent: it only shapes wording (the open "What is seen"
answer copies the sentence, a location answer may name the part of the organ the sentence
names).

Answer types: ``closed`` (yes/no, or one word of a small fixed vocabulary: a plane, a
phase, a side; no options), ``open`` (a short free answer) and ``choice`` (the same
question with ``options``: the answer plus up to 3 wrong answers, shuffled). Question
families (``question_type``):

* ``plane``       "In which plane is this image shown?"              (series orientation)
* ``phase``       "In which contrast phase was this image acquired?" (series phase, only when known)
* ``organ``       "Is there an abnormality in the liver?" yes/no; "Which organ is abnormal in this image?"
* ``abnormality`` "What is seen in the pancreas?" (open); "What type of abnormality is seen in the liver?";
                  "Is there inflammation in the colon?" (no: a type the report negates)
* ``location``    "Where is the mass located?"
* ``laterality``  "On which side is the abnormality?"                (finding laterality)
* ``size``        "What is the size of the mass?"                    (finding measurements_mm)

What each status produces:

* ``abnormal``: "yes" to "Is there an abnormality in <organ>?" for each organ (none when the
  sentence names several organs and negates something: the row does not say which organ
  the negation belongs to); which organ, what is seen, where (single-organ findings), on
  which side, how large; the abnormality type only from ``abnormalities`` (the first
  asserted type that the sentence does not also negate; distractors are types of groups
  the finding does not assert, a negated type being a certainly wrong option). A negated
  type is never an answer.
* ``normal``: no question of its own but "no" answers (below), and the slice questions.
* ``uncertain`` ("possible lesion"): no presence answer, neither yes nor no (a hedge is
  not a fact to train on); only the slice questions. Its organs are never answered "no".
* ``non_finding`` (communication, technique, comparison, ...): nothing, not even the
  plane of its slice.

A finding with neither organs nor asserted types (a sentence step 1 could not read as a
finding) gets nothing either. Rows of older corpora carry empty ``abnormalities`` and
``negated_abnormalities``: they get no abnormality-type question and no negated-type "no"
(nothing is guessed from the text).

Where a "no" comes from. Only from the same report: a finding that states the organ
normal ("The spleen is normal." -> "Is there an abnormality in the spleen?" no), or a
single-organ finding that negates a type ("... without signs of diverticulitis" ->
"Is there inflammation in the colon?" no). An organ some abnormal or uncertain finding
of the report mentions (on a compatible side) is never answered "no"; a negated type is
not asked when a finding of that organ asserts a type of the same group. A report silent
about an organ says nothing about it: no "no". Optionally (``mask_organs``, off unless
given) organs the segmentation masks show on the slice but the report never mentions may
be answered "no"; those rows are marked ``answer_source="mask"``.

Every row records what its answer rests on (``vqa`` table v2): ``organ``/``organ_side``,
``abnormality``, ``evidence_finding_id`` (the finding that states the answer) and
``answer_source`` (finding, series or mask); :mod:`keyslice.vqa.consistency` checks them
against the findings table.

Yes/no balance: each "yes" gets at most one "no" on the same slice, taken in order from
the finding's own negated types, normal organs whose own key slice is this slice, normal
organs and negated types of the same body region, then (with ``mask_organs``) unmentioned
mask-visible organs. Left-over "no" quota goes to the normal findings' own slices. A report
without normal statements yields more "yes" than "no": the balance report shows it rather
than hiding it behind invented negatives.

Plane and phase questions are asked once per slice; a question already asked on a slice
(an impression repeating a finding) is not asked again by a later finding. Everything
random (option order, which negative among equals) comes from
``random.Random(f"{seed}:{finding_id}")``: output is deterministic for a seed and does not
depend on the order of the input rows.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from keyslice.vocab import ABNORMALITY_GROUP, ORGANS, PHASE_CHOICES, PHASE_WORDS, PLANES
from keyslice.vqa.lexicon import find_organ_spans, organ_display, regions_of, split_side
from keyslice.vqa.rows import make_row, slice_ref

GENERATOR = "rule"
RULES_VERSION = "vqa_rules.v2"   # recorded in prompt_version: the version of these templates

N_OPTIONS = 4
ASKED_STATUSES = ("abnormal", "normal", "uncertain")   # "non_finding" and unknown values: nothing

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

# types read without an article in "Is there <type> in the colon?"
_MASS_NOUNS = {"inflammation", "free air", "ascites", "lymphadenopathy", "dilatation", "enlargement",
               "wall thickening", "fibrosis", "consolidation", "atrophy", "extravasation", "thrombosis",
               "calcification", "infarction", "dissection", "intussusception"}

Organ = tuple[str, str | None]            # (canonical organ, side or None)
SliceKey = tuple[str, int]               # (series_id, slice index)


@dataclass
class _Finding:
    finding_id: str
    order: tuple
    text: str
    status: str
    laterality: str | None
    organs: list[Organ]
    abnormalities: list[str]
    negated: list[str]
    measurements_mm: list[float]
    selections: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def asked(self) -> bool:
        """Whether the finding is asked about at all (see the module docstring)."""
        return self.status in ASKED_STATUSES and bool(self.organs or self.abnormalities)

    @property
    def positive_organs(self) -> list[Organ]:
        """Organs answered "yes": all of them, unless the sentence names several organs and
        negates something ("a pulmonary mass, without enlarged lymph nodes"): the row does not
        say which organ the negation belongs to, so none is asserted abnormal."""
        if self.negated and len({o for o, _ in self.organs}) > 1:
            return []
        return self.organs

    @property
    def answer_type(self) -> str | None:
        """The abnormality type answered: the first asserted type the sentence does not also
        negate (a type both asserted and negated belongs to different organs of the sentence)."""
        return next((t for t in self.abnormalities if t not in self.negated), None)


@dataclass(frozen=True)
class _Negative:
    """A sentence-backed "no": an organ stated normal (``abnormality`` None) or a negated type."""

    organ: str
    side: str | None
    abnormality: str | None
    evidence: str                        # finding id that states it
    slices: frozenset[SliceKey]          # the evidence finding's own key slices
    source: str = "finding"

    def question(self) -> str:
        where = _neg_display(self.organ, self.side)
        if self.abnormality is None:
            return f"Is there an abnormality in {where}?"
        return f"Is there {_with_article(self.abnormality)} in {where}?"


def _with_article(kind: str) -> str:
    if kind in _MASS_NOUNS:
        return kind
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _study_key(f: Mapping[str, Any]) -> str:
    if f.get("study_id"):
        return str(f["study_id"])
    return str(f["finding_id"]).rsplit(":", 1)[0]


def _order(f: Mapping[str, Any]) -> tuple:
    idx = f.get("finding_index")
    return (0 if idx is None else 1, idx if idx is not None else 0, str(f["finding_id"]))


def _parse_organs(f: Mapping[str, Any]) -> list[Organ]:
    lat = f.get("laterality")
    out: list[Organ] = []
    for raw in f.get("organs") or []:
        organ, side = split_side(str(raw))
        if side is None and lat in ("left", "right", "bilateral") and is_paired(organ):
            side = lat
        if (organ, side) not in out:
            out.append((organ, side))
    return out


def is_paired(organ: str) -> bool:
    info = ORGANS.get(organ)
    return info is not None and info.paired


def _types(values: Any) -> list[str]:
    """Abnormality type keys of a list field, in order, known keys only, without repeats."""
    return list(dict.fromkeys(str(v) for v in (values or []) if str(v) in ABNORMALITY_GROUP))


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
    """The finding's organ, refined by the part of it the sentence names: "left lobe of the
    liver", "tail of the pancreas", "lower pole of the right kidney". The organ and side come
    from the finding row; the text only narrows them down."""
    if organ == "liver":
        m = _LIVER_LOBE.search(text)
        if m:
            return f"{m.group('lobe').lower()} lobe of the liver"
    if organ == "lung":
        m = _LUNG_LOBE.search(text)
        if m and side in (None, m.group("side").lower()):
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
            if side in ("left", "right") and s != side:
                continue
            return f"{sub} of the {s + ' ' if s else ''}{organ}"
    return _bare(organ_display(organ, side))


def _bare(display: str) -> str:
    """"the left kidney" -> "left kidney"; "both kidneys" -> "both kidneys"."""
    return display[len("the "):] if display.startswith("the ") else display


def _size(measurements_mm: Sequence[float]) -> str | None:
    """The finding's measurements as one size in mm ("53 × 44 mm"), or None when it records
    none or more than three (then they are not the dimensions of one thing)."""
    if not 1 <= len(measurements_mm) <= 3:
        return None
    return " × ".join(f"{float(v):g}" for v in measurements_mm) + " mm"


_TEXT_REGIONS = (
    ("pelvis", re.compile(r"\bpelv\w*", re.I)),
    ("abdomen", re.compile(r"\babdom\w*|\bretroperitone\w*|\bintraperitone\w*", re.I)),
    ("thorax", re.compile(r"\bchest\b|\bthora\w*|\bmediastin\w*|\bhemithora\w*", re.I)),
    ("neck", re.compile(r"\bneck\b|\bcervical\b|\bsupraclavicular\b", re.I)),
    ("head", re.compile(r"\bhead\b|\bbrain\b|\bcrani\w*|\bintracranial\b", re.I)),
)


def _regions(organs: Sequence[Organ], text: str) -> set[str]:
    """Body regions a finding's slice lies in: those of its specific organs (a lymph node or
    the spine could be anywhere), else the region words of its sentence, else any of its
    organs' regions. Used to pick plausible negatives and distractors, never answers."""
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


def sides_overlap(a: str | None, b: str | None) -> bool:
    """Whether two mentions of one organ may be the same structure (None: the organ as a whole)."""
    return a in (None, "bilateral") or b in (None, "bilateral") or a == b


def side_covers(stated: str | None, asked: str | None) -> bool:
    """Whether a statement about ``stated`` (None or bilateral: the whole organ) covers a
    question about ``asked`` (None: the whole organ, e.g. "the kidneys")."""
    return stated in (None, "bilateral") or stated == asked


class _Report:
    """What one report states, organ by organ: what is flagged (abnormal or uncertain), what
    is stated normal, which types are negated, which organs it mentions at all."""

    def __init__(self, findings: Iterable[_Finding]):
        self.flagged: dict[str, list[tuple[str | None, set[str]]]] = defaultdict(list)
        self.mentioned: set[str] = set()
        normal: list[_Finding] = []
        negating: list[_Finding] = []
        for f in findings:
            if f.status not in ASKED_STATUSES:
                continue
            self.mentioned.update(o for o, _ in f.organs)
            if f.status == "normal":
                normal.append(f)
            else:
                groups = {ABNORMALITY_GROUP[t] for t in f.abnormalities}
                for organ, side in f.organs:
                    self.flagged[organ].append((side, groups))
            if f.negated and len({o for o, _ in f.organs}) == 1:
                negating.append(f)
        self.negatives: list[_Negative] = []
        seen: set[tuple] = set()
        for f in normal:
            for organ, side in f.organs:
                if not self.blocks(organ, side) and (organ, side, None) not in seen:
                    seen.add((organ, side, None))
                    self.negatives.append(_Negative(organ, side, None, f.finding_id, _slices(f)))
        for f in negating:
            organ, side = f.organs[0]
            for kind in f.negated:
                if kind in f.abnormalities or self.type_flagged(organ, side, kind) or (organ, side, kind) in seen:
                    continue
                seen.add((organ, side, kind))
                self.negatives.append(_Negative(organ, side, kind, f.finding_id, _slices(f)))

    def blocks(self, organ: str, side: str | None) -> bool:
        """Some abnormal or uncertain finding mentions the organ on a compatible side."""
        return any(sides_overlap(s, side) for s, _ in self.flagged.get(organ, ()))

    def type_flagged(self, organ: str, side: str | None, kind: str) -> bool:
        group = ABNORMALITY_GROUP.get(kind)
        return any(sides_overlap(s, side) and group in groups for s, groups in self.flagged.get(organ, ()))


def _slices(f: _Finding) -> frozenset[SliceKey]:
    return frozenset(_slice_key(s) for s in f.selections)


def _slice_key(sel: Mapping[str, Any]) -> SliceKey:
    return (str(sel["series_id"]), int(sel["top1_index"]))


def generate_rule_vqa(
    findings: list[dict],
    selections: list[dict],
    series: list[dict],
    *,
    seed: int = 0,
    mask_organs: Mapping[SliceKey, Iterable[str]] | None = None,
) -> list[dict]:
    """Rule-based VQA rows for findings that have a key slice. See the module docstring.

    ``mask_organs``: canonical organs the segmentation masks show on a slice, keyed by
    (series_id, slice_index). When given, an organ shown there that no finding of the report
    mentions may be answered "no" (``answer_source="mask"``): an assumption that a report
    silent about a visible organ found it normal. Off (None) by default.
    """
    series_by_id = {str(s["series_id"]): s for s in series}
    sels: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in selections:
        sels[str(s["finding_id"])].append(s)
    by_study: dict[str, list[_Finding]] = defaultdict(list)
    for f in findings:
        fid = str(f["finding_id"])
        item = _Finding(
            finding_id=fid, order=_order(f), text=str(f.get("text") or ""),
            status=str(f.get("status") or "uncertain").lower(), laterality=f.get("laterality"),
            organs=_parse_organs(f), abnormalities=_types(f.get("abnormalities")),
            negated=_types(f.get("negated_abnormalities")),
            measurements_mm=[float(v) for v in (f.get("measurements_mm") or [])],
            selections=sorted(sels.get(fid, []), key=_slice_key),
        )
        by_study[_study_key(f)].append(item)
    visible = {k: set(v) for k, v in (mask_organs or {}).items()}
    rows: list[dict] = []
    for study in sorted(by_study):
        rows.extend(_study_rows(sorted(by_study[study], key=lambda x: x.order), series_by_id, seed, visible))
    return rows


def _study_rows(findings: list[_Finding], series_by_id: Mapping[str, Mapping[str, Any]], seed: int,
                visible: Mapping[SliceKey, set[str]]) -> list[dict]:
    report = _Report(findings)
    rows: list[dict] = []
    seen: set[tuple] = set()
    slices_done: set[SliceKey] = set()
    n_yes = n_no = 0
    for f in findings:
        if not f.asked:
            continue
        rng = random.Random(f"{seed}:{f.finding_id}")
        for sel in f.selections:
            key = _slice_key(sel)
            emit = _Emitter(f.finding_id, slice_ref(sel), rows, seen)
            if key not in slices_done:
                slices_done.add(key)
                _slice_questions(emit, series_by_id.get(key[0], {}), rng)
            if f.status != "abnormal":
                continue
            asked = sum(emit(f"Is there an abnormality in {organ_display(organ, side)}?", "yes", "closed", "organ",
                             organ=organ, side=side, evidence=f.finding_id)
                        for organ, side in f.positive_organs)
            n_yes += asked
            answered_no = 0
            for neg in _negative_candidates(f, key, report, visible.get(key, set()), rng):
                if answered_no >= asked:
                    break
                if emit(neg.question(), "no", "closed", "abnormality" if neg.abnormality else "organ",
                        organ=neg.organ, side=neg.side, abnormality=neg.abnormality,
                        evidence=neg.evidence if neg.source == "finding" else None, source=neg.source):
                    answered_no += 1
            n_no += answered_no
            _abnormal_questions(emit, f, report, rng)

    # left-over "no" quota: sentence-backed negatives asked on their own finding's slices
    for neg in report.negatives:
        for key in sorted(neg.slices):
            if n_no >= n_yes:
                return rows
            owner = next(f for f in findings if f.finding_id == neg.evidence)
            if not owner.asked:
                continue
            sel = next(s for s in owner.selections if _slice_key(s) == key)
            emit = _Emitter(owner.finding_id, slice_ref(sel), rows, seen)
            if emit(neg.question(), "no", "closed", "abnormality" if neg.abnormality else "organ",
                    organ=neg.organ, side=neg.side, abnormality=neg.abnormality, evidence=neg.evidence):
                n_no += 1
    return rows


class _Emitter:
    """Appends rows for one finding on one slice. ``seen`` is shared by the whole study: a
    question is asked once per slice and answer type, by the first finding that asks it
    (an impression sentence repeating a finding on the same slice adds nothing)."""

    def __init__(self, finding_id: str, ref: Mapping[str, Any], rows: list[dict], seen: set[tuple]):
        self.finding_id, self.ref, self.rows, self.seen = finding_id, ref, rows, seen

    def __call__(self, question: str, answer: str, answer_type: str, question_type: str,
                 options: Sequence[str] | None = None, *, organ: str | None = None, side: str | None = None,
                 abnormality: str | None = None, evidence: str | None = None, source: str = "finding") -> bool:
        key = (self.ref["series_id"], int(self.ref["slice_index"]), answer_type, " ".join(question.lower().split()))
        if key in self.seen:
            return False
        self.seen.add(key)
        self.rows.append(make_row(
            finding_id=self.finding_id, question=question, answer=answer, answer_type=answer_type,
            question_type=question_type, options=options or (), generator=GENERATOR,
            prompt_version=RULES_VERSION, ref=self.ref, organ=organ,
            organ_side=side if side in ("left", "right", "bilateral") and organ and is_paired(organ) else None,
            abnormality=abnormality, evidence_finding_id=evidence, answer_source=source))
        return True


def _neg_display(organ: str, side: str | None) -> str:
    if side is None and is_paired(organ):
        return organ_display(organ, "bilateral").replace("both ", "the ")
    return organ_display(organ, side)


def _slice_questions(emit: _Emitter, ser: Mapping[str, Any], rng: random.Random) -> None:
    plane = str(ser.get("orientation") or "unknown").lower()
    if plane in (*PLANES, "oblique"):
        q = "In which plane is this image shown?"
        emit(q, plane, "closed", "plane", source="series")
        opts = _choice(rng, plane, [p for p in PLANES if p != plane])
        if opts:
            emit(q, plane, "choice", "plane", opts, source="series")
    phase = PHASE_WORDS.get(str(ser.get("phase") or "unknown").lower())
    if phase:
        q = "In which contrast phase was this image acquired?"
        emit(q, phase, "closed", "phase", source="series")
        others = [p for p in PHASE_CHOICES if p != phase and not (phase.endswith("arterial") and p == "arterial")]
        opts = _choice(rng, phase, others)
        if opts:
            emit(q, phase, "choice", "phase", opts, source="series")


def _negative_candidates(f: _Finding, key: SliceKey, report: _Report, visible: set[str],
                         rng: random.Random) -> list[_Negative]:
    """Sentence-backed "no"s for an abnormal finding's slice, best first (module docstring)."""
    own = {o for o, _ in f.organs}
    regions = _regions(f.organs, f.text)
    tiers: list[list[_Negative]] = [[], [], [], []]
    for neg in report.negatives:
        if neg.abnormality is None and neg.organ in own and not _other_side_ok(neg.organ, neg.side, f.organs):
            continue
        if neg.evidence == f.finding_id:
            tiers[0].append(neg)
        elif neg.abnormality is None and key in neg.slices:
            tiers[1].append(neg)
        elif not regions or set(regions_of(neg.organ)) & regions or not regions_of(neg.organ):
            tiers[2].append(neg)
    for organ in sorted(visible):
        if organ in ORGANS and organ not in report.mentioned and not report.blocks(organ, None):
            tiers[3].append(_Negative(organ, None, None, f.finding_id, frozenset({key}), source="mask"))
    chosen: list[_Negative] = []
    for tier in tiers:
        rng.shuffle(tier)
        for cand in tier:
            if cand.organ not in {c.organ for c in chosen}:
                chosen.append(cand)
    return chosen


def _other_side_ok(organ: str, side: str | None, positives: list[Organ]) -> bool:
    """A normal paired organ may be a negative beside an abnormal one of the other side."""
    if not is_paired(organ) or side not in ("left", "right"):
        return False
    return all(o != organ or (s in ("left", "right") and s != side) for o, s in positives)


def _abnormal_questions(emit: _Emitter, f: _Finding, report: _Report, rng: random.Random) -> None:
    organs = f.positive_organs
    abn = f.answer_type
    distinct = list(dict.fromkeys(o for o, _ in organs))
    organ, side = organs[0] if len(distinct) == 1 else (None, None)
    regions = _regions(organs, f.text)
    subject = {"organ": organ, "side": side, "evidence": f.finding_id}

    # organ: which organ (single-organ findings only: otherwise two answers are right)
    if organ is not None:
        answer = _bare(organ_display(organ, side)).removeprefix("both ")
        q = "Which organ is abnormal in this image?"
        emit(q, answer, "open", "organ", **subject)
        pool = [o for o, info in ORGANS.items()
                if o != organ and info.negative_ok and set(info.regions) & regions and not report.blocks(o, None)]
        opts = _choice(rng, answer, pool)
        if opts:
            emit(q, answer, "choice", "organ", opts, **subject)

    # abnormality: open description, and the type (asserted types only)
    where = organ_display(organ, side) if organ else None
    phrase = _clean_phrase(f.text)
    if where and phrase:
        emit(f"What is seen in {where}?", phrase, "open", "abnormality", **subject)
    if abn:
        q = f"What type of abnormality is seen in {where}?" if where else "What abnormality is seen in this image?"
        emit(q, abn, "open", "abnormality", abnormality=abn, **subject)
        # wrong answers: types of no asserted group (a type the sentence negates is certainly wrong)
        groups = {ABNORMALITY_GROUP[t] for t in f.abnormalities}
        pool = [t for t, where_ok in _DISTRACTOR_TYPES.items()
                if ABNORMALITY_GROUP.get(t) not in groups and (not where_ok or not regions or set(where_ok) & regions)]
        opts = _choice(rng, abn, pool)
        if opts:
            emit(q, abn, "choice", "abnormality", opts, abnormality=abn, **subject)

    thing = _LOCATABLE.get(abn or "", "abnormality")
    # location
    if organ is not None:
        loc = _location(f.text, organ, side)
        q = f"Where is the {thing} located?"
        emit(q, loc, "open", "location", **subject)
        pool = [_bare(_neg_display(o, None)) for o, info in ORGANS.items()
                if o != organ and info.negative_ok and set(info.regions) & regions and not report.blocks(o, None)]
        opts = _choice(rng, loc, pool)
        if opts:
            emit(q, loc, "choice", "location", opts, **subject)

    # size: the finding's measurements, when it names one lesion-like thing
    size = _size(f.measurements_mm)
    if size and abn in _LOCATABLE and len({ABNORMALITY_GROUP[t] for t in f.abnormalities}) == 1:
        emit(f"What is the size of the {thing}?", size, "open", "size", abnormality=abn, **subject)

    # laterality
    lat = (f.laterality or "").lower()
    if lat in ("left", "right", "bilateral"):
        q = f"On which side is the {thing}?"
        emit(q, lat, "closed", "laterality", **subject)
        opts = _choice(rng, lat, [s for s in ("left", "right", "bilateral") if s != lat], n=3)
        if opts:
            emit(q, lat, "choice", "laterality", opts, **subject)
