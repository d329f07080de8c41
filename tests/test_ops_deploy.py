"""Deployments and infrastructure: what `keyslice serve` serves, and that prefect.yaml, the docker
compose file and the Kubernetes manifests agree with the flows and tasks they run.

Docker and Kubernetes are not available here: their files are parsed and cross-checked, not run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.deploy import CPU_STAGES_AFTER, CPU_STAGES_BEFORE, GPU_STAGES, make_deployment, scheduled_build
from keyslice.pipeline.registry import STAGES
from keyslice.cli import app
from tasks import STAGE_TASKS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())


def _cron_and_tz(deployment) -> list[tuple[str, str | None]]:
    return [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]


def test_served_deployment_is_a_nightly_incremental_build(tmp_path):
    d = make_deployment(str(tmp_path / "in"), str(tmp_path / "out"), "biomedclip", cron="15 1 * * *",
                        timezone="Europe/Paris", max_workers=3, compact=True)
    assert d.name == "keyslice-incremental" and d.flow_name == "keyslice-scheduled-build"
    assert _cron_and_tz(d) == [("15 1 * * *", "Europe/Paris")]
    assert d.concurrency_limit == 1                      # two builds of one corpus would collide
    assert d.parameters["incremental"] is True and d.parameters["compact"] is True
    assert d.parameters["max_workers"] == 3 and "dask_address" not in d.parameters
    scheduled_build.validate_parameters(d.parameters)    # every parameter is one the flow takes
    with pytest.raises(ValueError, match="cron"):
        make_deployment("/in", "/out", cron="every night")


def test_keyslice_serve_serves_that_deployment(tmp_path, monkeypatch):
    import prefect

    served = {}

    def fake_serve(*deployments, **kwargs):      # prefect.serve would block until Ctrl-C
        served["deployments"], served["kwargs"] = deployments, kwargs

    monkeypatch.setattr(prefect, "serve", fake_serve)
    config = tmp_path / "build.yaml"
    config.write_text("top_k: 3\n")
    res = CliRunner().invoke(app, ["serve", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
                                   "--model", "demo", "--cron", "0 4 * * 1-5", "--config", str(config),
                                   "--runner", "dask", "--dask-address", "tcp://10.0.0.5:8786", "--compact"])
    assert res.exit_code == 0, res.output
    (d,) = served["deployments"]
    assert served["kwargs"] == {"limit": 1}
    assert _cron_and_tz(d) == [("0 4 * * 1-5", None)]
    assert d.parameters == {"input_dir": str((tmp_path / "in").resolve()), "out_dir": str((tmp_path / "c").resolve()),
                            "model": "demo", "incremental": True, "runner": "dask", "compact": True,
                            "config_file": str(config.resolve()), "dask_address": "tcp://10.0.0.5:8786"}
    scheduled_build.validate_parameters(d.parameters)


def test_keyslice_serve_says_where_the_schedule_lives(tmp_path, monkeypatch):
    """On the ephemeral API nothing outlives the process: serve warns; with a server it names it."""
    import prefect

    monkeypatch.setattr(prefect, "serve", lambda *deployments, **kwargs: None)
    args = ["serve", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "c"), "--model", "demo"]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))  # no profile's URL either
    ephemeral = CliRunner().invoke(app, args)
    assert ephemeral.exit_code == 0, ephemeral.output
    assert "ephemeral Prefect API" in ephemeral.output and "gone when it stops" in ephemeral.output
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    served = CliRunner().invoke(app, args)
    assert served.exit_code == 0, served.output
    assert "registered on the Prefect server http://127.0.0.1:4200/api" in served.output.replace("\n", "")
    assert "ephemeral" not in served.output


def test_prefect_yaml_deployments_match_the_flows(prefect_yaml):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    flows = {}
    for name, d in deployments.items():
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        flows[name] = flow.name
        flow.validate_parameters(d["parameters"])
        for schedule in d.get("schedules") or []:
            Cron(schedule["cron"], timezone=schedule.get("timezone"))
        assert d["work_pool"]["name"] in ("keyslice-cpu", "keyslice-gpu")
    # exactly one of the two nightly builds is active, and both allow one run at a time
    nightly = [d for d in deployments.values() if d.get("schedules")]
    assert sum(s["active"] for d in nightly for s in d["schedules"]) == 1
    assert all(d["concurrency_limit"] == 1 for d in nightly)
    assert deployments["keyslice-incremental"]["parameters"]["incremental"] is True
    # the pipeline's phases name deployments of this file, on the right pools
    pipeline = deployments["keyslice-pipeline"]["parameters"]
    for key, pool in (("cpu_deployment", "keyslice-cpu"), ("gpu_deployment", "keyslice-gpu")):
        flow_name, dep_name = pipeline[key].split("/")
        assert flows[dep_name] == flow_name and deployments[dep_name]["work_pool"]["name"] == pool
    gpu = deployments[pipeline["gpu_deployment"].split("/")[1]]
    assert gpu["parameters"]["stages"] == GPU_STAGES and gpu["concurrency_limit"] == 1
    assert CPU_STAGES_BEFORE + GPU_STAGES + CPU_STAGES_AFTER == list(STAGES)


def _setup_commands(compose: dict) -> list[list[str]]:
    script = compose["services"]["prefect-setup"]["command"][-1]
    return [shlex.split(line.split("#")[0].replace("${KEYSLICE_GPUS:-1}", "1").split("||")[0])
            for line in script.splitlines() if line.strip().startswith("prefect ")]


def test_compose_creates_the_pools_and_the_gpu_tag_limit(compose, prefect_yaml):
    commands = _setup_commands(compose)
    created_pools = {c[3] for c in commands if c[1:3] == ["work-pool", "create"]}
    assert {d["work_pool"]["name"] for d in prefect_yaml["deployments"]} <= created_pools
    tag_limits = {c[3]: int(c[4]) for c in commands if c[1:3] == ["concurrency-limit", "create"]}
    gpu_tags = set(STAGE_TASKS["keyslice"].tags)
    # step 3's tasks carry a tag that has a concurrency limit of one per GPU; the CPU steps do not
    assert gpu_tags & set(tag_limits) and all(tag_limits[t] == 1 for t in gpu_tags & set(tag_limits))
    for stage in ("segment", "series", "vqa"):
        assert not set(STAGE_TASKS[stage].tags) & set(tag_limits)
    assert ["work-pool", "set-concurrency-limit", "keyslice-gpu", "1"] == next(
        c[1:] for c in commands if c[1:3] == ["work-pool", "set-concurrency-limit"])
    services = compose["services"]
    gpu_worker = services["worker-gpu"]["command"]
    assert gpu_worker[gpu_worker.index("--pool") + 1] == "keyslice-gpu"
    assert gpu_worker[gpu_worker.index("--limit") + 1] == "1"
    dask_gpu = services["dask-worker-gpu"]["command"]
    assert dask_gpu[dask_gpu.index("--nthreads") + 1] == "1" and "GPU=1" in dask_gpu


def test_kubernetes_manifests_and_work_pool_templates():
    k8s = REPO / "infra" / "k8s"
    kinds = [doc["kind"] for f in sorted(k8s.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) if doc]
    assert {"PersistentVolumeClaim", "Secret", "Deployment", "DaskCluster", "DaskWorkerGroup"} <= set(kinds)
    for pool in ("cpu", "gpu"):
        template = json.loads((k8s / f"work-pool-{pool}.json").read_text())
        used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
        assert used <= set(template["variables"]["properties"]), used - set(template["variables"]["properties"])
    gpu = json.loads((k8s / "work-pool-gpu.json").read_text())
    container = gpu["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert gpu["variables"]["properties"]["gpus"]["default"] == 1


@pytest.mark.slow
def test_scheduled_build_builds_new_studies_and_compacts(tmp_path, tiny_model_dir, prefect_harness, monkeypatch):
    """The deployment's flow itself, on SYNTHETIC phantom studies: build, compact, then only new studies."""
    from benchmarks.synthetic_studies import write_synthetic_studies
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.corpus.shards import compacted_files
    from keyslice.corpus.sql import query

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", "test-key-not-a-secret")
    inp, out = tmp_path / "studies", tmp_path / "corpus"
    write_synthetic_studies(inp, 2)
    first = scheduled_build(str(inp), str(out), str(tiny_model_dir), max_workers=2, compact=True)
    assert first["n_studies"] == 2 and first["n_done"] == 8 and first["compacted_files"] > 0
    store = CheckpointStore(out)
    assert compacted_files(store, "vqa") and not list((out / "tables" / "vqa").glob("st-*.parquet"))
    write_synthetic_studies(inp, 1, start=2)                 # a new study arrives before the next tick
    second = scheduled_build(str(inp), str(out), str(tiny_model_dir), max_workers=2)
    assert second["n_studies"] == 1 and second["n_done"] == 4
    counts = query(out, "select count(distinct study_id) as n from selections").to_pylist()[0]["n"]
    assert counts == 3 and len(store.done_studies("vqa")) == 3


