"""The fine-tuning run configuration: one YAML file fully determines a run (seed included).

Paths in the YAML may use ``{data}`` (the real test data folder, :func:`keyslice.sample.data_dir`)
and ``{config_dir}`` (the folder of the YAML file); other relative paths are relative to the
current directory. Unknown keys are errors. See ``configs/finetune_tiny_example_ct.yaml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keyslice.selector.spatial import SpatialConfig


@dataclass(frozen=True)
class SourceConfig:
    """One CT with its organ masks (and optional lesion labels refer to it by ``name``)."""

    name: str
    ct: str                          # NIfTI file, or a folder / list of DICOM files of ONE series
    #: multi-label NIfTI, per-structure folder, DICOM-SEG, study folder, or a list of per-structure NIfTI files
    masks: str | tuple[str, ...] | None = None
    labels: str | None = None        # label map JSON of a multi-label NIfTI (default: TS v2 "total")
    #: TotalSegmentator aorta report JSON (landmark cross-sections with true/false lumen areas) -> lesion queries
    aorta_report: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    #: "tiny" (a tiny open_clip ViT built with save_tiny_checkpoint(seed)), "open_clip:ARCH[:PRETRAINED]",
    #: or any keyslice.selector.load_model spec (preset, hf-hub:org/repo, local checkpoint folder).
    spec: str = "tiny"
    tiny_image_size: int = 64
    tiny_seed: int | None = None     # default: the run's seed


@dataclass(frozen=True)
class PairConfig:
    organs: tuple[str, ...] = ()     # canonical report organs and/or TS labels; empty = all with masks
    pairs_per_organ: int = 64        # half inside the organ's z-range, half outside (resampled if short)
    min_slices: int = 1              # an organ needs at least this many slices inside to be used
    lesion_csv: str | None = None    # CSV: study, slice | instance_number, sentence [, series, organ]
    corpus: str | None = None        # corpus folder: findings.image_refs -> lesion pairs
    reviewed_selections: str | None = None  # CSV/Parquet: study_id, finding_id, slice (reviewed key slices)
    reviews: str | None = None       # corpus folder: its `reviews` (keyslice review) -> lesion pairs +/-
    reviews_input: str | None = None  # the studies folder that corpus was built from (the reviewed series' CTs)
    lesion_weight: float = 1.0       # relative sampling weight of lesion rows vs organ rows
    organ_pairs: bool = True         # False: lesion rows only (the lesion-only ablation)
    station_pairs: int = 0           # rows per body station with multi-organ station prompts (0: none)


@dataclass(frozen=True)
class PromptConfig:
    styles: tuple[str, ...] = ("word", "sentence")
    language_augment: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    crop_scale: tuple[float, float] = (0.6, 1.0)    # area of the crop / the slice's square; > 1 zooms out (air)
    crop_ratio: tuple[float, float] = (0.8, 1.25)   # aspect ratio range
    cutout_p: float = 0.5
    cutout_frac: tuple[float, float] = (0.1, 0.3)   # side of the cut-out square / image side
    window_jitter: float = 0.15                     # level +- jitter*width, width * exp(+-jitter)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 30
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    soft_targets: bool = True        # False: plain CLIP one-hot targets (no false-negative handling)
    freeze: tuple[str, ...] = ()     # parameter name prefixes to freeze (e.g. "token_embedding")
    device: str = "auto"
    precision: str = "auto"          # auto: bf16 autocast on CUDA, fp32 on CPU
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    window: str = "organ"            # "organ": the selector's window for the organ; or a window name
    #: "slice": whole windowed slices vs texts; "anatomy": each row's organ region (in-plane mask, masked crop)
    #: vs texts, one contrastive problem per anatomy plus one across anatomies
    alignment: str = "slice"
    #: True: normal findings of one organ, and findings of one organ + abnormality type, are positives of each
    #: other (fVLM's false negatives); False: only identical sentences are (the ablation)
    false_negatives: bool = True


@dataclass(frozen=True)
class EvalConfig:
    tolerance_mm: float = 10.0
    ks: tuple[int, ...] = (1, 5)
    styles: tuple[str, ...] = ("word", "sentence")
    threshold_on: str = "train"      # "train": Youden threshold chosen on the training CTs; "eval": on the evaluated CT
    organs: tuple[str, ...] = ()     # empty: the training organs
    plots: bool = True
    batch_size: int = 64
    #: True: an organ is scored on a CT only when all its labels are in that CT's segmentation vocabulary (a CT
    #: segmented for a few structures says nothing about the others: unknown, not absent)
    only_segmented: bool = False
    station: bool = False            # station accuracy: argmax over head/neck, chest, abdomen, pelvis prompts


@dataclass(frozen=True)
class FinetuneConfig:
    seed: int
    out_dir: str
    train_sources: tuple[SourceConfig, ...]
    eval_sources: tuple[SourceConfig, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    name: str = "finetune"
    #: corpus folder that receives the run's metrics (tables finetune_runs / finetune_metrics); None: not recorded
    metrics_corpus: str | None = None

    # ------------------------------------------------------------------ io
    @classmethod
    def from_yaml(cls, path: Path | str, **overrides: Any) -> "FinetuneConfig":
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a finetune config must be a YAML mapping")
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = data
            *head, last = dotted.split(".")
            for key in head:
                node = node.setdefault(key, {})
            node[last] = value
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> "FinetuneConfig":
        data = json.loads(json.dumps(data))  # deep copy, plain types
        _check_keys("config", data, {f.name for f in dataclasses.fields(cls)} | {"data"})
        if "seed" not in data:
            raise ValueError("the finetune config must set `seed` (a run is determined by its config)")
        if "out_dir" not in data:
            raise ValueError("the finetune config must set `out_dir`")
        ctx = _PathContext(base)
        src = data.pop("data", {}) or {}
        _check_keys("data", src, {"train", "eval"})
        train = tuple(_source(s, ctx) for s in src.get("train") or [])
        if not train:
            raise ValueError("data.train must list at least one CT (name, ct, masks)")
        evals = tuple(_source(s, ctx) for s in src.get("eval") or [])
        names = [s.name for s in train + evals]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        pairs = _sub(PairConfig, data.pop("pairs", None))
        pairs = dataclasses.replace(pairs, lesion_csv=ctx.path(pairs.lesion_csv), corpus=ctx.path(pairs.corpus),
                                    reviewed_selections=ctx.path(pairs.reviewed_selections),
                                    reviews=ctx.path(pairs.reviews), reviews_input=ctx.path(pairs.reviews_input))
        if bool(pairs.reviews) != bool(pairs.reviews_input):
            raise ValueError("pairs.reviews (a reviewed corpus) and pairs.reviews_input (the studies folder it was "
                             "built from) go together")
        cfg = cls(
            seed=int(data.pop("seed")), out_dir=ctx.path(str(data.pop("out_dir"))),
            metrics_corpus=ctx.path(data.pop("metrics_corpus", None)),
            train_sources=train, eval_sources=evals,
            model=_sub(ModelConfig, data.pop("model", None)), pairs=pairs,
            prompts=_sub(PromptConfig, data.pop("prompts", None)),
            augment=_sub(AugmentConfig, data.pop("augment", None)),
            train=_sub(TrainConfig, data.pop("train", None)),
            eval=_sub(EvalConfig, data.pop("eval", None)),
            spatial=_sub(SpatialConfig, data.pop("spatial", None)),
            **data,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from keyslice.finetune.prompts import STYLES

        for s in self.prompts.styles + self.eval.styles:
            if s not in STYLES:
                raise ValueError(f"unknown prompt style {s!r}; use {STYLES}")
        if self.eval.threshold_on not in ("train", "eval"):
            raise ValueError("eval.threshold_on must be 'train' or 'eval'")
        if self.train.steps < 1 or self.train.batch_size < 2:
            raise ValueError("train.steps must be >= 1 and train.batch_size >= 2")
        if not 0 <= self.train.warmup_steps <= self.train.steps:
            raise ValueError("train.warmup_steps must be in [0, steps]")
        if self.train.alignment not in ("slice", "anatomy"):
            raise ValueError(f"train.alignment must be 'slice' or 'anatomy', got {self.train.alignment!r}")
        if self.pairs.station_pairs < 0:
            raise ValueError("pairs.station_pairs must be >= 0")
        lo, hi = self.augment.crop_scale
        if not 0 < lo <= hi:
            raise ValueError(f"augment.crop_scale must be 0 < low <= high, got {self.augment.crop_scale}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = {"train": d.pop("train_sources"), "eval": d.pop("eval_sources")}
        return json.loads(json.dumps(d))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """Hash of everything that determines the training trajectory (not out_dir, eval, step count or
        metrics corpus, so a finished run can be extended and evaluated differently without
        invalidating checkpoints)."""
        d = self.to_dict()
        d.pop("out_dir")
        d.pop("eval")
        d.pop("name")
        d.pop("metrics_corpus")
        d["data"].pop("eval")
        d["train"].pop("steps")
        for k in ("checkpoint_every", "keep_checkpoints", "log_every", "device"):
            d["train"].pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def tiny_seed(self) -> int:
        return self.seed if self.model.tiny_seed is None else int(self.model.tiny_seed)


class _PathContext:
    def __init__(self, base: Path | None):
        self.base = base

    def path(self, value: str | None) -> str | None:
        if value is None:
            return None
        value = str(value)
        if "{data}" in value:
            from keyslice.sample import data_dir

            value = value.replace("{data}", str(data_dir()))
        if "{config_dir}" in value:
            value = value.replace("{config_dir}", str((self.base or Path(".")).resolve()))
        return value


def _check_keys(where: str, data: dict, known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {sorted(unknown)}; known: {sorted(known)}")


def _sub(cls, data: dict | None):
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(cls.__name__, data, set(fields))
    for k, v in list(data.items()):
        if isinstance(v, list):
            data[k] = tuple(v)
    return cls(**data)


def _source(data: dict, ctx: _PathContext) -> SourceConfig:
    _check_keys("data source", data, {f.name for f in dataclasses.fields(SourceConfig)})
    for key in ("name", "ct"):
        if key not in data:
            raise ValueError(f"a data source needs `{key}`: {data}")
    masks = data.get("masks")
    masks = tuple(ctx.path(m) for m in masks) if isinstance(masks, (list, tuple)) else ctx.path(masks)
    return SourceConfig(name=str(data["name"]), ct=ctx.path(data["ct"]), masks=masks,
                        labels=ctx.path(data.get("labels")), aorta_report=ctx.path(data.get("aorta_report")))
