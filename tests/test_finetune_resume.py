"""Resumable training: N steps in one go == k steps, checkpoint, fresh objects, resume to N."""

from __future__ import annotations

import pytest
import torch

from keyslice.finetune.config import FinetuneConfig
from tests.finetune_utils import shipped_config


def resume_config(out) -> FinetuneConfig:
    d = shipped_config(out, steps=6)
    d["pairs"] = {"organs": ["liver", "kidney", "urinary bladder", "lung"], "pairs_per_organ": 16}
    d["train"].update({"batch_size": 12, "warmup_steps": 2, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3})
    return FinetuneConfig.from_dict(d)


def _weights(model_dir):
    return torch.load(next(model_dir.glob("*.pt")), map_location="cpu", weights_only=True)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, data_dir):
    from keyslice.finetune.train import checkpoints, train

    quiet = {"progress": lambda m: None}
    full = train(resume_config(tmp_path / "full"), **quiet)
    assert full.step == 6 and full.resumed_from is None

    cut = resume_config(tmp_path / "cut")
    first = train(cut, max_steps=3, **quiet)                # "interrupted" after step 3
    assert first.step == 3 and first.model_dir is None
    assert [p.name for p in checkpoints(cut.out)] == ["step_0000002.pt", "step_0000003.pt"]
    # a new process would rebuild everything from the config: train() builds fresh objects and resumes
    second = train(resume_config(tmp_path / "cut"), **quiet)
    assert second.resumed_from == 3 and second.step == 6 and second.model_dir is not None

    a, b = _weights(full.model_dir), _weights(second.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    import pyarrow.parquet as pq

    la = [r["loss"] for r in pq.read_table(tmp_path / "full/metrics/train_steps.parquet").to_pylist()]
    lb = [r["loss"] for r in pq.read_table(tmp_path / "cut/metrics/train_steps.parquet").to_pylist()]
    assert la == pytest.approx(lb, rel=1e-5)
    # the weights did change
    init = torch.load(next((tmp_path / "full/init_model").glob("*.pt")), weights_only=True)
    assert not torch.equal(init["visual.conv1.weight"], a["visual.conv1.weight"])


def test_resume_refuses_another_config(tmp_path, data_dir):
    from keyslice.finetune.train import train

    cfg = resume_config(tmp_path / "run")
    train(cfg, max_steps=2, progress=lambda m: None)
    # an unfinished run cannot be recorded in a corpus
    from keyslice.errors import InputError
    from keyslice.finetune.record import record_run_metrics

    (tmp_path / "corpus").mkdir()
    with pytest.raises(InputError, match="no finished model"):
        record_run_metrics(cfg, tmp_path / "corpus")
    assert not (tmp_path / "corpus" / "tables").exists()
    d = cfg.to_dict()
    d["train"]["lr"] = 0.5
    with pytest.raises(ValueError, match="another config"):
        train(FinetuneConfig.from_dict(d), progress=lambda m: None)
    restarted = train(FinetuneConfig.from_dict(d), max_steps=1, restart=True, progress=lambda m: None)
    assert restarted.step == 1 and restarted.resumed_from is None
