"""Shared fixtures: the real data folder, a tiny selector checkpoint, one Prefect harness per session,
and one reference build of the sample corpus that the end-to-end tests compare against."""

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


@pytest.fixture(scope="session")
def sample_studies(tmp_path_factory, data_dir) -> Path:
    """The bundled sample studies, materialised from the real data (read-only for tests)."""
    from keyslice.sample import materialize_samples

    folder = tmp_path_factory.mktemp("samples")
    materialize_samples(folder, data_dir)
    return folder


@pytest.fixture(scope="session")
def reference_corpus(tmp_path_factory, sample_studies, tiny_model_dir, prefect_harness) -> Path:
    """One uninterrupted thread-runner build of the sample corpus (tests copy it, never change it).

    Built once per session: every end-to-end build test (resume, kill -9, Dask, incremental,
    compaction) must end equal to it.
    """
    from flows.build import run_build
    from tests.corpus_utils import BUILD_KEY, build_config

    out = tmp_path_factory.mktemp("reference") / "corpus"
    os.environ["KEYSLICE_PSEUDONYM_KEY"] = BUILD_KEY
    result = run_build(build_config(sample_studies, out, tiny_model_dir))
    assert result["n_studies"] == 4 and result["n_done"] > 0
    return out


@pytest.fixture(scope="session")
def review_corpus(tmp_path_factory, sample_studies, tiny_model_dir) -> Path:
    """The sample corpus built without Prefect (keyslice.pipeline.run.process_study) for the review tests,
    which copy it before recording decisions."""
    from tests.review_utils import build_sample_corpus

    return build_sample_corpus(sample_studies, tmp_path_factory.mktemp("review") / "corpus", tiny_model_dir)
