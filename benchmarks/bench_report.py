"""Benchmark of Step 1 (report segmentation): per-field accuracy and throughput.

Accuracy: against tests/fixtures/report_labels.json (225 real ROCO caption sentences,
hand-labelled; split "dev" was used while writing the rules, "test" was held out;
"test_unseen" = test items from captions 200+, which were never read before the
lexicon was written; "dev+test" = the systematic sample; "cues" = 48 held-out sentences
of other captions that hold a negation / normality / hedging word, labelled before the
rules were run on them). Status is scored on items with a gold status; "baseline" is the
status accuracy of always answering "abnormal", "recall N/U" the recall of normal and
uncertain.
Throughput: rules path, one process / one core, on reports ASSEMBLED from real caption
sentences (10-19 findings sentences + 2 impression sentences each; there is no
free-licence corpus of full CT reports).

    python benchmarks/bench_report.py [--reports 300] [--repeat 5] [--json out.json] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keyslice.report import segment_report  # noqa: E402
from keyslice.report.evaluation import (  # noqa: E402
    SPLITS,
    assembled_reports,
    evaluate,
    evaluate_segmentation,
    load_fixture,
    throughput,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--show-errors", action="store_true", help="print every disagreement with the labels")
    args = ap.parse_args()
    try:  # one core, as the target is stated per core
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass

    items = load_fixture()
    acc = evaluate(items, segment_report)
    seg = evaluate_segmentation(items, segment_report)
    tp = throughput(assembled_reports(args.reports), segment_report, repeat=args.repeat)

    print("keyslice Step 1 report segmentation benchmark (segmenter rules-v1)")
    print(f"python {platform.python_version()}, {platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    print("\nAccuracy on hand-labelled real caption sentences (tests/fixtures/report_labels.json)")
    print(f"{'split':11} {'n':>4} {'organ set':>10} {'organ P':>8} {'organ R':>8} {'status (n)':>14} "
          f"{'baseline':>9} {'recall N/U':>11} {'phase':>7}")
    for split in SPLITS:
        a = acc[split]
        rec = "/".join("  - " if a["status_recall"][c] is None else f"{a['status_recall'][c]:.2f}"
                       for c in ("normal", "uncertain"))
        print(f"{split:11} {a['sentences']:4d} {a['organ_set_exact']:10.3f} {a['organ_precision']:8.3f} "
              f"{a['organ_recall']:8.3f} {a['status']:8.3f} ({a['status_sentences']:3d}) "
              f"{a['status_majority_baseline']:9.3f} {rec:>11} {a['phase_hint']:7.3f}")
    for split in ("dev+test", "cues"):
        print(f"gold status counts ({split}): {acc[split]['gold_status_counts']}")
    print(f"\nSentence segmentation on the {seg['captions']} whole captions: caption exact {seg['caption_exact']:.3f}, "
          f"boundary P {seg['boundary_precision']:.3f} R {seg['boundary_recall']:.3f}")
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
        args.json.write_text(json.dumps({"accuracy": {k: v for k, v in acc.items() if k != "disagreements"},
                                         "segmentation": seg, "throughput": tp}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
