"""The build configuration: the shipped example file stays loadable as the config evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyslice.config import BuildConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "build.example.yaml"


def test_example_config_loads_with_cli_overrides(tmp_path):
    cfg = BuildConfig.from_yaml(EXAMPLE, input_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"),
                                model="/models/local", max_workers=None)
    assert cfg.model == "/models/local"          # a flag wins over the file
    assert cfg.max_workers == 4                  # None means "flag not given": the file's value stays
    assert cfg.input_dir == tmp_path / "in" and cfg.use_masks
    assert cfg.llm.enabled and cfg.llm.api_key_env == "OPENAI_API_KEY"


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_dir: a\nout_dir: b\ntop_kk: 3\n")
    with pytest.raises(ValueError, match="top_kk"):
        BuildConfig.from_yaml(bad)
