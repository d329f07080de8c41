"""Peak memory of `keyslice publish --stack N` as the number of exported findings grows.

Builds the REAL bundled sample corpus (steps 1-4 with the tiny random-weight selector), then SYNTHETIC
multiples of it: every study copied M times under a new study folder (links to the same real DICOM,
reports and masks), its corpus rows committed again through ``CheckpointStore.commit_stage`` with the
copy's study pseudonym and a SYNTHETIC patient per copy (so copies spread over splits and shards as new
patients would). Each corpus is published as a dry run with stacks in a fresh process, which prints its
peak RSS (sampled every 10 ms during the publish, and its growth over the process after its imports).
Stacks are rendered while their row is written, row group by row group, so the peak should follow the
row group (at most ``--max-shard-mb`` of images), not the number of findings: the last line is the ratio
of the largest multiple's peak to the 1x peak. ``probe_export_memory.py`` shows what grows.

    PYTHONPATH=$PWD KEYSLICE_DATA_DIR=/work/shared/data python benchmarks/bench_export_memory.py \\
        --multiples 1 4 16 --stack 16 --max-shard-mb 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "keyslice-bench-export-memory-key"

CHILD = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
import datasets, torch  # noqa: F401  (imported first: the export's growth is measured from the process after them)
import keyslice.selector  # noqa: F401
from keyslice.publish import publish_corpus

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

start, peak, running = rss_mb(), [0.0], True

def sample():
    while running:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.01)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
corpus, studies, out, stack, shard_mb = sys.argv[1:6]
t = time.perf_counter()
result = publish_corpus(Path(corpus), "bench/export-memory", dry_run_dir=Path(out), input_dir=Path(studies),
                        stack_slices=int(stack), max_shard_bytes=int(shard_mb) * 1024 * 1024, log=lambda m: None)
running = False
sampler.join()
print(json.dumps({"seconds": time.perf_counter() - t, "start_mb": start, "peak_rss_mb": peak[0],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "findings": sum(result.counts["findings"].values()),
                  "rows": {c: sum(s.values()) for c, s in result.counts.items()},
                  "shards": len(result.files) - 1 - sum(1 for p in result.files if p.startswith("stats/")),
                  "largest_file_mb": max(f["size"] for f in result.files.values()) / 2 ** 20}))
"""


def build_sample(work: Path) -> tuple[Path, Path]:
    """The real sample corpus (steps 1-4, tiny selector) and its studies folder."""
    from keyslice.config import BuildConfig
    from keyslice.pipeline.context import make_context
    from keyslice.pipeline.run import process_study
    from keyslice.pipeline.studies import discover_studies
    from keyslice.sample import materialize_samples
    from keyslice.selector import save_tiny_checkpoint

    studies, corpus = work / "studies", work / "corpus"
    save_tiny_checkpoint(work / "tiny", seed=0)
    materialize_samples(studies)
    ctx = make_context(BuildConfig(input_dir=studies, out_dir=corpus, model=str(work / "tiny"), device="cpu"),
                       run_id="bench-export-memory")
    for study in discover_studies(studies, ctx.pseudonymize):
        process_study(study, ctx)
    return corpus, studies


def multiply(corpus: Path, studies: Path, copies: int, dest: Path) -> tuple[Path, Path]:
    """A corpus and studies folder holding every study ``copies`` times (SYNTHETIC copies, new patients)."""
    import pyarrow.parquet as pq

    from keyslice.corpus.checkpoints import STAGE_TABLES, CheckpointStore
    from keyslice.pipeline.studies import discover_studies
    from keyslice.pseudonym import load_pseudonymizer

    pseudonymize = load_pseudonymizer(corpus, create=False)
    out_corpus, out_studies = dest / "corpus", dest / "studies"
    out_studies.mkdir(parents=True)
    (out_corpus / ".keyslice").mkdir(parents=True)
    store = CheckpointStore(out_corpus)
    originals = {s.study_id: s for s in discover_studies(studies, pseudonymize)}
    done = {p.stem for p in (corpus / "stages" / "vqa").glob("*.json")}
    for k in range(copies):
        for old, study in sorted(originals.items()):
            folder = out_studies / f"{study.path.name}__SYNTHETIC_copy{k}"
            folder.mkdir()
            for entry in study.path.iterdir():
                (folder / entry.name).symlink_to(entry.resolve())
            new = pseudonymize("study", folder.name)
            if old not in done:
                continue
            patient = pseudonymize("patient", f"SYNTHETIC-copy{k}-{old}")

            def rewrite(row: dict) -> dict:
                out = {}
                for col, value in row.items():
                    if col == "patient_id":
                        value = patient
                    elif col == "qa_id":
                        value = hashlib.sha256(f"{new}\x00{value}".encode()).hexdigest()[:len(value)]
                    elif isinstance(value, str):
                        value = value.replace(old, new)
                    out[col] = value
                return out

            for stage, tables in STAGE_TABLES.items():
                rows = {t: [rewrite(r) for r in pq.read_table(corpus / "tables" / t / f"{old}.parquet").to_pylist()]
                        for t in tables}
                store.commit_stage(stage, new, rows, "bench-export-memory")
            shutil.copytree(corpus / "images" / old, out_corpus / "images" / new)
    runs = corpus / "tables" / "runs"
    if runs.is_dir():
        shutil.copytree(runs, out_corpus / "tables" / "runs")
    return out_corpus, out_studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--stack", type=int, default=16)
    parser.add_argument("--max-shard-mb", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ["KEYSLICE_PSEUDONYM_KEY"] = KEY
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-memory-"))
    print(f"# bench_export_memory {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"# --stack {args.stack} --max-shard-mb {args.max_shard_mb}; REAL sample corpus, SYNTHETIC copies of it")
    corpus, studies = build_sample(work / "sample")
    peaks, grown = {}, {}
    print(f"{'multiple':>8} {'findings':>8} {'vqa rows':>8} {'shards':>6} {'largest MB':>10} {'RSS at start':>12} "
          f"{'peak RSS MB':>11} {'growth MB':>9} {'seconds':>8}", flush=True)
    for m in args.multiples:
        c, s = multiply(corpus, studies, m, work / f"x{m}")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(c), str(s), str(work / f"x{m}" / "dry"),
                               str(args.stack), str(args.max_shard_mb)], capture_output=True, text=True,
                              env={**os.environ, "KEYSLICE_PSEUDONYM_KEY": KEY})
        if proc.returncode != 0:
            sys.exit(f"publish of the {m}x corpus failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[m] = r["peak_rss_mb"]
        grown[m] = r["peak_rss_mb"] - r["start_mb"]
        print(f"{m:>7}x {r['findings']:>8} {r['rows']['vqa']:>8} {r['shards']:>6} {r['largest_file_mb']:>10.1f} "
              f"{r['start_mb']:>12.0f} {r['peak_rss_mb']:>11.0f} {grown[m]:>9.0f} "
              f"{time.perf_counter() - started:>8.1f}", flush=True)
        shutil.rmtree(work / f"x{m}")
    lo, hi = min(peaks), max(peaks)
    print(f"peak RSS ratio {hi}x / {lo}x = {peaks[hi] / peaks[lo]:.2f}; the export's growth (peak RSS during the "
          f"publish minus RSS at its start) ratio = {grown[hi] / max(grown[lo], 1.0):.2f} (findings x{hi // lo})")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
