"""Training on the real example CT: a step lowers the loss on a fixed batch, the bf16 autocast path,
config round trip, and the finished run's model loads in the selector."""

from __future__ import annotations

import math

import pytest
import torch

from keyslice.finetune.config import FinetuneConfig
from tests.finetune_utils import shipped_config


def small_config(out, **train) -> FinetuneConfig:
    d = shipped_config(out, steps=train.pop("steps", 4))
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


def test_fp16_uses_loss_scaling_and_checkpoints_it(tmp_path, data_dir):
    """fp16 (GPUs without bf16) needs dynamic loss scaling; its state is resumed with the run."""
    from keyslice.finetune.train import _Run

    run = _Run(small_config(tmp_path / "run", precision="fp16"), progress=lambda m: None)
    assert run.scaler.is_enabled()          # (fp32 and bf16 runs have it disabled: a pass-through)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    row = run.train_step(0)
    assert math.isfinite(row["loss"])
    run.step = 1
    path = run.save()
    state = torch.load(path, weights_only=False)
    assert state["scaler"]["scale"] > 0
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])]
    # a step with inf/NaN gradients is skipped and only lowers the scale; either way the scaler saw it
    assert changed or state["scaler"]["scale"] < 2.0 ** 16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU path not exercised")
def test_cuda_training_uses_bf16_autocast(tmp_path, data_dir):
    from keyslice.finetune.train import train

    cfg = small_config(tmp_path / "run", steps=2, device="cuda", precision="auto")
    result = train(cfg, progress=lambda m: None)
    import json

    prov = json.loads((result.model_dir / "keyslice_finetune.json").read_text())
    assert prov["device"].startswith("cuda") and prov["precision"] == "bf16" and math.isfinite(result.final_loss)


@pytest.mark.slow
def test_open_clip_registry_architecture_trains_and_exports(tmp_path, data_dir):
    """``model.spec: open_clip:ARCH`` (any open_clip registry model; no pretrained tag: nothing is
    downloaded) is materialised, trained one step and exported in a folder load_model reads.
    Slow: a 60M-parameter model written four times (init, checkpoint with AdamW state, export)."""
    from keyslice.finetune.train import train
    from keyslice.selector.loaders import load_model

    d = small_config(tmp_path / "run", steps=1, batch_size=2).to_dict()
    d["model"]["spec"] = "open_clip:ViT-S-32"
    d["pairs"] = {"organs": ["liver"], "pairs_per_organ": 2}
    cfg = FinetuneConfig.from_dict(d)
    result = train(cfg, progress=lambda m: None)
    assert (tmp_path / "run" / "init_model" / "ViT-S-32.json").is_file()
    enc = load_model(str(result.model_dir), device="cpu")
    assert enc.image_size == 224
    init = torch.load(tmp_path / "run" / "init_model" / "ViT-S-32.pt", weights_only=True)
    tuned = torch.load(result.model_dir / "ViT-S-32.pt", weights_only=True)
    assert init.keys() == tuned.keys() and not torch.equal(init["visual.conv1.weight"], tuned["visual.conv1.weight"])


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
    from keyslice.selector.loaders import load_model

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


def test_zoom_out_pads_with_air(tmp_path, data_dir):
    """crop_scale > 1 (a wider field of view than the training CT's): the slice shrinks inside the
    image and the margin is air, i.e. black in any window; crop_scale <= 1 never pads."""
    from dataclasses import replace

    from keyslice.finetune.train import _Run

    run = _Run(small_config(tmp_path / "run"), progress=lambda m: None)
    enc = run.encoder
    black = torch.tensor([-m / s for m, s in zip(enc.mean, enc.std)]).view(3, 1, 1)
    common = dict(crop_ratio=(1.0, 1.0), cutout_p=0.0, window_jitter=0.0)
    wide = replace(run.cfg.augment, enabled=True, crop_scale=(4.0, 4.0), **common)     # box = 2 x the slice
    x = run.bank.render(["example_ct"] * 4, [100] * 4, ["abdomen"] * 4, wide, torch.Generator().manual_seed(1))
    s = x.shape[-1]
    for img in x:
        is_black = (img - black).abs().amax(0) < 1e-3                     # [S, S]
        # the slice fills half the side: at least a quarter of the side is air on each axis
        assert is_black.all(0).sum() >= s // 4 and is_black.all(1).sum() >= s // 4
        assert not is_black[s // 4: 3 * s // 4, s // 4: 3 * s // 4].all()  # the body is still there
    tight = replace(wide, crop_scale=(0.9, 1.0))
    y = run.bank.render(["example_ct"] * 4, [100] * 4, ["abdomen"] * 4, tight, torch.Generator().manual_seed(1))
    for img in y:
        assert ((img - black).abs().amax(0) < 1e-3).all(0).sum() < s // 8  # no air columns added
    with pytest.raises(ValueError, match="crop_scale"):
        d = run.cfg.to_dict()
        d["augment"]["crop_scale"] = [0.0, 1.0]
        FinetuneConfig.from_dict(d)
