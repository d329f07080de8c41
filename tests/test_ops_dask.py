"""Distributed and incremental builds of the real sample corpus, and compaction of a real corpus.

A real ``distributed.LocalCluster`` (2 worker processes on 127.0.0.1) runs the per-study tasks
through prefect-dask, connected by scheduler address as a remote cluster would be; its corpus
must equal the one the thread runner builds, row for row and image byte for byte.
"""

from __future__ import annotations

import os
import shutil

import pytest

from keyslice.pipeline.registry import STAGES
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.corpus.sql import query
from tests.corpus_utils import BUILD_KEY, build_config, corpus_fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fixed_key(monkeypatch):
    monkeypatch.setenv("KEYSLICE_PSEUDONYM_KEY", BUILD_KEY)


@pytest.fixture(autouse=True)
def _same_intra_op_threads(monkeypatch):
    """Dask's nannies start workers with OMP/MKL_NUM_THREADS=1; torch's float32 reductions then sum in
    another order than this process (its own thread count) and scores differ in the last bit. Give
    the workers this process' thread count so that the corpora can be compared bit for bit."""
    import dask
    import distributed  # noqa: F401 - load its config defaults first: leaving dask.config.set deletes
    import torch        # every top-level key it had to create, which would drop all of "distributed"

    n = str(torch.get_num_threads())
    monkeypatch.setenv("DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__OMP_NUM_THREADS", n)
    monkeypatch.setenv("DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MKL_NUM_THREADS", n)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": n,
                          "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": n}):
        yield


def _diff(a: dict, b: dict) -> str:
    """The first differing rows per table, for a readable failure message."""
    lines = []
    for table in sorted(set(a) | set(b)):
        only_a = sorted(set(a.get(table, [])) - set(b.get(table, [])))
        only_b = sorted(set(b.get(table, [])) - set(a.get(table, [])))
        if only_a or only_b:
            lines.append(f"{table}: {len(only_a)} rows only here, {len(only_b)} only there\n"
                         f"  here:  {only_a[:1]}\n  there: {only_b[:1]}")
    return "\n".join(lines)


def test_dask_cluster_build_equals_the_local_build(reference_corpus, sample_studies, tiny_model_dir, tmp_path,
                                                    prefect_harness):
    from distributed import LocalCluster

    from flows.build import run_build

    out = tmp_path / "corpus"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = run_build(build_config(sample_studies, out, tiny_model_dir), task_runner="dask",
                           dask_address=cluster.scheduler_address)
        with cluster.get_client() as client:
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
    assert result["n_studies"] == 4
    assert result["n_done"] == sum(1 for o in result["outcomes"] if o["status"] == "done") > 0
    got, want = corpus_fingerprint(out), corpus_fingerprint(reference_corpus)
    assert got == want, _diff(got, want)
    for stage in STAGES:
        assert CheckpointStore(out).done_studies(stage) == CheckpointStore(reference_corpus).done_studies(stage)


def test_incremental_build_submits_only_new_studies(reference_corpus, sample_studies, tiny_model_dir, tmp_path,
                                                    prefect_harness):
    from flows.build import run_build

    out = tmp_path / "corpus"
    shutil.copytree(reference_corpus, out)
    before = corpus_fingerprint(out)
    again = run_build(build_config(sample_studies, out, tiny_model_dir), incremental=True)
    complete = len(CheckpointStore(out).done_studies("vqa"))
    assert again["n_studies"] == 4 - complete and again["n_done"] == 0
    # a new study folder appears: only it is built
    new = tmp_path / "in"
    shutil.copytree(sample_studies, new, symlinks=True)
    shutil.copytree(sample_studies / "colonography_ge_3slice", new / "zz_new_study", symlinks=True)
    grown = run_build(build_config(new, out, tiny_model_dir), incremental=True)
    built = {o["study_id"] for o in grown["outcomes"] if o["status"] == "done"}
    assert len(built) == 1
    assert corpus_fingerprint(out)["findings"] != before["findings"]
    n = query(out, f"select count(*) as n from vqa where study_id = '{built.pop()}'").to_pylist()[0]["n"]
    assert n > 0


