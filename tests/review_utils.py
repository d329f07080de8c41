"""Helpers for the review tests: the sample corpus built without Prefect, and a review server
started on 127.0.0.1 in a subprocess (a real uvicorn, stopped or killed by the test)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.corpus_utils import BUILD_KEY, build_config

REPO = Path(__file__).resolve().parents[1]


def build_sample_corpus(samples: Path, out: Path, model: Path, **kw) -> Path:
    """The sample corpus through keyslice.pipeline.run.process_study (the build's own stage code, no Prefect)."""
    from keyslice.pipeline.context import make_context
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import discover_studies

    os.environ["KEYSLICE_PSEUDONYM_KEY"] = BUILD_KEY
    cfg = build_config(samples, out, model, device="cpu", **kw)
    ctx = make_context(cfg)
    for study in discover_studies(cfg.input_dir, ctx.pseudonymize):
        process_study(study, ctx)
    return out


def copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReviewServer:
    """``python -m keyslice.cli review`` on a free loopback port."""

    def __init__(self, corpus: Path, input_dir: Path | None = None, *, host: str = "127.0.0.1",
                 token: str | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "keyslice.cli", "review", "--out", str(corpus), "--host", host,
               "--port", str(self.port)]
        if input_dir is not None:
            cmd += ["--input", str(input_dir)]
        if token:
            cmd += ["--token", token]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "KEYSLICE_PSEUDONYM_KEY": BUILD_KEY}
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"review server exited with {self.proc.returncode}")
            try:
                httpx.get(self.url + "/static/app.css", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("review server did not start")

    def token(self) -> str:
        import re

        html = httpx.get(self.url + "/").text
        return re.search(r'name="keyslice-token" content="([^"]+)"', html).group(1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
