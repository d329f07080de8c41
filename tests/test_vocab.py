"""keyslice.vocab: the one vocabulary is well-formed data, and its users read the same words the same way."""

from __future__ import annotations

import json

import pytest

from keyslice import vocab
from keyslice.report import segment_report
from keyslice.vqa.lexicon import find_organs

CATEGORIES = {"NEGATED_EXISTENCE", "ABSENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "TIMING", "HYPOTHETICAL",
              "INDICATION", "NORMAL", "PSEUDO", "TERMINATE"}


def test_context_rules_are_well_formed():
    seen = set()
    for rule in vocab.CONTEXT_RULES:
        assert rule.category in CATEGORIES, rule
        assert rule.literal == rule.literal.lower().strip() and rule.literal, rule
        if rule.category == "PSEUDO":
            assert rule.direction == "PSEUDO"
        elif rule.category == "TERMINATE":
            assert rule.direction == "TERMINATE"
        elif rule.category == "NORMAL":
            assert rule.direction == "NONE"
        else:
            assert rule.direction in ("FORWARD", "BACKWARD", "BIDIRECTIONAL"), rule
        assert rule.literal not in seen, f"{rule.literal!r} has two rules: the matcher would pick one at random"
        seen.add(rule.literal)
    assert set(vocab.STATEMENT_CUES) <= set(vocab.STATEMENTS)


def test_organs_are_well_formed(data_dir):
    ts = set(json.loads((data_dir / "totalsegmentator_reference/totalsegmentator_total_labels.json").read_text()))
    ts = set(ts.values()) if isinstance(ts, dict) else ts
    regions = {"head", "neck", "thorax", "abdomen", "pelvis"}
    for organ in vocab.ORGANS.values():
        assert set(organ.regions) <= regions and organ.regions, organ.key
        assert organ.station in (None, "head", "neck", "chest", "abdomen", "pelvis"), organ.key
        if organ.ts_labels_by_side:
            assert set(organ.ts_labels_by_side) == {"left", "right"}
            assert set(organ.ts_labels_by_side["left"]) | set(organ.ts_labels_by_side["right"]) == set(organ.ts_labels)
        assert organ.tagged or not organ.ts_labels or organ.key in vocab.ORGAN_TS_LABELS
        for term in organ.terms:
            assert term == term.lower(), (organ.key, term)
    assert set(vocab.ORGAN_TS_LABELS) == {k for k, o in vocab.ORGANS.items() if o.tagged}
    # every phrase names known organs; multi-organ terms name at least two
    for term, organs in vocab.organ_terms().items():
        assert organs and set(organs) <= set(vocab.ORGANS), term


@pytest.mark.parametrize("word,organs", [
    ("perisplenic", ("spleen",)),
    ("pyelonephritis", ("kidney",)),
    ("bronchopleural", ("lung", "pleura")),
    ("hepatoduodenal", ("liver", "duodenum")),
    ("nephroureterectomy", ("kidney", "ureter")),
    ("nephro", ("kidney",)),
    ("pararenal", ()),
    ("retropancreatic", ()),
    ("hepatic", ("liver",)),
])
def test_word_organs(word, organs):
    assert vocab.word_organs(word) == organs


@pytest.mark.parametrize("text", [
    "Hepatic steatosis.", "Perisplenic fluid.", "Bronchopleural fistula.", "Nephro-ureterectomy bed.",
    "Thrombus in the splenic vein.", "Hepatosplenomegaly.", "Enlarged paratracheal lymph nodes are seen.",
    "Pneumothorax on the right side.", "Thickening of the sigmoid colon wall.",
])
def test_step1_and_vqa_name_the_same_organs(text):
    """One vocabulary: the segmenter's organs and the VQA grounding look-up agree (tagged organs)."""
    tagged = [o for o in find_organs(text) if vocab.ORGANS[o].tagged]
    assert segment_report(text)[0].organs == tagged


def test_abnormality_types_and_phases():
    assert vocab.find_abnormalities("Free intraperitoneal air and a liver cyst.") == ["free air", "cyst"]
    assert set(vocab.ABNORMALITY_GROUP) == set(vocab.ABNORMALITY_TYPES)
    assert set(vocab.HINT_PHASES) <= set(vocab.PHASES)
    assert {p for _, p, _ in vocab.PHASE_HINT_TERMS} <= set(vocab.HINT_PHASES)
    assert set(vocab.PHASE_ALIASES.values()) <= set(vocab.PHASES)
