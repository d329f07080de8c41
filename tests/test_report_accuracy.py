"""Accuracy floors of the rules segmenter on the hand-labelled real caption fixture.

The fixture (tests/fixtures/report_labels.json) holds real ROCO CT caption sentences,
labelled by reading (organ set, status, phase hint; see its "guidelines"):
  dev / test   every sentence of the captions with index 1 mod 6 (dev, tuned on) and
               4 mod 6 (test, held out): 177 sentences, 153 with a status;
  cues         48 held-out sentences of the other captions that hold a negation,
               normality or hedging word (the systematic sample has only 11 normal and 5
               uncertain sentences), labelled before the rules were run on them.

Measured with rules-v1 (benchmarks/bench_report.py; results in benchmarks/results/report.txt):
    split       n   organ-set  status (n, always-abnormal baseline)  phase
    dev        89     0.989    1.000  (76, 0.908)                    0.989
    test       88     0.966    0.961  (77, 0.883)                    0.977   (first held-out run: 0.966 / 0.948 / 0.977)
    cues       48     0.938    0.886  (44, 0.795)                    0.958   (first and only run)
Floors: the measurement minus two binomial standard errors, rounded down to 0.01
(e.g. test organ-set: 0.966 - 2 * sqrt(0.966 * 0.034 / 88) = 0.927 -> 0.92), so that a
lexicon change may trade a sentence or two (one sentence is 1.1 % of test) while a real
regression (a broken negation scope or sentencizer) fails. Where that rule would not beat
the always-abnormal baseline (cues status: 0.79 vs 0.795) the floor is two sentences under
the measurement instead (37/44 = 0.84); and the recall of "normal" is asserted on its own.
Checked once by hand: with the negation triggers emptied, test status falls to 0.896,
dev+test to 0.935 and the recall of "normal" to 1/6 (test) and 1/8 (cues), so this fails.
Uncertain is measured but has no floor: 6 gold items in all, and the 3 held-out test ones
(clinical history / outcome sentences of captions) are all missed (see the report notes).
"""

from __future__ import annotations

import json

import pytest

from keyslice.report import ORGAN_TS_LABELS, segment_report
from keyslice.report.evaluation import evaluate, evaluate_segmentation, load_fixture

FLOORS = {
    "dev+test": {"organ_set_exact": 0.95, "status": 0.95, "phase_hint": 0.96},
    "test": {"organ_set_exact": 0.92, "status": 0.91, "phase_hint": 0.94},
    "cues": {"organ_set_exact": 0.86, "status": 0.84, "phase_hint": 0.90},
}


@pytest.fixture(scope="module")
def items():
    return load_fixture()


def test_fixture_is_real_and_complete(items, data_dir):
    assert len(items) >= 100
    assert sum(it["split"] in ("dev", "test") for it in items) >= 100  # the systematic sample alone
    caps = json.loads((data_dir / "roco_ct_captions/captions.json").read_text())
    for it in items:
        cap = caps[it["caption_index"]]
        assert cap["roco_id"] == it["roco_id"]
        assert it["sentence"] in cap["caption"]                       # verbatim real text
        assert (it["pmc_image"], it["source"], it["license"]) == (cap["pmc_image"], cap["source"], cap["license"])
        assert set(it["organs"]) <= set(ORGAN_TS_LABELS)
        assert it["status"] in ("abnormal", "normal", "uncertain", None)
        assert it["phase_hint"] in ("non_contrast", "arterial", "portal_venous", "delayed", None)
        expected = {1: "dev", 4: "test"}.get(it["caption_index"] % 6, "cues")
        assert it["split"] == expected
    # every status value and every phase occurs, so each field's accuracy means something
    assert {it["status"] for it in items} == {"abnormal", "normal", "uncertain", None}
    assert {it["phase_hint"] for it in items} == {"non_contrast", "arterial", "portal_venous", "delayed", None}


def test_accuracy_floors(items):
    acc = evaluate(items, segment_report)
    for split, floors in FLOORS.items():
        for field, floor in floors.items():
            assert acc[split][field] >= floor, (split, field, acc[split][field], acc["disagreements"])
        assert acc[split]["status"] > acc[split]["status_majority_baseline"], split
        assert acc[split]["errors"] == 0
    # status is not "always abnormal": normal (negated) sentences are recognised on held-out text
    assert acc["test"]["status_recall"]["normal"] == 1.0      # measured 6/6
    assert acc["cues"]["status_recall"]["normal"] >= 0.75     # measured 7/8


def test_sentence_segmentation_of_whole_captions(items):
    seg = evaluate_segmentation(items, segment_report)
    # measured: 0.966 of captions split exactly, boundary precision 1.000, recall 0.932 (the misses
    # are sentences glued without punctuation, e.g. "diagnosisIn the proximal...")
    assert seg["caption_exact"] >= 0.93 and seg["boundary_precision"] >= 0.97 and seg["boundary_recall"] >= 0.90
