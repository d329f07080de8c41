"""Scheduled builds on a real Prefect server: the server's own scheduler creates the runs.

The ephemeral API that the other tests use serves deployments without the server's scheduler
loop, so a scheduler that fails (as prefect 3.8.8's does with SQLAlchemy 2.1) goes unnoticed
there. Here a ``prefect server start`` on 127.0.0.1 (its own PREFECT_HOME, a shortened
scheduler loop) schedules the two ways keyslice runs every night:

* ``keyslice serve`` (the deployment served from one process), and
* ``prefect deploy`` of prefect.yaml's ``keyslice-incremental`` to a process work pool, run by a
  ``prefect worker`` on loopback,

each with a one-minute cron added, and a run that the scheduler created (not a manual trigger)
must complete and build the sample corpus. Both wait for the same minute tick, in parallel.
Every process's output is kept in a file and shown when a check fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME = "keyslice-scheduled-build"
SERVED_NAME = "keyslice-served"          # prefect.yaml's keyslice-incremental is the worker's
DEPLOYED_NAME = "keyslice-incremental"
POOL = "keyslice-cpu"
EVERY_MINUTE = "* * * * *"
RUN_TIMEOUT_S = 300                      # a minute tick, plus a cold build on a busy 2-core machine

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Processes:
    """Background processes in their own process groups, each with its output in a log file."""

    logs_dir: Path
    running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.logs_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.running[name] = proc
        return proc

    def run(self, name: str, args: list[str], env: dict[str, str], timeout: float = 120) -> str:
        """A command that must succeed (prefect CLI calls); its output is logged too."""
        done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        (self.logs_dir / f"{name}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def report(self) -> str:
        """The tail of every log, for a failure message."""
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"----- {log.name} (last 4000 characters) -----\n{text[-4000:]}")
        return "\n".join(parts)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running.values())):
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started (flow-run subprocesses included)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    try:  # children that outlived their leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Server:
    api: str
    env: dict[str, str]
    procs: Processes

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.api}{path}", json=body or {}, timeout=60)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", timeout=60)

    def deployment_id(self, name: str) -> str | None:
        r = self.get(f"/deployments/name/{FLOW_NAME}/{name}")
        return r.json()["id"] if r.status_code == 200 else None

    def flow_runs(self, deployment_id: str) -> list[dict]:
        r = self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}},
                                            "sort": "EXPECTED_START_TIME_ASC", "limit": 50})
        r.raise_for_status()
        return r.json()


def _wait(what: str, probe, procs: Processes, timeout: float, poll_s: float = 2.0):
    """Poll ``probe`` until it returns a value; a poll that the busy server (SQLite, two builds on two
    cores) does not answer in time is only a poll missed: the deadline is what fails the test."""
    deadline = time.monotonic() + timeout
    missed = 0
    while time.monotonic() < deadline:
        for name, proc in procs.running.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with code {proc.returncode} while waiting for {what}\n{procs.report()}")
        try:
            value = probe()
        except httpx.TransportError:   # ReadTimeout, ConnectError...: ask again
            missed += 1
            value = None
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} ({missed} polls unanswered)\n{procs.report()}")


def _base_env(home: Path, api: str) -> dict[str, str]:
    """The environment of every process: this checkout first on the path, a private Prefect home,
    the loopback server, and loops short enough for a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "KEYSLICE_PSEUDONYM_KEY": "test-key-not-a-secret",
        "KEYSLICE_HOME": str(home / "keyslice-home"),
    })
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` on a free loopback port with its own PREFECT_HOME; stopped afterwards."""
    root = tmp_path_factory.mktemp("prefect_server")
    logs = root / "logs"
    logs.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _base_env(root / "home", api)
    procs = Processes(logs)
    procs.start("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                           "--port", str(port)], env)

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait("the Prefect server to answer /api/health", healthy, procs, timeout=180)
        yield Server(api, env, procs)
    finally:
        procs.stop_all()


@dataclass
class Scheduled:
    server: Server
    served_out: Path
    deployed_out: Path


@pytest.fixture(scope="module")
def scheduled(server, sample_studies, tmp_path_factory):
    """Both ways of scheduling registered on the server at once, so they wait for the same tick:
    ``keyslice serve`` with a one-minute cron, and prefect.yaml's keyslice-incremental deployed
    with a one-minute cron added to its nightly one, on a process pool with a worker."""
    from keyslice.demo_model import ensure_demo_model

    env, procs = server.env, server.procs
    root = tmp_path_factory.mktemp("scheduled")
    served_out, deployed_out = root / "served_corpus", root / "deployed_corpus"
    with pytest.MonkeyPatch.context() as mp:   # made once here, so two builds never race to create it
        mp.setenv("KEYSLICE_HOME", env["KEYSLICE_HOME"])
        ensure_demo_model(progress=lambda message: None)

    procs.start("serve", [sys.executable, "-m", "keyslice.cli", "serve", "--input", str(sample_studies),
                          "--out", str(served_out), "--model", "demo", "--cron", EVERY_MINUTE,
                          "--name", SERVED_NAME, "--workers", "2"], env)

    prefect = [sys.executable, "-m", "prefect"]
    server.post("/work_pools/", {"name": POOL, "type": "process"}).raise_for_status()
    procs.start("worker", [*prefect, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"],
                {**env, "KEYSLICE_REPO": str(REPO)})   # prefect.yaml's pull step: the flows' checkout
    params = {"input_dir": str(sample_studies), "out_dir": str(deployed_out), "model": "demo", "max_workers": 2}
    procs.run("deploy", [*prefect, "--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"),
                         "--name", DEPLOYED_NAME, "--cron", EVERY_MINUTE, "--params", json.dumps(params)], env)
    return Scheduled(server, served_out, deployed_out)


def _completed_scheduled_run(server: Server, deployment: str, procs: Processes) -> dict:
    """Wait for a run of ``deployment`` that the server's scheduler created to complete."""
    dep_id = _wait(f"deployment {deployment} to be registered", lambda: server.deployment_id(deployment),
                   procs, timeout=120)

    def probe():
        _assert_scheduler_healthy(server)
        runs = server.flow_runs(dep_id)
        for run in runs:
            state = (run.get("state") or {}).get("type")
            if run["auto_scheduled"] and state in ("FAILED", "CRASHED"):
                pytest.fail(f"scheduled run {run['name']} of {deployment} ended {state}: "
                            f"{run['state'].get('message')}\n{procs.report()}")
        return next((r for r in runs if r["auto_scheduled"] and r["state"]["type"] == "COMPLETED"), None)

    return _wait(f"a scheduled run of {deployment} to complete", probe, procs, timeout=RUN_TIMEOUT_S)


def _check_sample_corpus(out: Path) -> None:
    """The scheduled run built every sample study into the corpus and recorded the run."""
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.corpus.sql import query
    from keyslice.pipeline.registry import STAGES

    store = CheckpointStore(out)
    assert len(store.done_studies(STAGES[0])) == 4            # every sample study was segmented
    runs = query(out, "select n_studies, n_done from runs order by started_at").to_pylist()
    assert runs and runs[0]["n_studies"] == 4 and runs[0]["n_done"] > 0
    n = query(out, "select (select count(*) from vqa) as vqa, (select count(*) from selections) as sel").to_pylist()[0]
    assert n["vqa"] > 0 and n["sel"] > 0


def _assert_scheduler_healthy(server: Server) -> None:
    """No error from the server's scheduling services (with SQLAlchemy 2.1 every loop of prefect
    3.8.8's scheduler fails with InvalidRequestError, so no scheduled run is ever created)."""
    log = (server.procs.logs_dir / "server.log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if "ERROR" in line and "schedule" in line]
    if errors:
        pytest.fail(f"the Prefect server's scheduler fails: {errors[0]}\n{server.procs.report()}")


def test_keyslice_serve_builds_on_the_servers_schedule(scheduled):
    server = scheduled.server
    run = _completed_scheduled_run(server, SERVED_NAME, server.procs)
    assert run["auto_scheduled"] and run["created_by"]["type"] == "SCHEDULE"   # not a manual trigger
    assert run["parameters"]["out_dir"] == str(scheduled.served_out.resolve())
    _check_sample_corpus(scheduled.served_out)
    serve_log = (server.procs.logs_dir / "serve.log").read_text(errors="replace")
    assert f"registered on the Prefect server {server.api}" in serve_log.replace("\n", "")
    assert "ephemeral" not in serve_log
    assert "4/4 studies" in serve_log                              # the run's progress lines, in its log
    _assert_summary_published(server, scheduled.served_out)
    _assert_scheduler_healthy(server)


def _assert_summary_published(server: Server, out: Path) -> None:
    """The scheduled run's result is on the server as the corpus' summary artifact."""
    from keyslice.pipeline.summary import artifact_key

    r = server.post("/artifacts/filter", {"artifacts": {"key": {"any_": [artifact_key(out)]}}})
    r.raise_for_status()
    markdown = [a["data"] for a in r.json() if a["type"] == "markdown"]   # later ticks add 0-study versions
    assert any("**4 studies** processed" in text for text in markdown), r.json()


def test_prefect_yaml_deployment_runs_on_a_worker(scheduled):
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.corpus.shards import compacted_files

    server = scheduled.server
    dep_id = server.deployment_id(DEPLOYED_NAME)
    dep = server.get(f"/deployments/{dep_id}").json()
    assert dep["work_pool_name"] == POOL and dep["global_concurrency_limit"]["limit"] == 1
    crons = sorted(s["schedule"]["cron"] for s in dep["schedules"])
    assert crons == sorted(["0 2 * * *", EVERY_MINUTE])          # prefect.yaml's nightly one is kept
    run = _completed_scheduled_run(server, DEPLOYED_NAME, server.procs)
    assert run["auto_scheduled"] and run["created_by"]["type"] == "SCHEDULE"
    assert run["work_pool_name"] == POOL
    _check_sample_corpus(scheduled.deployed_out)
    assert compacted_files(CheckpointStore(scheduled.deployed_out), "vqa")   # prefect.yaml's compact: true
    _assert_summary_published(server, scheduled.deployed_out)
    _assert_scheduler_healthy(server)
