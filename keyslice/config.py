"""Explicit configuration of a build: one dataclass, loadable from YAML, recorded in `runs`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class LLMSettings:
    """An OpenAI-compatible endpoint for VQA generation; off unless ``base_url`` and ``model`` are set."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    prompt_version: str = "vqa_generate.v1"
    max_concurrency: int = 4
    timeout_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


@dataclass(frozen=True)
class BuildConfig:
    input_dir: Path
    out_dir: Path
    manifest: Path | None = None           # CSV/Parquet with columns study, report
    model: str = "biomedclip"              # preset name, hf-hub id or local checkpoint dir
    device: str = "auto"
    precision: str = "auto"
    top_k: int = 5
    window: str = "auto"
    use_masks: bool = True
    spatial_normalise: bool = False        # selector: resample slices to fixed mm/px around the body before windowing
    save_curves: bool = False
    segmenter: str = "rules"
    llm: LLMSettings = field(default_factory=LLMSettings)
    max_workers: int = 4                   # studies processed concurrently
    force_stages: tuple[str, ...] = ()
    retries: int = 2                       # Prefect retries for transient errors

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> "BuildConfig":
        """Read a YAML config; keyword overrides (from the CLI) win over the file."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must be a YAML mapping of build settings (see configs/build.example.yaml)")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown build config key(s): {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("llm"), dict):
            data["llm"] = LLMSettings(**data["llm"])
        for key in ("input_dir", "out_dir", "manifest"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        data["force_stages"] = tuple(data.get("force_stages") or ())
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)
