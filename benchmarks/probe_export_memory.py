"""What grows when `keyslice publish --stack N` exports more findings: probes run inside the publishing process.

Builds the REAL sample corpus and its SYNTHETIC multiples as ``bench_export_memory.py`` does, then publishes
each multiple in a fresh process with probes around every shard write (wrapping the writer the
publisher calls): RSS, ``pyarrow.total_allocated_bytes()``, open file descriptors, the rows and image
bytes of the shard (or, with the streaming writer, of each row group), and, with ``--tracemalloc``, Python's traced memory (numpy arrays included) with a
snapshot at the largest traced point, diffed between the smallest and the largest multiple. ``--variant``
runs the same publish under ``MALLOC_ARENA_MAX=2`` (glibc arenas) or with ``malloc_trim(0)`` and the Arrow pool's ``release_unused()`` after every
shard, to tell fragmentation from live objects.

    PYTHONPATH=$PWD KEYSLICE_DATA_DIR=/work/shared/data python benchmarks/probe_export_memory.py \\
        --multiples 4 16 --variant plain arena2 trim --tracemalloc
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_memory import KEY, build_sample, multiply  # noqa: E402

CHILD = r"""
import ctypes, json, os, sys, threading, time, tracemalloc
from pathlib import Path
import datasets, torch  # noqa: F401
import pyarrow as pa
import keyslice.selector  # noqa: F401
import keyslice.publish.dataset_builder as builder
import keyslice.publish.publisher as publisher

corpus, studies, out, stack, shard_mb, variant, trace, snap_path = sys.argv[1:9]
trace = trace == "1"
libc = ctypes.CDLL("libc.so.6")

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

state = {"phase": "plan+gate", "peak": 0.0, "peak_phase": "", "tm_max": 0}
events = []

def probe(label, **extra):
    row = {"at": label, "rss_mb": round(rss_mb(), 1), "arrow_mb": round(pa.total_allocated_bytes() / 2 ** 20, 1),
           "fds": len(os.listdir("/proc/self/fd")), **extra}
    if trace:
        cur, peak = tracemalloc.get_traced_memory()
        row.update(traced_mb=round(cur / 2 ** 20, 1), traced_peak_mb=round(peak / 2 ** 20, 1))
        if cur > state["tm_max"]:
            state["tm_max"] = cur
            tracemalloc.take_snapshot().dump(snap_path)
    events.append(row)

running = True
def sample():
    while running:
        r = rss_mb()
        if r > state["peak"]:
            state["peak"], state["peak_phase"] = r, state["phase"]
        time.sleep(0.01)

original_from_list = datasets.Dataset.from_list
def from_list(records, *a, **kw):
    images = 0
    for rec in records:
        for col in ("image", "mask"):
            if isinstance(rec.get(col), dict) and rec[col].get("bytes"):
                images += len(rec[col]["bytes"])
        for col in ("context", "stack", "stack_mask"):
            for item in rec.get(col) or ():
                images += len(item["bytes"] or b"")
    probe("records built", rows=len(records), image_mb=round(images / 2 ** 20, 1))
    return original_from_list(records, *a, **kw)
datasets.Dataset.from_list = staticmethod(from_list)

original_to_parquet = datasets.Dataset.to_parquet
def to_parquet(self, path, *a, **kw):
    state["phase"] = "write " + "/".join(Path(path).parts[-2:])
    probe("before to_parquet", table_mb=round(self.data.nbytes / 2 ** 20, 1))
    n = original_to_parquet(self, path, *a, **kw)
    probe("after to_parquet", file_mb=round(os.path.getsize(path) / 2 ** 20, 1))
    if variant == "trim":
        libc.malloc_trim(0)
        pa.default_memory_pool().release_unused()
    return n
datasets.Dataset.to_parquet = to_parquet

from datasets.arrow_writer import ParquetWriter
original_write_batch, original_finalize = ParquetWriter.write_batch, ParquetWriter.finalize
def write_batch(self, batch, *a, **kw):
    state["phase"] = "write " + "/".join(Path(self._path).parts[-2:])
    images = 0
    for col in ("image", "mask"):
        images += sum(len(v["bytes"] or b"") for v in batch.get(col) or () if v)
    for col in ("context", "stack", "stack_mask"):
        images += sum(len(i["bytes"] or b"") for v in batch.get(col) or () if v for i in v)
    probe("records built", rows=len(next(iter(batch.values()))), image_mb=round(images / 2 ** 20, 1))
    return original_write_batch(self, batch, *a, **kw)
