"""Pair builder on the REAL TotalSegmentator masks: counts, balance, determinism, the mask/CT trap,
lesion labels from a CSV, prompts and the soft-target matrix."""

from __future__ import annotations

import random

import numpy as np
import pytest

from keyslice.finetune.config import SourceConfig
from keyslice.finetune.loss import target_matrix
from keyslice.finetune.pairs import (Pair, build_organ_pairs, lesion_labels_from_csv, lesion_pairs, load_source)
from keyslice.finetune.prompts import augmented_prompt, canonical_prompt, normalize_sentence, organ_display_name
from tests.finetune_utils import REF, load_example_ct



@pytest.fixture(scope="module")
def example_ct(data_dir):
    return load_example_ct(data_dir)


def test_organ_pairs_counts_and_balance_on_real_masks(example_ct):
    organs = ["liver", "kidney", "urinary bladder", "colon", "brain"]
    pairs, stats = build_organ_pairs([example_ct], organs, pairs_per_organ=64, seed=0)
    by = {s.organ: s for s in stats}
    # z-ranges in example_ct (112 slices) from example_seg_fast_force_split: liver 69-111,
    # kidney = right 66-101 + left 72-104 -> 66-104, urinary bladder 4-31, colon 3-111, no brain
    assert (by["liver"].n_inside, by["liver"].n_outside) == (43, 69)
    assert (by["kidney"].n_inside, by["kidney"].n_outside) == (39, 73)
    assert (by["urinary bladder"].n_inside, by["urinary bladder"].n_outside) == (28, 84)
    assert (by["colon"].n_inside, by["colon"].n_outside) == (109, 3)
    assert by["brain"].skipped and by["brain"].n_pos == 0
    for organ in ("liver", "kidney", "urinary bladder", "colon"):
        pos = [p for p in pairs if p.organ == organ and p.label == 1]
        neg = [p for p in pairs if p.organ == organ and p.label == 0]
        assert len(pos) == len(neg) == 32 == by[organ].n_pos == by[organ].n_neg     # balanced per organ
        inside = example_ct.inside(organ)
        assert all(inside[p.slice] for p in pos) and not any(inside[p.slice] for p in neg)
    lo, hi = 69, 111
    assert all(lo <= p.slice <= hi for p in pairs if p.organ == "liver" and p.label == 1)
    # a pool larger than the draw is sampled without replacement; a short pool is used whole, then resampled
    assert len({p.slice for p in pairs if p.organ == "liver" and p.label == 1}) == 32
    assert {p.slice for p in pairs if p.organ == "colon" and p.label == 0} == {0, 1, 2}
    assert len(pairs) == 4 * 64


def test_organ_pairs_are_deterministic_per_organ(example_ct):
    a, _ = build_organ_pairs([example_ct], ["liver", "kidney"], pairs_per_organ=20, seed=3)
    b, _ = build_organ_pairs([example_ct], ["kidney", "liver"], pairs_per_organ=20, seed=3)
    c, _ = build_organ_pairs([example_ct], ["liver", "kidney"], pairs_per_organ=20, seed=4)
    assert sorted(a, key=repr) == sorted(b, key=repr)
    assert sorted(a, key=repr) != sorted(c, key=repr)


def test_per_structure_masks_belong_to_example_ct_sm(data_dir, example_ct):
    """example_seg_fast/ (one mask per structure) is on example_ct_sm's grid: slices 82-111 of example_ct
    with the affine of slice 0. With example_ct_sm it gives the same organ slices as the full mask on
    example_ct shifted by 82; on example_ct itself world coordinates put it on slices 0-29."""
    ref = data_dir / REF
    sm = load_source(SourceConfig("example_ct_sm", str(ref / "example_ct_sm.nii.gz"), str(ref / "example_seg_fast")))
    assert sm.n_slices == 30
    for organ in ("liver", "spleen", "kidney"):
        assert np.array_equal(sm.inside(organ), example_ct.inside(organ)[82:112]), organ
    pairs, stats = build_organ_pairs([sm], ["kidney", "liver"], pairs_per_organ=16, seed=0)
    by = {s.organ: s for s in stats}
    assert (by["kidney"].n_inside, by["kidney"].n_outside) == (23, 7)     # kidney on slices 0-22 of 30
    assert (by["liver"].n_inside, by["liver"].n_outside) == (30, 0)       # liver on every slice: positives only
    assert by["liver"].n_pos == 8 and by["liver"].n_neg == 0
    wrong = load_source(SourceConfig("wrong", str(ref / "example_ct.nii.gz"), str(ref / "example_seg_fast")))
    assert np.nonzero(wrong.presence("liver"))[0].tolist() == list(range(30))  # the trap, made visible


def test_lesion_labels_from_csv(tmp_path, example_ct):
    csv = tmp_path / "labels.csv"
    csv.write_text("study,slice,sentence,organ\n"
                   "example_ct,95,Hypodense lesion in segment 7 of the liver.,liver\n"
                   "example_ct,40,The liver is normal.,liver\n"
                   "example_ct,41,The liver is normal,liver\n"
                   "example_ct,500,Out of range.,\n"
                   "other_study,3,Not this CT.,\n")
    labels = lesion_labels_from_csv(csv, [example_ct])
    assert [(lb.slice, lb.organ) for lb in labels] == [(95, "liver"), (40, "liver"), (41, "liver")]
    pairs = lesion_pairs(labels)
    assert pairs[1].group == pairs[2].group != pairs[0].group          # repeated normal sentence: one group
    assert normalize_sentence("Lesion of 12 mm.") == normalize_sentence("lesion of 3.5 mm")


