"""Organ vocabulary and text prompts for organ-level pairs.

An *organ* in fine-tuning is either a canonical report organ (a key of
:data:`keyslice.vocab.ORGAN_TS_LABELS`, e.g. ``"kidney"`` = left + right kidney) or a single
TotalSegmentator label (``"vertebrae_T12"``). :func:`organ_ts_labels` resolves either to the
TS labels whose masks define the organ's slices.

Prompt styles (issue 7):

* ``word``: the organ's name (``"liver"``, ``"T12 vertebra"``);
* ``sentence``: ``"An axial CT image showing the liver."``.

Evaluation always uses these canonical forms. Training may use *language augmentation* after
PMC-MSA: the prompt varies by modality wording ("CT", "computed tomography"...), orientation
("axial", "transverse"...), body station (head/neck, chest, abdomen, pelvis, from the organ)
and organ synonym (stations and synonyms: :mod:`keyslice.vocab`), drawn with a seeded :class:`random.Random`.
"""

from __future__ import annotations

import random
import re

from keyslice.vocab import ORGAN_TS_LABELS, ORGANS, STATION_WORDS, TS_LABEL_STATIONS

STYLES = ("word", "sentence")

_MODALITY = ("CT", "CT", "computed tomography", "CT scan", "computed tomography (CT)")
_ORIENTATION = ("axial", "axial", "transverse", "transaxial", "cross-sectional")
_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh",
             8: "eighth", 9: "ninth", 10: "tenth", 11: "eleventh", 12: "twelfth"}

# {o}: orientation, {m}: modality, {g}: organ, {s}: station; {A}: "An"/"A" fitted to the next word.
_TEMPLATES_STATION = (
    "{A} {o} {m} image of the {s} showing the {g}.",
    "{O} {m} of the {s} at the level of the {g}.",
    "{O} {m} slice of the {s} through the {g}.",
    "{M} of the {s}, {o} view: the {g} is visible.",
    "The {g} on {a} {o} {m} image of the {s}.",
)
_TEMPLATES = (
    "{A} {o} {m} image showing the {g}.",
    "{O} {m} slice through the {g}.",
    "{A} {o} {m} section at the level of the {g}.",
    "The {g} on {a} {o} {m} image.",
    "{O} {m} image; the {g} is shown.",
    "{g}",
)


def organ_ts_labels(organ: str) -> tuple[str, ...]:
    """TotalSegmentator labels of a canonical report organ, or ``(organ,)`` for a TS label name."""
    if organ in ORGAN_TS_LABELS:
        return tuple(ORGAN_TS_LABELS[organ])
    return (organ,)


def _side_first(stem: str, side: str) -> str:
    return f"{side} {stem.replace('_', ' ')}"


def organ_display_name(organ: str) -> str:
    """Human words for an organ: report organs as they are, TS labels made readable
    (``vertebrae_T12`` -> ``T12 vertebra``, ``rib_left_6`` -> ``left sixth rib``,
    ``lung_upper_lobe_left`` -> ``left upper lobe of the lung``, ``kidney_left`` -> ``left kidney``)."""
    o = organ.strip()
    if " " in o or "_" not in o:
        return o
    m = re.fullmatch(r"vertebrae_([CTLS]\d+)", o)
    if m:
        return f"{m.group(1)} vertebra"
    m = re.fullmatch(r"rib_(left|right)_(\d+)", o)
    if m:
        n = int(m.group(2))
        return f"{m.group(1)} {_ORDINALS.get(n, str(n) + 'th')} rib"
    m = re.fullmatch(r"lung_(upper|middle|lower)_lobe_(left|right)", o)
    if m:
        return f"{m.group(2)} {m.group(1)} lobe of the lung"
    if o == "portal_vein_and_splenic_vein":
        return "portal vein and splenic vein"
    if o == "costal_cartilages":
        return "costal cartilages"
    if o == "iliac_vena_left" or o == "iliac_vena_right":
        return f"{o.rsplit('_', 1)[1]} iliac vein"
    if o.startswith("kidney_cyst_"):
        return f"{o.rsplit('_', 1)[1]} kidney cyst"
    for side in ("left", "right"):
        if o.endswith("_" + side):
            stem = o[: -len(side) - 1]
            stem = {"clavicula": "clavicle", "hip": "hip bone", "autochthon": "autochthonous back muscle",
                    "iliopsoas": "iliopsoas muscle", "atrial_appendage": "atrial appendage"}.get(stem, stem)
            return _side_first(stem, side)
    return o.replace("_", " ")


