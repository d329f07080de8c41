"""The tiny open_clip model the tests and the demo build themselves (random weights, seconds to make):
the stand-in for real weights where none can be downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from keyslice.selector.loaders import _register_config
from keyslice.selector.model import OPENAI_MEAN, OPENAI_STD

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
