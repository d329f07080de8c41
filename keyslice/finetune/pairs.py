"""Training pairs: lesion-level (finding sentence -> its key slice) and organ-level (organ prompt ->
slices inside / outside the organ's z-range from TotalSegmentator masks).

Sources
    A :class:`~keyslice.finetune.config.SourceConfig` names one CT (NIfTI file, or the files of one
    DICOM series) and its masks. Volumes are read with the selector's
    :func:`~keyslice.selector.volume.volume_from_nifti` / :func:`~keyslice.selector.volume.load_volume`
    and masks with :class:`~keyslice.selector.masks.OrganMasks`, which resamples by WORLD
    coordinates: a mask whose affine does not match its CT is caught
    (:meth:`OrganMasks.check_overlap`) or lands where its affine says. Trap in the real data:
    ``example_seg_fast/`` holds the masks of ``example_ct_sm.nii.gz`` (slices 82-111 of
    ``example_ct`` with the affine of slice 0), so on ``example_ct`` they land on slices 0-29;
    ``example_ct`` goes with ``example_seg_fast_force_split.nii.gz`` (same grid).

Organ pairs
    For an organ (a canonical report organ such as ``kidney`` = left + right, or one TS label),
    ``inside[k]`` is True for slices ``k`` between the first and the last slice that hold any of
    its labels (the organ's z-range). Per organ, ``pairs_per_organ // 2`` positive rows
    (slice inside) and as many negative rows (slice outside) are drawn from all training CTs
    together, without replacement while the pool lasts, then with replacement (so every organ has
    the same number of rows and the classes are balanced). An organ with no slice outside any
    training CT gets positive rows only; an organ absent from the masks is skipped. Draws use a
    generator seeded by (seed, organ), so pairs do not depend on the organ list's order.

Lesion pairs
    Rows (source, slice, sentence) from: a CSV of labels (columns ``study``, ``slice`` (0-based
    index in the position-sorted series) or ``instance_number``, ``sentence``, optional
    ``organ``, ``series``); a corpus's ``findings.image_refs`` (series number + instance number in
    the text); reviewed key-slice selections (``study_id``, ``finding_id``, ``slice``; text from the
    corpus findings or a ``sentence`` column; rows with ``reviewed`` false are dropped). ``study``
    is matched against source names.

Reviews (``pairs.reviews``: a corpus reviewed with ``keyslice review``; ``pairs.reviews_input``: the
studies folder it was built from)
    Each reviewed series becomes a training CT named ``<study_id>/<series_id>`` (re-indexed from the
    studies with the corpus key, as the review app does; its masks used when they overlap). Every
    standing judgement (``review_judgements``: latest, not undone, per reviewer) gives rows for its
    finding's sentence: accept -> the top-1 slice positive; choose -> the chosen slice positive and
    the top-1 slice negative; reject or "not visible" -> the top-1 slice negative. A negative row
    (label 0) is never a target of its sentence nor of any sentence (see
    :func:`keyslice.finetune.loss.target_matrix`).
"""

from __future__ import annotations

import csv
import functools
import logging
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from keyslice.finetune.config import SourceConfig
from keyslice.finetune.prompts import PROMPT_STATION_WORDS, normalize_sentence, organ_ts_labels

log = logging.getLogger(__name__)

#: Report organs that only proxy or aggregate others; left out when no organ list is given.
PROXY_ORGANS = frozenset({"pleura", "bile duct", "bone", "splenic vein", "lymph node"})


# --------------------------------------------------------------------------- sources


