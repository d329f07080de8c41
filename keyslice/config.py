"""Explicit configuration of a build: one dataclass, loadable from YAML, recorded in `runs`.

The build flow takes a :class:`BuildConfig` itself as its parameter: Prefect validates flow parameters with
pydantic, which builds this dataclass from the JSON a deployment run stores and serialises it for the API, so
plain fields (paths, tuples, nested dataclasses, optionals) are all it may hold.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from keyslice.llm_endpoint import LLMEndpoint
from keyslice.vqa import LLM_PROMPT_VERSION


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
    masks_dir: Path | None = None          # masks root mirroring the input (keyslice segment), after each study's own
    spatial_normalise: bool = False        # selector: resample slices to fixed mm/px around the body before windowing
    save_curves: bool = False
    vqa_mask_negatives: bool = False       # "no" for mask-visible organs the report never mentions (marked rows)
    uncertain_margin: float = 0.01         # a selection whose margin is below this is flagged `uncertain`
    confidence_tolerance_mm: float = 10.0  # the margin compares with slices farther than this from the top-1
    segmenter: str = "rules"
    # the OpenAI-compatible endpoint of every LLM use of the build: VQA generation (on while base_url
    # and model are set) and the report segmenter when segmenter is "llm"
    llm: LLMEndpoint = field(default_factory=LLMEndpoint)
    vqa_prompt_version: str = LLM_PROMPT_VERSION   # prompt file of LLM VQA generation (prompts/<version>.md)
    max_workers: int = 4                   # studies processed concurrently
    force_stages: tuple[str, ...] = ()
    retries: int | None = None             # retries of transient errors, every stage; None: each stage's own
    # limits: a study beyond one fails with LimitExceededError (the build goes on with the others)
    max_report_bytes: int = 200_000        # report size (a report is a few kB)
    max_findings_per_report: int = 200     # finding sentences of one report (each gets a key slice and VQA rows)
    max_slices_per_series: int = 4_000     # slices of one series (thin-slice whole-body CT: ~2,000)
    max_files_per_study: int = 50_000      # files under one study folder

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> "BuildConfig":
        """Read a YAML config; keyword overrides (from the CLI) win over the file."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must be a YAML mapping of build settings (see configs/build.example.yaml)")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BuildConfig":
        """A config from plain values: a YAML file's mapping, keyword settings or a config's JSON
        (:meth:`to_json`: what the runs table records and a flow run's parameter holds).

        ``llm`` may be a mapping of :class:`LLMEndpoint` fields; its ``prompt_version`` key (how build
        configs have always named the VQA prompt) is read as ``vqa_prompt_version``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown build config key(s): {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if data.get("llm") is None:
            data.pop("llm", None)                  # `llm:` with nothing under it: no endpoint
        elif isinstance(data["llm"], Mapping):
            llm = dict(data["llm"])
            if "prompt_version" in llm:
                version = llm.pop("prompt_version")
                if data.setdefault("vqa_prompt_version", version) != version:
                    raise ValueError(f"llm.prompt_version ({version!r}) and vqa_prompt_version "
                                     f"({data['vqa_prompt_version']!r}) disagree; give one of them")
            data["llm"] = LLMEndpoint.from_dict(llm)
        for key in ("input_dir", "out_dir", "manifest", "masks_dir"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        data["force_stages"] = tuple(data.get("force_stages") or ())
        return cls(**data)

    @classmethod
    def from_settings(cls, config_file: Path | str | None = None, **overrides: Any) -> "BuildConfig":
        """A YAML file (optional) with keyword settings over it; ``None`` settings are left out.

        The one way the CLI, ``keyslice.build`` and the scheduled flow turn their arguments into a config.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_yaml(Path(config_file), **given) if config_file else cls.from_dict(given)

    def to_json(self) -> str:
        """The config as the ``runs`` table records it (paths as strings, sorted keys)."""
        return json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)