def test_build_flow_takes_its_config_as_a_dataclass_from_python_and_from_a_deployments_json(
        tmp_path, sample_studies, prefect_harness, monkeypatch):
    """``config`` is a BuildConfig parameter: a deployment run stores it as JSON (what the runs table records),
    and the engine's run of that stored run (what ``python -m prefect.engine`` does on a worker) gets the
    dataclass back; a direct call stores the same JSON. An unknown key fails before any run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ParameterTypeError
    from prefect.flow_engine import load_flow_run, run_flow

    from flows.build import build_flow
    from keyslice.config import BuildConfig
    from keyslice.corpus.sql import query
    from tests.corpus_utils import BUILD_KEY

    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)
    out = tmp_path / "corpus"
    cfg = BuildConfig(input_dir=sample_studies, out_dir=out, model="not-loaded-by-the-segment-stage",
                      manifest=None, force_stages=("segment",), max_workers=2, top_k=3)
    as_json = json.loads(cfg.to_json())
    assert isinstance(as_json["force_stages"], list) and isinstance(as_json["llm"], dict)

    build_flow.to_deployment(name="json-config", parameters={"config": as_json, "stages": ["segment"]}).apply()
    scheduled = run_deployment("keyslice-build/json-config", timeout=0)
    assert scheduled.parameters["config"] == as_json
    result = run_flow(build_flow, flow_run=load_flow_run(scheduled.id))
    assert result["n_studies"] == 4 and result["n_failed"] == 0 and result["n_done"] == 4
    recorded = query(out, "select config_json from runs").column("config_json").to_pylist()
    assert [json.loads(c) for c in recorded] == [as_json]   # the dataclass that reached the build, paths and all

    state = build_flow(config=cfg, stages=["segment"], return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).parameters["config"]
    assert stored == as_json
    assert build_flow.validate_parameters({"config": stored})["config"] == cfg

    with pytest.raises(ParameterTypeError, match="max_wrkers"):
        build_flow.validate_parameters({"config": {**as_json, "max_wrkers": 3}})
