"""From a corpus to the rows, splits and Parquet shards of the published dataset.

Three configurations, one row per...

* ``vqa``: question-answer pair, with its key slice;
* ``findings``: finding sentence that has a key slice (the sentence-slice pair: ``findings`` joined
  with ``selections``);
* ``selections``: key-slice choice, with the selector's scores, model and the series' phase.

Only studies whose four stages are all done are exported (a study being rebuilt, or one that
failed a stage, is left out until it is complete), and never rows on a series whose DICOM says
``BurnedInAnnotation YES`` or that is a secondary capture (text burned into pixels cannot be
checked by the privacy gate). Columns that could only leak (``created_at``, run ids, free-text
DICOM descriptions) are not exported.

Splits are assigned BY PATIENT (``studies.patient_id``; the study when the DICOM has no
PatientID) with a fixed-salt hash of the (already keyed) pseudonym, so a patient never straddles two
splits and the assignment of existing patients never changes when the corpus grows. Shards
are hash buckets of patients too: adding a study rewrites only its bucket's files, which is
what makes publishing incremental. A bucket whose images outgrow the shard size continues in
further files of the same bucket and split (files are storage; the split stays the patient's).
Shards are written deterministically (same rows, same bytes), so an unchanged shard has an
unchanged content hash, and row group by row group, so the export never holds more than a row
group of images in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from keyslice.pipeline.registry import STAGES
from keyslice.corpus.checkpoints import CheckpointStore
from keyslice.errors import KeysliceError

CONFIGS = ("vqa", "findings", "selections")
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_MAX_SHARD_BYTES = 500 * 1024 * 1024
SPLIT_SALT = "keyslice-split-v1"
SHARD_SALT = "keyslice-shard-v1"
SECONDARY_CAPTURE_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC, multi-frame SC variants
ROW_OVERHEAD_BYTES = 512  # estimate of a row's non-image bytes, for shard sizing
#: Images per Parquet row group: what one write holds in memory (rows are rendered, written, released).
ROW_GROUP_BYTES = 16 * 1024 * 1024
#: VQA pairs of one study and series that ask the same question with the same answer on slices at most
#: this many slices apart show the reader the same thing: exported once.
NEAR_DUPLICATE_SLICES = 1


class PublishError(KeysliceError):
    """The corpus cannot be published as it is (incomplete data, bad paths, key problems)."""


# --------------------------------------------------------------------------- reading


@dataclass
class CorpusSnapshot:
    root: Path
    complete: list[str]                       # studies with all four stages done
    incomplete: list[str]                     # studies with some but not all stages done
    studies: dict[str, dict[str, Any]]
    series: dict[str, dict[str, Any]]
    findings: dict[str, dict[str, Any]]
    selections: list[dict[str, Any]]
    vqa: list[dict[str, Any]]
    reviews: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (finding, selection sha) -> decisions


def _read(con, table: str, study_ids: list[str]) -> list[dict[str, Any]]:
    """Rows of ``table`` for the given studies, through the corpus' DuckDB views.

    The views read per-study files and compacted shards alike (a per-study file wins over its
    compacted rows, :mod:`keyslice.corpus.compact`), in one pass per table.
    """
    if not study_ids:
        return []
    con.register("_publish_studies", pa.table({"study_id": study_ids}))
    try:
        result = con.sql(f"SELECT t.* FROM {table} t SEMI JOIN _publish_studies p ON t.study_id = p.study_id "
                         f"ORDER BY t.study_id").to_arrow_table()
    finally:
        con.unregister("_publish_studies")
    return result.to_pylist()


def read_corpus(corpus_dir: Path) -> CorpusSnapshot:
    """The complete studies of a corpus and their rows (call while holding the corpus lock)."""
    from keyslice.corpus.sql import connect

    store = CheckpointStore(Path(corpus_dir))
    done = [store.done_studies(stage) for stage in STAGES]
    complete = sorted(set.intersection(*done)) if done else []
    incomplete = sorted(set.union(*done) - set(complete)) if done else []
    con = connect(Path(corpus_dir))
    try:
        studies = {r["study_id"]: r for r in _read(con, "studies", complete)}
        series = {r["series_id"]: r for r in _read(con, "series", complete)}
        findings = {r["finding_id"]: r for r in _read(con, "findings", complete)}
        selections, vqa = _read(con, "selections", complete), _read(con, "vqa", complete)
    finally:
        con.close()
    return CorpusSnapshot(Path(corpus_dir), complete, incomplete, studies, series, findings, selections, vqa,
                          standing_reviews(Path(corpus_dir)))


def standing_reviews(corpus_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(finding_id, selection_sha256) -> every reviewer's standing judgement of that exact selection.

    Read through :class:`keyslice.review.store.ReviewStore`, so undo and re-judging count exactly as
    in the review app and its metrics; reviewer pseudonyms are not kept (they are never exported).
    """
    from keyslice.review.store import ReviewStore

    store = ReviewStore(corpus_dir)
    rows = store.refresh()
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for reviewer in sorted({r["reviewer"] for r in rows}):
        for key, row in sorted(store.standing(reviewer).items()):
            out[key].append(row["decision"])
    return dict(out)


