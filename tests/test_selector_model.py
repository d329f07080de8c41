"""Model loading for the key-slice selector: real open_clip loading of a tiny model built by the test."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from keyslice.errors import ModelWeightsMissingError
from keyslice.selector import load_model, save_tiny_checkpoint
from keyslice.selector.model import file_sha256
from keyslice.selector.loaders import convert_openai_checkpoint


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never touch the network or the user's caches from these tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("KEYSLICE_MODELS", str(tmp_path / "models"))
    monkeypatch.delenv("KEYSLICE_PUBMEDCLIP_CHECKPOINT", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"), raising=False)
    load_model.cache_clear()
    yield
    load_model.cache_clear()


@pytest.mark.parametrize("layout", ["config", "hub"])
def test_tiny_checkpoint_roundtrip(tmp_path, layout):
    d = save_tiny_checkpoint(tmp_path / "tiny", seed=3, layout=layout)
    names = sorted(p.name for p in d.iterdir())
    if layout == "hub":
        assert names == ["open_clip_config.json", "open_clip_pytorch_model.bin"]
        assert "model_cfg" in json.loads((d / "open_clip_config.json").read_text())
    else:
        assert names == ["tiny-clip.json", "tiny-clip.pt"]
    enc = load_model(str(d), device="cpu")
    weights = next(p for p in d.iterdir() if p.suffix in (".pt", ".bin"))
    assert enc.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert enc.image_size == 64 and enc.context_length == 32 and enc.device.type == "cpu"
    assert enc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    # The weights really came from the file: the loaded model equals the saved state dict.
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    for k, v in enc.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    img = enc.encode_images(torch.randn(3, 3, 64, 64))
    txt = enc.encode_texts(["hypodense liver lesion", "no pleural effusion"])
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)


def test_same_layout_two_seeds_are_different_models(tmp_path):
    a = load_model(str(save_tiny_checkpoint(tmp_path / "a", seed=0)))
    b = load_model(str(save_tiny_checkpoint(tmp_path / "b", seed=1)))
    assert a.weights_sha256 != b.weights_sha256
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(a.encode_images(x), b.encode_images(x))


def test_encoder_is_cached_per_spec_device_precision(tmp_path):
    d = str(save_tiny_checkpoint(tmp_path / "m"))
    assert load_model(d) is load_model(d)
    assert load_model(d, device="cpu", precision="fp32") is load_model(d, device="cpu", precision="fp32")
    assert load_model(d, precision="bf16") is not load_model(d, precision="fp32")


def test_local_dir_prefix_and_training_window(tmp_path):
    d = save_tiny_checkpoint(tmp_path / "m", layout="hub", training_window="lung")
    enc = load_model(f"local-dir:{d}")
    assert enc.training_window == "lung"
    assert enc.model_id == "local:tiny-clip"


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cpu_mixed_precision_autocast_close_to_fp32(tmp_path, precision, dtype):
    """The autocast path the GPU uses (bf16 default, fp16 on request), run on the CPU."""
    d = str(save_tiny_checkpoint(tmp_path / "m"))
    x = torch.randn(4, 3, 64, 64)
    a = load_model(d, device="cpu", precision="fp32").encode_images(x)
    enc = load_model(d, device="cpu", precision=precision)
    assert enc.autocast_dtype == dtype
    seen = []
    hook = enc.model.visual.transformer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        b = enc.encode_images(x)
    finally:
        hook.remove()
    assert seen == [dtype]  # the forward pass really ran in reduced precision
    assert b.dtype == torch.float32
    assert (a * b).sum(dim=1).min() > 0.99


@pytest.mark.parametrize("spec, needle", [
    ("clip-vit-b16", "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors"),
    ("biomedclip", "hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    ("pubmedclip-vit-b32", "PubMedCLIP_ViT32.pth"),
    ("hf-hub:someone/not-downloaded", "hf download someone/not-downloaded"),
])
def test_missing_weights_offline_says_how_to_download(spec, needle):
    with pytest.raises(ModelWeightsMissingError) as ei:
        load_model(spec)
    assert needle in str(ei.value)


def test_local_dir_without_weights_or_config(tmp_path):
    d = save_tiny_checkpoint(tmp_path / "m")
    (d / "tiny-clip.pt").unlink()
    with pytest.raises(ModelWeightsMissingError, match="no weights file"):
        load_model(str(d))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelWeightsMissingError, match="not an open_clip model folder"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelWeightsMissingError, match="unknown model spec"):
        load_model(str(tmp_path / "does-not-exist"))


def test_hub_layout_with_hf_tokenizer_but_no_tokenizer_files(tmp_path):
    d = save_tiny_checkpoint(tmp_path / "m", layout="hub")
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelWeightsMissingError, match="tokenizer"):
        load_model(str(d))


def test_preset_from_models_dir(tmp_path, monkeypatch):
    """A preset whose weights file sits in $KEYSLICE_MODELS/<preset>/ is loaded from there (offline)."""
    import open_clip

    models = tmp_path / "models"
    # ViT-B-16 random weights saved as the preset's file (no download): proves the file path is used.
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", force_quick_gelu=True).half().float()
    (models / "clip-vit-b16").mkdir(parents=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()},  # half: a 300 MB file, not 600
               models / "clip-vit-b16" / "open_clip_pytorch_model.bin")
    enc = load_model("clip-vit-b16", device="cpu")
    assert enc.model_id == "clip-vit-b16" and enc.image_size == 224 and enc.context_length == 77
    assert enc.weights_sha256 == file_sha256(models / "clip-vit-b16" / "open_clip_pytorch_model.bin")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.eval().encode_image(x), dim=-1)
    assert torch.allclose(enc.encode_images(x), ref, atol=1e-4)


def test_convert_openai_style_checkpoint(tmp_path):
    """PubMedCLIP ships an OpenAI-CLIP state dict (wrapped, 'module.'-prefixed): converted to open_clip's."""
    d = save_tiny_checkpoint(tmp_path / "m")
    sd = torch.load(d / "tiny-clip.pt", map_location="cpu", weights_only=True)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    src = tmp_path / "PubMedCLIP_like.pth"
    torch.save(wrapped, src)
    out = convert_openai_checkpoint(src, tmp_path / "converted")
    conv = torch.load(out, map_location="cpu", weights_only=True)
    assert set(conv) == set(sd) and all(torch.equal(conv[k], sd[k]) for k in sd)
    assert convert_openai_checkpoint(src, tmp_path / "converted") == out  # reused, not rewritten
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ModelWeightsMissingError, match="OpenAI-CLIP"):
        convert_openai_checkpoint(bad, tmp_path / "converted")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU path not exercised")
