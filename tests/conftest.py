"""Shared fixtures: the real data folder, a tiny selector checkpoint, one Prefect harness per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No telemetry, no network, and an isolated Prefect home for the whole test session.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real test data (``../shared/data`` beside the checkout, or ``$KEYSLICE_DATA_DIR``)."""
    from keyslice.sample import data_dir as find

    try:
        return find()
    except FileNotFoundError as exc:
        pytest.skip(f"real test data missing: {exc}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny open_clip checkpoint built by the tests (random weights, saved and reloaded from disk)."""
    from keyslice.selector import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_checkpoint(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One ephemeral Prefect API for the whole session (a cold start costs ~20 s)."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