def finalize(self, *a, **kw):
    path = self._path
    result = original_finalize(self, *a, **kw)
    probe("after to_parquet", file_mb=round(os.path.getsize(path) / 2 ** 20, 1))
    if variant == "trim":
        libc.malloc_trim(0)
        pa.default_memory_pool().release_unused()
    return result
ParquetWriter.write_batch, ParquetWriter.finalize = write_batch, finalize

original_write_shards = publisher.write_shards
def write_shards(*a, **kw):
    probe("plan and gate done")
    result = original_write_shards(*a, **kw)
    state["phase"] = "card"
    probe("shards written")
    return result
publisher.write_shards = write_shards

if trace:
    tracemalloc.start(1)
probe("start")
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
result = publisher.publish_corpus(Path(corpus), "bench/export-memory", dry_run_dir=Path(out), input_dir=Path(studies),
                                  stack_slices=int(stack), max_shard_bytes=int(shard_mb) * 1024 * 1024,
                                  log=lambda m: None)
running = False
probe("end")
print(json.dumps({"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(state["peak"], 1),
                  "peak_phase": state["peak_phase"], "findings": sum(result.counts["findings"].values()),
                  "events": events}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multiples", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--variant", nargs="+", default=["plain"], choices=["plain", "arena2", "trim"])
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slower)")
    parser.add_argument("--stack", type=int, default=16)
    parser.add_argument("--max-shard-mb", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="working folder, kept (corpora are reused)")
    parser.add_argument("--label", default="", help="prefix of this run's snapshots and dry-run folders")
    args = parser.parse_args()
    os.environ["KEYSLICE_PSEUDONYM_KEY"] = KEY
    work = args.work or Path(tempfile.mkdtemp(prefix="probe-export-memory-"))
    import pyarrow as pa

    print(f"# probe_export_memory (Arrow pool {pa.default_memory_pool().backend_name}) load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if (work / "sample" / "corpus").is_dir():
        corpus, studies = work / "sample" / "corpus", work / "sample" / "studies"
    else:
        corpus, studies = build_sample(work / "sample")
    snaps = {}
    for m in args.multiples:
        dest = work / f"x{m}"
        if not (dest / "corpus").is_dir():
            c, s = multiply(corpus, studies, m, dest)
        else:
            c, s = dest / "corpus", dest / "studies"
        for variant in args.variant:
            env = {**os.environ, "KEYSLICE_PSEUDONYM_KEY": KEY}
            if variant == "arena2":
                env["MALLOC_ARENA_MAX"] = "2"
            snap = work / f"{args.label}x{m}-{variant}.snapshot"
            dry = work / f"{args.label}x{m}-{variant}-dry"
            proc = subprocess.run([sys.executable, "-c", CHILD, str(c), str(s), str(dry), str(args.stack),
                                   str(args.max_shard_mb), variant, "1" if args.tracemalloc else "0", str(snap)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{m}x {variant} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ev = r["events"]
            written = [e for e in ev if e["at"] == "records built"]
            after = [e for e in ev if e["at"] == "after to_parquet"]
            print(f"## {args.label}{m}x {variant}: findings {r['findings']}, {r['seconds']} s, peak RSS {r['peak_rss_mb']} MB "
                  f"(during {r['peak_phase']}); start {ev[0]['rss_mb']} MB, after plan+gate "
                  f"{next(e for e in ev if e['at'] == 'plan and gate done')['rss_mb']} MB, end {ev[-1]['rss_mb']} MB; "
                  f"largest shard: {max(e['rows'] for e in written)} rows, {max(e['image_mb'] for e in written)} MB "
                  f"of PNG; RSS after each shard max {max(e['rss_mb'] for e in after)} MB; arrow pool max "
                  f"{max(e['arrow_mb'] for e in ev)} MB; open fds max {max(e['fds'] for e in ev)}"
                  + (f"; traced Python max {max(e.get('traced_peak_mb', 0) for e in ev)} MB, at end "
                     f"{ev[-1].get('traced_mb')} MB" if args.tracemalloc else ""), flush=True)
            for e in ev:
                print("   ", json.dumps(e))
            snaps[(m, variant)] = snap
    if args.tracemalloc and len(args.multiples) > 1:
        import tracemalloc

        lo, hi = min(args.multiples), max(args.multiples)
        a = tracemalloc.Snapshot.load(str(snaps[(lo, args.variant[0])]))
        b = tracemalloc.Snapshot.load(str(snaps[(hi, args.variant[0])]))
        print(f"## tracemalloc: largest traced point, {hi}x minus {lo}x (top 12 by size difference)")
        for stat in b.compare_to(a, "lineno")[:12]:
            print("   ", stat)


if __name__ == "__main__":
    main()
