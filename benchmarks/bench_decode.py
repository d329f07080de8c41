"""Benchmark of step 3's host path alone: reading and decoding CT slices, and memory on a long series.

1. JPEG 2000: slices/s of the real 20-slice Siemens series (repeated ``--repeat`` times to make it
   longer), decoded by imagecodecs (the codec the selector uses) and by pylibjpeg-openjpeg (what
   pydicom used before), with 1 and with ``--workers`` threads; the scaling is the ratio
   (ideal: the number of workers; both libraries release the GIL while decoding). With CUDA and
   nvImageCodec installed (``keyslice[gpu-decode]``), its GPU decoder is measured too.
2. Uncompressed: slices/s of :meth:`Volume.chunks` (header read + one read per file into the
   chunk buffer) against ``pydicom.dcmread(f).pixel_array`` per file, on a SYNTHETIC phantom
   (``bench_selector.synthetic_phantom``) of ``--slices`` 512x512 slices.
3. Memory (``--rss-slices N``, 0 to skip): in a fresh process, select key slices with the tiny
   model on a SYNTHETIC N-slice series and report the peak RSS (the target for N = 2,000 is
   under 2 GB: the series streams through a few chunk buffers).

Ratios come from one run; on the shared machine, the load average is printed with them.

    python benchmarks/bench_decode.py                       # J2K x5, 200 uncompressed slices
    python benchmarks/bench_decode.py --rss-slices 2000     # + peak memory on 2,000 slices
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_selector import SERIES, synthetic_phantom  # noqa: E402
from keyslice.dicom.headers import read_header  # noqa: E402
from keyslice.selector.pixels import SlicePixels, encapsulated_frame  # noqa: E402
from keyslice.selector.volume import load_volume  # noqa: E402


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def rate(fn, items: list, workers: int, min_seconds: float = 1.5) -> float:
    """Items per second of ``fn`` over ``items`` with ``workers`` threads (repeated to min_seconds)."""
    done, t = 0, time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        while True:
            list(pool.map(fn, items)) if workers > 1 else [fn(x) for x in items]
            done += len(items)
            if time.perf_counter() - t >= min_seconds:
                break
    return done / (time.perf_counter() - t)


def _gpu_decoder_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("nvidia.nvimgcodec") is not None


def bench_j2k(repeat: int, workers: int) -> dict:
    import imagecodecs
    import openjpeg

    files = sorted(p for p in SERIES.iterdir() if p.is_file())
    frames = [encapsulated_frame(f, read_header(f).extra["pixel_offset"]) for f in files] * repeat
    decoders = {"imagecodecs": lambda b: imagecodecs.jpeg2k_decode(b, numthreads=1),
                "pylibjpeg-openjpeg": openjpeg.decode}
    if _gpu_decoder_available():
        from keyslice.selector.pixels import _nvimgcodec_decode

        decoders["nvimgcodec (GPU)"] = _nvimgcodec_decode
    out = {}
    print(f"JPEG 2000: real Siemens series, {len(files)} slices x {repeat} = {len(frames)} decodes ({load()})")
    for name, dec in decoders.items():
        one = rate(dec, frames, 1)
        many = rate(dec, frames, workers)
        out[name] = {"1": one, str(workers): many, "scaling": many / one}
        print(f"  {name:19s} 1 worker {one:7.1f} slices/s, {workers} workers {many:7.1f} slices/s "
              f"(x{many / one:.2f}; {many / workers:.1f} per worker)")
    return out


def bench_uncompressed(n: int, workers: int) -> dict:
    import pydicom

    tmp = tempfile.TemporaryDirectory(prefix="bench-decode-")
    files = synthetic_phantom(n, Path(tmp.name))
    print(f"Uncompressed: SYNTHETIC PHANTOM, {n} slices of 512x512 ({load()})")

    def stream() -> None:
        vol = load_volume(files, workers=workers)
        for chunk in vol.chunks(16):
            chunk.release()

    def with_pydicom() -> None:
        for f in files:
            pydicom.dcmread(f).pixel_array.astype(np.float32)

    res = {}
    for name, fn in (("headers + chunks", stream), ("pydicom per file", with_pydicom)):
        fn()  # warm the page cache and the imports
        t = time.perf_counter()
        fn()
        res[name] = n / (time.perf_counter() - t)
        print(f"  {name:17s} {res[name]:8.1f} slices/s")
    print(f"  ratio {res['headers + chunks'] / res['pydicom per file']:.1f}x")
    assert SlicePixels.from_header(files[0], read_header(files[0])).method == "native"
    tmp.cleanup()
    return res


_RSS_CHILD = """
import resource, sys, tempfile, json
from pathlib import Path
sys.path.insert(0, {root!r})
from benchmarks.bench_selector import synthetic_phantom
from keyslice.selector import Query, SelectorConfig, load_model, load_volume, save_tiny_checkpoint, select_key_slices
files = sorted(Path({folder!r}).iterdir())
enc = load_model(str(save_tiny_checkpoint(Path(tempfile.mkdtemp()))), device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vol = load_volume(files)
qs = [Query("a", "liver lesion", ["liver"], []), Query("b", "lung nodule", ["lung"], [])]
choices = select_key_slices(vol, qs, enc, SelectorConfig(batch_size=32))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_series_mb": base / 1024, "n": vol.n_slices}}))
"""


def bench_rss(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        t = time.perf_counter()
        synthetic_phantom(n, Path(tmp))
        print(f"Memory: SYNTHETIC PHANTOM of {n} slices written in {time.perf_counter() - t:.0f} s "
              f"({n * 512 * 512 * 2 / 2**30:.2f} GiB of pixels; float32 HU of it would be "
              f"{n * 512 * 512 * 4 / 2**30:.2f} GiB)")
        res = subprocess.run([sys.executable, "-c", _RSS_CHILD.format(root=str(ROOT), folder=tmp)],
                             capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  select_key_slices (tiny model, 2 windows): peak RSS {out['peak_rss_mb']:.0f} MB "
          f"({out['before_series_mb']:.0f} MB before the series was read; target < 2048 MB)")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="JPEG 2000 series repeated this many times")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slices", type=int, default=200, help="uncompressed SYNTHETIC slices")
    ap.add_argument("--rss-slices", type=int, default=0, help="peak memory on a SYNTHETIC series of N slices")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = {"j2k": bench_j2k(args.repeat, args.workers), "uncompressed": bench_uncompressed(args.slices, args.workers)}
    if args.rss_slices:
        out["rss"] = bench_rss(args.rss_slices)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