@dataclass(eq=False)
class LoadedSource:
    name: str
    volume: object                    # keyslice.selector.volume.Volume
    masks: object | None              # keyslice.selector.masks.OrganMasks
    config: SourceConfig
    _inside: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _stations: list | None = field(default=None, repr=False)

    @property
    def n_slices(self) -> int:
        return self.volume.n_slices

    @property
    def z_mm(self) -> np.ndarray:
        return np.asarray(self.volume.z_mm, dtype=np.float64)

    def presence(self, organ: str) -> np.ndarray:
        """bool [n]: slices holding any voxel of the organ's labels."""
        if self.masks is None:
            return np.zeros(self.n_slices, dtype=bool)
        return np.asarray(self.masks.presence(list(organ_ts_labels(organ)), self.volume), dtype=bool)

    def inside(self, organ: str) -> np.ndarray:
        """bool [n]: slices inside the organ's z-range (first..last slice with the organ)."""
        if organ not in self._inside:
            p = self.presence(organ)
            out = np.zeros(self.n_slices, dtype=bool)
            if p.any():
                k = np.nonzero(p)[0]
                out[k[0]: k[-1] + 1] = True
            self._inside[organ] = out
        return self._inside[organ]

    def segments_organ(self, organ: str) -> bool:
        """Whether every TotalSegmentator label of the organ is in this CT's segmentation vocabulary, so that its
        absence on a slice means absent (a CT segmented for T12 alone says nothing about the rest of the spine)."""
        if self.masks is None:
            return False
        from keyslice.selector.masks import normalize_label

        vocab = self.masks.labels()
        return all(normalize_label(x) in vocab for x in organ_ts_labels(organ))

    def has_organ_labels(self, organ: str) -> bool:
        if self.masks is None:
            return False
        return bool(self.masks.present_labels(list(organ_ts_labels(organ))))


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@functools.lru_cache(maxsize=8)
def load_source(src: SourceConfig) -> LoadedSource:
    """Read a source's CT and masks (the selector's readers; masks checked against the CT's world extent).
    Read-only once loaded, so a process that trains and evaluates several runs on the same CTs (leave-one-CT-out)
    reads and resamples each once (the last 8 sources are kept)."""
    from keyslice.selector.masks import OrganMasks, find_masks
    from keyslice.selector.volume import load_volume, volume_from_nifti

    ct = Path(src.ct)
    if not ct.exists():
        raise FileNotFoundError(f"source {src.name!r}: CT {ct} does not exist")
    if ct.is_file() and (ct.name.endswith(".nii.gz") or ct.name.endswith(".nii")):
        volume = volume_from_nifti(ct)
    elif ct.is_dir():
        volume = load_volume(_dicom_files(ct), decode="eager")
    else:
        volume = load_volume([ct], decode="eager")
    masks = None
    if isinstance(src.masks, (tuple, list)):
        missing = [m for m in src.masks if not Path(m).is_file()]
        if missing:
            raise FileNotFoundError(f"source {src.name!r}: mask file(s) {missing} do not exist")
        masks = OrganMasks.from_files([Path(m) for m in src.masks])
        masks.check_overlap(volume)
    elif src.masks:
        m = Path(src.masks)
        if not m.exists():
            raise FileNotFoundError(f"source {src.name!r}: masks {m} do not exist")
        if m.is_file() and (m.name.endswith(".nii.gz") or m.name.endswith(".nii")):
            masks = OrganMasks.from_nifti(m, Path(src.labels) if src.labels else None)
        elif m.is_dir() and any(p.name.endswith((".nii.gz", ".nii")) for p in m.iterdir()) and not any(
                p.is_dir() for p in m.iterdir()):
            masks = OrganMasks.from_folder(m)
        elif m.is_dir():
            masks = find_masks(m)
            if masks is None:
                raise FileNotFoundError(f"source {src.name!r}: no masks found in {m}")
        else:
            masks = OrganMasks.from_dicom_seg(m)
        masks.check_overlap(volume)
    return LoadedSource(src.name, volume, masks, src)


def default_organs(sources: list[LoadedSource]) -> list[str]:
    """Canonical report organs (minus proxies) with at least one label in some source's masks."""
    from keyslice.vocab import ORGAN_TS_LABELS

    out = []
    for organ, labels in ORGAN_TS_LABELS.items():
        if organ in PROXY_ORGANS or not labels:
            continue
        if any(s.has_organ_labels(organ) for s in sources):
            out.append(organ)
    return out


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    kind: str            # "organ", "lesion" or "station"
    source: str
    slice: int
    label: int           # 1: the slice shows the text; 0: it does not (organ negative)
    organ: str | None    # organ of the prompt (lesion: the sentence's organ, may be None)
    text: str | None     # lesion sentence; organ and station prompts are drawn per batch
    group: str           # false-negative group: organ name, station, or the normalised sentence
    #: finding-level false-negative keys (:func:`finding_group_keys`): rows sharing a key are positives
    fn_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrganPairStats:
    organ: str
    n_inside: int        # slices inside the organ's z-range, all training CTs
    n_outside: int
    n_pos: int           # positive rows drawn
    n_neg: int
    skipped: str | None = None


