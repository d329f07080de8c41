"""Does the CPU encoder yielding its cores to the preprocessing workers pay? One run, interleaved.

End-to-end selection (``load_volume`` + ``select_key_slices``, as ``bench_selector.py``'s (b)) on a
SYNTHETIC phantom series, alternately with the encoder's thread layout as built
(:class:`keyslice.selector.select._EncoderThreads`: the encoder runs on the cores the workers leave
while they are the bottleneck) and with it held at its full thread count. On a shared machine the
speed drifts from minute to minute, so the two alternate round by round and each round is the median
of ``--repeat`` runs; the ratio of the medians over the rounds is printed.

    python benchmarks/bench_encoder_threads.py                    # tiny model, 64 px, 200 slices
    python benchmarks/bench_encoder_threads.py --image-size 224   # the ~1,000 slices/s stand-in
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_selector import ORGAN_SETS, bench_end_to_end, build_encoder, sentences, synthetic_phantom  # noqa: E402

import keyslice.selector.select as select_mod  # noqa: E402
from keyslice.selector import Query, SelectorConfig, load_volume, select_key_slices  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--prepare-workers", type=int, default=select_mod.PREPARE_WORKERS)
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the two layouts")
    ap.add_argument("--repeat", type=int, default=15, help="runs per layout and round (the median is kept)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        files = synthetic_phantom(args.slices, Path(tmp))
        encoder = build_encoder("tiny", "cpu", "auto", args.image_size)
        queries = [Query(f"f{i}", s, ORGAN_SETS[0], []) for i, s in enumerate(sentences(8))]
        select_key_slices(load_volume(files[:2]), queries[:1], encoder, SelectorConfig(batch_size=2))  # warm-up
        as_built = select_mod._EncoderThreads.update

        def median_rate(yielding: bool) -> float:
            select_mod._EncoderThreads.update = as_built if yielding else (lambda self, prep, enc: None)
            try:
                return statistics.median(bench_end_to_end(encoder, files, queries, 16, 2, args.prepare_workers)[0]
                                         for _ in range(args.repeat))
            finally:
                select_mod._EncoderThreads.update = as_built

        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for yielding in (False, True):
                rates[yielding].append(median_rate(yielding))
    print(f"machine: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), torch threads "
          f"{torch.get_num_threads()}; tiny model at {args.image_size} px, {args.slices} SYNTHETIC slices, "
          f"{args.prepare_workers} preprocessing worker(s), {args.rounds} rounds x {args.repeat} runs")
    for yielding, label in ((False, "encoder keeps all its threads"), (True, "encoder yields (as built)")):
        print(f"  {label:30s} " + ", ".join(f"{r:.0f}" for r in rates[yielding])
              + f" slices/s (median {statistics.median(rates[yielding]):.0f})")
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    ahead = sum(a > b for a, b in zip(rates[True], rates[False]))
    print(f"  yielding / keeping: x{ratio:.2f}, ahead in {ahead} of {args.rounds} rounds")
    return {"yielding": rates[True], "keeping": rates[False], "ratio": ratio}


if __name__ == "__main__":
    main()
