"""PHI recall of keyslice's de-identification, and how much real report text it changes.

Recall: on ``tests/fixtures/phi_cases.json`` (SYNTHETIC PHI inserted into REAL ROCO CT caption sentences),
span by span: a span counts as caught only if every one of its characters is masked. Printed per type and
overall, for the held-out ``test`` split, the ``dev`` split and both.

False positives: every sentence of the 354 real ROCO CT captions, unmodified; a sentence counts as changed
when the detector masks anything in it. Changed sentences are listed (``--show``) so they can be read: a
real date in a caption is PHI-like and counts as changed too.

    python benchmarks/bench_phi.py [--show] [--misses]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keyslice.deid import merge_spans, scan_text  # noqa: E402

CASES = ROOT / "tests" / "fixtures" / "phi_cases.json"


def caught(text: str, start: int, end: int, masked: list[tuple[int, int, str]]) -> bool:
    """Whether the span [start, end) lies wholly inside masked spans (adjacent masks may cover it together)."""
    covered = [False] * (end - start)
    for s, e, _ in masked:
        for i in range(max(s, start), min(e, end)):
            covered[i - start] = True
    return all(covered) or all(covered[i] or text[start + i].isspace() for i in range(end - start))


def recall(cases: list[dict]) -> tuple[dict[str, dict[str, list[int]]], list[tuple[str, str, str, str]]]:
    """{split: {type: [caught, total]}} and the misses (split, type, value, masked text)."""
    from keyslice.deid import replace_spans

    table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    misses = []
    for case in cases:
        hits = scan_text(case["text"])
        masked = merge_spans(hits)
        for span in case["spans"]:
            ok = caught(case["text"], span["start"], span["end"], masked)
            for split in (case["split"], "all"):
                table[split][span["type"]][0] += ok
                table[split][span["type"]][1] += 1
            if not ok:
                misses.append((case["split"], span["type"], span["value"], replace_spans(case["text"], hits)))
    return table, misses


def false_positives(data_dir: Path) -> tuple[int, list[tuple[str, str]]]:
    from keyslice.deid import replace_spans
    from keyslice.sample import _SENTENCE_SPLIT

    captions = json.loads((data_dir / "roco_ct_captions" / "captions.json").read_text())
    sentences = [s for c in captions for s in _SENTENCE_SPLIT.split(c["caption"].strip()) if s.strip()]
    changed = []
    for s in sentences:
        hits = scan_text(s)
        if hits:
            changed.append((s, replace_spans(s, hits)))
    return len(sentences), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="list the real caption sentences that change")
    parser.add_argument("--misses", action="store_true", help="list the PHI spans that were not fully masked")
    args = parser.parse_args()
    from keyslice.sample import data_dir

    fixture = json.loads(CASES.read_text())
    scan_text("warm up the vocabularies")
    t0 = time.perf_counter()
    table, misses = recall(fixture["cases"])
    t_recall = time.perf_counter() - t0
    types = fixture["types"]
    print(f"PHI recall (span fully masked) on {len(fixture['cases'])} SYNTHETIC-PHI cases in real caption sentences")
    print(f"{'type':<10}" + "".join(f"{split:>18}" for split in ("test (held out)", "dev", "all")))
    for kind in [*types, "overall"]:
        cells = []
        for split in ("test", "dev", "all"):
            rows = table[split]
            got, total = ((sum(v[0] for v in rows.values()), sum(v[1] for v in rows.values())) if kind == "overall"
                          else rows[kind])
            cells.append(f"{got:>4}/{total:<4} {got / total if total else float('nan'):.3f}")
        print(f"{kind:<10}" + "".join(f"{c:>18}" for c in cells))
    n_sentences, changed = false_positives(data_dir())
    print(f"\nreal ROCO CT caption sentences changed: {len(changed)} of {n_sentences} "
          f"({len(changed) / n_sentences:.2%})")
    chars = sum(len(c["text"]) for c in fixture["cases"])
    print(f"speed: {chars / t_recall / 1000:.0f} k characters/s of CPU time "
          f"(~{chars / t_recall / 1800:.0f} reports of 1,800 characters per second)")
    if args.show:
        print("\nchanged caption sentences (original => de-identified):")
        for s, masked in changed:
            print(f"  - {s}\n    => {masked}")
    if args.misses:
        print("\nmissed spans (split, type, value):")
        for split, kind, value, masked in misses:
            print(f"  - [{split}] {kind}: {value!r}\n    => {masked}")


if __name__ == "__main__":
    main()
