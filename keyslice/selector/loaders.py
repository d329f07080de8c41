"""Load a CLIP-style model through open_clip and wrap it as a :class:`~keyslice.selector.model.ClipEncoder`.

``load_model(spec)`` accepts:

* a preset name (:data:`PRESETS`):

  - ``clip-vit-b16``: open_clip ``ViT-B-16``, pretrained ``openai`` (QuickGELU);
  - ``pubmedclip-vit-b32``: open_clip ``ViT-B-32`` with the original PubMedCLIP checkpoint
    (``PubMedCLIP_ViT32.pth``: ``{"state_dict": <OpenAI-CLIP model.state_dict()>, "best_epoch",
    "optimizer_state_dict", ...}`` as PubMedCLIP's train.py saves it, fp16 weights) converted
    into a plain open_clip state dict once (:func:`convert_openai_checkpoint`); put the file at
    ``$KEYSLICE_MODELS/pubmedclip-vit-b32/PubMedCLIP_ViT32.pth`` (``KEYSLICE_MODELS``
    defaults to ``.models/`` in the working directory) or point
    ``KEYSLICE_PUBMEDCLIP_CHECKPOINT`` at it;
  - ``biomedclip``: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``
    (context length 256; its text tower is BiomedBERT through ``transformers``:
    ``pip install 'keyslice[biomedclip]'``), read from the HF cache, or from the folder
    ``$KEYSLICE_MODELS/biomedclip/`` in hub layout (below) when it exists;

* ``hf-hub:<org>/<repo>``: an open_clip model on the Hugging Face hub (or its local cache);
* a local directory, fully offline, in one of two layouts:

  - *hub layout* (a downloaded hf-hub repo): ``open_clip_config.json`` (``model_cfg`` +
    ``preprocess_cfg``) + ``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``
    (+ the HF tokenizer files when ``text_cfg.hf_tokenizer_name`` is set), loaded with
    open_clip's ``local-dir:`` schema. When the text tower is a Hugging Face model
    (``text_cfg.hf_model_name``, e.g. BiomedCLIP's BiomedBERT) and the folder also holds that
    model's ``config.json``, the tower and tokenizer are built from the folder itself: a local
    BiomedCLIP copy then needs no hub and no HF cache at all;
  - *config layout* (what :func:`save_tiny_checkpoint` writes): one open_clip model config
    JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``; optional ``preprocess_cfg``,
    ``keyslice_training_window``) + one weights file (``.pt``/``.pth``/``.bin``/``.safetensors``),
    registered with ``open_clip.add_model_config`` under a content-addressed name and loaded
    with ``pretrained=<weights file>``.

Hub weights are looked up as open_clip does (``open_clip_model.safetensors``, then
``open_clip_pytorch_model.bin``). With ``HF_HUB_OFFLINE=1`` (or no network) a missing file
raises :class:`~keyslice.errors.ModelWeightsMissingError` whose message says how to
pre-download it. The sha256 of the weights file is recorded as ``weights_sha256``.
Encoders are cached per ``(spec, device, precision)`` in-process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from keyslice.errors import ModelWeightsMissingError
from keyslice.selector.model import (OPENAI_MEAN, OPENAI_STD, PRESETS, WEIGHT_SUFFIXES, ClipEncoder, Preset,
                                     file_sha256, resolve_device, resolve_precision)


def models_dir() -> Path:
    return Path(os.environ.get("KEYSLICE_MODELS", ".models"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


#: open_clip's weight file names in a hub repo, in the order open_clip itself prefers them.
HF_WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _hf_file(repo: str, filenames: str | tuple[str, ...], hint: str) -> str:
    """Path of a file of a hub repo (the first of ``filenames`` that exists): from the local HF
    cache, else downloaded (unless offline)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelWeightsMissingError(f"huggingface_hub is not installed; pip install huggingface_hub ({hint})") from e
    names = (filenames,) if isinstance(filenames, str) else tuple(filenames)
    for name in names:
        try:
            return hf_hub_download(repo_id=repo, filename=name, local_files_only=True)
        except Exception:
            continue
    shown = " or ".join(f"{repo}/{n}" for n in names)
    if _offline():
        raise ModelWeightsMissingError(
            f"{shown} is not in the Hugging Face cache ({_hf_home()}) and HF_HUB_OFFLINE is set. "
            f"Pre-download it: {hint}")
    errors = []
    for name in names:
        try:
            return hf_hub_download(repo_id=repo, filename=name)
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
            if _no_network(e):  # every other name would wait through the same retries
                break
    raise ModelWeightsMissingError(
        f"cannot download {shown} ({'; '.join(errors)}). "
        f"Pre-download it: {hint}. The cache is {_hf_home()} (set HF_HOME to move it; set HF_HUB_OFFLINE=1 on a "
        "machine without network, so that a missing file is reported at once).")


