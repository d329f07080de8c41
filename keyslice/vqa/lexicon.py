"""Small vocabularies used by the VQA generators: organs, abnormality types, phases, planes.

Organ names are those of the report segmenter (``keyslice.report.lexicon``: the keys of
``ORGAN_TS_LABELS``, lower-case English with spaces, "adrenal gland"), so that the organs
of a finding row, the questions and the grounding check speak one vocabulary. The organ
matcher uses the segmenter's terms (``ORGAN_TERMS``, ``ORGAN_BLOCKERS``) when
``keyslice.report`` is importable, plus the local terms below (vessels, pelvic organs...
the segmenter does not name); the longest match wins, so "splenic vein" is not read as
"spleen" and "lung window" is no organ at all. Without ``keyslice.report`` the local terms
alone are used.

A finding may name a paired organ with its side ("left kidney", "kidney_left"):
:func:`split_side` separates the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# ---------------------------------------------------------------- organs

REGIONS = ("head", "neck", "thorax", "abdomen", "pelvis")


@dataclass(frozen=True)
class Organ:
    name: str                     # canonical name
    regions: tuple[str, ...]      # body regions an axial slice through it belongs to
    paired: bool = False          # has a left and a right
    negative_ok: bool = False     # a plausible "is there an abnormality in X?" negative
    plural: bool = False          # displayed in the plural ("lymph nodes")


# Ordered: multi-word and more specific entries come first; the matcher consumes the span
# of a match so that "splenic vein" is not also read as "spleen".
_ORGANS: list[tuple[Organ, tuple[str, ...]]] = [
    (Organ("pulmonary artery", ("thorax",)), (r"pulmonary (?:arter(?:y|ies)|trunk)", r"pulmonary arterial")),
    (Organ("pulmonary vein", ("thorax",)), (r"pulmonary veins?",)),
    (Organ("superior vena cava", ("thorax",)), (r"superior vena cava", r"vena cava superior", r"\bsvc\b")),
    (Organ("inferior vena cava", ("abdomen",)), (r"inferior vena cava", r"vena cava inferior", r"\bivc\b", r"\bvena cava\b")),
    (Organ("portal vein", ("abdomen",)), (r"portal veins?", r"portal confluence", r"portal venous system")),
    (Organ("hepatic vein", ("abdomen",)), (r"hepatic veins?", r"hepatic venous")),
    (Organ("splenic vein", ("abdomen",)), (r"splenic veins?",)),
    (Organ("splenic artery", ("abdomen",)), (r"splenic arter(?:y|ies)",)),
    (Organ("renal vessel", ("abdomen",)), (r"renal (?:veins?|arter(?:y|ies)|vessels?)",)),
    (Organ("mesenteric vessel", ("abdomen",)), (r"(?:superior|inferior) mesenteric (?:artery|vein)", r"mesenteric (?:artery|vein|vessels?)")),
    (Organ("hepatic artery", ("abdomen",)), (r"hepatic arter(?:y|ies)",)),
    (Organ("celiac artery", ("abdomen",)), (r"c(?:o)?eliac (?:artery|axis|trunk)",)),
    (Organ("iliac artery", ("pelvis",), paired=True), (r"iliac arter(?:y|ies)", r"iliac vessels?")),
    (Organ("iliac vein", ("pelvis",), paired=True), (r"iliac veins?",)),
    (Organ("femoral vessel", ("pelvis",)), (r"femoral (?:arter(?:y|ies)|veins?|vessels?)",)),
    (Organ("coronary artery", ("thorax",)), (r"coronary arter(?:y|ies)",)),
    (Organ("azygos vein", ("thorax",)), (r"azygos vein",)),
    (Organ("bile duct", ("abdomen",)), (r"(?:common )?bile ducts?", r"biliary", r"hepatic ducts?", r"choledoch\w*", r"\bcbd\b")),
    (Organ("pancreatic duct", ("abdomen",)), (r"pancreatic ducts?", r"wirsung\w*")),
    (Organ("gallbladder", ("abdomen",), negative_ok=True), (r"gall ?bladder", r"cholecyst\w*", r"cholelithiasis")),
    (Organ("urinary bladder", ("pelvis",), negative_ok=True), (r"(?:urinary )?bladder", r"vesical")),
    (Organ("lymph node", ("neck", "thorax", "abdomen", "pelvis"), plural=True),
     (r"lymph ?nodes?", r"lymphonodes?", r"lymphadenopath\w*", r"\bnod(?:e|es|al)\b")),
    (Organ("iliopsoas muscle", ("abdomen", "pelvis"), paired=True), (r"(?:ilio)?psoas(?: muscles?)?",)),
    (Organ("abdominal wall", ("abdomen", "pelvis")), (r"abdominal wall", r"rectus (?:sheath|muscle|abdominis)")),
    (Organ("liver", ("abdomen",), negative_ok=True),
     (r"liver", r"hepatic", r"hepato\w*", r"intrahepatic", r"caudate lobe")),
    (Organ("spleen", ("abdomen",), negative_ok=True), (r"spleen", r"splenic", r"splenomegal\w*", r"perisplenic")),
    (Organ("pancreas", ("abdomen",), negative_ok=True), (r"pancrea\w*", r"peripancrea\w*", r"uncinate process")),
    (Organ("adrenal gland", ("abdomen",), paired=True, negative_ok=True), (r"adrenal(?: glands?)?", r"suprarenal")),
    (Organ("kidney", ("abdomen",), paired=True, negative_ok=True),
     (r"kidneys?", r"renal", r"nephr\w*", r"perinephric", r"hydronephro\w*")),
    (Organ("ureter", ("abdomen", "pelvis"), paired=True), (r"ureter\w*",)),
    (Organ("stomach", ("abdomen",), negative_ok=True), (r"stomach", r"gastric", r"pylor\w*")),
    (Organ("duodenum", ("abdomen",)), (r"duoden\w*",)),
    (Organ("small bowel", ("abdomen", "pelvis")), (r"small[- ]bowel", r"small intestin\w*", r"jejun\w*", r"\bile(?:um|al|o\w*)\b")),
    (Organ("appendix", ("abdomen", "pelvis")), (r"appendi(?:x|ceal|citis)",)),
    (Organ("colon", ("abdomen", "pelvis")), (r"colon\w*", r"large bowel", r"c(?:a)?ecum", r"cecal", r"sigmoid")),
    (Organ("rectum", ("pelvis",)), (r"(?:ano)?rect(?:um|al)\b",)),
    (Organ("prostate", ("pelvis",), negative_ok=True), (r"prostat\w*",)),
    (Organ("uterus", ("pelvis",), negative_ok=True), (r"uter(?:us|ine)", r"endometri\w*")),
    (Organ("ovary", ("pelvis",), paired=True), (r"ovar(?:y|ies|ian)", r"adnex\w*")),
    (Organ("aorta", ("thorax", "abdomen"), negative_ok=True), (r"aort\w*",)),
    (Organ("heart", ("thorax",), negative_ok=True),
     (r"heart", r"cardiac", r"myocardi\w*", r"(?:left|right) (?:ventricle|atrium)", r"pericardi\w*")),
    (Organ("esophagus", ("thorax",)), (r"o?esophag\w*",)),
    (Organ("trachea", ("neck", "thorax")), (r"trache\w*",)),
    (Organ("pleura", ("thorax",)), (r"pleura\w*", r"hemithora\w*", r"hemothora\w*", r"pneumothora\w*", r"empyema")),
    (Organ("lung", ("thorax",), paired=True, negative_ok=True),
     (r"lungs?", r"pulmonary", r"intrapulmonary", r"(?:upper|middle|lower) lobes?", r"bronch\w*")),
    (Organ("mediastinum", ("thorax",)), (r"mediastin\w*",)),
    (Organ("thymus", ("thorax",)), (r"thym\w*",)),
    (Organ("diaphragm", ("thorax", "abdomen")), (r"diaphragm\w*",)),
    (Organ("breast", ("thorax",), paired=True), (r"breasts?",)),
    (Organ("thyroid gland", ("neck",), negative_ok=True), (r"thyroid(?: gland)?",)),
    (Organ("peritoneum", ("abdomen", "pelvis")),
     (r"(?:intra)?peritone\w*", r"omentum", r"omental", r"mesenter\w*", r"mesocolic")),
    (Organ("brain", ("head",)), (r"brain", r"cerebr\w*", r"cerebell\w*", r"intracranial")),
    (Organ("spine", ("neck", "thorax", "abdomen", "pelvis")), (r"spine", r"spinal", r"vertebr\w*")),
    (Organ("rib", ("thorax",), plural=True), (r"ribs?",)),
    (Organ("hip bone", ("pelvis",), paired=True), (r"iliac (?:crest|bone|wing)s?", r"acetabul\w*", r"pubic", r"iliopubic")),
    (Organ("sacrum", ("pelvis",)), (r"sacr(?:um|al)",)),
    # organs of the segmenter's vocabulary that need no local terms (metadata only)
    (Organ("bone", ("head", "neck", "thorax", "abdomen", "pelvis")), ()),
    (Organ("sternum", ("thorax",)), ()),
    (Organ("clavicle", ("thorax",), paired=True), ()),
    (Organ("scapula", ("thorax",), paired=True), ()),
    (Organ("humerus", ("thorax",), paired=True), ()),
    (Organ("femur", ("pelvis",), paired=True), ()),
    (Organ("skull", ("head",)), ()),
    (Organ("spinal cord", ("neck", "thorax", "abdomen")), ()),
    (Organ("carotid artery", ("neck",), paired=True), ()),
    (Organ("subclavian artery", ("thorax",), paired=True), ()),
    (Organ("brachiocephalic trunk", ("thorax",)), ()),
    (Organ("brachiocephalic vein", ("thorax",), paired=True), ()),
]

ORGANS: dict[str, Organ] = {o.name: o for o, _ in _ORGANS}

_SIDE_RE = re.compile(r"^(?:(left|right)[ _]+)?(.*?)(?:[ _]+(left|right))?$")


@dataclass(frozen=True)
class _Term:
    organs: tuple[str, ...]       # () for a blocker ("lung window": no organ)
    pattern: re.Pattern[str]
    priority: int                 # on equal match length: 0 (segmenter) wins over 1 (local)


@lru_cache(maxsize=None)
def organ_lexicon() -> tuple[_Term, ...]:
    """Every organ term: the segmenter's (when importable) and the local ones."""
    terms: list[_Term] = []
    try:
        from keyslice.report import lexicon as report_lexicon

        for phrase, organs in report_lexicon.ORGAN_TERMS.items():
            terms.append(_Term(tuple(organs), _compile(re.escape(phrase)), 0))
        for phrase in getattr(report_lexicon, "ORGAN_BLOCKERS", ()):
            terms.append(_Term((), _compile(re.escape(phrase)), 0))
    except ImportError:  # the segmenter is optional for this module
        pass
    for organ, patterns in _ORGANS:
        for pattern in patterns:
            terms.append(_Term((organ.name,), _compile(pattern), 1))
    return tuple(terms)


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-])(?:{pattern})(?!\w)", re.I)


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
    is false). Overlapping matches: the longest wins, then the segmenter's term."""
    matches = []
    for term in organ_lexicon():
        for m in term.pattern.finditer(text):
            matches.append((-(m.end() - m.start()), term.priority, m.start(), m.end(), term.organs))
    matches.sort()
    taken = [False] * len(text)
    hits: list[tuple[str, int, int]] = []
    for _, _, start, end, organs in matches:
        if any(taken[start:end]):
            continue
        for i in range(start, end):
            taken[i] = True
        hits.extend((organ, start, end) for organ in organs)
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


