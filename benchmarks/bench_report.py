"""Benchmark of Step 1 (report segmentation): per-field accuracy and throughput.

Accuracy: against hand-labelled real ROCO caption sentences, from every ``--labels`` file
(repeatable; default: tests/fixtures/report_labels.json, plus
tests/fixtures/report_labels_dev2.json when present). Every split of every file is scored:
in report_labels.json "dev" was tuned on, "test" and "cues" (48 negation/hedge sentences)
were held out; "dev2" (captions with index 0 or 2 mod 6) was tuned on, and the sentences
it shares with a held-out split are left out of that split. Status is scored on
items with a gold status, overall and on cue sentences (a negation/hedge word of the
guidelines), each beside "always abnormal"; a gold status of null is a non-finding
(precision/recall of the predicted "non_finding"); organ sets are compared on the organ
vocabulary the labels use.
Throughput: rules path, one process / one core, on reports ASSEMBLED from real caption
sentences (10-19 findings sentences + 2 impression sentences each; there is no
free-licence corpus of full CT reports).

    python benchmarks/bench_report.py [--labels FILE ...] [--reports 300] [--repeat 5] [--json out.json] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from keyslice.report import segment_report  # noqa: E402
from keyslice.report.evaluation import (  # noqa: E402
    assembled_reports,
    evaluate,
    evaluate_segmentation,
    load_labels,
    throughput,
)
from keyslice.report.rules import SEGMENTER_ID  # noqa: E402

DEFAULT_LABELS = [REPO / "tests/fixtures/report_labels.json", REPO / "tests/fixtures/report_labels_dev2.json"]


def _f(x: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, action="append", default=None,
                    help="a labels JSON file (repeatable); default: the fixtures of tests/fixtures")
    ap.add_argument("--reports", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--show-errors", action="store_true", help="print every disagreement with the labels")
    ap.add_argument("--no-throughput", action="store_true", help="accuracy only")
    args = ap.parse_args()
    try:  # one core, as the target is stated per core
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass

    paths = args.labels or [p for p in DEFAULT_LABELS if p.exists()]
    for p in paths:
        if not Path(p).is_file():
            print(f"labels file not found: {p}", file=sys.stderr)
            return 2
    items = load_labels(paths)
    acc = evaluate(items, segment_report)
    seg = evaluate_segmentation(items, segment_report)

    print(f"keyslice Step 1 report segmentation benchmark (segmenter {SEGMENTER_ID})")
    print(f"python {platform.python_version()}, {platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"\nAccuracy on hand-labelled real caption sentences ({', '.join(str(p) for p in paths)})")
    print(f"{'split':11} {'n':>4} {'organ set':>9} {'organ P':>7} {'organ R':>7} {'status (n)':>13} {'always-ab':>9} "
          f"{'cue status (n)':>15} {'always-ab':>9} {'recall N/U':>10} {'non-finding P/R (n)':>20} {'phase':>6}")
    for split, a in acc.items():
        if split == "disagreements":
            continue
        rec = "/".join("  - " if a["status_recall"][c] is None else f"{a['status_recall'][c]:.2f}"
                       for c in ("normal", "uncertain"))
        nf = f"{_f(a['non_finding_precision'], 5)}/{_f(a['non_finding_recall'], 5)} ({a['non_finding_gold']:3d})"
        print(f"{split:11} {a['sentences']:4d} {_f(a['organ_set_exact'], 9)} {_f(a['organ_precision'], 7)} "
              f"{_f(a['organ_recall'], 7)} {_f(a['status'])} ({a['status_sentences']:4d}) "
              f"{_f(a['status_majority_baseline'], 9)} {_f(a['status_cue'], 8)} ({a['cue_sentences']:4d}) "
              f"{_f(a['status_cue_baseline'], 9)} {rec:>10} {nf:>20} {_f(a['phase_hint'])}")
    for split, a in acc.items():
        if split != "disagreements":
            left = f"; {a['overlap_left_out']} sentences left out (also in a tuned split)" if a["overlap_left_out"] else ""
            print(f"gold status counts ({split}): {a['gold_status_counts']}{left}")
    if seg["captions"]:
        print(f"\nSentence segmentation on the {seg['captions']} whole dev/test captions: caption exact "
              f"{seg['caption_exact']:.3f}, boundary P {seg['boundary_precision']:.3f} R {seg['boundary_recall']:.3f}")
    tp = None
    if not args.no_throughput:
        tp = throughput(assembled_reports(args.reports), segment_report, repeat=args.repeat)
        print(f"\nThroughput on {tp['reports']} ASSEMBLED reports (real caption sentences, ~{tp['mean_chars']} chars, "
              f"{tp['units_per_report']} units each), one core, {tp['passes']} passes:")
        print(f"  rules path: {tp['reports_per_s_cpu_median']} reports/s CPU time (median), "
              f"{tp['reports_per_s_cpu_best']} (best pass); wall {tp['reports_per_s_wall_median']} (median)")
        print(f"  calibration: spacy.blank('en') tokenizer alone, same reports, same passes: "
              f"{tp['blank_tokenizer_reports_per_s_cpu_best']} reports/s CPU (best pass)")
    if args.show_errors:
        print("\nDisagreements:")
        for d in acc["disagreements"]:
            print(json.dumps(d, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps({"labels": [str(p) for p in paths],
                                         "accuracy": {k: v for k, v in acc.items() if k != "disagreements"},
                                         "segmentation": seg, "throughput": tp}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