def organ_station(organ: str) -> str | None:
    """Body station (head, neck, chest, abdomen, pelvis) of an organ, None when it spans several."""
    if organ in ORGANS:
        return ORGANS[organ].station
    if organ in TS_LABEL_STATIONS:
        return TS_LABEL_STATIONS[organ]
    if re.fullmatch(r"vertebrae_C\d", organ):
        return "neck"
    if re.fullmatch(r"vertebrae_T\d+", organ):
        return "chest"
    if re.fullmatch(r"vertebrae_(L\d|S1)", organ):
        return "abdomen" if organ[-2] == "L" and int(organ[-1]) <= 3 else "pelvis"
    stem = re.sub(r"_(left|right)(_\d+)?$", "", organ)
    stem = re.sub(r"_(upper|middle|lower)_lobe$", "", stem)
    if stem in TS_LABEL_STATIONS:
        return TS_LABEL_STATIONS[stem]
    organ_rec = ORGANS.get(stem.replace("_", " "))
    return organ_rec.station if organ_rec else None


def canonical_prompt(organ: str, style: str) -> str:
    """The evaluation prompt of an organ in a style (``word`` or ``sentence``)."""
    name = organ_display_name(organ)
    if style == "word":
        return name
    if style == "sentence":
        return f"An axial CT image showing the {name}."
    raise ValueError(f"unknown prompt style {style!r}; use one of {STYLES}")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def augmented_prompt(organ: str, rng: random.Random, styles: tuple[str, ...] = STYLES) -> str:
    """One language-augmented prompt for an organ (PMC-MSA-style variation of modality,
    orientation, body station and organ wording). A third of the draws are the canonical
    prompt of a random style so the evaluation prompts stay in distribution."""
    style = rng.choice(styles)
    if rng.random() < 1 / 3:
        return canonical_prompt(organ, style)
    name = organ_display_name(organ)
    synonyms = ORGANS[organ].synonyms if organ in ORGANS else ()
    name = rng.choice(synonyms or (name,))
    if style == "word":
        station = organ_station(organ)
        if station and rng.random() < 0.5:
            return f"{name} ({rng.choice(STATION_WORDS[station])} {rng.choice(('CT', 'computed tomography'))})"
        return name
    station = organ_station(organ)
    o, m = rng.choice(_ORIENTATION), rng.choice(_MODALITY)
    if station and rng.random() < 0.6:
        tpl = rng.choice(_TEMPLATES_STATION)
        s = rng.choice(STATION_WORDS[station])
    else:
        tpl = rng.choice(_TEMPLATES)
        s = ""
    text = tpl.format(A=_article(o).capitalize(), a=_article(o), o=o, O=o.capitalize(), m=m, M=m[0].upper() + m[1:],
                      g=name, s=s)
    return text


def normalize_sentence(text: str) -> str:
    """Grouping key of a finding sentence: lower case, digits and punctuation collapsed, so
    repeated normal sentences ("The liver is normal.") fall in one group (fVLM's false negatives)."""
    t = re.sub(r"\d+(?:\.\d+)?", "#", text.lower())
    t = re.sub(r"[^a-z#]+", " ", t)
    return " ".join(t.split())


#: Words of the four body stations of the station prompts and metric: the vocabulary's stations with head
#: and neck merged, after PMC-MSA.
PROMPT_STATION_WORDS: dict[str, tuple[str, ...]] = {
    "head_neck": ("head and neck", "neck"), **{k: STATION_WORDS[k] for k in ("chest", "abdomen", "pelvis")}}


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def canonical_station_prompt(station: str) -> str:
    """The evaluation prompt of a body station (``"An axial CT image of the chest."``)."""
    return f"An axial CT image of the {PROMPT_STATION_WORDS[station][0]}."


def station_prompt(station: str, organs: list[str], rng: random.Random, max_organs: int = 3) -> str:
    """A PMC-MSA-style prompt naming the station and up to ``max_organs`` organs of the slice
    (``"Axial CT of the abdomen showing the liver, spleen and stomach."``); a third are the canonical prompt."""
    if not organs or rng.random() < 1 / 3:
        return canonical_station_prompt(station)
    picked = rng.sample(organs, min(len(organs), max_organs))
    names = [rng.choice(ORGANS[o].synonyms or (organ_display_name(o),)) if o in ORGANS else organ_display_name(o)
             for o in picked]
    o, m = rng.choice(_ORIENTATION), rng.choice(_MODALITY)
    s = rng.choice(PROMPT_STATION_WORDS[station])
    return (f"{_article(o).capitalize()} {o} {m} image of the {s} showing the {_join(names)}." if rng.random() < 0.5
            else f"{o.capitalize()} {m} of the {s}: {_join(names)}.")
