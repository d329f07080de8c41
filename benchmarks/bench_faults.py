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

``--hostile`` runs the signal and hang cases instead, with the real command line and no Prefect server
of its own (each build starts the one it needs, as a user's does), on real DICOM from ../shared/data:

1. a study holding a named pipe ``x.dcm`` and two links to its own folder (``a -> .``, ``b -> .``)
   beside a good one: the build must end (within ``--hang-timeout`` s) with both studies complete
   and the unread files recorded with their reason;
2. SIGTERM to a running build: it must exit with 130 within 60 s and leave no Prefect server behind;
3. ``kill -9`` of a running build (the process only, not its group): its Prefect server must be
   gone within 15 s;
4. a last rerun completes every study once (no duplicate rows).
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


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _servers_of(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            if b"uvicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:  # ended meanwhile
            continue
    return found


def _start_and_wait(cmd: list[str], corpus: Path, markers: int, timeout: float = 300.0):
    """Start a build; return (process, its Prefect server pids) once ``markers`` stage markers exist."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    servers: set[int] = set()
    t = time.perf_counter()
    while proc.poll() is None and n_markers(corpus) < markers and time.perf_counter() - t < timeout:
        servers.update(_servers_of(proc.pid))
        time.sleep(0.05)
    servers.update(_servers_of(proc.pid))
    return proc, servers


def hostile(args) -> int:
    from keyslice.sample import data_dir
    from keyslice.selector import save_tiny_checkpoint
    from tests.fault_utils import REPORT, add_study, duplicate_keys as study_duplicates

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    (work / "prefect-home").mkdir(parents=True, exist_ok=True)
    os.environ.update({"PREFECT_HOME": str(work / "prefect-home"), "DO_NOT_TRACK": "1",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                       "KEYSLICE_PSEUDONYM_KEY": KEY, "PYTHONPATH": str(ROOT)})
    os.environ.pop("PREFECT_API_URL", None)
    data = data_dir()
    model = save_tiny_checkpoint(work / "tiny-model", seed=0)
    lines = [f"bench_faults --hostile: real DICOM (dcmqi 3-slice CT), tiny model, `keyslice build` (Prefect, threads), "
             f"python {platform.python_version()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"]
    print(lines[0], flush=True)
    problems: list[str] = []

    def note(line: str, ok: bool = True, problem: str = "") -> None:
        lines.append(("ok   " if ok else "FAIL ") + line)
        print(lines[-1], flush=True)
        if not ok:
            problems.append(problem or line)

    # 1. a pipe and symlink loops
    inp, out = work / "hang" / "studies", work / "hang" / "corpus"
    add_study(inp, "good", data, REPORT)
    bad = add_study(inp, "pipe_and_loops", data, REPORT)
    os.mkfifo(bad / "x.dcm")
    (bad / "a").symlink_to(".")
    (bad / "b").symlink_to(".")
    t = time.perf_counter()
    try:
        run = subprocess.run(build_cmd(inp, out, model, args.workers), capture_output=True, text=True,
                             timeout=args.hang_timeout)
        code = run.returncode
    except subprocess.TimeoutExpired:
        code = None
    from keyslice.corpus.sql import query

    done = query(out, "select count(*) as n from studies").to_pylist()[0]["n"] if out.exists() else 0
    reasons = query(out, "select message from failures where stage = 'series-files'").to_pylist() if out.exists() else []
    note(f"pipe x.dcm + links a -> ., b -> .: exit {code} after {time.perf_counter() - t:.1f} s, "
         f"{done} of 2 studies complete, recorded: {reasons[0]['message'] if reasons else 'nothing'}",
         code == 0 and done == 2 and bool(reasons))

    # 2. SIGTERM, 3. kill -9, on a build of several studies
    inp, out = work / "signals" / "studies", work / "signals" / "corpus"
    for i in range(args.studies):
        add_study(inp, f"study{i:03d}", data, REPORT)
    cmd = build_cmd(inp, out, model, args.workers)
    proc, servers = _start_and_wait(cmd, out, markers=n_markers(out) + 2)
    t = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    time.sleep(1.0)
    left = [p for p in servers if _alive(p)]
    note(f"SIGTERM after {n_markers(out)} markers: exit {code} in {time.perf_counter() - t:.1f} s; Prefect server(s) "
         f"{sorted(servers) or 'none seen'}, left running: {left or 'none'}",
         code == 130 and bool(servers) and not left)
    for p in left:
        os.kill(p, signal.SIGKILL)

    proc, servers = _start_and_wait(cmd, out, markers=n_markers(out) + 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t = time.perf_counter()
    while any(_alive(p) for p in servers) and time.perf_counter() - t < 15:
        time.sleep(0.1)
    left = [p for p in servers if _alive(p)]
    note(f"kill -9 of the build (not its group): Prefect server(s) {sorted(servers) or 'none seen'} "
         f"gone after {time.perf_counter() - t:.1f} s; left running: {left or 'none'}", bool(servers) and not left)
    for p in left:
        os.kill(p, signal.SIGKILL)

    final = subprocess.run(cmd, capture_output=True, text=True)
    dups = study_duplicates(out)  # the studies share one real series: its series_id repeats across studies
    done = query(out, "select count(*) as n from studies").to_pylist()[0]["n"]
    note(f"rerun: exit {final.returncode}, {done} of {args.studies} studies, duplicate keys: {dups or 'none'}",
         final.returncode == 0 and done == args.studies and not dups)
    lines.append("RESULT: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    print(lines[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if not problems else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=30)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for studies and corpora (default: temp)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--hostile", action="store_true", help="the signal and hang cases (see above) instead")
    ap.add_argument("--hang-timeout", type=float, default=300.0, help="--hostile: seconds before a build counts as hung")
    args = ap.parse_args()
    if args.hostile:
        return hostile(args)

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