def test_compacted_corpus_reads_the_same_and_forced_stages_do_not_duplicate(reference_corpus, sample_studies,
                                                                             tiny_model_dir, tmp_path,
                                                                             prefect_harness):
    from typer.testing import CliRunner

    from flows.build import run_build
    from keyslice.cli import app

    out = tmp_path / "corpus"
    shutil.copytree(reference_corpus, out)
    before = corpus_fingerprint(out)
    store = CheckpointStore(out)
    done = sorted(store.done_studies("vqa"))
    reads = {(t, s): store.read_rows(t, s) for s in done for t in ("findings", "assignments", "selections")}
    res = CliRunner().invoke(app, ["compact", "--out", str(out), "--shards", "2"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert not [p for p in (out / "tables" / "findings").glob("*.parquet") if not p.name.startswith("compacted-")]
    assert corpus_fingerprint(out) == before
    assert {k: store.read_rows(*k) for k in reads} == reads
    # recompute key slices (and vqa) for every study: rows come back once, identical
    forced = run_build(build_config(sample_studies, out, tiny_model_dir, force_stages=("keyslice",)))
    assert {o["stage"] for o in forced["outcomes"] if o["status"] == "done"} == {"keyslice", "vqa"}
    assert corpus_fingerprint(out) == before
    res = CliRunner().invoke(app, ["compact", "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert corpus_fingerprint(out) == before
    # a rerun over a compacted corpus resumes as usual: everything skipped
    again = run_build(build_config(sample_studies, out, tiny_model_dir))
    assert again["n_done"] == 0
    assert corpus_fingerprint(out) == before


def test_gpu_tagged_tasks_run_only_on_the_gpu_worker(reference_corpus, sample_studies, tiny_model_dir, tmp_path,
                                                     prefect_harness, monkeypatch):
    """CPU worker from a LocalCluster, GPU worker started like a remote one (``dask worker --resources``)."""
    import subprocess
    import sys
    import time

    from distributed import LocalCluster, get_task_stream

    from flows.build import run_build

    monkeypatch.setenv("KEYSLICE_DASK_RESOURCES", '{"gpu": {"GPU": 1}, "cpu": {"CPU": 1}}')
    out = tmp_path / "corpus"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None, resources={"CPU": 2}) as cluster:
        # no nanny: the worker runs in this process' environment with this process' torch thread
        # count (a nanny's pre-spawn environment would pin OMP_NUM_THREADS=1, see _same_intra_op_threads)
        import torch

        n = str(torch.get_num_threads())
        gpu = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                "--no-nanny", "--nthreads", "1", "--resources", "GPU=1",
                                "--host", "127.0.0.1", "--no-dashboard", "--name", "gpu-worker"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
        try:
            with cluster.get_client() as client:
                deadline = time.monotonic() + 120
                while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
                    time.sleep(0.5)
                info = client.scheduler_info()["workers"]
                gpu_addr = {a for a, w in info.items() if w.get("name") == "gpu-worker"}
                assert len(gpu_addr) == 1
                with get_task_stream(client) as stream:
                    run_build(build_config(sample_studies, out, tiny_model_dir), task_runner="dask",
                              dask_address=cluster.scheduler_address)
        finally:
            gpu.terminate()
            gpu.wait(timeout=60)
    placed = {}
    for rec in stream.data:
        placed.setdefault(str(rec["key"]).split("-")[0], set()).add(rec["worker"])
    keyslice_keys = [k for k in placed if "keyslice" in k]
    assert keyslice_keys and all(placed[k] == gpu_addr for k in keyslice_keys), placed
    others = [k for k in placed if any(s in k for s in ("segment", "series", "vqa"))]
    assert others and all(not (placed[k] & gpu_addr) for k in others), placed
    got, want = corpus_fingerprint(out), corpus_fingerprint(reference_corpus)
    assert got == want, _diff(got, want)
