"""Load a CLIP-style model through open_clip and wrap it as a :class:`ClipEncoder`.

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
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from keyslice.errors import ModelWeightsMissingError

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str | None            # open_clip architecture name (None for hf-hub presets)
    pretrained_tag: str | None  # open_clip pretrained tag
    hf_hub: str | None          # HF repo that holds the weights
    context_length: int
    quick_gelu: bool = False
    download_hint: str = ""


PRESETS: dict[str, Preset] = {
    "clip-vit-b16": Preset(
        "clip-vit-b16", "ViT-B-16", "openai", "timm/vit_base_patch16_clip_224.openai", 77, quick_gelu=True,
        download_hint=(
            "with network, `hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors` "
            "(huggingface_hub's CLI), then copy the HF cache ($HF_HOME/hub, default ~/.cache/huggingface/hub) "
            "to this machine and set HF_HUB_OFFLINE=1; or put that one weights file alone in "
            "$KEYSLICE_MODELS/clip-vit-b16/ (KEYSLICE_MODELS defaults to ./.models)"
        ),
    ),
    "pubmedclip-vit-b32": Preset(
        "pubmedclip-vit-b32", "ViT-B-32", None, None, 77, quick_gelu=True,
        download_hint=(
            "download PubMedCLIP_ViT32.pth from the PubMedCLIP release (github.com/sarahESL/PubMedCLIP, "
            "'PubMedCLIP_ViT32.pth') and put it at $KEYSLICE_MODELS/pubmedclip-vit-b32/PubMedCLIP_ViT32.pth "
            "(KEYSLICE_MODELS defaults to ./.models) or set KEYSLICE_PUBMEDCLIP_CHECKPOINT=/path/to/file"
        ),
    ),
    "biomedclip": Preset(
        "biomedclip", None, None, "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", 256,
        download_hint=(
            "pip install 'keyslice[biomedclip]' (transformers, for the BiomedBERT text tower); then, with "
            "network, make a self-contained folder: `hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
            "--local-dir $KEYSLICE_MODELS/biomedclip` and `hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract "
            "--include '*.json' --include '*.txt' --local-dir $KEYSLICE_MODELS/biomedclip` (KEYSLICE_MODELS defaults to "
            "./.models; copy the folder to this machine); or download both repos into the HF cache with the same "
            "commands without --local-dir and set HF_HUB_OFFLINE=1"
        ),
    ),
}


# --------------------------------------------------------------------------- sha256

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, memoised per (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


# --------------------------------------------------------------------------- encoder


class ClipEncoder:
    """A loaded open_clip model with the preprocessing facts the selector needs.

    ``encode_images`` takes an already preprocessed float tensor ``[B, 3, S, S]``
    (see :mod:`keyslice.selector.preprocess`) and returns L2-normalised float32
    embeddings on the CPU; ``encode_texts`` tokenises and does the same for sentences.
    On CUDA the forward pass runs under ``torch.autocast`` (bf16 by default).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, model_id: str, weights_sha256: str,
                 device: torch.device, precision: str, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], context_length: int, interpolation: str = "bicubic",
                 resize_mode: str = "shortest", training_window: str | None = None,
                 weights_path: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.device = device
        self.precision = precision
        self.image_size = int(image_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.context_length = int(context_length)
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.training_window = training_window
        self._lock = threading.Lock()  # one forward pass at a time per encoder
        with torch.no_grad():
            self.embed_dim = int(self._probe_dim())

    def __repr__(self) -> str:
        return (f"ClipEncoder(model_id={self.model_id!r}, device={self.device}, precision={self.precision}, "
                f"image_size={self.image_size}, weights_sha256={self.weights_sha256[:12]}...)")

    def _probe_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[-1]
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        return self.model.encode_image(x).shape[-1]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def _autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor, *, keep_on_device: bool = False) -> torch.Tensor:
        """Preprocessed ``[B, 3, S, S]`` float tensor -> ``[B, D]`` unit-norm float32 (CPU).

        ``keep_on_device=True`` leaves the result on the model's device: the caller collects a
        whole series there and copies it back once, so the host never waits for the device
        between batches (a per-batch ``.cpu()`` would synchronise and idle the GPU)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] batch, got {tuple(batch.shape)}")
        x = batch.to(self.device, non_blocking=True)
        with self._lock, self._autocast():
            feats = self.model.encode_image(x)
        out = F.normalize(feats.float(), dim=-1)
        return out if keep_on_device else out.cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Sentences -> ``[N, D]`` unit-norm float32 (CPU)."""
        if not texts:
            return torch.zeros(0, self.embed_dim)
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        tokens = tokens.to(self.device)
        with self._lock, self._autocast():
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu()


