"""Accuracy of a segmenter against hand-labelled sentences, and its throughput.

Used by ``benchmarks/bench_report.py`` (prints the numbers) and by
``tests/test_report_accuracy.py`` (asserts floors). The labels are JSON files shaped like
``tests/fixtures/report_labels.json`` (``{"guidelines": ..., "items": [...]}``; each item:
roco_id, caption_index, split, sentence, organs, status, phase_hint); the caller passes
their paths, as this package does not ship them.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from keyslice.vocab import ORGAN_TS_LABELS

from .model import Finding, ReportConfig


def captions_path() -> Path:
    """The real ROCO captions (``keyslice.sample.data_dir``: ``$KEYSLICE_DATA_DIR`` or ``../shared/data``)."""
    from keyslice.sample import data_dir

    return data_dir() / "roco_ct_captions" / "captions.json"


#: most assertive first: a sentence split in units takes the most assertive unit's status
_STATUS_RANK = {"abnormal": 3, "uncertain": 2, "normal": 1, "non_finding": 0}

#: the negation / hedge words of the labelling guidelines ("selection" of split "cues"): a
#: sentence holding one is a "cue" sentence, whose status is the hard part
CUE_REGEX = re.compile(
    r"\b(?:no|not|without|normal|unremarkable|negative|absence|absent|possible|possibly|suspected|suspicious|"
    r"suspicion|likely|probable|probably|may|might|cannot|could|consistent with|suggest\w*|unclear|differential|"
    r"versus|vs)\b", re.IGNORECASE)

#: derived splits: "dev+test" (the first systematic sample), "test_unseen" (test items of
#: captions 200+, never read before the first lexicon was written)
DERIVED_SPLITS = {"dev+test": lambda it: it["split"] in ("dev", "test"),
                  "test_unseen": lambda it: it["split"] == "test" and it.get("caption_index", 0) >= 200}

Segmenter = Callable[[str, ReportConfig | None], list[Finding]]


def load_labels(paths: Sequence[Path | str]) -> list[dict]:
    """The labelled items of one or more label files, in order (each file: ``{"items": [...]}``)."""
    items: list[dict] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        items += data["items"] if isinstance(data, dict) else data
    return items


def is_cue(sentence: str) -> bool:
    """The sentence holds a negation / hedge word of the labelling guidelines."""
    return CUE_REGEX.search(sentence) is not None


def merge_units(findings: list[Finding]) -> dict:
    """One prediction per labelled sentence: organs united (first mention order), the most
    assertive status (abnormal > uncertain > normal > non_finding), the first phase hint."""
    organs: list[str] = []
    for f in findings:
        organs += [o for o in f.organs if o not in organs]
    status = max((f.status for f in findings), key=_STATUS_RANK.__getitem__, default=None)
    phase = next((f.phase_hint for f in findings if f.phase_hint), None)
    return {"organs": organs, "status": status, "phase_hint": phase, "units": len(findings)}


def _gold_status(it: dict) -> str:
    return "non_finding" if it["status"] is None else it["status"]


def split_names(items: list[dict]) -> list[str]:
    """The splits of the items in first-seen order, then the derived splits that apply."""
    names = list(dict.fromkeys(it["split"] for it in items))
    return names + [d for d, rule in DERIVED_SPLITS.items() if any(rule(it) for it in items)
                    and sum(rule(it) for it in items) < len(items)]


#: splits the rules were tuned on: a sentence of one of them is left out of every other split
TUNED_SPLITS = ("dev", "dev2")


def _key(it: dict) -> tuple[str, str]:
    return it["roco_id"], re.sub(r"\s+", " ", it["sentence"]).strip().rstrip(";").strip()


def evaluate(items: list[dict], segment: Segmenter, config: ReportConfig | None = None,
             tuned_splits: Sequence[str] = TUNED_SPLITS) -> dict:
    """Per-split accuracy (:func:`split_names`) plus the list of disagreements.

    A held-out split never counts a sentence that is also an item of a split in
    ``tuned_splits`` (split "cues" shares 25 sentences with "dev2"): ``overlap_left_out``
    says how many were left out.

    Organ set: exact match of the predicted organs, restricted to the organ vocabulary
    the labels use (``keyslice.vocab.ORGAN_TS_LABELS``), with the gold set. Status: on
    items whose gold status is not null, overall and on the cue sentences
    (:data:`CUE_REGEX`), each with the accuracy of always answering "abnormal"
    (``*_baseline``), since most real sentences are abnormal. Non-findings: a gold status
    of null is a non-finding; precision and recall of the predicted ``non_finding``.
    """
    rows = []
    for it in items:
        try:
            pred = merge_units(segment(it["sentence"], config))
            pred["organs"] = [o for o in pred["organs"] if o in ORGAN_TS_LABELS]
            err = None
        except Exception as exc:  # a crash counts as wrong on every field
            pred, err = {"organs": None, "status": None, "phase_hint": None, "units": 0}, repr(exc)
        rows.append((it, pred, err))
    out: dict = {}
    tuned = {_key(it) for it in items if it["split"] in tuned_splits}
    for split in split_names(items):
        rule = DERIVED_SPLITS.get(split, lambda it, s=split: it["split"] == s)
        sel = [r for r in rows if rule(r[0])]
        left_out = 0
        if split not in tuned_splits:
            kept = [r for r in sel if r[0]["split"] in tuned_splits or _key(r[0]) not in tuned]
            left_out, sel = len(sel) - len(kept), kept
        with_status = [r for r in sel if r[0]["status"] is not None]
        cue = [r for r in with_status if is_cue(r[0]["sentence"])]
        tp = fp = fn = 0
        for it, pred, _ in sel:
            gold, got = set(it["organs"]), set(pred["organs"] or [])
            tp += len(gold & got)
            fp += len(got - gold)
            fn += len(gold - got)
        nf_gold = sum(it["status"] is None for it, _, _ in sel)
        nf_pred = sum(p["status"] == "non_finding" for _, p, _ in sel)
        nf_both = sum(it["status"] is None and p["status"] == "non_finding" for it, p, _ in sel)
        out[split] = {
            "sentences": len(sel),
            "organ_set_exact": _ratio(sum(set(it["organs"]) == set(p["organs"] or []) for it, p, _ in sel), len(sel)),
            "organ_precision": _ratio(tp, tp + fp),
            "organ_recall": _ratio(tp, tp + fn),
            "status_sentences": len(with_status),
            "status": _ratio(sum(it["status"] == p["status"] for it, p, _ in with_status), len(with_status)),
            "status_majority_baseline": _ratio(sum(it["status"] == "abnormal" for it, _, _ in with_status),
                                               len(with_status)),
            "cue_sentences": len(cue),
            "status_cue": _ratio(sum(it["status"] == p["status"] for it, p, _ in cue), len(cue)),
            "status_cue_baseline": _ratio(sum(it["status"] == "abnormal" for it, _, _ in cue), len(cue)),
            "status_recall": {
                cls: _ratio(sum(p["status"] == cls for it, p, _ in with_status if it["status"] == cls),
                            sum(it["status"] == cls for it, _, _ in with_status))
                for cls in ("abnormal", "normal", "uncertain")
            },
            "non_finding_gold": nf_gold,
            "non_finding_precision": _ratio(nf_both, nf_pred),
            "non_finding_recall": _ratio(nf_both, nf_gold),
            "phase_hint": _ratio(sum(it["phase_hint"] == p["phase_hint"] for it, p, _ in sel), len(sel)),
            "gold_status_counts": dict(Counter(_gold_status(it) for it, _, _ in sel)),
            "errors": sum(1 for _, _, e in sel if e),
            "overlap_left_out": left_out,
        }
    out["disagreements"] = [
        {"roco_id": it["roco_id"], "split": it["split"], "sentence": it["sentence"],
         **{f"gold_{k}": it[k] for k in ("organs", "status", "phase_hint")},
         **{f"pred_{k}": p[k] for k in ("organs", "status", "phase_hint")}, "error": e}
        for it, p, e in rows
        if e or set(it["organs"]) != set(p["organs"] or []) or it["phase_hint"] != p["phase_hint"]
        or _gold_status(it) != p["status"]
    ]
    return out


def evaluate_segmentation(items: list[dict], segment: Segmenter, captions_file: Path | None = None) -> dict:
    """Sentence splitting on whole captions (compound split off): a caption counts as right
    when the segmenter's units are exactly the hand-split sentences (whitespace-normalised).

    Only the dev/test captions take part: the fixture holds all their sentences, while
    the "cues" split labels single sentences of other captions."""
    captions: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        if it["split"] in ("dev", "test"):
            captions[it["roco_id"]].append(it)
    raw = {c["roco_id"]: c["caption"] for c in json.loads((captions_file or captions_path()).read_text())}
    norm = lambda s: re.sub(r"\s+", " ", s).strip().rstrip(";").strip()  # noqa: E731
    exact = 0
    gold_b = pred_b = both_b = 0
    for rid, its in captions.items():
        text = raw.get(rid) or " ".join(i["sentence"] for i in its)
        gold = [norm(i["sentence"]) for i in sorted(its, key=lambda i: i["sentence_index"])]
        pred = [norm(f.text) for f in segment(text, ReportConfig(split_compound=False))]
        exact += gold == pred
        gb, pb = _boundaries(gold), _boundaries(pred)
        gold_b, pred_b, both_b = gold_b + len(gb), pred_b + len(pb), both_b + len(gb & pb)
    p, r = _ratio(both_b, pred_b), _ratio(both_b, gold_b)
    return {"captions": len(captions), "caption_exact": _ratio(exact, len(captions)),
            "boundary_precision": p, "boundary_recall": r}


def _boundaries(sents: list[str]) -> set[int]:
    """Character offsets (in the letters-only concatenation) where a sentence ends."""
    out, pos = set(), 0
    for s in sents[:-1]:
        pos += len(re.sub(r"[^A-Za-z0-9]", "", s))
        out.add(pos)
    return out


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


# ------------------------------------------------------------------ throughput
def caption_sentences(path: Path | None = None) -> list[str]:
    """Real sentences of all ROCO CT captions (a plain regex split, independent of the segmenter)."""
    caps = json.loads(Path(path or captions_path()).read_text())
    out = []
    for c in caps:
        out += [s.strip() for s in re.split(r"(?<=[.;])\s+(?=[A-Z(])", c["caption"]) if len(s.strip()) > 15]
    return out


def assembled_reports(n: int = 300, lo: int = 10, hi: int = 20, seed: int = 0) -> list[str]:
    """Reports ASSEMBLED from real caption sentences (no free-licence full reports exist):
    each has a FINDINGS section of lo..hi-1 sentences wrapped at ~80 columns and a
    two-sentence IMPRESSION."""
    sents = caption_sentences()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randrange(lo, hi)
        body = " ".join(rng.sample(sents, k))
        wrapped = "\n".join(_wrap(body, 80))
        imp = " ".join(rng.sample(sents, 2))
        out.append(f"CLINICAL INFORMATION: abdominal pain.\nFINDINGS:\n{wrapped}\n\nIMPRESSION:\n1. {imp}\n")
    return out


def _wrap(text: str, width: int) -> Iterable[str]:
    line = ""
    for w in text.split(" "):
        if line and len(line) + 1 + len(w) > width:
            yield line
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        yield line


def throughput(reports: list[str], segment: Segmenter, repeat: int = 3) -> dict:
    """Reports per second in this process (one core), CPU time and wall time.

    The reports are timed ``repeat`` times; the median and the best pass are given (on a
    shared machine the best pass is the least disturbed one, as ``timeit`` reports).
    Alongside, spaCy's plain ``spacy.blank("en")`` tokenizer is timed on the same reports
    in the same passes: a calibration of how fast this machine runs spaCy at that moment.
    """
    import statistics

    import spacy

    segment(reports[0], None)  # build the pipeline outside the timing
    tokenizer = spacy.blank("en").tokenizer
    cpu, wall, tok = [], [], []
    units = 0
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        units = 0
        for r in reports:
            units += len(segment(r, None))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        c0 = time.process_time()
        for r in reports:
            tokenizer(r)
        tok.append(time.process_time() - c0)
    n = len(reports)
    rate = lambda secs: round(n / secs, 1)  # noqa: E731
    return {"reports": n, "passes": repeat, "units_per_report": round(units / n, 2),
            "mean_chars": round(sum(map(len, reports)) / n),
            "reports_per_s_cpu_median": rate(statistics.median(cpu)), "reports_per_s_cpu_best": rate(min(cpu)),
            "reports_per_s_wall_median": rate(statistics.median(wall)), "reports_per_s_wall_best": rate(min(wall)),
            "blank_tokenizer_reports_per_s_cpu_best": rate(min(tok))}