def _no_network(error: BaseException) -> bool:
    """Whether a hub download failed for want of a connection (not because the file does not exist)."""
    import httpx

    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (httpx.ConnectError, httpx.TimeoutException, ConnectionError, LocalEntryNotFoundError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hf_home() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


def _find_weights(directory: Path) -> Path | None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    preferred = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    for name in preferred:
        for f in files:
            if f.name == name:
                return f
    if len(files) > 1:
        raise ModelWeightsMissingError(
            f"{directory} holds several weights files {[f.name for f in files]}; keep exactly one")
    return files[0]


_REGISTER_DIR: Path | None = None
_REGISTER_LOCK = threading.Lock()


def _register_config(cfg: dict) -> str:
    """Register an open_clip model config under a content-addressed name; return the name."""
    global _REGISTER_DIR
    import open_clip

    model_cfg = {k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu",
                                                        "custom_text", "cast_dtype", "init_logit_scale",
                                                        "init_logit_bias", "multimodal_cfg")}
    blob = json.dumps(model_cfg, sort_keys=True).encode()
    name = "keyslice-" + hashlib.sha256(blob).hexdigest()[:16]
    with _REGISTER_LOCK:
        if name in open_clip.list_models():
            return name
        if _REGISTER_DIR is None:
            _REGISTER_DIR = Path(tempfile.mkdtemp(prefix="keyslice-openclip-configs-"))
        path = _REGISTER_DIR / f"{name}.json"
        path.write_bytes(blob)
        open_clip.add_model_config(path)
    return name


