"""Scoring of :mod:`keyslice.deid` on labelled PHI spans and on real report sentences.

Used by ``benchmarks/bench_phi.py`` (the recorded numbers) and ``tests/test_deid.py`` (their floors), so both
count the same way: a PHI span is caught only if every character of it is masked (a name whose first
token alone is masked is a miss), and a real sentence counts as changed when anything in it is masked.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from keyslice.deid import merge_spans, replace_spans, scan_text


@dataclass
class RecallTable:
    """``cells[split][type] = [caught, total]``; ``misses``: (split, type, value, de-identified text)."""

    cells: dict[str, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    misses: list[tuple[str, str, str, str]] = field(default_factory=list)

    def recall(self, split: str, kind: str | None = None) -> tuple[int, int]:
        """(caught, total) of one type, or of all types with ``kind=None``."""
        rows = self.cells[split]
        if kind is not None:
            return tuple(rows[kind])  # type: ignore[return-value]
        return sum(v[0] for v in rows.values()), sum(v[1] for v in rows.values())


def fully_masked(text: str, start: int, end: int, masked: Iterable[tuple[int, int, str]]) -> bool:
    """Whether every non-space character of ``text[start:end]`` lies inside a masked span."""
    covered = [text[i].isspace() for i in range(start, end)]
    for s, e, _ in masked:
        for i in range(max(s, start), min(e, end)):
            covered[i - start] = True
    return all(covered)


def load_cases(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def score_cases(cases: Iterable[dict]) -> RecallTable:
    """Span-level recall of each case's labelled spans, per split (and ``all``) and type."""
    table = RecallTable()
    for case in cases:
        hits = scan_text(case["text"])
        masked = merge_spans(hits)
        for span in case["spans"]:
            ok = fully_masked(case["text"], span["start"], span["end"], masked)
            for split in (case["split"], "all"):
                table.cells[split][span["type"]][0] += ok
                table.cells[split][span["type"]][1] += 1
            if not ok:
                table.misses.append((case["split"], span["type"], span["value"], replace_spans(case["text"], hits)))
    return table


def caption_sentences(data_dir: Path) -> list[str]:
    """Every sentence of the real ROCO CT captions, split as the sample reports split them."""
    from keyslice.sample import _SENTENCE_SPLIT

    captions = json.loads((Path(data_dir) / "roco_ct_captions" / "captions.json").read_text())
    return [s for c in captions for s in _SENTENCE_SPLIT.split(c["caption"].strip()) if s.strip()]


def changed_sentences(sentences: Iterable[str]) -> list[tuple[str, str, list[str]]]:
    """(sentence, de-identified sentence, rules that fired) for every sentence the detector changes."""
    out = []
    for s in sentences:
        hits = scan_text(s)
        if hits:
            out.append((s, replace_spans(s, hits), sorted({h.rule for h in hits})))
    return out
