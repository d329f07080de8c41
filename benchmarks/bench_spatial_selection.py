"""Key slices of the bundled sample corpus with and without spatial normalisation (the evidence for the selector's
default, ``SelectorConfig.spatial`` / build setting ``spatial_normalise``).

For each sample study whose series has organ masks (``abdomen_siemens_j2k``: the 20-slice contrast-enhanced Siemens
series with its TotalSegmentator mask), the report is segmented as the build does, and every finding with an organ
is given a key slice by :func:`keyslice.selector.select_key_slices` twice (spatial off / on), WITHOUT restricting
to the organ's z-range, so that the organ's z-range in the masks can judge the choice (a proxy: the key slice of a
finding about an organ should at least show the organ). Printed and written: per model, top-1 agreement between
off and on, and the share of top-1 slices inside the finding organ's z-range, off vs on.

Models: the tiny random-init checkpoint (a control: any difference is preprocessing noise) and any model folders
given with ``--model`` (e.g. fine-tuned selectors of the leave-one-CT-out run). BiomedCLIP's weights are not on
this machine, so the shipped default model could not be measured.

    python benchmarks/bench_spatial_selection.py [--model NAME=PATH ...] [--out benchmarks/results/spatial_selection.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(models: dict[str, str]) -> list[dict]:
    import numpy as np

    from keyslice.report import segment_report
    from keyslice.sample import materialize_samples
    from keyslice.selector import Query, SelectorConfig, find_masks, load_model, load_volume, select_key_slices
    from keyslice.selector.spatial import SpatialConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in materialize_samples(Path(tmp)):
            masks = find_masks(folder)
            if masks is None:
                continue
            files = sorted(p for p in (folder / "dicom").rglob("*") if p.is_file())
            volume = load_volume(files, decode="eager")
            findings = [f for f in segment_report((folder / "report.txt").read_text()) if f.ts_labels]
            queries = [Query(f"f{i}", f.text, list(f.organs), list(f.ts_labels)) for i, f in enumerate(findings)]
            for tag, spec in models.items():
                enc = load_model(spec, device="cpu")
                picks = {}
                for on in (False, True):
                    cfg = SelectorConfig(restrict_to_organ=False, spatial=SpatialConfig(enabled=on))
                    picks[on] = select_key_slices(volume, queries, enc, cfg)
                for q, off, on in zip(queries, picks[False], picks[True]):
                    present = np.asarray(masks.presence(q.ts_labels, volume), dtype=bool)
                    k = np.nonzero(present)[0]
                    inside = np.zeros_like(present)
                    if len(k):
                        inside[k[0]:k[-1] + 1] = True
                    rows.append({"study": folder.name, "model": tag, "finding": q.text[:70], "organ": q.organs[0],
                                 "organ_on_ct": bool(len(k)), "top1_off": off.top1_index, "top1_on": on.top1_index,
                                 "in_range_off": bool(inside[off.top1_index]), "in_range_on": bool(inside[on.top1_index])})
    return rows


def render(rows: list[dict]) -> str:
    lines = ["# Sample-corpus key slices, spatial normalisation off vs on", "",
             "Unrestricted selection (no organ z-range restriction); 'in range' = the top-1 slice lies in the finding "
             "organ's z-range in the study's TotalSegmentator mask (findings whose organ is on the CT).", "",
             "| model | findings (organ on CT) | same top-1 | in range, off | in range, on |", "|---|---|---|---|---|"]
    for tag in dict.fromkeys(r["model"] for r in rows):
        rr = [r for r in rows if r["model"] == tag]
        on_ct = [r for r in rr if r["organ_on_ct"]]
        same = sum(r["top1_off"] == r["top1_on"] for r in rr)
        lines.append(f"| {tag} | {len(rr)} ({len(on_ct)}) | {same}/{len(rr)} | "
                     f"{sum(r['in_range_off'] for r in on_ct)}/{len(on_ct)} | {sum(r['in_range_on'] for r in on_ct)}/{len(on_ct)} |")
    lines += ["", "| model | study | finding | organ | top-1 off | top-1 on | in range off / on |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['study']} | {r['finding']} | {r['organ']} | {r['top1_off']} | {r['top1_on']} | "
                     f"{'–' if not r['organ_on_ct'] else ('yes' if r['in_range_off'] else 'no')} / "
                     f"{'–' if not r['organ_on_ct'] else ('yes' if r['in_range_on'] else 'no')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH of a model folder (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "spatial_selection.md")
    args = ap.parse_args()
    from keyslice.selector import save_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
        models = {"tiny (random init)": str(Path(tmp) / "tiny"), **dict(m.split("=", 1) for m in args.model)}
        text = render(run(models))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