def review_status(decisions: list[str] | None) -> str | None:
    """One word for the standing judgements of a selection: None (never judged), ``accepted`` (every
    reviewer accepted), ``rejected`` (no reviewer accepted: rejected, another slice chosen, or not
    visible) or ``disputed`` (reviewers disagree)."""
    if not decisions:
        return None
    accepted = sum(d == "accept" for d in decisions)
    return "accepted" if accepted == len(decisions) else "rejected" if accepted == 0 else "disputed"


def corpus_state(corpus_dir: Path) -> dict[str, Any]:
    """Which corpus state a publish came from: a hash over every stage marker (stage, study, run, time).

    Markers are written last by each stage, so the hash changes exactly when a stage of a study is
    (re)computed; a rerun that skips every stage leaves it unchanged.
    """
    root = Path(corpus_dir) / "stages"
    digest = hashlib.sha256()
    runs: Counter[str] = Counter()
    n = 0
    for marker in sorted(root.glob("*/*.json")) if root.exists() else []:
        data = json.loads(marker.read_bytes())
        line = "\x1f".join(str(data.get(k, "")) for k in ("stage", "study_id", "run_id", "finished_at"))
        digest.update(line.encode() + b"\n")
        runs[str(data.get("run_id"))] += 1
        n += 1
    return {"corpus_state": digest.hexdigest(), "n_markers": n, "run_ids": sorted(runs)}


# --------------------------------------------------------------------------- splits and shards


def _unit(salt: str, key: str) -> float:
    return int(hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()[:15], 16) / float(16 ** 15)


