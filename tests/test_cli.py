"""Command-line wiring: flags reach the build configuration and the task runner."""

from __future__ import annotations

from typer.testing import CliRunner

from keyslice.cli import app


def test_build_flags_reach_run_build(tmp_path, monkeypatch):
    import flows.build

    seen = {}

    def fake_run_build(cfg, task_runner="threads", *, dask_address=None, **kw):
        seen.update(cfg=cfg, task_runner=task_runner, dask_address=dask_address)
        return {"run_id": "r", "n_studies": 0, "n_done": 0, "n_skipped": 0, "n_failed": 0, "n_blocked": 0}

    monkeypatch.setattr(flows.build, "run_build", fake_run_build)
    result = CliRunner().invoke(app, ["build", "--input", str(tmp_path), "--out", str(tmp_path / "c"),
                                      "--runner", "dask", "--dask-address", "tcp://10.0.0.1:8786",
                                      "--force-stage", "keyslice", "--workers", "3", "--model", "m"])
    assert result.exit_code == 0, result.output
    assert seen["task_runner"] == "dask" and seen["dask_address"] == "tcp://10.0.0.1:8786"
    cfg = seen["cfg"]
    assert cfg.force_stages == ("keyslice",) and cfg.max_workers == 3 and cfg.model == "m"