def test_soft_targets_handle_false_negatives(example_ct):
    rows = [
        Pair("organ", "example_ct", 100, 1, "liver", None, "liver"),     # inside liver and spleen
        Pair("organ", "example_ct", 90, 1, "spleen", None, "spleen"),    # inside liver and spleen
        Pair("organ", "example_ct", 10, 0, "liver", None, "liver"),      # outside liver (bladder level)
        Pair("lesion", "example_ct", 40, 1, "liver", "The liver is normal.", "s:the liver is normal"),
        Pair("lesion", "example_ct", 41, 1, "liver", "The liver is normal", "s:the liver is normal"),
    ]
    t = target_matrix(rows, lambda s, k, o: bool(example_ct.inside(o)[k]) if o else False)
    assert t[:, 0].tolist() == [1, 1, 0, 0, 0]     # "liver" text: both upper slices, not slice 10 nor 40/41
    assert t[:, 1].tolist() == [1, 1, 0, 0, 0]     # "spleen" text: slices 100 and 90 (spleen 82-111)
    assert t[2].tolist() == [0, 0, 0, 0, 0]        # the negative row has no positive text
    assert t[3, 4] == t[4, 3] == 1                  # same normal sentence: not a negative
    plain = target_matrix(rows, lambda s, k, o: False, soft=False)
    assert np.array_equal(plain, np.diag([1, 1, 0, 1, 1]))


def test_prompts():
    assert canonical_prompt("liver", "word") == "liver"
    assert canonical_prompt("liver", "sentence") == "An axial CT image showing the liver."
    assert organ_display_name("vertebrae_T12") == "T12 vertebra"
    assert organ_display_name("rib_left_6") == "left sixth rib"
    assert organ_display_name("kidney_right") == "right kidney"
    assert organ_display_name("lung_upper_lobe_left") == "left upper lobe of the lung"
    rng = random.Random(0)
    texts = {augmented_prompt("urinary bladder", rng) for _ in range(200)}
    assert len(texts) > 30
    assert any("pelvis" in t for t in texts) and any("transverse" in t.lower() for t in texts)
    assert any("computed tomography" in t for t in texts) and "urinary bladder" in texts
    assert all("bladder" in t for t in texts)
    r1, r2 = random.Random(7), random.Random(7)
    assert [augmented_prompt("liver", r1) for _ in range(20)] == [augmented_prompt("liver", r2) for _ in range(20)]


def test_lesion_labels_from_corpus_image_refs_and_reviewed_selections(tmp_path, data_dir):
    """Synthetic findings (sentences and image references written here) on the REAL DICOM series: an
    instance number maps to the slice of the position-sorted series (instances run 286..267 from
    the lowest z, so instance 280 is slice 6), and reviewed selections take their text from the corpus."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from keyslice.finetune.pairs import lesion_labels_from_corpus, lesion_labels_from_selections

    ref = data_dir / REF
    src = load_source(SourceConfig("example_ct_dicom", str(ref / "example_ct_dicom"),
                                   str(ref / "example_seg_dicom.nii.gz"),
                                   str(data_dir / "totalsegmentator_reference/totalsegmentator_total_labels.json")))
    assert src.volume.instance_numbers[0] == 286 and src.volume.instance_numbers[6] == 280
    corpus = tmp_path / "corpus"
    (corpus / "tables" / "findings").mkdir(parents=True)
    refs = pa.list_(pa.struct([("series_number", pa.int32()), ("instance_number", pa.int32())]))
    pq.write_table(pa.table({
        "study_id": ["example_ct_dicom", "example_ct_dicom", "example_ct_dicom", "another_study"],
        "finding_id": ["f:0", "f:1", "f:2", "g:0"],
        "text": ["Hypodense liver lesion (image 280).", "The spleen is normal.", "Cyst (image 999).", "x (image 280)"],
        "organ": ["liver", "spleen", "kidney", "liver"],
        "image_refs": pa.array([[{"series_number": None, "instance_number": 280}], [],
                                [{"series_number": None, "instance_number": 999}],
                                [{"series_number": None, "instance_number": 280}]], refs),
    }), corpus / "tables" / "findings" / "example_ct_dicom.parquet")
    labels = lesion_labels_from_corpus(corpus, [src])
    assert [(lb.source, lb.slice, lb.organ) for lb in labels] == [("example_ct_dicom", 6, "liver")]  # 999: no such image

    sel = tmp_path / "reviewed.csv"
    sel.write_text("study_id,finding_id,slice,reviewed\n"
                   "example_ct_dicom,f:1,12,true\n"
                   "example_ct_dicom,f:0,3,false\n"       # rejected by the reviewer
                   "example_ct_dicom,f:2,25,true\n")      # out of range (20 slices)
    labels = lesion_labels_from_selections(sel, [src], corpus)
    assert [(lb.slice, lb.sentence, lb.organ) for lb in labels] == [(12, "The spleen is normal.", "spleen")]