# ---------------------------------------------------------------- abnormality types

# canonical type -> (group, terms). Types of one group overlap in meaning ("mass" and
# "lesion"), so a multiple-choice question never offers two types of the same group.
ABNORMALITIES: list[tuple[str, str, tuple[str, ...]]] = [
    ("aneurysm", "vascular", (r"pseudoaneurysms?", r"aneurysm\w*", r"aneurism\w*")),
    ("dissection", "vascular", (r"dissection", r"dissection flap", r"intimal flap")),
    ("thrombosis", "vascular", (r"thromb\w*", r"embol\w*", r"filling defects?", r"clots?")),
    ("hematoma", "bleeding", (r"ha?ematomas?", r"hemorrhag\w*", r"haemorrhag\w*", r"bleed\w*", r"hemothorax")),
    ("abscess", "collection", (r"abscess\w*", r"empyema")),
    ("fluid collection", "collection", (r"fluid collections?", r"collections?")),
    ("cyst", "cystic", (r"pseudocysts?", r"cysts?", r"cystic (?:lesion|mass|change)s?")),
    ("extravasation", "leak", (r"extravasation", r"leak(?:s|age)?")),
    ("calculus", "calculus", (r"calcul\w*", r"stones?", r"gall ?stones?", r"cholelithiasis", r"nephrolithiasis", r"urolithiasis")),
    ("calcification", "calcification", (r"calcifications?", r"nephrocalcinosis")),
    ("metastasis", "mass", (r"metasta\w*",)),
    ("mass", "mass", (r"mass(?:es)?", r"tumou?rs?", r"carcinomas?", r"neoplasms?", r"malignan\w*",
                      r"lymphomas?", r"lipomas?", r"sarcomas?", r"adenomas?", r"cancer")),
    ("nodule", "mass", (r"nodul\w*",)),
    ("lesion", "mass", (r"lesions?",)),
    ("lymphadenopathy", "lymphadenopathy", (r"lymphadenopath\w*", r"enlarged (?:\w+ )?lymph nodes?")),
    ("infarction", "ischemia", (r"infarct\w*", r"ischemi\w*", r"ischaemi\w*")),
    ("laceration", "trauma", (r"lacerations?", r"ruptur\w*", r"fractur\w*")),
    ("pneumothorax", "air", (r"pneumothora\w*",)),
    ("free air", "air", (r"pneumoperitoneum", r"free (?:\w+ )?air", r"portal venous gas", r"pneumatosis\w*", r"pneumobilia")),
    ("pleural effusion", "effusion", (r"(?:pleural )?effusions?",)),
    ("ascites", "effusion", (r"ascites", r"free fluid", r"peritoneal fluid")),
    ("consolidation", "parenchymal", (r"consolidations?", r"infiltrat\w*", r"ground[- ]glass\w*", r"ggos?")),
    ("fibrosis", "parenchymal", (r"fibros\w*", r"honeycombing", r"scar\w*")),
    ("hernia", "hernia", (r"hernia\w*",)),
    ("intussusception", "bowel", (r"intussusception",)),
    ("dilatation", "size", (r"dilat\w*", r"distension", r"distention", r"ectasia")),
    ("enlargement", "size", (r"enlarge\w*", r"\w+megaly", r"swollen", r"swelling")),
    ("wall thickening", "wall", (r"(?:wall )?thickening", r"thickened (?:\w+ )?wall")),
    ("inflammation", "inflammation", (r"\w+itis\b", r"inflam\w*", r"edema\w*", r"oedema\w*", r"stranding")),
    ("atrophy", "size", (r"atroph\w*",)),
]

