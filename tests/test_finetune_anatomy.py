"""Anatomy-level alignment, finding-level false negatives, station prompts and the aorta-report lesion queries,
on the REAL CTs and masks (and real ROCO caption sentences for the false-negative targets)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from keyslice.finetune.config import FinetuneConfig, SourceConfig
from keyslice.finetune.loss import anatomy_clip_loss, soft_clip_loss, target_matrix
from keyslice.finetune.pairs import (STATIONS, Pair, finding_group_keys, finding_row_keys, lesion_labels_from_aorta_report,
                                     lesion_pairs, load_source, slice_stations)
from keyslice.finetune.prompts import canonical_station_prompt, station_prompt
from tests.finetune_utils import REF, load_example_ct

AORTA = REF / "aorta_report"


@pytest.fixture(scope="module")
def example_ct(data_dir):
    return load_example_ct(data_dir)


@pytest.fixture(scope="module")
def aorta_ct(data_dir):
    models = data_dir / AORTA / "test_result" / "models"
    masks = tuple(str(models / f"{n}.nii.gz") for n in ("aorta", "aorta_false_lumen", "aorta_true_lumen",
                                                          "vertebrae_T12", "subclavian_artery_left"))
    return load_source(SourceConfig("aorta_cta", str(models / "ct_cropped.nii.gz"), masks,
                                    aorta_report=str(data_dir / AORTA / "example_ct_report" / "aorta_report.json")))


def _captions(data_dir) -> dict[str, str]:
    return {c["roco_id"]: c["caption"] for c in json.loads((data_dir / "roco_ct_captions/captions.json").read_text())}


# --------------------------------------------------------------------------- regions


def test_pixels_outside_the_mask_do_not_change_the_region_embedding(example_ct, tiny_model_dir):
    from keyslice.finetune.augment import SliceBank
    from keyslice.finetune.config import AugmentConfig
    from keyslice.selector.loaders import load_model

    enc = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    bank = SliceBank([example_ct], enc.image_size, enc.mean, enc.std, enc.resize_mode, torch.device("cpu"))
    k = 90                                                       # a slice through the liver (z-range 69-111)
    mask = bank.region_mask("example_ct", "liver")[k]
    assert 0 < int(mask.sum()) < mask.numel()
    aug = AugmentConfig(enabled=False)

    def embed(region):
        x = bank.render(["example_ct"], [k], ["liver"], aug, torch.Generator().manual_seed(0), regions=[region])
        return enc.encode_images(x)[0]

    region = embed("liver")
    whole = embed(None)
    original = bank.hu["example_ct"][k].clone()
    noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(1)) * 500
    bank.hu["example_ct"][k] = torch.where(mask, original, original + noise)        # change every outside pixel
    assert torch.allclose(embed("liver"), region, atol=1e-6)                          # the region does not see it
    assert not torch.allclose(embed(None), whole, atol=1e-3)                          # the whole slice does
    bank.hu["example_ct"][k] = torch.where(mask, original + 200, original)            # change the organ itself
    assert not torch.allclose(embed("liver"), region, atol=1e-3)
    bank.hu["example_ct"][k] = original


def test_anatomy_loss_adds_one_problem_per_anatomy_and_skips_uninformative_blocks():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    # rows 0-1: liver organ prompts (their liver block is all ones: no information), rows 2-3: aorta findings
    t = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    anat = ["liver", "liver", "aorta", "aorta"]
    whole = soft_clip_loss(img, txt, scale, t)
    aorta = soft_clip_loss(img[2:], txt[2:], scale, t[2:, 2:])
    assert torch.allclose(anatomy_clip_loss(img, txt, scale, t, anat), (whole + aorta) / 2)
    assert torch.allclose(anatomy_clip_loss(img, txt, scale, t, [None] * 4), whole)


def test_region_targets_name_the_region_organ_not_the_z_range(example_ct):
    rows = [Pair("organ", "example_ct", 90, 1, "liver", None, "liver"),
            Pair("organ", "example_ct", 90, 1, "kidney", None, "kidney")]
    inside = lambda s, k, o: bool(example_ct.inside(o)[k])          # noqa: E731
    assert inside("example_ct", 90, "kidney") and inside("example_ct", 90, "liver")
    slice_level = target_matrix(rows, inside)
    region_level = target_matrix(rows, inside, regions=["liver", "kidney"])
    assert slice_level.tolist() == [[1, 1], [1, 1]]                  # both organs are in the slice
    assert region_level.tolist() == [[1, 0], [0, 1]]                 # the liver region is not the kidney


def test_anatomy_training_runs_on_real_masks(tmp_path, data_dir):
    from keyslice.finetune.train import _Run
    from tests.finetune_utils import shipped_config

    d = shipped_config(tmp_path / "run", steps=2)
    d["pairs"] = {"organs": ["liver", "kidney", "spleen"], "pairs_per_organ": 8, "station_pairs": 4}
    d["train"].update({"batch_size": 8, "alignment": "anatomy", "checkpoint_every": 2})
    d["spatial"] = {"enabled": True, "pixel_mm": 3.0, "fov_mm": 400}
    run = _Run(FinetuneConfig.from_dict(d), progress=lambda m: None)
    organ_rows = [p for p in run.pairs if p.kind == "organ"]
    assert organ_rows and all(p.label == 1 for p in organ_rows)          # no region for an absent organ
    assert all(r is not None for p, r in zip(run.pairs, run.regions) if p.kind == "organ")
    assert {p.kind for p in run.pairs} == {"organ", "station"}
    images, tokens, targets, texts = run.batch(0)
    loss = run.loss_on(images, tokens, targets)
    assert torch.isfinite(loss) and images.shape == (8, 3, 64, 64)
    assert run.bank.hu["example_ct"].shape[-1] == 128                   # 400 mm / 3 mm = 133 px, shrunk to 2 x 64


# --------------------------------------------------------------------------- false negatives


def test_false_negative_targets_group_real_caption_findings(data_dir):
    cap = _captions(data_dir)
    flap = "CT scan of chest with contrast showing dissection flap in ascending aorta (red arrow)."
    occluded = "CT image of occluded right pulmonary artery and aortic dissection."
    intact = "The descending aorta was intact."
    ascites_liver = "CT of the abdomen showing ascites (yellow arrow), normal sized liver (blue arrow) and spleen"
    assert flap in cap["ROCO_14930"] and occluded in cap["ROCO_71355"] and intact in cap["ROCO_56184"]
    assert ascites_liver in cap["ROCO_55750"]
    # fields as the report step writes them (organ, status, abnormalities); the aorta report gives a second
    # normal aorta finding (TotalSegmentator's landmark: no false lumen at the mid ascending aorta)
    findings = [
        {"text": flap, "organ": "aorta", "status": "abnormal", "abnormalities": ["dissection"]},
        {"text": occluded, "organ": "aorta", "status": "abnormal", "abnormalities": ["dissection", "occlusion"]},
        {"text": intact, "organ": "aorta", "status": "normal"},
        {"text": "No dissection flap at the mid ascending aorta (aortic diameter 3.5 cm).", "organ": "aorta",
         "status": "abnormal", "abnormalities": [], "negated_abnormalities": ["dissection"]},
        {"text": ascites_liver, "organ": "liver", "status": "normal"},
    ]
    rows = [Pair("lesion", "ct", i, 1, f["organ"], f["text"], "s:" + f["text"].lower(), finding_row_keys(f))
            for i, f in enumerate(findings)]
    no_inside = lambda s, k, o: False                               # noqa: E731
    t = target_matrix(rows, no_inside, false_negatives=True)
    assert t[0, 1] == t[1, 0] == 1                  # two aortic dissections: not negatives of each other
    assert t[2, 3] == t[3, 2] == 1                  # two normal aorta findings (one a negated dissection)
    assert t[0, 2] == t[2, 0] == 0                  # dissection vs intact aorta: a true negative
    assert t[2, 4] == 0                             # normal aorta vs normal liver: other organ
    off = target_matrix(rows, no_inside, false_negatives=False)
    assert (off == np.eye(5)).all()                 # the ablation: only identical sentences group
    # older findings rows without the new fields fall back to status / organ
    assert finding_row_keys({"organ": "liver", "status": "normal"}) == ("normal:liver",)
    assert finding_row_keys({"organ": "liver", "status": "abnormal"}) == ()
    assert finding_group_keys("liver", "non_finding", ["mass"]) == ()
    assert finding_group_keys(None, "normal") == ()


# --------------------------------------------------------------------------- aorta report and stations


def test_aorta_report_gives_lesion_queries_with_gold_slices(aorta_ct):
    labels = lesion_labels_from_aorta_report(aorta_ct)
    abnormal = [lb for lb in labels if lb.status == "abnormal"]
    normal = [lb for lb in labels if lb.status == "normal"]
    # 10 landmarks inside this chest CTA (the bifurcation is below it): 5 with a false lumen, 5 without,
    # plus the descending-aorta query
    assert len(normal) == 5 and len(abnormal) == 6
    assert all("No dissection flap" in lb.sentence for lb in normal)
    fl = aorta_ct.presence("aorta_false_lumen")
    desc = next(lb for lb in abnormal if "in the descending aorta" in lb.sentence)
    assert fl[desc.slice] and fl[desc.hi] and desc.hi - desc.slice > 100
    z = np.asarray(aorta_ct.volume.positions)[:, 2]
    arch = next(lb for lb in abnormal if "mid aortic arch" in lb.sentence)
    assert 729 <= z[arch.slice] + 1 and z[arch.hi] <= 738 + 1               # the landmark's world z-range
    assert all(lb.abnormalities == ("dissection",) for lb in abnormal)
    pairs = lesion_pairs([desc])
    assert len(pairs) == desc.hi - desc.slice + 1 and pairs[0].fn_keys == ("abnormal:aorta:dissection",)


def test_station_labels_from_real_masks_and_station_prompts(example_ct):
    st = slice_stations(example_ct)
    z = example_ct.z_mm
    pelvis = [z[k] for k, s in enumerate(st) if s == "pelvis"]
    abdomen = [z[k] for k, s in enumerate(st) if s == "abdomen"]
    assert pelvis and abdomen and max(pelvis) < min(abdomen) + 10      # the pelvis lies below the abdomen
    assert set(st) <= set(STATIONS) | {None}
    rng = random.Random(0)
    texts = {station_prompt("abdomen", ["liver", "spleen", "kidney"], rng) for _ in range(30)}
    assert canonical_station_prompt("abdomen") in texts
    assert any("liver" in t and "abdomen" in t for t in texts)
