"""Fault benchmark: `kill -9` a build at random points, rerun, compare with an uninterrupted build.

    python benchmarks/bench_faults.py                       # 30 studies, 10 kills
    python benchmarks/bench_faults.py --studies 60 --kills 20 --seed 3 --out benchmarks/results/faults.txt

SYNTHETIC phantom studies (benchmarks/synthetic_studies.py) and the tiny test model, built with the
real command line (``python -m keyslice.cli build``) against one Prefect server started here (as in
production, the server outlives the killed builds). Steps:

1. a reference corpus, built once without interruption;
2. a second corpus, built by runs that are each killed with SIGKILL (the whole process group) at
   a random point: when a random number of further stage markers has appeared, plus a random
   delay of 0-300 ms, so kills land inside stages, between a table file and its marker, and
   inside Parquet writes. After every kill, before any rerun, a reader must see no duplicate row
   (every key column unique) and no half-written file under its final name;
3. one last run to completion, then: every table, row for row (run-dependent columns excluded),
   and every key-slice image, byte for byte, equal to the reference; no failure recorded; no
   temporary file left; then ``keyslice compact`` and the same comparison again.

Exit status 1 when any check fails. Output: one line per kill and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOLATILE = {"created_at", "run_id", "failed_at"}
CONTENT_TABLES = ("studies", "series", "findings", "assignments", "selections", "vqa")
KEYS = {"studies": ("study_id",), "series": ("series_id",), "findings": ("finding_id",),
        "assignments": ("finding_id",), "selections": ("finding_id", "series_id"), "vqa": ("qa_id",)}
KEY = "synthetic-benchmark-key"


def fingerprint(corpus: Path) -> dict[str, Counter]:
    """Every row of every content table as canonical JSON (multiset), and every image's hash."""
    from keyslice.corpus.sql import query

    out = {}
    for table in CONTENT_TABLES:
        rows = query(corpus, f"select * from {table}").to_pylist()
        out[table] = Counter(json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True,
                                        default=str) for r in rows)
    out["images"] = Counter(f"{p.relative_to(corpus)}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                            for p in (corpus / "images").rglob("*.png"))
    return out


def duplicate_keys(corpus: Path) -> dict[str, int]:
    """Rows whose key appears more than once, per table, as a reader sees the corpus now."""
    from keyslice.corpus.sql import query

    dups = {}
    for table, cols in KEYS.items():
        key = ", ".join(cols)
        n = query(corpus, f"select count(*) as n from (select {key} from {table} group by {key} "
                          f"having count(*) > 1)").to_pylist()[0]["n"]
        if n:
            dups[table] = n
    return dups


def compare(got: dict[str, Counter], want: dict[str, Counter]) -> list[str]:
    problems = []
    for table in want:
        lost, extra = want[table] - got[table], got[table] - want[table]
        if lost or extra:
            problems.append(f"{table}: {sum(lost.values())} rows lost, {sum(extra.values())} extra/duplicated")
    return problems


def n_markers(corpus: Path) -> int:
    stages = corpus / "stages"
    return sum(1 for _ in stages.glob("*/*.json")) if stages.exists() else 0


def temp_files(corpus: Path) -> int:
    return sum(1 for p in corpus.rglob("*.tmp")) if corpus.exists() else 0


def build_cmd(inp: Path, out: Path, model: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "keyslice.cli", "build", "--input", str(inp), "--out", str(out),
            "--model", str(model), "--workers", str(workers), "--device", "cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=30)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for studies and corpora (default: temp)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (work / "prefect-home").mkdir(parents=True, exist_ok=True)
    os.environ.update({"PREFECT_HOME": str(work / "prefect-home"), "DO_NOT_TRACK": "1",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                       "KEYSLICE_PSEUDONYM_KEY": KEY, "PYTHONPATH": str(ROOT)})
    from prefect.server.api.server import SubprocessASGIServer

    from benchmarks.synthetic_studies import write_synthetic_studies
    from keyslice.corpus.compact import compact_corpus
    from keyslice.selector import save_tiny_checkpoint

    rng = random.Random(args.seed)
    inp = work / "studies"
    write_synthetic_studies(inp, args.studies)
    model = save_tiny_checkpoint(work / "tiny-model", seed=0)
    lines = [f"bench_faults: {args.studies} SYNTHETIC phantom studies (8 slices of 64x64), tiny model, CPU, "
             f"`keyslice build --workers {args.workers}`, {args.kills} kill -9, seed {args.seed}",
             f"python {platform.python_version()}, {os.cpu_count()} cpus, "
             f"load average at start {os.getloadavg()[0]:.1f}"]
    print("\n".join(lines), flush=True)
    server = SubprocessASGIServer()
    server.start(timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    problems: list[str] = []
    try:
        ref, faulted = work / "reference", work / "faulted"
        t = time.perf_counter()
        subprocess.run(build_cmd(inp, ref, model, args.workers), check=True, capture_output=True, text=True)
        ref_s = time.perf_counter() - t
        want = fingerprint(ref)
        total = n_markers(ref)
        lines.append(f"reference build: {ref_s:.1f} s, {total} stage markers, "
                     f"rows {({t: sum(c.values()) for t, c in want.items()})}")
        print(lines[-1], flush=True)

        kills = 0
        for attempt in range(args.kills * 3):
            if kills == args.kills:
                break
            before = n_markers(faulted)
            remaining = total - before
            if remaining <= 1:
                break
            left = args.kills - kills
            target = before + rng.randint(1, max(1, min(remaining - 1, 2 * remaining // (left + 1))))
            jitter = rng.uniform(0.0, 0.3)
            t = time.perf_counter()
            proc = subprocess.Popen(build_cmd(inp, faulted, model, args.workers), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            while proc.poll() is None and n_markers(faulted) < target:
                time.sleep(0.01)
            time.sleep(jitter)
            if proc.poll() is not None:
                lines.append(f"run {attempt + 1}: finished (exit {proc.returncode}) before the kill point; not counted")
                print(lines[-1], flush=True)
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            after = n_markers(faulted)
            tmp = temp_files(faulted)
            dups = duplicate_keys(faulted)
            lines.append(f"kill {kills:>2}: after {time.perf_counter() - t:5.1f} s, markers {before:>3} -> {after:>3} "
                         f"of {total} (target {target}, +{jitter * 1000:.0f} ms), half-written temp files left: {tmp}, "
                         f"duplicate keys visible: {dups or 'none'}")
            print(lines[-1], flush=True)
            if dups:
                problems.append(f"kill {kills}: duplicate keys visible {dups}")
        if kills < args.kills:
            problems.append(f"only {kills} of {args.kills} kills landed (the build was too quick): use more --studies")

        t = time.perf_counter()
        final = subprocess.run(build_cmd(inp, faulted, model, args.workers), capture_output=True, text=True)
        lines.append(f"final rerun: exit {final.returncode}, {time.perf_counter() - t:.1f} s; "
                     f"markers {n_markers(faulted)} of {total}")
        print(lines[-1], flush=True)
        if final.returncode != 0:
            problems.append(f"final rerun failed: {final.stdout[-500:]} {final.stderr[-1000:]}")
        from keyslice.corpus.sql import query

        n_fail = query(faulted, "select count(*) as n from failures").to_pylist()[0]["n"]
        n_runs = query(faulted, "select count(*) as n from runs").to_pylist()[0]["n"]
        got = fingerprint(faulted)
        diff = compare(got, want)
        tmp = temp_files(faulted)
        lines.append(f"after the rerun: {'identical to the reference' if not diff else diff}; failures recorded: "
                     f"{n_fail}; temp files left: {tmp}; runs recorded: {n_runs} "
                     "(a run killed before its end records none)")
        print(lines[-1], flush=True)
        problems += diff + ([f"{n_fail} failures recorded"] if n_fail else []) + ([f"{tmp} temp files"] if tmp else [])
        compact_corpus(faulted)
        diff = compare(fingerprint(faulted), want)
        lines.append(f"after keyslice compact: {'identical to the reference' if not diff else diff}")
        print(lines[-1], flush=True)
        problems += diff
    finally:
        server.stop()
    lines.append("RESULT: " + ("PASS: no lost or duplicated rows after "
                               f"{args.kills} kill -9" if not problems else "FAIL: " + "; ".join(problems)))
    print(lines[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