def _preprocess_facts(model: torch.nn.Module, fallback_size: int) -> dict:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(getattr(model, "visual", None), "image_size", fallback_size))
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"non-square model input {size} is not supported")
        size = size[0]
    return {
        "image_size": int(size),
        "mean": tuple(cfg.get("mean", OPENAI_MEAN)),
        "std": tuple(cfg.get("std", OPENAI_STD)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
    }


def _build(model: torch.nn.Module, tokenizer: Any, *, model_id: str, weights: Path | str | None,
           device: torch.device, precision: str, context_length: int,
           training_window: str | None = None) -> ClipEncoder:
    facts = _preprocess_facts(model, 224)
    if facts["resize_mode"] not in ("shortest", "squash", "longest"):
        raise ValueError(f"unsupported resize_mode {facts['resize_mode']!r}")
    sha = file_sha256(weights) if weights else "random-init"
    model.to(device)
    return ClipEncoder(model, tokenizer, model_id=model_id, weights_sha256=sha, device=device,
                       precision=precision, context_length=context_length, training_window=training_window,
                       weights_path=str(weights) if weights else None, **facts)


# --------------------------------------------------------------------------- loaders


def _load_local_dir(directory: Path, device: torch.device, precision: str, model_id: str | None = None,
                    default_context_length: int = 77) -> ClipEncoder:
    import open_clip

    directory = directory.resolve()
    hub_cfg = directory / "open_clip_config.json"
    if hub_cfg.is_file():
        weights = _find_weights(directory)
        if weights is None:
            raise ModelWeightsMissingError(
                f"{directory} has open_clip_config.json but no weights file (open_clip_pytorch_model.bin or "
                f"open_clip_model.safetensors); copy the whole downloaded hub repo folder there")
        cfg = json.loads(hub_cfg.read_text())
        model_cfg = cfg.get("model_cfg", {})
        text_cfg = model_cfg.get("text_cfg", {})
        hf_text = text_cfg.get("hf_model_name")
        if hf_text or text_cfg.get("hf_tokenizer_name"):
            _require_transformers(f"{directory} (HF text tower {hf_text or text_cfg.get('hf_tokenizer_name')!r})",
                                  "pip install 'keyslice[biomedclip]'")
        if text_cfg.get("hf_tokenizer_name") and not _has_tokenizer_files(directory):
            raise ModelWeightsMissingError(
                f"{directory} uses the HF tokenizer {text_cfg['hf_tokenizer_name']!r} but holds no tokenizer files "
                f"(tokenizer.json / vocab.txt / tokenizer_config.json); run `hf download "
                f"{text_cfg['hf_tokenizer_name']} --include '*.json' --include '*.txt' --local-dir {directory}` "
                f"with network")
        ctx = int(text_cfg.get("context_length", default_context_length))
        model_id = model_id or f"local:{cfg.get('model_name', directory.name)}"
        if hf_text and (directory / "config.json").is_file():
            # A local copy of the HF text tower (BiomedCLIP: BiomedBERT's config.json + tokenizer files
            # beside the weights): point the text tower and the tokenizer at this folder, so that
            # nothing is looked up on the hub. The tower's weights come from the CLIP weights file.
            local_cfg = json.loads(json.dumps(model_cfg))
            local_cfg["text_cfg"]["hf_model_name"] = str(directory)
            local_cfg["text_cfg"]["hf_tokenizer_name"] = str(directory)
            name = _register_config(local_cfg)
            model = open_clip.create_model(name, pretrained=str(weights), device="cpu",
                                           force_preprocess_cfg=cfg.get("preprocess_cfg") or None)
            tokenizer = open_clip.get_tokenizer(name)
        else:
            spec = f"local-dir:{directory}"
            try:
                model = open_clip.create_model(spec, device="cpu")
                tokenizer = open_clip.get_tokenizer(spec)
            except (OSError, ValueError, RuntimeError) as e:
                if not hf_text:
                    raise
                raise ModelWeightsMissingError(
                    f"{directory} needs the HF text tower {hf_text!r}, which is neither in the folder nor in the "
                    f"Hugging Face cache ({type(e).__name__}: {str(e)[:200]}). Put its config and tokenizer beside "
                    f"the weights, with network: `hf download {hf_text} --include '*.json' --include '*.txt' "
                    f"--local-dir {directory}`") from e
        return _build(model, tokenizer, model_id=model_id, weights=weights, device=device, precision=precision,
                      context_length=ctx, training_window=cfg.get("keyslice_training_window"))

    configs = []
    for p in sorted(directory.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "vision_cfg" in data and "text_cfg" in data:
            configs.append((p, data))
    if len(configs) != 1:
        raise ModelWeightsMissingError(
            f"{directory} is not an open_clip model folder: it needs open_clip_config.json + weights (hub layout) "
            f"or exactly one open_clip model config JSON (with vision_cfg/text_cfg) + one weights file; "
            f"found {len(configs)} model config(s)")
    cfg_path, cfg = configs[0]
    weights = _find_weights(directory)
    if weights is None:
        raise ModelWeightsMissingError(f"{directory} holds the model config {cfg_path.name} but no weights file "
                                       f"({', '.join(WEIGHT_SUFFIXES)})")
    name = _register_config(cfg)
    pre = cfg.get("preprocess_cfg") or {}
    model = open_clip.create_model(name, pretrained=str(weights), device="cpu",
                                   force_preprocess_cfg=pre or None)
    tokenizer = open_clip.get_tokenizer(name)
    return _build(model, tokenizer, model_id=f"local:{cfg.get('model_name', cfg_path.stem)}", weights=weights,
                  device=device, precision=precision, context_length=int(cfg["text_cfg"].get("context_length", 77)),
                  training_window=cfg.get("keyslice_training_window"))


def _require_transformers(what: str, install: str) -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ModelWeightsMissingError(f"{what} needs the `transformers` package: {install}") from e


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))


