"""Headers-only study indexing vs. a full pydicom read with pixel decode, same files, one run.

    python benchmarks/bench_dicom_index.py [--data ../shared/data] [--repeat 5] [--workers 4]

For every study folder under --data that holds DICOM, it times
  * index_study(reader="fast")    - the default step-2 path (headers only, grouping, geometry, phase)
  * index_study(reader="pydicom") - the same with pydicom.dcmread(stop_before_pixels=True) as reader
  * full read: pydicom.dcmread(f) + ds.pixel_array for every DICOM file, in a pool of --workers threads
  * the headers alone, parsed in one thread (read_headers, as index_study does) and spread over a pool
    of --workers threads (how index_study read them before: the parser is pure Python and holds the GIL)
and prints files/s and the ratios (target: >= 20x for the default path). All paths are
warmed once first so the OS page cache is equally hot for each. Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402

from keyslice.dicom import index_study  # noqa: E402
from keyslice.dicom.headers import read_header, read_headers  # noqa: E402
from keyslice.pseudonym import Pseudonymizer  # noqa: E402
from keyslice.sample import data_dir  # noqa: E402


def study_folders(data: Path) -> list[Path]:
    cands = [data / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom",
             data / "philips_phantom_study", data / "ge_head_ct_tilt", data / "dcmqi_ct3slice"]
    return [c for c in cands if c.is_dir()] or [data]


def full_read(path: Path):
    ds = pydicom.dcmread(path)
    if "PixelData" in ds:
        arr = ds.pixel_array
        return arr.shape
    return None


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="the real data folder (default: $KEYSLICE_DATA_DIR, else shared/data beside the checkout)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4, help="threads of the full-read comparison")
    args = ap.parse_args()

    ps = Pseudonymizer(b"bench", "env")
    folders = study_folders(args.data or data_dir())
    dicom_files: list[Path] = []
    for folder in folders:
        idx = index_study(folder, ps, image_phase=False)
        skipped = {rel for rel, _ in idx.skipped_files}
        for root, _dirs, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                if p.relative_to(folder).as_posix() not in skipped:
                    dicom_files.append(p)
    n = len(dicom_files)
    print(f"python {platform.python_version()}, pydicom {pydicom.__version__}, cpus {os.cpu_count()}, "
          f"full-read threads {args.workers} (index_study parses in one thread), repeat {args.repeat}")
    print(f"{len(folders)} study folder(s), {n} DICOM files")

    def run_index(reader):
        return lambda: [index_study(f, ps, reader=reader, image_phase=False) for f in folders]

    def run_full():
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(full_read, dicom_files))

    def run_full_seq():
        for p in dicom_files:
            full_read(p)

    def run_headers_one_thread():
        list(read_headers(dicom_files))

    def run_headers_pool():
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(read_header, dicom_files))

    for fn in (run_index("fast"), run_index("pydicom"), run_full, run_full_seq):  # warm the cache
        fn()
    t_hdr_one = best_of(run_headers_one_thread, args.repeat)
    t_hdr_pool = best_of(run_headers_pool, args.repeat)
    t_fast = best_of(run_index("fast"), args.repeat)
    t_pyd = best_of(run_index("pydicom"), args.repeat)
    t_full = best_of(run_full, args.repeat)
    t_full_seq = best_of(run_full_seq, max(1, args.repeat // 2))

    rows = [("index_study, fast header reader (default)", t_fast),
            ("index_study, pydicom header reader", t_pyd),
            (f"full read + pixel decode, {args.workers} threads", t_full),
            ("full read + pixel decode, sequential", t_full_seq)]
    for name, t in rows:
        print(f"  {name:46s} {t * 1000:9.1f} ms  {n / t:9.0f} files/s")
    ratio = t_full / t_fast
    print(f"ratio full/headers (fast reader): {ratio:.1f}x  (target >= 20x: "
          f"{'met' if ratio >= 20 else 'NOT met'})")
    print(f"ratio full/headers (pydicom reader): {t_full / t_pyd:.1f}x")
    print(f"headers alone: one thread {t_hdr_one * 1000:.1f} ms, {args.workers} threads {t_hdr_pool * 1000:.1f} ms "
          f"(one thread x{t_hdr_pool / t_hdr_one:.2f} the speed of the pool)")

    # per-folder breakdown: compressed vs uncompressed data behave very differently
    print("per study folder (files, fast index ms, full read ms, ratio):")
    for folder in folders:
        files = [p for p in dicom_files if folder in p.parents]
        tf = best_of(lambda: index_study(folder, ps, image_phase=False), args.repeat)

        def fr(files=files):
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                list(pool.map(full_read, files))
        tr = best_of(fr, args.repeat)
        print(f"  {folder.name:28s} {len(files):4d} {tf * 1000:8.1f} {tr * 1000:9.1f} {tr / tf:7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