# --------------------------------------------------------------------------- resolution helpers


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    return precision


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


# --------------------------------------------------------------------------- tiny test model

TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


#: HF text tower of the tiny BiomedCLIP-shaped test model: a 1-layer BERT with a SYNTHETIC
#: character-level vocabulary (random weights, like the rest of the tiny model).
TINY_BERT_CONFIG: dict[str, Any] = {
    "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512, "type_vocab_size": 2,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "initializer_range": 0.02,
}
_TINY_BERT_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:()-/%"


def write_tiny_text_tower(directory: Path) -> Path:
    """Write a tiny BERT's ``config.json`` + ``vocab.txt`` + ``tokenizer_config.json`` (what
    ``hf download <bert repo> --include '*.json' --include '*.txt'`` gives for a real one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(_TINY_BERT_CHARS) + [f"##{c}" for c in _TINY_BERT_CHARS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "config.json").write_text(json.dumps(dict(TINY_BERT_CONFIG, vocab_size=len(vocab)), indent=1))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}, indent=1))
    return directory


def save_tiny_checkpoint(directory: Path, *, seed: int = 0, layout: str = "config", image_size: int = 64,
                         training_window: str | None = None, name: str = "tiny-clip",
                         hf_text: str | None = None) -> Path:
    """Build a tiny random open_clip model and save it so that ``load_model(str(directory))`` loads it.

    ``layout="config"`` writes ``<name>.json`` (open_clip model config) + ``<name>.pt``;
    ``layout="hub"`` writes ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` (the
    layout of an hf-hub repo such as BiomedCLIP's, default tokenizer). Returns the directory.

    ``hf_text`` (hub layout only) makes it BiomedCLIP-shaped: the text tower is a Hugging Face
    BERT (:data:`TINY_BERT_CONFIG`, needs ``transformers``) whose hub id the config names as
    ``hf_model_name``/``hf_tokenizer_name`` (pass BiomedBERT's id to mirror BiomedCLIP), with
    BiomedCLIP's context length 256, MLP projection and CLS pooling; the folder also receives
    the tower's ``config.json`` and tokenizer files (:func:`write_tiny_text_tower`), i.e. a
    local copy of the text tower.
    """
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hf_text is not None and layout != "hub":
        raise ValueError("hf_text needs layout='hub' (the layout of BiomedCLIP's repo)")
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["vision_cfg"]["image_size"] = image_size
    build_cfg = cfg
    if hf_text is not None:
        write_tiny_text_tower(directory)
        text = {"hf_model_name": hf_text, "hf_tokenizer_name": hf_text, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}
        cfg["text_cfg"] = text
        build_cfg = dict(cfg, text_cfg=dict(text, hf_model_name=str(directory.resolve()),
                                            hf_tokenizer_name=str(directory.resolve())))
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        reg = _register_config(build_cfg)
        model = open_clip.create_model(reg, device="cpu", pretrained_text=False)
    finally:
        torch.random.set_rng_state(gen_state)
    sd = model.state_dict()
    if layout == "config":
        full = dict(cfg, model_name=name)
        if training_window:
            full["keyslice_training_window"] = training_window
        (directory / f"{name}.json").write_text(json.dumps(full, indent=1))
        torch.save(sd, directory / f"{name}.pt")
    elif layout == "hub":
        hub = {"model_name": name, "model_cfg": cfg,
               "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                                  "interpolation": "bicubic", "resize_mode": "shortest"}}
        if training_window:
            hub["keyslice_training_window"] = training_window
        (directory / "open_clip_config.json").write_text(json.dumps(hub, indent=1))
        torch.save(sd, directory / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"layout must be 'config' or 'hub', not {layout!r}")
    return directory