_ABN_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (name, group, re.compile(rf"(?<![\w-])(?:{'|'.join(terms)})(?![\w])", re.I))
    for name, group, terms in ABNORMALITIES
)
ABNORMALITY_GROUP: dict[str, str] = {name: group for name, group, _ in ABNORMALITIES}


def find_abnormalities(text: str) -> list[str]:
    """Canonical abnormality types named in ``text``, in order of first appearance."""
    hits: list[tuple[int, str]] = []
    taken = [False] * len(text)
    for name, _, pattern in _ABN_PATTERNS:
        for m in pattern.finditer(text):
            if any(taken[m.start():m.end()]):
                continue
            for i in range(m.start(), m.end()):
                taken[i] = True
            hits.append((m.start(), name))
    hits.sort()
    out: list[str] = []
    for _, name in hits:
        if name not in out:
            out.append(name)
    return out


# ---------------------------------------------------------------- phases, planes

PHASE_WORDS: dict[str, str] = {
    "non_contrast": "non-contrast",
    "arterial": "arterial",
    "arterial_early": "early arterial",
    "arterial_late": "late arterial",
    "portal_venous": "portal venous",
    "delayed": "delayed",
}
PHASE_CHOICES = ("non-contrast", "arterial", "portal venous", "delayed")

PLANES = ("axial", "coronal", "sagittal")

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