def _load_hf_hub(repo: str, device: torch.device, precision: str, hint: str | None = None,
                 model_id: str | None = None, default_context_length: int = 77) -> ClipEncoder:
    import open_clip

    hint = hint or f"with network, `hf download {repo}` (huggingface_hub's CLI); then set HF_HUB_OFFLINE=1"
    cfg_file = _hf_file(repo, "open_clip_config.json", hint)
    weights = _hf_file(repo, HF_WEIGHTS_FILES, hint)
    cfg = json.loads(Path(cfg_file).read_text())
    text_cfg = cfg.get("model_cfg", {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"):
        _require_transformers(f"hf-hub:{repo} (HF text tower {text_cfg.get('hf_model_name')!r})",
                              f"pip install 'keyslice[biomedclip]'; then {hint}")
    try:
        # Same files open_clip would fetch; loaded from the cache paths resolved above.
        model = open_clip.create_model(f"hf-hub:{repo}", device="cpu")
        tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo}")
    except Exception as e:
        raise ModelWeightsMissingError(f"cannot load hf-hub:{repo}: {type(e).__name__}: {e}. {hint}") from e
    return _build(model, tokenizer, model_id=model_id or f"hf-hub:{repo}", weights=weights, device=device,
                  precision=precision, context_length=int(text_cfg.get("context_length", default_context_length)),
                  training_window=cfg.get("keyslice_training_window"))


def _load_preset(preset: Preset, device: torch.device, precision: str) -> ClipEncoder:
    import open_clip

    if preset.arch is None:  # hf-hub preset (biomedclip)
        local = models_dir() / preset.name
        if local.is_dir():
            return _load_local_dir(local, device, precision, model_id=preset.name,
                                   default_context_length=preset.context_length)
        return _load_hf_hub(preset.hf_hub, device, precision, hint=preset.download_hint, model_id=preset.name,
                            default_context_length=preset.context_length)

    weights: Path | None = None
    local = models_dir() / preset.name
    if local.is_dir():
        weights = _find_weights(local)
    if preset.name == "pubmedclip-vit-b32":
        env = os.environ.get("KEYSLICE_PUBMEDCLIP_CHECKPOINT")
        if env:
            weights = Path(env)
        if weights is None or not Path(weights).is_file():
            raise ModelWeightsMissingError(f"PubMedCLIP weights not found. {preset.download_hint}")
        converted = convert_openai_checkpoint(Path(weights))
        sha = file_sha256(weights)  # identity of the original checkpoint
        model = open_clip.create_model(preset.arch, pretrained=str(converted), device="cpu",
                                       force_quick_gelu=preset.quick_gelu)
        tokenizer = open_clip.get_tokenizer(preset.arch)
        enc = _build(model, tokenizer, model_id=preset.name, weights=None, device=device, precision=precision,
                     context_length=preset.context_length)
        enc.weights_sha256 = sha
        enc.weights_path = str(weights)
        return enc
    if weights is None:
        weights = Path(_hf_file(preset.hf_hub, HF_WEIGHTS_FILES, preset.download_hint))
    model = open_clip.create_model(preset.arch, pretrained=str(weights), device="cpu",
                                   force_quick_gelu=preset.quick_gelu)
    tokenizer = open_clip.get_tokenizer(preset.arch)
    return _build(model, tokenizer, model_id=preset.name, weights=weights, device=device, precision=precision,
                  context_length=preset.context_length)


def convert_openai_checkpoint(path: Path, out_dir: Path | None = None) -> Path:
    """Convert an OpenAI-CLIP-format checkpoint (e.g. PubMedCLIP's ``.pth``: a state dict, possibly
    wrapped in ``{"state_dict": ...}``/``{"model_state_dict": ...}``, possibly with ``module.``
    prefixes or a TorchScript archive) into a plain open_clip state dict file. The result is
    written once beside ``out_dir`` (default ``$KEYSLICE_MODELS/converted``), named by the
    source's sha256, and reused."""
    sha = file_sha256(path)
    out_dir = Path(out_dir) if out_dir else models_dir() / "converted"
    target = out_dir / f"{sha[:16]}_open_clip.pt"
    if target.is_file():
        return target
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception as e:
            raise ModelWeightsMissingError(f"{path} is neither a state dict nor a TorchScript CLIP archive: {e}") from e
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k, None)
    if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
        raise ModelWeightsMissingError(f"{path} does not look like an OpenAI-CLIP state dict (no visual.conv1.weight)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, target)
    return target


@functools.lru_cache(maxsize=8)
def _load_cached(spec: str, device: str, precision: str) -> ClipEncoder:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if spec in PRESETS:
        return _load_preset(PRESETS[spec], dev, prec)
    if spec.startswith("hf-hub:"):
        return _load_hf_hub(spec[len("hf-hub:"):], dev, prec)
    path = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
    if path.is_dir():
        return _load_local_dir(path, dev, prec)
    raise ModelWeightsMissingError(
        f"unknown model spec {spec!r}: use a preset ({', '.join(PRESETS)}), an 'hf-hub:org/repo' id, or a local "
        f"directory with an open_clip config + weights (it does not exist: {path})")


def load_model(spec: str, *, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Load (once per process) the encoder for a preset name, hf-hub id or local directory.

    ``demo`` names the bundled demo model (tiny, seeded random weights: :mod:`keyslice.demo_model`).
    """
    if spec == "demo":
        from keyslice.demo_model import ensure_demo_model

        spec = str(ensure_demo_model(progress=lambda message: None))
    if not spec.startswith("hf-hub:") and spec not in PRESETS:
        p = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
        if p.exists():
            spec = str(p.resolve())
    return _load_cached(spec, device, precision)


load_model.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]
