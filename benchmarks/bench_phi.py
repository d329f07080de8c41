"""PHI recall of keyslice's de-identification, and how much real report text it changes.

Recall: on ``tests/fixtures/phi_cases.json`` (SYNTHETIC PHI inserted into REAL ROCO CT caption sentences),
span by span: a span counts as caught only if every one of its characters is masked. Printed per type and
overall, for the ``test`` split, the ``dev`` split and both; then for the blind set
(``tests/fixtures/phi_cases_blind.json``: other values and sentences, written after the rules were fixed on
the first set, measured once).

False positives: every sentence of the 354 real ROCO CT captions, unmodified; a sentence counts as changed
when the detector masks anything in it. ``--show`` lists them so they can be read (a real date in a caption
is PHI-like: it counts as changed too).

    python benchmarks/bench_phi.py [--show] [--misses]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keyslice.deid import scan_text  # noqa: E402
from keyslice.deid_eval import caption_sentences, changed_sentences, load_cases, score_cases  # noqa: E402

CASES = ROOT / "tests" / "fixtures" / "phi_cases.json"
BLIND = ROOT / "tests" / "fixtures" / "phi_cases_blind.json"
SPLITS = (("test", "test"), ("dev", "dev"), ("test+dev", "all"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="list the real caption sentences that change")
    parser.add_argument("--misses", action="store_true", help="list the PHI spans that were not fully masked")
    args = parser.parse_args()
    from keyslice.sample import data_dir

    fixture = load_cases(CASES)
    blind = load_cases(BLIND)
    scan_text("warm up the vocabularies")
    t0 = time.process_time()
    table = score_cases(fixture["cases"])
    cpu = time.process_time() - t0
    blind_table = score_cases(blind["cases"])
    table.misses += blind_table.misses
    print(f"PHI recall (span fully masked) on {len(fixture['cases'])} cases: SYNTHETIC PHI in real caption sentences")
    print(f"{'type':<10}" + "".join(f"{label:>18}" for label, _ in SPLITS) + f"{'blind':>18}")
    for kind in [*fixture["types"], None]:
        cells = []
        for tab, split in [*((table, split) for _, split in SPLITS), (blind_table, "all")]:
            got, total = tab.recall(split, kind)
            cells.append(f"{got:>4}/{total:<4} {got / total if total else float('nan'):.3f}")
        print(f"{kind or 'overall':<10}" + "".join(f"{c:>18}" for c in cells))
    sentences = caption_sentences(data_dir())
    changed = changed_sentences(sentences)
    print(f"\nreal ROCO CT caption sentences changed: {len(changed)} of {len(sentences)} "
          f"({len(changed) / len(sentences):.2%}); rules: "
          + ", ".join(sorted({r for _, _, rules in changed for r in rules})))
    chars = sum(len(c["text"]) for c in fixture["cases"])
    print(f"speed: {chars / cpu / 1000:.0f} k characters per CPU second "
          f"(~{chars / cpu / 1800:.0f} reports of 1,800 characters)")
    if args.show:
        print("\nchanged caption sentences (original => de-identified):")
        for s, masked, _ in changed:
            print(f"  - {s}\n    => {masked}")
    if args.misses:
        print("\nmissed spans (split, type, value => de-identified text):")
        for split, kind, value, masked in table.misses:
            print(f"  - [{split}] {kind}: {value!r}\n    => {masked}")


if __name__ == "__main__":
    main()