def test_cuda_bf16_matches_cpu(tmp_path):
    d = str(save_tiny_checkpoint(tmp_path / "m"))
    x = torch.randn(8, 3, 64, 64)
    cpu = load_model(d, device="cpu", precision="fp32").encode_images(x)
    gpu = load_model(d, device="cuda", precision="auto")
    assert gpu.precision == "bf16"
    assert ((gpu.encode_images(x) * cpu).sum(dim=1)).min() > 0.99
    assert gpu.encode_images(x, keep_on_device=True).device.type == "cuda"


# --------------------------------------------------------------------------- BiomedCLIP-shaped and PubMedCLIP presets

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def put_in_hf_cache(cache: Path, repo: str, files: list[Path]) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/), as a
    `hf download` on a machine with network would leave them."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files:
        shutil.copy(f, snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def assert_weights_from(enc, weights: Path) -> None:
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    state = enc.model.state_dict()
    assert set(saved) <= set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k


def test_local_biomedclip_copy_with_its_text_tower_is_fully_offline(tmp_path, monkeypatch):
    """A BiomedCLIP-shaped hub folder (HF BERT text tower named by BiomedBERT's hub id, context
    256) plus the tower's config + tokenizer files loads with an EMPTY HF cache, offline."""
    pytest.importorskip("transformers", reason="BiomedCLIP's text tower needs transformers (keyslice[biomedclip])")
    d = save_tiny_checkpoint(tmp_path / "biomedclip-copy", seed=5, layout="hub", hf_text=BIOMEDBERT)
    cfg = json.loads((d / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == BIOMEDBERT  # a hub id, not a path
    enc = load_model(str(d), device="cpu")
    assert enc.context_length == 256 and enc.model_id == "local:tiny-clip"
    assert enc.weights_sha256 == file_sha256(d / "open_clip_pytorch_model.bin")
    assert_weights_from(enc, d / "open_clip_pytorch_model.bin")
    tokens = enc.tokenizer(["Hypodense LIVER lesion."], context_length=enc.context_length)
    assert tokens.shape == (1, 256)
    assert torch.equal(tokens, enc.tokenizer(["hypodense liver lesion."], context_length=256))  # uncased, like BiomedBERT
    txt = enc.encode_texts(["hypodense liver lesion", "no pleural effusion"])
    assert txt.shape == (2, 32) and not torch.allclose(txt[0], txt[1])
    assert not (tmp_path / "hf_home" / "hub").exists() or not any((tmp_path / "hf_home" / "hub").iterdir())

    # The same folder as the preset's local copy: the preset name is the recorded model id.
    shutil.copytree(d, tmp_path / "models" / "biomedclip")
    preset = load_model("biomedclip", device="cpu")
    assert preset.model_id == "biomedclip" and preset.context_length == 256
    assert preset.weights_sha256 == enc.weights_sha256
    assert torch.allclose(preset.encode_texts(["liver"]), enc.encode_texts(["liver"]), atol=1e-6)


def test_local_biomedclip_copy_without_its_text_tower_says_what_to_download(tmp_path):
    pytest.importorskip("transformers", reason="BiomedCLIP's text tower needs transformers (keyslice[biomedclip])")
    d = save_tiny_checkpoint(tmp_path / "m", layout="hub", hf_text=BIOMEDBERT)
    (d / "config.json").unlink()  # tokenizer files kept, tower config gone, nothing in the HF cache
    with pytest.raises(ModelWeightsMissingError) as ei:
        load_model(str(d))
    assert f"hf download {BIOMEDBERT}" in str(ei.value) and str(d) in str(ei.value)


def test_biomedclip_preset_from_the_hf_cache_offline(tmp_path):
    """`biomedclip` resolves hf-hub:microsoft/BiomedCLIP-... and BiomedBERT from the HF cache only
    (tiny random stand-ins laid out in the cache by the test)."""
    pytest.importorskip("transformers", reason="BiomedCLIP's text tower needs transformers (keyslice[biomedclip])")
    d = save_tiny_checkpoint(tmp_path / "m", seed=2, layout="hub", hf_text=BIOMEDBERT)
    cache = tmp_path / "hf_home" / "hub"
    snap = put_in_hf_cache(cache, BIOMEDCLIP, [d / "open_clip_config.json", d / "open_clip_pytorch_model.bin"])
    with pytest.raises(ModelWeightsMissingError, match=BIOMEDBERT):
        load_model("biomedclip")  # the text tower is not in the cache yet: the hint names its repo
    load_model.cache_clear()
    put_in_hf_cache(cache, BIOMEDBERT, [d / "config.json", d / "vocab.txt", d / "tokenizer_config.json"])
    enc = load_model("biomedclip", device="cpu")
    assert enc.model_id == "biomedclip" and enc.context_length == 256
    assert enc.weights_sha256 == file_sha256(snap / "open_clip_pytorch_model.bin")
    assert_weights_from(enc, d / "open_clip_pytorch_model.bin")
    assert enc.encode_texts(["Hypodense liver lesion."]).shape == (1, 32)


def test_pubmedclip_preset_converts_the_original_checkpoint(tmp_path, monkeypatch):
    """The preset path (find the .pth, convert once, load into open_clip, hash the ORIGINAL file),
    run with the tiny architecture in place of ViT-B-32 so that no 300 MB model is built."""
    from dataclasses import replace

    from keyslice.selector.model import PRESETS
    from keyslice.selector.loaders import _register_config
    from keyslice.selector.tiny import TINY_CONFIG

    monkeypatch.setitem(PRESETS, "pubmedclip-vit-b32", replace(PRESETS["pubmedclip-vit-b32"],
                                                                arch=_register_config(TINY_CONFIG)))
    d = save_tiny_checkpoint(tmp_path / "m", seed=9)
    sd = torch.load(d / "tiny-clip.pt", map_location="cpu", weights_only=True)
    # As PubMedCLIP's train.py saves it: wrapped, OpenAI-CLIP names, fp16 weights.
    original = tmp_path / "models" / "pubmedclip-vit-b32" / "PubMedCLIP_ViT32.pth"
    original.parent.mkdir(parents=True)
    torch.save({"epoch": 40, "state_dict": {k: v.half() for k, v in sd.items()}, "optimizer_state_dict": {}}, original)
    enc = load_model("pubmedclip-vit-b32", device="cpu")
    assert enc.model_id == "pubmedclip-vit-b32" and enc.context_length == 77
    assert enc.weights_sha256 == file_sha256(original) and enc.weights_path == str(original)
    for k, v in enc.model.state_dict().items():
        assert torch.equal(v, sd[k].half().float()), k
    assert len(list((tmp_path / "models" / "converted").iterdir())) == 1
    # KEYSLICE_PUBMEDCLIP_CHECKPOINT points elsewhere and wins.
    moved = tmp_path / "elsewhere.pth"
    shutil.move(original, moved)
    monkeypatch.setenv("KEYSLICE_PUBMEDCLIP_CHECKPOINT", str(moved))
    load_model.cache_clear()
    assert load_model("pubmedclip-vit-b32", device="cpu").weights_path == str(moved)