def _organ_rng(seed: int, organ: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(organ.encode())])


def _draw(pool: list[tuple[str, int]], n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    if not pool or n <= 0:
        return []
    if len(pool) >= n:
        idx = rng.choice(len(pool), size=n, replace=False)
    else:
        idx = np.concatenate([rng.permutation(len(pool)), rng.choice(len(pool), size=n - len(pool), replace=True)])
    return [pool[i] for i in sorted(idx.tolist())]


def build_organ_pairs(sources: list[LoadedSource], organs: list[str], *, pairs_per_organ: int, seed: int,
                      min_slices: int = 1) -> tuple[list[Pair], list[OrganPairStats]]:
    """Balanced organ-level pairs (see the module docstring) and per-organ counts."""
    pairs: list[Pair] = []
    stats: list[OrganPairStats] = []
    half = max(1, pairs_per_organ // 2)
    for organ in organs:
        pos_pool, neg_pool = [], []
        for s in sources:
            inside = s.inside(organ)
            valid = np.asarray(s.volume.valid, dtype=bool)
            pos_pool += [(s.name, int(k)) for k in np.nonzero(inside & valid)[0]]
            neg_pool += [(s.name, int(k)) for k in np.nonzero(~inside & valid)[0]]
        if len(pos_pool) < max(1, min_slices):
            stats.append(OrganPairStats(organ, len(pos_pool), len(neg_pool), 0, 0,
                                        skipped=f"fewer than {max(1, min_slices)} slice(s) inside the organ"))
            continue
        rng = _organ_rng(seed, organ)
        pos = _draw(pos_pool, half, rng)
        neg = _draw(neg_pool, half, rng)
        pairs += [Pair("organ", src, k, 1, organ, None, organ) for src, k in pos]
        pairs += [Pair("organ", src, k, 0, organ, None, organ) for src, k in neg]
        stats.append(OrganPairStats(organ, len(pos_pool), len(neg_pool), len(pos), len(neg)))
    return pairs, stats


# --------------------------------------------------------------------------- lesion labels


@dataclass(frozen=True)
class LesionLabel:
    source: str
    slice: int
    sentence: str
    organ: str | None = None
    slice_hi: int | None = None          # gold is the range slice..slice_hi (None: the one slice)
    status: str | None = None            # abnormal / normal / uncertain / non_finding (None: unknown)
    abnormalities: tuple[str, ...] = ()  # abnormality type keys asserted by the sentence
    origin: str = "label"                # where the label comes from (csv, corpus, selections, aorta_report)
    negated_abnormalities: tuple[str, ...] = ()
    label: int = 1                       # 0: a reviewer rejected this slice for this sentence

    @property
    def hi(self) -> int:
        return self.slice if self.slice_hi is None else self.slice_hi


def _slice_from_instance(src: LoadedSource, instance_number: int) -> int | None:
    nums = list(src.volume.instance_numbers)
    return nums.index(instance_number) if instance_number in nums else None


def lesion_labels_from_csv(path: Path, sources: list[LoadedSource]) -> list[LesionLabel]:
    """Labels from a CSV (study, slice | instance_number, sentence [, organ, series]); rows whose study
    is not a source, or whose slice is out of range, are skipped with a warning."""
    by_name = {s.name: s for s in sources}
    out, dropped = [], 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"study", "sentence"} - set(reader.fieldnames or [])
        if missing or not ({"slice", "instance_number"} & set(reader.fieldnames or [])):
            raise ValueError(f"{path}: a lesion label CSV needs columns study, sentence and slice or "
                             f"instance_number; it has {reader.fieldnames}")
        for row in reader:
            src = by_name.get(row["study"])
            if src is None:
                continue  # another split's source
            k = None
            if row.get("slice") not in (None, ""):
                k = int(row["slice"])
            elif row.get("instance_number") not in (None, ""):
                k = _slice_from_instance(src, int(row["instance_number"]))
            if k is None or not 0 <= k < src.n_slices or not row["sentence"].strip():
                dropped += 1
                continue
            out.append(LesionLabel(src.name, k, row["sentence"].strip(), (row.get("organ") or None)))
    if dropped:
        log.warning("%s: %d label row(s) dropped (slice out of range or unknown instance number)", path, dropped)
    return out


def _read_table(path: Path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        import pyarrow.dataset as ds

        return ds.dataset(str(path), format="parquet").to_table()
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    return pq.read_table(path)


def _series_number(src: LoadedSource) -> int | None:
    files = getattr(src.volume, "files", None) or []
    if not files or getattr(src.volume, "source", "") != "dicom":
        return None
    import pydicom

    try:
        v = pydicom.dcmread(files[0], stop_before_pixels=True).get("SeriesNumber")
        return int(v) if v not in (None, "") else None
    except Exception:
        return None


def lesion_labels_from_corpus(corpus: Path, sources: list[LoadedSource]) -> list[LesionLabel]:
    """Findings whose text references an image (``findings.image_refs``: series + instance number) of a
    source whose name is the finding's ``study_id``; the instance number is mapped to the slice index
    of the position-sorted series, and a reference to another series number is skipped."""
    folder = Path(corpus) / "tables" / "findings"
    if not folder.is_dir():
        raise FileNotFoundError(f"{corpus} has no findings table (tables/findings/)")
    by_name = {s.name: s for s in sources}
    out = []
    for row in _read_table(folder).to_pylist():
        src = by_name.get(row["study_id"])
        if src is None or not row.get("image_refs"):
            continue
        series_no = _series_number(src)
        for ref in row["image_refs"]:
            if series_no is not None and ref.get("series_number") not in (None, series_no):
                continue
            k = _slice_from_instance(src, ref.get("instance_number"))
            if k is not None:
                out.append(LesionLabel(src.name, k, row["text"], row.get("organ"), None, row.get("status"),
                                       tuple(row.get("abnormalities") or ()), "corpus",
                                       tuple(row.get("negated_abnormalities") or ())))
    return out


def lesion_labels_from_selections(path: Path, sources: list[LoadedSource], corpus: Path | None) -> list[LesionLabel]:
    """Reviewed key slices: ``study_id``, ``finding_id``, ``slice`` (or ``top1_index``), optional
    ``reviewed`` (rows with false are dropped) and ``sentence`` (else the text of the finding in
    ``corpus``)."""
    rows = _read_table(Path(path)).to_pylist()
    texts: dict[str, tuple[str, str | None]] = {}
    if corpus is not None and (Path(corpus) / "tables" / "findings").is_dir():
        for f in _read_table(Path(corpus) / "tables" / "findings").to_pylist():
            texts[f["finding_id"]] = (f["text"], f.get("organ"))
    by_name = {s.name: s for s in sources}
    out = []
    for r in rows:
        if "reviewed" in r and not r["reviewed"]:
            continue
        src = by_name.get(r.get("study_id"))
        if src is None:
            continue
        k = r.get("slice", r.get("top1_index"))
        sentence, organ = r.get("sentence"), r.get("organ")
        if not sentence and r.get("finding_id") in texts:
            sentence, organ = texts[r["finding_id"]]
        if k is None or not sentence or not 0 <= int(k) < src.n_slices:
            continue
        out.append(LesionLabel(src.name, int(k), str(sentence), organ))
    return out


def review_source_name(study_id: str, series_id: str) -> str:
    return f"{study_id}/{series_id}"


def _standing_reviews(corpus: Path) -> list[dict]:
    from keyslice.corpus.sql import connect

    return connect(Path(corpus)).sql(
        "SELECT j.*, f.text FROM review_judgements j JOIN findings f ON f.study_id = j.study_id "
        "AND f.finding_id = j.finding_id ORDER BY j.decided_at").to_arrow_table().to_pylist()


def review_sources(corpus: Path, studies_dir: Path) -> list[LoadedSource]:
    """The series the corpus' reviews judged, read from the studies folder (see the module docstring)."""
    from keyslice.corpus.status import last_build_setting
    from keyslice.dicom import index_study
    from keyslice.errors import MaskError
    from keyslice.pseudonym import load_pseudonymizer
    from keyslice.selector.masks import find_masks
    from keyslice.selector.volume import load_volume
    from keyslice.pipeline.studies import discover_studies

    wanted: dict[str, set[str]] = {}
    for r in _standing_reviews(corpus):
        wanted.setdefault(r["study_id"], set()).add(r["series_id"])
    if not wanted:
        return []
    pseudonymize = load_pseudonymizer(Path(corpus), create=False)
    masks_dir = last_build_setting(Path(corpus), "masks_dir")  # the masks root the reviewed selections saw
    studies = {s.study_id: s for s in discover_studies(Path(studies_dir), pseudonymize) if s.study_id in wanted}
    missing = sorted(set(wanted) - set(studies))
    if missing:
        raise FileNotFoundError(f"{len(missing)} reviewed stud(ies) not found in {studies_dir} with the corpus key "
                                f"(e.g. {missing[0]}): give the studies folder the corpus was built from")
    out = []
    for sid, study in sorted(studies.items()):
        files = {rec.row["series_id"]: rec.files for rec in index_study(study.path, pseudonymize, image_phase=False).series}
        masks = find_masks(study.path, *study.mask_folders(masks_dir))
        for series_id in sorted(wanted[sid]):
            if series_id not in files:
                raise FileNotFoundError(f"series {series_id} of study {sid} is not in {study.path} any more")
            volume = load_volume(files[series_id], decode="eager")
            use = masks
            if masks is not None:
                try:
                    masks.check_overlap(volume)
                except MaskError:
                    use = None
            name = review_source_name(sid, series_id)
            out.append(LoadedSource(name, volume, use, SourceConfig(name=name, ct=str(study.path))))
    return out


def lesion_labels_from_reviews(corpus: Path, sources: list[LoadedSource]) -> list[LesionLabel]:
    """Positive and negative rows from the standing review judgements (see the module docstring)."""
    by_name = {s.name: s for s in sources}
    out = []
    for r in _standing_reviews(corpus):
        src = by_name.get(review_source_name(r["study_id"], r["series_id"]))
        if src is None:
            continue
        organ = None
        rows = []
        if r["decision"] == "accept":
            rows.append((r["selection_top1_index"], 1))
        elif r["decision"] == "choose":
            rows += [(r["chosen_index"], 1), (r["selection_top1_index"], 0)]
        else:  # reject, not_visible
            rows.append((r["selection_top1_index"], 0))
        for k, label in rows:
            if k is not None and 0 <= int(k) < src.n_slices:
                out.append(LesionLabel(src.name, int(k), r["text"], organ, label=label))
    return out


def collect_lesion_labels(pair_cfg, sources: list[LoadedSource]) -> list[LesionLabel]:
    labels: list[LesionLabel] = []
    for s in sources:
        labels += lesion_labels_from_aorta_report(s)
    if pair_cfg.lesion_csv:
        labels += lesion_labels_from_csv(Path(pair_cfg.lesion_csv), sources)
    if pair_cfg.corpus:
        labels += lesion_labels_from_corpus(Path(pair_cfg.corpus), sources)
    if pair_cfg.reviewed_selections:
        labels += lesion_labels_from_selections(Path(pair_cfg.reviewed_selections), sources,
                                                Path(pair_cfg.corpus) if pair_cfg.corpus else None)
    if getattr(pair_cfg, "reviews", None):
        labels += lesion_labels_from_reviews(Path(pair_cfg.reviews), sources)
    return labels


def finding_group_keys(organ: str | None, status: str | None, abnormalities=(), negated_abnormalities=()) -> tuple[str, ...]:
    """False-negative keys of a finding (after fVLM): two findings sharing a key describe images that are not
    negatives of each other.

    * a normal finding of an organ -> ``normal:<organ>`` (every "normal liver" sentence is a positive of every
      other, however worded; so is an abnormal-type sentence whose abnormalities are all negated: "no dissection");
    * an abnormal finding with abnormality types -> ``abnormal:<organ>:<type>`` per asserted type;
    * anything else (uncertain, non-finding, abnormal without a type, no organ) -> no key: only identical
      sentences are grouped (the normalised-sentence group of :class:`Pair`).
    """
    if not organ:
        return ()
    asserted = tuple(a for a in (abnormalities or ()) if a)
    if status == "normal" or (status == "abnormal" and not asserted and negated_abnormalities):
        return (f"normal:{organ}",)
    if status == "abnormal" and asserted:
        return tuple(f"abnormal:{organ}:{a}" for a in dict.fromkeys(asserted))
    return ()


def finding_row_keys(row: dict) -> tuple[str, ...]:
    """:func:`finding_group_keys` of a ``findings`` table row (fields organ, status, abnormalities,
    negated_abnormalities; the last two may be absent in older corpora: then status/organ alone decide)."""
    return finding_group_keys(row.get("organ"), row.get("status"), row.get("abnormalities") or (),
                              row.get("negated_abnormalities") or ())


def lesion_pairs(labels: list[LesionLabel]) -> list[Pair]:
    """One row per gold slice of each label (a range label gives one row per slice of its range): positive,
    or negative for a slice a reviewer rejected for the sentence."""
    out = []
    for lb in labels:
        keys = finding_group_keys(lb.organ, lb.status, lb.abnormalities, lb.negated_abnormalities)
        for k in range(lb.slice, lb.hi + 1):
            out.append(Pair("lesion", lb.source, k, lb.label, lb.organ, lb.sentence,
                            "s:" + normalize_sentence(lb.sentence), keys))
    return out


# --------------------------------------------------------------------------- aorta report (lesion masks)

#: TotalSegmentator aorta-report landmark names -> words of a report sentence.
AORTA_LANDMARK_WORDS = {
    "annulus": "aortic annulus", "sinuses of valsalva": "sinuses of Valsalva",
    "sinotub. junc.": "sinotubular junction", "mid asc. aorta": "mid ascending aorta",
    "distal asc. aorta": "distal ascending aorta", "mid aortic arch": "mid aortic arch",
    "proximal desc. aorta": "proximal descending aorta", "mid desc. aorta": "mid descending aorta",
    "desc. aorta (T12)": "descending aorta at the level of T12",
    "abd. aorta (celiac artery)": "abdominal aorta at the celiac artery",
}


def _slice_of_world_z(src: LoadedSource, z: float) -> int:
    zs = np.asarray(src.volume.positions, dtype=np.float64)[:, 2]
    return int(np.argmin(np.abs(zs - z)))


def lesion_labels_from_aorta_report(src: LoadedSource) -> list[LesionLabel]:
    """Lesion queries of a CT with an aortic dissection, from TotalSegmentator's aorta report and masks (both
    made by models, not by a radiologist):

    * per landmark cross-section (annulus ... abdominal aorta at the celiac artery): a sentence that states a
      false lumen there (``area_fl > 0``: abnormal, type ``dissection``) or its absence (normal), with the
      aortic diameter; gold = the slices spanned by the cross-section's end points (its world z-range);
    * "Aortic dissection with a false lumen in the descending aorta.": gold = the slices from the proximal
      descending aorta landmark down to the lowest landmark with a false lumen that hold the false-lumen mask.
    """
    import json

    if not src.config.aorta_report:
        return []
    data = json.loads(Path(src.config.aorta_report).read_text())
    marks = sorted(data.get("landmarks", {}).items(), key=lambda kv: int(kv[0]))
    out: list[LesionLabel] = []
    z_of: dict[str, tuple[int, int]] = {}
    for _, lm in marks:
        if not lm.get("start") or not lm.get("end"):
            continue                      # a landmark outside the scan (e.g. the bifurcation of a chest CTA)
        name = lm.get("name", "")
        words = AORTA_LANDMARK_WORDS.get(name, name)
        ks = sorted({_slice_of_world_z(src, float(lm["start"][2])), _slice_of_world_z(src, float(lm["end"][2]))})
        z_of[name] = (ks[0], ks[-1])
        d = lm.get("diameter")
        size = f" (aortic diameter {d:.1f} cm)" if isinstance(d, (int, float)) else ""
        if float(lm.get("area_fl") or 0.0) > 0:
            out.append(LesionLabel(src.name, ks[0], f"Aortic dissection with a false lumen at the {words}{size}.",
                                   "aorta", ks[-1], "abnormal", ("dissection",), "aorta_report"))
        else:
            out.append(LesionLabel(src.name, ks[0], f"No dissection flap at the {words}{size}.", "aorta", ks[-1],
                                   "normal", (), "aorta_report"))
    fl = src.presence("aorta_false_lumen") if src.masks is not None else np.zeros(src.n_slices, bool)
    with_fl = [z_of[lm["name"]] for _, lm in marks if float(lm.get("area_fl") or 0.0) > 0 and lm["name"] in z_of]
    top = z_of.get("proximal desc. aorta")
    if fl.any() and with_fl and top is not None:
        lo, hi = min(r[0] for r in with_fl), top[1]
        k = np.nonzero(fl[lo:hi + 1])[0] + lo
        if len(k):
            out.append(LesionLabel(src.name, int(k[0]), "Aortic dissection with a false lumen in the descending aorta.",
                                   "aorta", int(k[-1]), "abnormal", ("dissection",), "aorta_report"))
    return out


# --------------------------------------------------------------------------- body stations

#: Body stations of the station prompts and metric (PMC-MSA's head/neck, chest, abdomen, pelvis).
STATIONS: tuple[str, ...] = tuple(PROMPT_STATION_WORDS)


def label_station(label: str) -> str | None:
    """Station of one TotalSegmentator label (head and neck merged), None when it spans several."""
    from keyslice.finetune.prompts import organ_station

    st = organ_station(label)
    if st in ("head", "neck"):
        return "head_neck"
    return st


def _structure(label: str) -> str:
    """A label's structure without side and number (``rib_left_7`` -> ``rib``), so that 24 ribs count once."""
    import re

    return re.sub(r"(_(left|right))?(_\d+)?$", "", label.lower())


def slice_stations(src: LoadedSource) -> list[str | None]:
    """Per slice, the station with the most distinct segmented structures present on it (sides and numbered
    copies such as ribs count once; None: no structure with a station on the slice; ties go to the earlier
    station of :data:`STATIONS`)."""
    if src._stations is not None:
        return list(src._stations)
    n = src.n_slices
    if src.masks is None:
        return [None] * n
    by_structure: dict[tuple[str, str], np.ndarray] = {}
    for label in sorted(src.masks.labels()):
        st = label_station(label)
        if st is None:
            continue
        p = np.asarray(src.masks.presence([label], src.volume), dtype=bool)
        key = (st, _structure(label))
        by_structure[key] = by_structure.get(key, np.zeros(n, dtype=bool)) | p
    counts = np.zeros((n, len(STATIONS)), dtype=np.int32)
    for (st, _), p in by_structure.items():
        counts[p, STATIONS.index(st)] += 1
    src._stations = [STATIONS[int(np.argmax(c))] if c.max() > 0 else None for c in counts]
    return list(src._stations)


def slice_organs(src: LoadedSource, organs: list[str]) -> list[list[str]]:
    """Per slice, the organs of ``organs`` present on it (in-plane presence, list order)."""
    n = src.n_slices
    out: list[list[str]] = [[] for _ in range(n)]
    for organ in organs:
        if not src.has_organ_labels(organ):
            continue
        for k in np.nonzero(src.presence(organ))[0]:
            out[int(k)].append(organ)
    return out


def build_station_pairs(sources: list[LoadedSource], rows_per_station: int, seed: int) -> list[Pair]:
    """``rows_per_station`` rows per station (slices whose station label is that station, all training CTs);
    the station prompt (station + organs on the slice) is drawn per batch."""
    pairs: list[Pair] = []
    if rows_per_station <= 0:
        return pairs
    per_src = {s.name: slice_stations(s) for s in sources}
    for st in STATIONS:
        pool = [(s.name, k) for s in sources for k, x in enumerate(per_src[s.name])
                if x == st and bool(np.asarray(s.volume.valid, bool)[k])]
        if not pool:
            continue
        rng = _organ_rng(seed, "station:" + st)
        pairs += [Pair("station", src, k, 1, None, None, "station:" + st) for src, k in _draw(pool, rows_per_station, rng)]
    return pairs


def pairs_table(pairs: list[Pair]):
    import pyarrow as pa

    cols = {k: [getattr(p, k) for p in pairs] for k in ("kind", "source", "slice", "label", "organ", "text", "group")}
    return pa.table({
        "kind": pa.array(cols["kind"], pa.string()), "source": pa.array(cols["source"], pa.string()),
        "slice": pa.array(cols["slice"], pa.int32()), "label": pa.array(cols["label"], pa.int8()),
        "organ": pa.array(cols["organ"], pa.string()), "text": pa.array(cols["text"], pa.string()),
        "group": pa.array(cols["group"], pa.string()),
        "fn_keys": pa.array([list(p.fn_keys) for p in pairs], pa.list_(pa.string())),
    })


def stats_rows(stats: list[OrganPairStats]) -> list[dict]:
    return [asdict(s) for s in stats]
