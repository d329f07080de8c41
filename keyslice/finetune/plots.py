"""Figures of an evaluation run (Matplotlib Agg, PNG): per-organ F1/accuracy bars per CT and prompt
style, and similarity-vs-z curves with each organ's z-range shaded, one line per model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from keyslice.finetune.config import FinetuneConfig


def plot_all(organ_rows: list[dict], score_rows: list[dict], folder: Path, tags: list[str], cfg: FinetuneConfig,
             max_curves: int = 8) -> list[Path]:
    """Per-organ F1/accuracy bars (one figure per CT and style) and similarity curves (score vs z per
    organ, the organ's z-range shaded, one line per model). Matplotlib Agg, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    how = cfg.eval.threshold_on
    written = []
    sources = list(dict.fromkeys(r["source"] for r in organ_rows))
    for src in sources:
        for style in cfg.eval.styles:
            rows = [r for r in organ_rows if r["source"] == src and r["style"] == style and r["threshold_on"] == how]
            organs = list(dict.fromkeys(r["organ"] for r in rows))
            if not organs:
                continue
            fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(organs) + 2), 6), sharex=True)
            width = 0.8 / len(tags)
            x = np.arange(len(organs))
            for ax, metric in zip(axes, ("f1", "accuracy")):
                for i, tag in enumerate(tags):
                    vals = []
                    for o in organs:
                        r = next((r for r in rows if r["organ"] == o and r["model"] == tag), None)
                        v = r[metric] if r else math.nan
                        vals.append(math.nan if v is None else v)
                    vals = np.array(vals, dtype=float)
                    xs = x + (i - (len(tags) - 1) / 2) * width
                    ax.bar(xs, np.nan_to_num(vals), width, label=tag, color=f"C{i}")
                    undefined = np.isnan(vals)      # e.g. F1 of an organ absent from the CT: a hatched "n/a" frame
                    ax.bar(xs[undefined], np.ones(undefined.sum()), width, fill=False, hatch="//", lw=0.5,
                           edgecolor=f"C{i}")
                ax.set_ylabel(metric)
                ax.set_ylim(0, 1)
            axes[0].legend(loc="upper right", fontsize=8)
            axes[0].set_title(f"{src}: per-organ {style} prompts (threshold on {how}; hatched = undefined)")
            axes[1].set_xticks(x)
            axes[1].set_xticklabels(organs, rotation=60, ha="right", fontsize=8)
            fig.tight_layout()
            path = folder / f"organ_bars_{src}_{style}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
        # curves of the organs with slices inside and outside the range on this CT (the informative ones)
        both = {r["organ"] for r in organ_rows if r["source"] == src and r["both_classes"]}
        organs = [o for o in dict.fromkeys(r["organ"] for r in score_rows if r["source"] == src) if o in both]
        organs = organs[:max_curves]
        if not organs:
            continue
        ncol = 4
        nrow = math.ceil(len(organs) / ncol)
        src_rows = [r for r in score_rows if r["source"] == src]
        for style in cfg.eval.styles:
            fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
            for ax, organ in zip(axes.ravel(), organs):
                rows = [r for r in src_rows if r["organ"] == organ and r["style"] == style]
                if not rows:
                    continue
                ref = [r for r in rows if r["model"] == tags[0]]
                z = np.array([r["z_mm"] for r in ref])
                inside = np.array([r["inside"] for r in ref])
                if inside.any():
                    ax.axvspan(z[inside].min(), z[inside].max(), color="0.9")
                for tag in tags:
                    rr = [r for r in rows if r["model"] == tag]
                    s = np.array([r["score"] for r in rr])
                    ax.plot([r["z_mm"] for r in rr], (s - s.mean()) / (s.std() + 1e-9), label=tag, lw=1,
                            color=f"C{tags.index(tag)}")
                ax.set_title(organ, fontsize=8)
                ax.tick_params(labelsize=6)
            for ax in axes.ravel()[len(organs):]:
                ax.axis("off")
            axes.ravel()[0].legend(fontsize=6)
            fig.suptitle(f"{src}: z-scored similarity vs z (mm), {style} prompts; grey = organ z-range", fontsize=9)
            fig.tight_layout()
            path = folder / f"similarity_{src}_{style}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written
