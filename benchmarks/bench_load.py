"""Load benchmark: SYNTHETIC phantom studies built end to end on the CPU, 10 / 100 / 1,000 of them.

    python benchmarks/bench_load.py                               # sizes 10,100,1000 (see the timing note)
    python benchmarks/bench_load.py --sizes 10,100 --workers 2    # a quicker run
    python benchmarks/bench_load.py --out benchmarks/results/load.txt
    python benchmarks/bench_load.py --sizes 10,30 --slices 32 --size 256 --arch ViT-B-16 --noop-tasks 0

The studies are SYNTHETIC (benchmarks/synthetic_studies.py): tiny uncompressed phantom series
(default 8 slices of 64x64) with generated reports; the selector is the tiny open_clip test model
with seeded random weights (``save_tiny_checkpoint``), or with ``--arch ViT-B-16`` open_clip's
ViT-B-16 with seeded random weights saved as a local checkpoint: the same encode cost per slice
as real CLIP weights, so the orchestration overhead is measured against a realistic amount of
work per study (the tiny model makes each step ~40 ms, which no real series is). The four steps,
the checkpoints and the Prefect flow are the real ones (``flows.build.run_build``, thread task runner, ephemeral API).

Every size is built in a fresh subprocess into an empty corpus, and the subprocess reports:

* peak RSS of the build process (``ru_maxrss``: imports, model, Prefect client and all tasks),
  and its growth during the build (peak minus RSS when the build started); the ephemeral
  Prefect API server is a separate process, sampled every 0.5 s and printed on its own;
* studies/hour over the build (``run_build`` wall time, Prefect's server start excluded; it is
  started by a warm-up flow first and printed separately);
* orchestration overhead = build wall time minus the time during which at least one stage was
  running inside keyslice (union of the ``run_stage`` intervals: the step function plus its
  checkpoint commit), as a fraction of the wall time; the time inside the step functions alone
  is printed too;
* every Parquet read during the build, classified: a study's own file, or one study's rows of
  a compacted shard (filtered read) - anything else would be a whole table loaded into memory;
* CPU seconds of the build process and of the Prefect API server during the build; and, in one
  more fresh subprocess, Prefect's own cost per no-op task run, untagged and tagged
  (``--noop-tasks``), to tell Prefect's fixed cost per task from keyslice's.

Targets: peak RSS flat within 10 % from 10 to 1,000 studies; overhead < 10 %.
A full run of the three sizes takes about 10-20 minutes on 2 idle cores (most of it the
1,000-study build); a size that exceeds --timeout is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- child: one build, instrumented ---------------------------------------------------------------
def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _cpu_seconds(processes) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # noqa: BLE001 - a process that ended counts nothing more
            pass
    return total


def _rss_sampler(stop, peaks: dict) -> None:
    """Peak RSS of this process and of its child processes (the ephemeral Prefect server)."""
    import psutil

    me = psutil.Process()
    while not stop.wait(0.5):
        try:
            kids = sum(c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            continue
        peaks["children"] = max(peaks.get("children", 0), kids)


def _noop_task_cost(n: int, workers: int) -> dict[str, float]:
    """Milliseconds per no-op task run submitted from a flow, without and with a tag.

    A tagged task run asks the Prefect API for a slot of its tags' concurrency limits (how step 3
    is kept to one task per GPU) before it starts, whether or not a limit exists.
    """
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.task_runners import ThreadPoolTaskRunner

    def noop(i: int) -> int:
        return i

    costs = {}
    for label, tags in (("untagged", None), ("tagged", ["cpu"])):
        t_noop = task(noop, name=f"noop-{label}", cache_policy=NONE, persist_result=False, tags=tags)

        @flow(name=f"bench-noop-{label}", task_runner=ThreadPoolTaskRunner(max_workers=workers))
        def many() -> float:
            t = time.perf_counter()
            for future in [t_noop.submit(i) for i in range(n)]:
                future.result()
            return time.perf_counter() - t

        costs[label] = 1000 * many() / n
    return costs


def run_child(args: argparse.Namespace) -> dict:
    """Build ``args.input`` into ``args.corpus`` once and return the measurements."""
    import resource
    import threading

    t_process = time.perf_counter()
    home = Path(args.corpus).parent / f"prefect-home-{Path(args.corpus).name}"   # a fresh API database
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({"PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
                       "KEYSLICE_PSEUDONYM_KEY": "synthetic-benchmark-key"})
    import psutil
    import pyarrow.parquet as pq
    from prefect import flow

    import tasks.steps as task_steps
    from flows.build import run_build
    from keyslice.config import BuildConfig
    from keyslice.pipeline import registry

    # time inside keyslice, per stage call (list.append is atomic across the task threads)
    stage_spans: list[tuple[float, float]] = []
    step_spans: list[tuple[float, float]] = []
    real_run_stage = task_steps.run_stage

    def timed_run_stage(*a, **kw):
        t = time.perf_counter()
        try:
            return real_run_stage(*a, **kw)
        finally:
            stage_spans.append((t, time.perf_counter()))

    def timed(fn):
        def wrapper(study, ctx):
            t = time.perf_counter()
            try:
                return fn(study, ctx)
            finally:
                step_spans.append((t, time.perf_counter()))
        return wrapper

    task_steps.run_stage = timed_run_stage
    import dataclasses

    registry.REGISTRY = tuple(dataclasses.replace(s, function=timed(s.function)) for s in registry.REGISTRY)
    if args.untag_cpu_steps:   # measurement variant: no tag (so no concurrency-slot call) on steps 1, 2, 4
        from tasks import STAGE_TASKS

        for stage in ("segment", "series", "vqa"):
            STAGE_TASKS[stage] = STAGE_TASKS[stage].with_options(tags=[])

    # every Parquet read: a study's own file, or a filtered read of one study's rows
    reads = {"study_file": 0, "filtered_shard": 0, "whole_table": []}
    real_read_table = pq.read_table

    def watched_read_table(source, *a, **kw):
        name = Path(str(source)).name
        if kw.get("filters"):
            reads["filtered_shard"] += 1
        elif name.startswith("st-") and name.endswith(".parquet"):
            reads["study_file"] += 1
        else:
            reads["whole_table"].append(str(source))
        return real_read_table(source, *a, **kw)

    pq.read_table = watched_read_table

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    t = time.perf_counter()
    warmup()                                  # starts the ephemeral Prefect API server
    server_start_s = time.perf_counter() - t
    if args.noop_tasks:
        return {"noop_ms": _noop_task_cost(args.noop_tasks, args.workers), "server_start_s": server_start_s}

    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(stop, peaks), daemon=True)
    sampler.start()
    me = psutil.Process()
    rss_before = me.memory_info().rss
    server = me.children(recursive=True)              # the ephemeral API server (started by the warm-up)
    cpu0 = _cpu_seconds([me]), _cpu_seconds(server)
    cfg = BuildConfig(input_dir=Path(args.input), out_dir=Path(args.corpus), model=args.model, device="cpu",
                      max_workers=args.workers)
    t0 = time.perf_counter()
    result = run_build(cfg)
    wall = time.perf_counter() - t0
    cpu_build, cpu_server = _cpu_seconds([me]) - cpu0[0], _cpu_seconds(server) - cpu0[1]
    stop.set()
    sampler.join()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    in_stages = _union_seconds(stage_spans)
    return {
        "n_studies": result["n_studies"], "n_done": result["n_done"], "n_failed": result["n_failed"],
        "n_blocked": result["n_blocked"], "wall_s": wall, "server_start_s": server_start_s,
        "process_s": time.perf_counter() - t_process, "stage_union_s": in_stages,
        "stage_sum_s": sum(b - a for a, b in stage_spans), "step_sum_s": sum(b - a for a, b in step_spans),
        "step_union_s": _union_seconds(step_spans), "n_stage_calls": len(stage_spans),
        "overhead_s": wall - in_stages, "overhead_frac": (wall - in_stages) / wall,
        "studies_per_hour": result["n_studies"] / wall * 3600, "peak_rss": peak_rss, "rss_before": rss_before,
        "cpu_build_s": cpu_build, "cpu_server_s": cpu_server, "server_peak_rss": peaks.get("children", 0),
        "reads": {**reads, "whole_table": reads["whole_table"][:5], "n_whole_table": len(reads["whole_table"])},
    }


# -- parent: studies, one subprocess per size, the report -----------------------------------------------
def _count_rows(corpus: Path) -> dict[str, int]:
    from keyslice.corpus.sql import query

    tables = ("findings", "series", "assignments", "selections", "vqa", "failures")
    return {t: query(corpus, f"select count(*) as n from {t}").to_pylist()[0]["n"] for t in tables}


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def _save_random_checkpoint(arch: str, directory: Path) -> Path:
    """Save an open_clip architecture with seeded random weights as a local checkpoint folder.

    The build loads models by spec (a folder here), exactly as it would load real weights; random
    weights cost the same to run, which is all this benchmark needs, and need no download.
    """
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / f"{arch}.pt").is_file():
        torch.manual_seed(0)
        model = open_clip.create_model(arch, device="cpu")
        cfg = dict(open_clip.get_model_config(arch), model_name=arch)
        (directory / f"{arch}.json").write_text(json.dumps(cfg, indent=1))
        torch.save(model.state_dict(), directory / f"{arch}.pt")
    return directory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="comma-separated numbers of studies")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="rows = columns of each phantom slice")
    ap.add_argument("--workers", type=int, default=2, help="studies processed concurrently (max_workers)")
    ap.add_argument("--work", type=Path, default=None, help="folder for studies and corpora (default: temp)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per size")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--noop-tasks", type=int, default=300,
                    help="also measure Prefect's cost per no-op task run over this many tasks (0: skip)")
    ap.add_argument("--arch", default="tiny", choices=["tiny", "ViT-B-16"],
                    help="selector model: the tiny test model, or open_clip ViT-B-16 with RANDOM weights (a real "
                         "per-slice encode cost; about 1.5 slices/s per CPU core)")
    ap.add_argument("--untag-cpu-steps", action="store_true",
                    help="variant: steps 1, 2, 4 without tags (only step 3 asks for a concurrency slot)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.json).write_text(json.dumps(run_child(args)))
        return 0

    from benchmarks.synthetic_studies import write_synthetic_studies
    from keyslice.selector import save_tiny_checkpoint

    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-load-"))
    t = time.perf_counter()
    folders = write_synthetic_studies(work / "studies", max(sizes), slices=args.slices, size=args.size)
    gen_s = time.perf_counter() - t
    if args.arch == "tiny":
        model = save_tiny_checkpoint(work / "tiny-model", seed=0)
    else:
        model = _save_random_checkpoint(args.arch, work / f"{args.arch}-random")
    lines = [f"bench_load: SYNTHETIC phantom studies ({args.slices} slices of {args.size}x{args.size}, uncompressed; "
             f"generated reports), {args.arch} open_clip model (random weights), CPU, thread runner, "
             f"max_workers={args.workers}",
             f"python {platform.python_version()}, {os.cpu_count()} cpus, load average at start "
             f"{os.getloadavg()[0]:.1f}; {max(sizes)} studies written in {gen_s:.1f} s under {work}",
             "columns: peak RSS of the build process | its growth during the build (lazy imports, model, tasks) | "
             "peak RSS of the Prefect API server process | studies/hour | build wall time | time with >= 1 stage "
             "running | mean stages running at once | overhead = wall - stage time | whole-table Parquet reads",
             f"{'studies':>7} {'peak RSS':>9} {'growth':>8} {'server':>8} {'studies/h':>10} {'wall s':>8} "
             f"{'in stages':>9} {'parallel':>8} {'overhead':>9} {'whole-table reads':>17}"]
    if args.untag_cpu_steps:
        lines.insert(1, "VARIANT --untag-cpu-steps: steps 1, 2, 4 submitted without tags")
    print("\n".join(lines), flush=True)
    measured = {}

    def write_report(extra: list[str]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(lines + extra) + "\n")

    for n in sizes:
        inp = work / f"input-{n}"
        inp.mkdir(exist_ok=True)
        for folder in folders[:n]:            # the first n studies, linked (discovery follows links)
            link = inp / folder.name
            if not link.exists():
                link.symlink_to(folder, target_is_directory=True)
        corpus = work / f"corpus-{n}"
        out_json = work / f"result-{n}.json"
        cmd = [sys.executable, __file__, "--child", "--input", str(inp), "--corpus", str(corpus), "--model",
               str(model), "--json", str(out_json), "--workers", str(args.workers), "--noop-tasks", "0"]
        if args.untag_cpu_steps:
            cmd.append("--untag-cpu-steps")
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            lines.append(f"{n:>7} did not finish within --timeout {args.timeout:.0f} s")
            print(lines[-1], flush=True)
            write_report([])
            continue
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"build of {n} studies failed (exit {proc.returncode})")
        r = json.loads(out_json.read_text())
        rows = _count_rows(corpus)
        if r["n_done"] != 4 * n or r["n_failed"] or rows["failures"] or not rows["selections"]:
            raise SystemExit(f"{n} studies: expected 4 stages done per study and no failure, got {r} {rows}")
        measured[n] = r
        lines.append(f"{n:>7} {_mb(r['peak_rss']):>9} {_mb(r['peak_rss'] - r['rss_before']):>8} "
                     f"{_mb(r['server_peak_rss']):>8} {r['studies_per_hour']:>10.0f} {r['wall_s']:>8.1f} "
                     f"{r['stage_union_s']:>9.1f} {r['stage_sum_s'] / r['stage_union_s']:>8.2f} "
                     f"{100 * r['overhead_frac']:>8.1f}% "
                     f"{r['reads']['n_whole_table']:>17}")
        per_task_ms = 1000 * r["overhead_s"] / r["n_stage_calls"]
        lines.append(f"{'':>7} rows: {rows}; overhead per stage task {per_task_ms:.0f} ms; "
                     f"time inside the step functions {r['step_sum_s']:.1f} s (sum over threads); CPU during the "
                     f"build: build process {r['cpu_build_s']:.0f} s, Prefect API server {r['cpu_server_s']:.0f} s "
                     f"({1000 * r['cpu_server_s'] / r['n_stage_calls']:.0f} ms per task run); "
                     f"Parquet reads: {r['reads']['study_file']} per-study files, "
                     f"{r['reads']['filtered_shard']} filtered shard reads; Prefect server start "
                     f"{r['server_start_s']:.1f} s, whole process {r['process_s']:.1f} s")
        print("\n".join(lines[-2:]), flush=True)
        write_report([])

    summary = []
    if args.noop_tasks:
        out_json = work / "result-noop.json"
        cmd = [sys.executable, __file__, "--child", "--input", str(work / "studies"), "--corpus", str(work / "noop"),
               "--model", str(model), "--json", str(out_json), "--workers", str(args.workers),
               "--noop-tasks", str(args.noop_tasks)]
        subprocess.run(cmd, timeout=args.timeout, check=True, capture_output=True)
        noop = json.loads(out_json.read_text())["noop_ms"]
        summary.append(f"Prefect cost per no-op task run ({args.noop_tasks} tasks, same runner): "
                       f"{noop['untagged']:.1f} ms untagged, {noop['tagged']:.1f} ms tagged (a tagged task asks the "
                       f"API for a concurrency slot; every keyslice step task is tagged: cpu / gpu)")
    if len(measured) >= 2:
        peaks = [m["peak_rss"] for m in measured.values()]
        spread = (max(peaks) - min(peaks)) / min(peaks)
        summary.append(f"peak RSS spread over {sorted(measured)} studies: {100 * spread:.1f}% "
                       f"(target <= 10%: {'met' if spread <= 0.10 else 'NOT met'})")
    if measured:
        big = measured[max(measured)]
        summary.append(f"orchestration overhead at {max(measured)} studies: {100 * big['overhead_frac']:.1f}% "
                       f"of the build wall time (target < 10%: {'met' if big['overhead_frac'] < 0.10 else 'NOT met'}); "
                       f"{big['studies_per_hour']:.0f} studies/hour")
        n_whole = sum(m["reads"]["n_whole_table"] for m in measured.values())
        summary.append(f"whole-table Parquet reads during the builds: {n_whole}")
    print("\n".join(summary))
    write_report(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
