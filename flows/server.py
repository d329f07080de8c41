"""The Prefect API of a one-off ``keyslice build``: a local server that dies with the build.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral API server (a uvicorn subprocess, about
225 MB) and stops it from an ``atexit`` hook. A build stopped by SIGTERM without a handler, or
by ``kill -9``, never runs that hook and leaves the server behind. :func:`build_api_server`
starts the same server (Prefect's own :class:`SubprocessASGIServer`) with the Linux parent-death
signal set in the child, so the kernel sends it SIGTERM when the build process dies however it
dies, and stops it when the build ends. ``keyslice build`` turns SIGTERM into the same clean
shutdown as Ctrl-C (:func:`keyslice.cli.build._stop_on_sigterm`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import subprocess
import sys
from typing import Any, Iterator

PR_SET_PDEATHSIG = 1


def _death_signal_hook():
    """A ``preexec_fn`` that asks the kernel to SIGTERM the child when its parent dies. libc is loaded
    here, in the parent: between fork and exec the child may only call what is already loaded."""
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


@contextlib.contextmanager
def build_api_server(timeout_s: int = 120) -> Iterator[str | None]:
    """A Prefect API for this process while the block runs; yields its URL.

    Nothing is started when ``PREFECT_API_URL`` names a server already (a deployment, tests, a
    benchmark's shared server) or on systems without ``prctl`` (Prefect's own ephemeral server is
    used then).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    class _TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            popen, hook = subprocess.Popen, _death_signal_hook()

            def tied(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                return popen(*args, preexec_fn=hook, **kwargs)

            subprocess.Popen = tied  # type: ignore[misc]  # only for this one call, before any thread starts
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen  # type: ignore[misc]

    server = _TiedServer(port=_free_port())
    server.start(timeout=timeout_s)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_prefect_workers()
        server.stop()


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still holds while its API is up (at exit it would find the server gone
    and print "Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # noqa: BLE001 - best effort: the build itself is over
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

