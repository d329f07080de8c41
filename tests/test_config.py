"""The build configuration: the shipped example file stays loadable as the config evolves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from keyslice.config import BuildConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "build.example.yaml"


def test_example_config_loads_with_cli_overrides(tmp_path):
    cfg = BuildConfig.from_yaml(EXAMPLE, input_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"),
                                model="/models/local", max_workers=None)
    assert cfg.model == "/models/local"          # a flag wins over the file
    assert cfg.max_workers == 4                  # None means "flag not given": the file's value stays
    assert cfg.input_dir == tmp_path / "in" and cfg.use_masks
    assert cfg.llm.enabled and cfg.llm.api_key_env == "OPENAI_API_KEY"


def test_the_example_llm_section_is_one_endpoint_and_round_trips(tmp_path):
    """Every key of the documented ``llm:`` section lands on the LLMEndpoint (its ``prompt_version`` on
    vqa_prompt_version), and its JSON / YAML / pydantic give the same config back."""
    import dataclasses

    import pydantic

    from keyslice.llm_endpoint import LLMEndpoint

    documented = yaml.safe_load(EXAMPLE.read_text())["llm"]
    endpoint_keys = {f.name for f in dataclasses.fields(LLMEndpoint)}
    assert set(documented) == endpoint_keys | {"prompt_version"}      # the example shows every setting
    cfg = BuildConfig.from_yaml(EXAMPLE, input_dir="in", out_dir="out")
    assert isinstance(cfg.llm, LLMEndpoint)
    assert cfg.llm == LLMEndpoint(**{k: v for k, v in documented.items() if k != "prompt_version"})
    assert cfg.llm == dataclasses.replace(LLMEndpoint(), base_url=documented["base_url"], model=documented["model"])
    assert cfg.vqa_prompt_version == documented["prompt_version"] == "vqa_generate.v2"

    plain = json.loads(cfg.to_json())
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(plain))
    assert BuildConfig.from_yaml(again) == cfg == BuildConfig.from_dict(plain)
    assert pydantic.TypeAdapter(BuildConfig).validate_python(plain) == cfg   # a flow parameter


def test_an_llm_mapping_as_users_wrote_it_before(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("input_dir: a\nout_dir: b\nsegmenter: llm\nllm:\n  base_url: http://127.0.0.1:9/v1\n"
                   "  model: m\n  api_key_env: HOSPITAL_LLM_KEY\n  prompt_version: vqa_generate.v1\n"
                   "  max_concurrency: 2\n  timeout_s: 45\n")
    cfg = BuildConfig.from_yaml(old)
    assert (cfg.llm.base_url, cfg.llm.model, cfg.llm.api_key_env, cfg.llm.max_concurrency, cfg.llm.timeout_s) == \
        ("http://127.0.0.1:9/v1", "m", "HOSPITAL_LLM_KEY", 2, 45)
    assert cfg.vqa_prompt_version == "vqa_generate.v1"
    assert not BuildConfig.from_dict({"input_dir": "a", "out_dir": "b", "llm": None}).llm.enabled   # `llm:` empty


@pytest.mark.parametrize("llm, extra, match", [
    ({"base_url": "http://127.0.0.1:9/v1", "timeout": 5}, {}, r"unknown llm key\(s\): \['timeout'\]"),
    ({"prompt_version": "vqa_generate.v1"}, {"vqa_prompt_version": "vqa_generate.v2"}, "disagree"),
    ({"timeout_s": 0}, {}, "timeout_s > 0"),
])
def test_llm_mistakes_are_named(llm, extra, match):
    with pytest.raises(ValueError, match=match):
        BuildConfig.from_dict({"input_dir": "a", "out_dir": "b", "llm": llm, **extra})


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_dir: a\nout_dir: b\ntop_kk: 3\n")
    with pytest.raises(ValueError, match="top_kk"):
        BuildConfig.from_yaml(bad)
