"""The encoder keyslice selects with: :class:`ClipEncoder` around an open_clip model, the model
presets, and the device and precision rules.

How a spec (preset, ``hf-hub:`` id, local folder) becomes an encoder is :mod:`.loaders`
(:func:`~keyslice.selector.loaders.load_model`); the tiny test model is :mod:`.tiny`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F



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
