"""Key-slice PNGs and similarity-curve plots, as bytes.

PNGs carry no text chunks (no tEXt/iTXt/zTXt, no time or physical-size chunk): nothing
about the patient, the file or the software leaks into the corpus images.
"""

from __future__ import annotations

import io

import numpy as np

from keyslice.selector.preprocess import to_uint8
from keyslice.selector.windows import get_window


def render_png(volume, index: int, window: str) -> bytes:
    """Slice ``index`` of the position-sorted volume, windowed to 8-bit grayscale, as PNG bytes."""
    if not 0 <= index < volume.n_slices:
        raise IndexError(f"slice {index} out of range 0..{volume.n_slices - 1}")
    return hu_png(volume.slab(index, index + 1)[0], window)


def hu_png(hu: np.ndarray, window: str) -> bytes:
    """A 2-D HU image windowed to 8-bit grayscale, as PNG bytes (the one renderer of every exported slice)."""
    from PIL import Image

    img = Image.fromarray(to_uint8(hu, get_window(window)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)  # no pnginfo, no dpi: only IHDR/IDAT/IEND
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A 2-D boolean mask as an 8-bit PNG, 255 inside (the one renderer of every exported mask)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def plot_similarity_curve(choice, volume=None, *, title: str | None = None) -> bytes:
    """PNG of a finding's similarity curve along z (matplotlib, Agg), with top-k marks and the
    organ z-range shaded when the search was restricted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    scores = np.asarray(choice.curve, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("the SliceChoice carries no curve (select_key_slices keeps it by default)")
    x = np.asarray(volume.z_mm) if volume is not None else np.arange(len(scores), dtype=float)
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, scores, color="tab:blue", lw=1.2, label="similarity")
    if choice.z_range_mm is not None and volume is not None:
        ax.axvspan(choice.z_range_mm[0], choice.z_range_mm[1], color="tab:green", alpha=0.15,
                   label=f"{choice.restricted_to} range")
    ks = list(choice.topk_indices)
    ax.scatter([x[k] for k in ks], [scores[k] for k in ks], color="tab:orange", zorder=3, s=18, label="top-k")
    ax.scatter([x[choice.top1_index]], [scores[choice.top1_index]], color="tab:red", zorder=4, s=30, label="top-1")
    ax.set_xlabel("z along slice normal (mm)" if volume is not None else "slice index")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title or f"{choice.finding_id} ({choice.window} window)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