def split_of(group_key: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """Deterministic split of a patient (or study) pseudonym."""
    u = _unit(SPLIT_SALT, group_key)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def shard_of(group_key: str, n_shards: int) -> int:
    return int(_unit(SHARD_SALT, group_key) * n_shards) % n_shards


def n_shards_for(estimated_bytes: int, max_shard_bytes: int) -> int:
    """Power of two, so the bucket of a patient only moves when the split doubles in size."""
    n = 1
    while estimated_bytes / n > max_shard_bytes:
        n *= 2
    return n


# --------------------------------------------------------------------------- export rows


@dataclass
class ExportRow:
    split: str
    group: str                     # patient (or study) pseudonym: split and shard key
    sort_key: tuple
    image_path: str                # corpus-relative PNG
    image_name: str                # file name stored in the Image feature
    fields: dict[str, Any]


@dataclass
class ExportPlan:
    rows: dict[str, list[ExportRow]]                  # per config
    excluded: dict[str, Any] = field(default_factory=dict)
    min_confidence: float | None = None
    low_confidence: dict[str, int] = field(default_factory=dict)   # config -> rows left out by min_confidence
    duplicates_removed: int = 0                                     # near-duplicate VQA pairs exported once
    context_slices: int = 0           # slice context: slices on each side of the key slice (0 = none exported)
    context_topk: bool = False        # slice context includes the selector's top-k slices
    grounding: bool = False           # organ masks on the key slice exported
    stack_slices: int = 0             # fixed-length stack resampled along z: its length (0 = none exported)
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # table, row, column, what
    studies: int = 0
    patients: int = 0

    def split_groups(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for rows in self.rows.values():
            for r in rows:
                out[r.split].add(r.group)
        return dict(out)


def _image_name(image_path: str) -> str:
    parts = Path(image_path).parts  # images/<study_id>/<name>.png
    return f"{parts[-2]}_{parts[-1]}" if len(parts) >= 2 else parts[-1]


def excluded_series(series: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """series_id -> reason, for series that must never be exported.

    ``burned_in_annotation`` is True when any instance of the series says BurnedInAnnotation YES
    (:mod:`keyslice.dicom.series`). A secondary capture is recognised by the series step's drop
    reason and, independently of it, by the SOP class and ImageType SECONDARY: the build never
    selects key slices on dropped series, so this is the second line, for rows that reached the
    corpus some other way (an older build, a hand-edited table).
    """
    out = {}
    for sid, s in series.items():
        if s.get("burned_in_annotation") is True:
            out[sid] = "burned_in_annotation"
        elif (s.get("drop_reason") == "secondary_capture"
              or str(s.get("sop_class") or "").startswith(SECONDARY_CAPTURE_SOP_PREFIX)
              or "SECONDARY" in [str(t).upper() for t in s.get("image_type") or []]):
            out[sid] = "secondary_capture"
    return out


def confidence_fields(sel: Mapping[str, Any], reviews: Mapping[tuple[str, str], list[str]]) -> dict[str, Any]:
    """How sure the key slice is, carried into every row that shows it: the selector's margin and
    uncertain flag, and the reviewers' standing judgements of this exact selection."""
    from keyslice.review.store import selection_sha256

    decisions = reviews.get((sel["finding_id"], selection_sha256(sel)))
    return {"margin": sel.get("margin"), "uncertain": sel.get("uncertain"),
            "review_status": review_status(decisions), "n_reviews": len(decisions or ())}


def plan_export(snap: CorpusSnapshot, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, *,
                min_confidence: float | None = None) -> ExportPlan:
    """The rows of every configuration with their split (images not read yet).

    ``min_confidence``: leave out every row whose key slice has a selector margin below it (compared
    as float32, the margin's stored type, so ``0.02`` keeps a stored 0.02); a
    selection without a margin (an older corpus, or a series too short to compare) is left out
    too, since its confidence is unknown. The rows left out are counted per configuration.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    plan = ExportPlan(rows={c: [] for c in CONFIGS}, min_confidence=min_confidence)
    low: Counter[str] = Counter()
    drop = excluded_series(snap.series)
    excluded_counts: Counter[str] = Counter()

    def group_of(study_id: str) -> str:
        study = snap.studies.get(study_id) or {}
        return study.get("patient_id") or study_id

    def usable(table: str, key: str, row: Mapping[str, Any]) -> bool:
        series_id = row.get("series_id")
        if series_id not in snap.series:
            plan.problems.append((table, key, "series_id", "unknown_series: the series row is missing, so its "
                                  "BurnedInAnnotation/secondary-capture status cannot be checked"))
            return False
        if series_id in drop:
            excluded_counts[f"{table}:{drop[series_id]}"] += 1
            return False
        if row.get("study_id") not in snap.studies:
            plan.problems.append((table, key, "study_id", "unknown_study: no studies row (patient unknown)"))
            return False
        return True

    selection_by_finding = {}
    confidence_by_image: dict[str, dict[str, Any]] = {}
    low_images: set[str] = set()
    for sel in snap.selections:
        key = sel["finding_id"]
        if not usable("selections", key, sel):
            continue
        confidence = confidence_fields(sel, snap.reviews)
        if min_confidence is not None and (confidence["margin"] is None
                                           or np.float32(confidence["margin"]) < np.float32(min_confidence)):
            low["selections"] += 1
            low["findings"] += key in snap.findings
            low_images.add(sel["image_path"])
            continue
        selection_by_finding[key] = sel
        confidence_by_image[sel["image_path"]] = confidence
        s = snap.series[sel["series_id"]]
        study_id = sel["study_id"]
        group = group_of(study_id)
        finding = snap.findings.get(key)
        base = {"finding_id": key, "study_id": study_id, "patient_id": snap.studies[study_id].get("patient_id"),
                "series_id": sel["series_id"]}
        plan.rows["selections"].append(ExportRow(
            split_of(group, fractions), group, (study_id, finding["finding_index"] if finding else 0, key),
            sel["image_path"], _image_name(sel["image_path"]),
            {**base, "phase": s["phase"], "phase_confidence": s["phase_confidence"],
             "manufacturer": s.get("manufacturer"), "kernel": s.get("kernel"),
             "slice_thickness_mm": s.get("slice_thickness_mm"),
             "model_id": sel["model_id"], "weights_sha256": sel["weights_sha256"], "window": sel["window"],
             "n_slices": sel["n_slices"], "top1_index": sel["top1_index"],
             "top1_instance_number": sel["top1_instance_number"], "top1_z_mm": sel["top1_z_mm"],
             "top1_score": sel["top1_score"], "topk_indices": list(sel["topk_indices"]),
             "topk_scores": list(sel["topk_scores"]), "restricted_to": sel["restricted_to"],
             "z_range_mm": list(sel["z_range_mm"]) if sel["z_range_mm"] is not None else None,
             "peakedness": sel.get("peakedness"), **confidence}))
        if finding is None:
            plan.problems.append(("selections", key, "finding_id", "unknown_finding: no findings row"))
            continue
        plan.rows["findings"].append(ExportRow(
            split_of(group, fractions), group, (study_id, finding["finding_index"], key),
            sel["image_path"], _image_name(sel["image_path"]),
            {**base, "finding_index": finding["finding_index"], "section": finding["section"],
             "text": finding["text"], "organ": finding["organ"], "organs": list(finding["organs"]),
             "status": finding["status"], "laterality": finding["laterality"],
             "measurements_mm": list(finding["measurements_mm"]), "phase_hint": finding["phase_hint"],
             "language": finding["language"], "segmenter": finding["segmenter"], "phase": s["phase"],
             "window": sel["window"], "slice_index": sel["top1_index"],
             "abnormalities": list(finding.get("abnormalities") or []), **confidence}))

    selected_images = {sel["image_path"] for sel in selection_by_finding.values()}
    for qa in snap.vqa:
        key = qa["qa_id"]
        if not usable("vqa", key, qa):
            continue
        if qa["image_path"] in low_images and qa["image_path"] not in selected_images:
            low["vqa"] += 1
            continue
        if qa["image_path"] not in selected_images:
            plan.problems.append(("vqa", key, "image_path", "image_not_selected: the image is not the key slice "
                                  "of an exported selection"))
            continue
        study_id = qa["study_id"]
        group = group_of(study_id)
        finding = snap.findings.get(qa["finding_id"])
        plan.rows["vqa"].append(ExportRow(
            split_of(group, fractions), group,
            (study_id, finding["finding_index"] if finding else -1, qa["finding_id"], key),
            qa["image_path"], _image_name(qa["image_path"]),
            {"qa_id": key, "finding_id": qa["finding_id"], "study_id": study_id,
             "patient_id": snap.studies[study_id].get("patient_id"), "question": qa["question"],
             "answer": qa["answer"], "answer_type": qa["answer_type"], "question_type": qa["question_type"],
             "options": list(qa["options"]), "generator": qa["generator"], "prompt_version": qa["prompt_version"],
             "series_id": qa["series_id"], "phase": snap.series[qa["series_id"]]["phase"],
             "slice_index": qa["slice_index"], "organ": qa.get("organ"), "abnormality": qa.get("abnormality"),
             "answer_source": qa.get("answer_source"), **confidence_by_image[qa["image_path"]]}))

    plan.rows["vqa"], plan.duplicates_removed = drop_near_duplicates(plan.rows["vqa"])
    plan.excluded = {
        "series": {reason: sum(1 for r in drop.values() if r == reason) for reason in sorted(set(drop.values()))},
        "rows": dict(sorted(excluded_counts.items())),
        "incomplete_studies": len(snap.incomplete),
    }
    plan.low_confidence = {c: low[c] for c in CONFIGS if low[c]}
    exported_studies = {r.fields["study_id"] for rows in plan.rows.values() for r in rows}
    plan.studies = len(exported_studies)
    plan.patients = len({r.group for rows in plan.rows.values() for r in rows})
    return plan


def _normalised(text: str | None) -> str:
    return " ".join(str(text or "").casefold().split()).rstrip(" ?.")


def drop_near_duplicates(rows: list[ExportRow], near_slices: int = NEAR_DUPLICATE_SLICES
                         ) -> tuple[list[ExportRow], int]:
    """VQA rows without near duplicates, and how many were dropped.

    Two pairs are near duplicates when they are of the same study and series, ask the same question
    and give the same answer (case, spacing and a final '?' ignored), on slices at most
    ``near_slices`` apart: a model would see the same question about (almost) the same image twice,
    and a test split would count it twice. The pair of the earliest finding is kept (rows in
    ``sort_key`` order), so the choice is deterministic.
    """
    kept: list[ExportRow] = []
    slices: dict[tuple, list[int]] = defaultdict(list)
    dropped = 0
    for row in sorted(rows, key=lambda r: r.sort_key):
        f = row.fields
        key = (f["study_id"], f["series_id"], _normalised(f["question"]), _normalised(f["answer"]))
        index = int(f["slice_index"])
        if any(abs(index - other) <= near_slices for other in slices[key]):
            dropped += 1
            continue
        slices[key].append(index)
        kept.append(row)
    return kept, dropped


def resolve_image(corpus_dir: Path, image_path: str) -> Path:
    """The PNG of a row, refusing paths outside ``CORPUS/images`` (fail closed on odd paths)."""
    root = (Path(corpus_dir) / "images").resolve()
    path = (Path(corpus_dir) / image_path).resolve()
    if root not in path.parents or path.suffix.lower() != ".png":
        raise PublishError(f"image path {image_path!r} is not a PNG under {root}")
    if not path.is_file():
        raise PublishError(f"image {image_path!r} is missing from the corpus; rebuild the study's keyslice stage")
    return path


# --------------------------------------------------------------------------- features and shards


def features(config: str, context: bool = False, grounding: bool = False, stack: bool = False):
    """The ``datasets`` features of a configuration (the image first); ``context`` adds the slice context
    of findings and selections rows (a list of images with their slice indices and z positions);
    ``grounding`` the organ mask on the key slice and the labels it shows (vqa: the labels only);
    ``stack`` the fixed-length stack resampled along z with its positions, spacing, range rule and window
    (with ``grounding`` also the mask on every stack slice)."""
    from datasets import Features, Image, List, Value

    s, i32, f32, f64 = Value("string"), Value("int32"), Value("float32"), Value("float64")
    ids = {"study_id": s, "patient_id": s}
    confidence = {"margin": f32, "uncertain": Value("bool"), "review_status": s, "n_reviews": i32}
    if config == "vqa":
        cols = {"image": Image(), "qa_id": s, "finding_id": s, **ids, "question": s, "answer": s,
                "answer_type": s, "question_type": s, "options": List(s), "generator": s, "prompt_version": s,
                "series_id": s, "phase": s, "slice_index": i32, "organ": s, "abnormality": s, "answer_source": s,
                **confidence}
    elif config == "findings":
        cols = {"image": Image(), "finding_id": s, **ids, "series_id": s, "finding_index": i32, "section": s,
                "text": s, "organ": s, "organs": List(s), "status": s, "laterality": s,
                "measurements_mm": List(f32), "phase_hint": s, "language": s, "segmenter": s, "phase": s,
                "window": s, "slice_index": i32, "abnormalities": List(s), **confidence}
    elif config == "selections":
        cols = {"image": Image(), "finding_id": s, **ids, "series_id": s, "phase": s, "phase_confidence": f32,
                "manufacturer": s, "kernel": s, "slice_thickness_mm": f32, "model_id": s, "weights_sha256": s,
                "window": s, "n_slices": i32, "top1_index": i32, "top1_instance_number": i32, "top1_z_mm": f64,
                "top1_score": f32, "topk_indices": List(i32), "topk_scores": List(f32), "restricted_to": s,
                "z_range_mm": List(f64), "peakedness": f32, **confidence}
    else:
        raise KeyError(f"unknown configuration {config!r}; choose from {CONFIGS}")
    if context and config in ("findings", "selections"):
        cols.update({"context": List(Image()), "context_indices": List(i32), "context_z_mm": List(f64)})
    if grounding:
        cols.update({"mask": Image(), "mask_labels": List(s)} if config in ("findings", "selections")
                    else {"mask_labels": List(s)})
    if stack and config in ("findings", "selections"):
        cols.update({"stack": List(Image()), "stack_z_mm": List(f64), "stack_spacing_mm": f64, "stack_range": s,
                     "stack_window": s, "stack_window_center": f32, "stack_window_width": f32})
        if grounding:
            cols["stack_mask"] = List(Image())
    return Features(cols)


#: Identifier columns of the exported rows and the pseudonym format each must have.
ID_COLUMNS: dict[str, str] = {"study_id": "study_id", "patient_id": "patient_id", "series_id": "series_id",
                              "finding_id": "finding_id", "qa_id": "qa_id", "weights_sha256": "weights_sha256",
                              "image": "image_name", "context": "context_image_name", "mask": "context_image_name",
                              "stack": "stack_image_name", "stack_mask": "stack_image_name"}
KEY_COLUMNS: dict[str, tuple[str, ...]] = {"vqa": ("qa_id", "finding_id"), "findings": ("finding_id",),
                                           "selections": ("finding_id",)}
#: Columns that name the software a row was made with (checked without the date/number rules).
SOFTWARE_COLUMNS = ("model_id", "generator", "prompt_version", "segmenter")
#: Columns whose text comes from report sentences: the only ones ``--scrub-text`` may rewrite.
REPORT_TEXT_COLUMNS: dict[str, tuple[str, ...]] = {"findings": ("text",), "vqa": ("question", "answer", "options")}


def exported_record(row: ExportRow, image_bytes: bytes | None = None,
                    context: list[tuple[str, bytes | None]] | None = None,
                    mask: tuple[str, bytes | None] | None | bool = False,
                    stack: list[tuple[str, bytes | None]] | None = None,
                    stack_mask: list[tuple[str, bytes | None]] | None | bool = False) -> dict[str, Any]:
    """A row exactly as it is written (images as ``{"bytes", "path"}``; ``context`` and ``stack``: their
    (name, PNG) lists; ``mask``: its (name, PNG) or None for no mask, ``stack_mask`` its (name, PNG) list or
    None; False: the row has no such column)."""
    record = {"image": {"bytes": image_bytes, "path": row.image_name}, **row.fields}
    if context is not None:
        record["context"] = [{"bytes": data, "path": name} for name, data in context]
    if mask is not False:
        record["mask"] = None if mask is None else {"bytes": mask[1], "path": mask[0]}
    if stack is not None:
        record["stack"] = [{"bytes": data, "path": name} for name, data in stack]
    if stack_mask is not False:
        record["stack_mask"] = None if stack_mask is None else [{"bytes": d, "path": n} for n, d in stack_mask]
    return record


@dataclass
class ShardFile:
    path: str          # relative to the dataset folder, e.g. vqa/train-00000-of-00001.parquet
    config: str
    split: str
    rows: int
    nbytes: int        # Arrow (uncompressed) size
    size: int          # file size
    sha256: str


def record_image_bytes(record: Mapping[str, Any]) -> int:
    """Bytes of the images a written record holds (key slice, mask, context, stack and its masks)."""
    total = 0
    for value in record.values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("bytes"), (bytes, bytearray)):
                total += len(item["bytes"])
    return total


class _ShardFileWriter:
    """The files of one hash bucket, written row group by row group.

    Rows are rendered one at a time and written in row groups of at most ``row_group_bytes`` of images,
    so one row group is all that is held in memory; a bucket whose images outgrow ``max_shard_bytes``
    continues in the next file of the same bucket (``...-of-NNNNN-001.parquet``, ``-002``...): a
    patient's rows may span consecutive files of one split, which are storage only (the split is the
    patient's, the bucket still decides which files a new study rewrites).
    """

    def __init__(self, dest: Path, base: str, config: str, split: str, feats, max_shard_bytes: int,
                 row_group_bytes: int) -> None:
        self.dest, self.base, self.config, self.split, self.feats = dest, base, config, split, feats
        self.max_shard_bytes, self.row_group_bytes = max_shard_bytes, row_group_bytes
        self.written: list[ShardFile] = []
        self._writer = None
        self._rel = ""
        self._rows = self._file_bytes = self._batch_bytes = 0
        self._batch: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        size = record_image_bytes(record) + ROW_OVERHEAD_BYTES
        if (self._rows or self._batch) and self._file_bytes + self._batch_bytes + size > self.max_shard_bytes:
            self._close_file()
        self._batch.append(record)
        self._batch_bytes += size
        if self._batch_bytes >= self.row_group_bytes:
            self._flush()

    def close(self) -> list[ShardFile]:
        self._close_file()
        return self.written

    def _flush(self) -> None:
        from datasets.arrow_writer import ParquetWriter

        if not self._batch:
            return
        if self._writer is None:
            part = len(self.written)
            self._rel = f"{self.base}.parquet" if part == 0 else f"{self.base}-{part:03d}.parquet"
            (self.dest / self._rel).parent.mkdir(parents=True, exist_ok=True)
            self._writer = ParquetWriter(features=self.feats, path=str(self.dest / self._rel))
        columns = {name: [r.get(name) for r in self._batch] for name in self.feats}
        self._writer.write_batch(self.feats.encode_batch(columns))
        self._rows += len(self._batch)
        self._file_bytes += self._batch_bytes
        self._batch, self._batch_bytes = [], 0

    def _close_file(self) -> None:
        self._flush()
        if self._writer is None:
            return
        rows, nbytes = self._writer.finalize()
        self._writer = None
        out = self.dest / self._rel
        digest = hashlib.sha256()
        with open(out, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        self.written.append(ShardFile(self._rel, self.config, self.split, rows, int(nbytes), out.stat().st_size,
                                      digest.hexdigest()))
        self._rows = self._file_bytes = 0


def write_shards(plan: ExportPlan, corpus_dir: Path, dest: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 image_bytes: Callable[[str], bytes],
                 context_images: Callable[[ExportRow], list[tuple[str, bytes]]] | None = None,
                 mask_image: Callable[[ExportRow], tuple[str, bytes] | None] | None = None,
                 stack_images: Callable[[ExportRow, str], list[tuple[str, bytes]]] | None = None,
                 stack_masks: Callable[[ExportRow, str], list[tuple[str, bytes]] | None] | None = None,
                 row_group_bytes: int = ROW_GROUP_BYTES) -> list[ShardFile]:
    """Write every configuration/split as hash-bucket shards into ``dest``; returns what was written.

    ``image_bytes(image_path)`` returns the (privacy-cleaned) PNG for a corpus-relative path;
    ``context_images(row)`` the (name, cleaned PNG) list of a row's slice context; ``mask_image(row)`` the
    (name, PNG) of its organ mask, or None; ``stack_images(row, config)`` the (name, cleaned PNG) list of its
    resampled stack and ``stack_masks(row, config)`` the masks on it (or None). Each row's images are
    rendered when the row is written and released with its row group (at most ``row_group_bytes`` of
    images), and no file holds more than about ``max_shard_bytes`` of images (a bucket that outgrows it
    continues in a further file, :class:`_ShardFileWriter`), so the memory of the export follows the row
    group, not the number of findings nor the size of a bucket.
    """
    written: list[ShardFile] = []
    for config in CONFIGS:
        with_context = context_images is not None and config in ("findings", "selections")
        with_mask = mask_image is not None and config in ("findings", "selections")
        with_stack = stack_images is not None and config in ("findings", "selections")
        feats = features(config, context=with_context, grounding=mask_image is not None, stack=with_stack)
        by_split: dict[str, list[ExportRow]] = defaultdict(list)
        for row in plan.rows[config]:
            by_split[row.split].append(row)
        for split in SPLITS:
            rows = by_split.get(split)
            if not rows:
                continue
            sizes = {}
            for r in rows:
                if r.image_path not in sizes:
                    sizes[r.image_path] = resolve_image(corpus_dir, r.image_path).stat().st_size
            estimate = sum(sizes[r.image_path] * (1 + len(r.fields.get("context_indices") or ())
                                                  + len(r.fields.get("stack_z_mm") or ()))
                           + ROW_OVERHEAD_BYTES for r in rows)
            n = n_shards_for(estimate, max_shard_bytes)
            buckets: dict[int, list[ExportRow]] = defaultdict(list)
            for r in rows:
                buckets[shard_of(r.group, n)].append(r)
            for index in sorted(buckets):
                writer = _ShardFileWriter(dest, f"{config}/{split}-{index:05d}-of-{n:05d}", config, split, feats,
                                          max_shard_bytes, min(row_group_bytes, max_shard_bytes))
                for r in sorted(buckets[index], key=lambda r: r.sort_key):
                    writer.add(exported_record(r, image_bytes(r.image_path),
                                               context_images(r) if with_context else None,
                                               mask_image(r) if with_mask else False,
                                               stack_images(r, config) if with_stack else None,
                                               (stack_masks(r, config) if stack_masks is not None else False)
                                               if with_stack and with_mask else False))
                written += writer.close()
    return written
