"""Dataset statistics a reader can see: counts per organ, abnormality, phase, question type and answer,
the key slice's position along the body, and the selection's confidence.

One computation (:func:`export_stats`, over exactly the rows an export would hold) serves both the
dataset card, which embeds the plots as PNGs in the dataset repository (``stats/*.png``), and
``keyslice stats --out CORPUS``, which prints the same tables and draws the same plots locally.
Every label in a plot is a value of an exported column that the privacy gate checked (vocabulary
organs, abnormality keys, phases, question types, yes/no), and the PNGs go through the gate's PNG
check like the key slices; plots are drawn without metadata so an unchanged dataset gives
byte-identical files (nothing to upload).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from keyslice.publish.dataset_builder import ExportPlan
from keyslice.publish.privacy import clean_png

#: folder of the plots inside the dataset repository (and the default of ``keyslice stats``)
STATS_DIR = "stats"
#: bins of the two histograms
POSITION_BINS = 10
MARGIN_BINS = 20


@dataclass
class ExportStats:
    organs: Counter = field(default_factory=Counter)            # findings per organ
    abnormalities: Counter = field(default_factory=Counter)     # findings per abnormality type ('none' = no type)
    phases: Counter = field(default_factory=Counter)            # key slices per contrast phase
    questions: Counter = field(default_factory=Counter)         # (question_type, answer class) -> pairs
    positions: list[float] = field(default_factory=list)        # key slice index / (n_slices - 1), 0 = lowest z
    margins: list[float] = field(default_factory=list)          # selector margins (known ones)
    uncertain: int = 0
    unknown_margin: int = 0


def answer_class(answer_type: str, answer: str) -> str:
    """``yes``/``no`` for closed questions, else the answer type (the balance a reader checks first)."""
    if answer_type == "closed":
        word = str(answer).strip().casefold()
        return word if word in ("yes", "no") else "closed: other"
    return answer_type


def export_stats(plan: ExportPlan) -> ExportStats:
    """The statistics of the rows an export holds (after exclusions, confidence filter, de-duplication)."""
    out = ExportStats()
    for row in plan.rows["findings"]:
        f = row.fields
        out.organs[f["organ"] or "unknown"] += 1
        for kind in f.get("abnormalities") or ["none"]:
            out.abnormalities[kind] += 1
    for row in plan.rows["selections"]:
        f = row.fields
        out.phases[f["phase"] or "unknown"] += 1
        if f["n_slices"] and f["n_slices"] > 1:
            out.positions.append(f["top1_index"] / (f["n_slices"] - 1))
        if f["margin"] is None:
            out.unknown_margin += 1
        else:
            out.margins.append(float(f["margin"]))
        out.uncertain += bool(f["uncertain"])
    for row in plan.rows["vqa"]:
        f = row.fields
        out.questions[(f["question_type"], answer_class(f["answer_type"], f["answer"]))] += 1
    return out


def stats_tables(stats: ExportStats) -> dict[str, tuple[list[str], list[tuple]]]:
    """Title -> (header, rows), for the card and the terminal."""
    def ranked(counter: Counter) -> list[tuple]:
        return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))

    q_types = sorted({q for q, _ in stats.questions})
    classes = sorted({a for _, a in stats.questions})
    return {
        "findings per organ": (["organ", "findings"], ranked(stats.organs)),
        "findings per abnormality type": (["abnormality", "findings"], ranked(stats.abnormalities)),
        "key slices per phase": (["phase", "key slices"], ranked(stats.phases)),
        "VQA pairs per question type and answer": (
            ["question_type", *classes], [(q, *(stats.questions.get((q, a), 0) for a in classes)) for q in q_types]),
        "key-slice position along the series (0 = lowest z, 1 = highest)": (
            ["position", "key slices"], _histogram(stats.positions, POSITION_BINS, 0.0, 1.0)),
        "selector margin": (["margin", "key slices"],
                            _histogram(stats.margins, MARGIN_BINS, 0.0, max(stats.margins, default=0.0) or 1.0)
                            + [("unknown", stats.unknown_margin), ("flagged uncertain", stats.uncertain)]),
    }


def _histogram(values: list[float], bins: int, low: float, high: float) -> list[tuple[str, int]]:
    import numpy as np

    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(low, high))
    return [(f"{edges[i]:.3g}-{edges[i + 1]:.3g}", int(n)) for i, n in enumerate(counts)]


#: plot file -> (title, what it shows); the card embeds them in this order
PLOTS = {
    "organs.png": "findings per organ",
    "abnormalities.png": "findings per abnormality type",
    "phases.png": "key slices per phase",
    "questions.png": "VQA pairs per question type and answer",
    "positions.png": "key-slice position along the series (0 = lowest z, 1 = highest)",
    "margins.png": "selector margin",
}


def draw_stats(stats: ExportStats, folder: Path) -> list[Path]:
    """Draw the plots as PNGs into ``folder`` (matplotlib's Agg backend, no metadata); returns the files."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = folder / name
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
        path.write_bytes(clean_png(buf.getvalue())[0])  # only IHDR/PLTE/IDAT/IEND, as the gate wants
        written.append(path)

    def bars(counter: Counter, name: str, xlabel: str) -> None:
        items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:30]
        fig, ax = plt.subplots(figsize=(7, max(2.0, 0.3 * len(items) + 1)))
        ax.barh([str(k) for k, _ in items][::-1], [v for _, v in items][::-1], color="#4c72b0")
        ax.set_xlabel(xlabel)
        ax.set_title(PLOTS[name])
        save(fig, name)

    bars(stats.organs, "organs.png", "findings")
    bars(stats.abnormalities, "abnormalities.png", "findings")
    bars(stats.phases, "phases.png", "key slices")

    q_types = sorted({q for q, _ in stats.questions})
    classes = sorted({a for _, a in stats.questions})
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.4 * len(q_types) + 1)))
    left = np.zeros(len(q_types))
    for a in classes:
        values = np.array([stats.questions.get((q, a), 0) for q in q_types], dtype=float)
        ax.barh(q_types, values, left=left, label=a)
        left += values
    if classes:
        ax.legend(fontsize="small")
    ax.set_xlabel("VQA pairs")
    ax.set_title(PLOTS["questions.png"])
    save(fig, "questions.png")

    for name, values, bins, high, xlabel in (
            ("positions.png", stats.positions, POSITION_BINS, 1.0, "relative position of the key slice"),
            ("margins.png", stats.margins, MARGIN_BINS, max(stats.margins, default=0.0) or 1.0, "margin")):
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(values, bins=bins, range=(0.0, high), color="#55a868")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("key slices")
        ax.set_title(PLOTS[name])
        save(fig, name)
    return written


def corpus_stats(corpus_dir: Path, *, min_confidence: float | None = None) -> ExportStats:
    """The statistics of what ``keyslice publish`` would export from ``corpus_dir`` now (read under the
    corpus lock, like a publish; no pseudonymisation key needed, nothing is written to the corpus)."""
    from keyslice.corpus.lock import CorpusLockedError, corpus_lock
    from keyslice.publish.dataset_builder import PublishError, plan_export, read_corpus

    if not (Path(corpus_dir) / "stages").is_dir():
        raise PublishError(f"{corpus_dir} is not a keyslice corpus (no stages/ folder); build one with "
                           f"`keyslice build`")
    try:
        with corpus_lock(Path(corpus_dir)):
            snap = read_corpus(Path(corpus_dir))
    except CorpusLockedError as exc:
        raise PublishError(f"{exc}; statistics read a consistent corpus, so they wait for builds to finish") from exc
    if not snap.complete:
        raise PublishError(f"{corpus_dir} has no study with all stages done; run `keyslice build` first")
    return export_stats(plan_export(snap, min_confidence=min_confidence))
