"""Training on the real example CT: a step lowers the loss on a fixed batch, the bf16 autocast path,
config round trip, and the finished run's model loads in the selector."""

from __future__ import annotations

import math

import pytest
import torch

from keyslice.finetune.config import FinetuneConfig
from keyslice.finetune.demo import demo_config


def small_config(out, **train) -> FinetuneConfig:
    d = demo_config(out, steps=train.pop("steps", 4))
    d["pairs"] = {"organs": ["liver", "kidney", "urinary bladder", "lung", "femur"], "pairs_per_organ": 16}
    d["train"].update({"batch_size": 16, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, **train})
    d["eval"] = {"plots": False, "organs": ["liver", "kidney", "pancreas"]}
    return FinetuneConfig.from_dict(d)


def test_config_round_trip_and_validation(tmp_path, data_dir):
    cfg = small_config(tmp_path / "run")
    again = FinetuneConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert cfg.train_sources[0].ct.startswith(str(data_dir))           # {data} resolved
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(cfg.to_yaml())
    assert FinetuneConfig.from_yaml(yaml_file) == cfg
    assert FinetuneConfig.from_yaml(yaml_file, **{"train.lr": 0.1}).fingerprint() != cfg.fingerprint()
    assert FinetuneConfig.from_yaml(yaml_file, out_dir=str(tmp_path / "x")).fingerprint() == cfg.fingerprint()
    bad = cfg.to_dict()
    bad["train"]["lr_typo"] = 1
    with pytest.raises(ValueError, match="lr_typo"):
        FinetuneConfig.from_dict(bad)
    no_seed = cfg.to_dict()
    no_seed.pop("seed")
    with pytest.raises(ValueError, match="seed"):
        FinetuneConfig.from_dict(no_seed)


def test_a_training_step_reduces_the_loss_on_a_fixed_batch(tmp_path, data_dir):
    from keyslice.finetune.train import _Run

    run = _Run(small_config(tmp_path / "run", lr=1e-3), progress=lambda m: None)
    images, tokens, targets, texts = run.batch(0)
    assert images.shape == (16, 3, 64, 64) and torch.isfinite(images).all()
    assert len(texts) == 16 and targets.diagonal().sum() > 0
    before = float(run.loss_on(images, tokens, targets).detach())
    for _ in range(3):
        loss = run.loss_on(images, tokens, targets)
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
    after = float(run.loss_on(images, tokens, targets).detach())
    assert math.isfinite(before) and after < before - 0.05, (before, after)


def test_bf16_autocast_path_runs(tmp_path, data_dir):
    """The CUDA path uses bf16 autocast; the same code runs under CPU autocast here."""
    from keyslice.finetune.train import _Run

    run = _Run(small_config(tmp_path / "run", precision="bf16"), progress=lambda m: None)
    assert run.precision == "bf16"
    row = run.train_step(0)
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0


def test_augmentation_is_deterministic_per_step_and_varies(tmp_path, data_dir):
    from keyslice.finetune.train import _Run

    run = _Run(small_config(tmp_path / "run"), progress=lambda m: None)
    a, _, _, ta = run.batch(5)
    b, _, _, tb = run.batch(5)
    c, _, _, _ = run.batch(6)
    assert torch.equal(a, b) and ta == tb
    assert not torch.equal(a, c)
    # augmentation off: the central square, resized like the selector's preprocessing
    from dataclasses import replace

    plain = replace(run.cfg.augment, enabled=False)
    g = torch.Generator().manual_seed(0)
    x = run.bank.render(["example_ct"], [100], ["abdomen"], plain, g)
    from keyslice.selector.preprocess import preprocess_batch
    from keyslice.selector.windows import get_window

    hu = torch.from_numpy(run.sources[0].volume.hu[100:101])
    enc = run.encoder
    ref = preprocess_batch(hu, get_window("abdomen"), enc.image_size, enc.mean, enc.std)
    assert (x - ref).abs().mean() < 0.06   # half-pixel crop offset, bilinear vs bicubic


def test_finished_run_exports_a_loadable_model(tmp_path, data_dir):
    from keyslice.finetune.train import train
    from keyslice.selector.model import load_model

    cfg = small_config(tmp_path / "run", steps=2)
    result = train(cfg, progress=lambda m: None)
    assert result.model_dir is not None and (result.model_dir / "keyslice_finetune.json").is_file()
    enc = load_model(str(result.model_dir), device="cpu")
    emb = enc.encode_texts(["An axial CT image showing the liver."])
    assert emb.shape == (1, enc.embed_dim)
    import json

    prov = json.loads((result.model_dir / "keyslice_finetune.json").read_text())
    assert prov["seed"] == 0 and prov["steps"] == 2 and prov["data"][0]["ct_sha256"]
    import pyarrow.parquet as pq

    steps = pq.read_table(tmp_path / "run" / "metrics" / "train_steps.parquet").to_pylist()
    assert [r["step"] for r in steps] == [1, 2]
    pairs = pq.read_table(tmp_path / "run" / "pairs.parquet")
    stats = pq.read_table(tmp_path / "run" / "pair_stats.parquet").to_pylist()
    assert [s["organ"] for s in stats] == ["liver", "kidney", "urinary bladder", "lung", "femur"]
    assert all(s["n_pos"] == s["n_neg"] == 8 for s in stats) and pairs.num_rows == 5 * 16
