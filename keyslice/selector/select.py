"""Choose the key slice(s) of a series for each finding sentence.

For every query (one finding sentence):

1. choose a display window (from its organs, or ``SelectorConfig.window``);
2. embed the series' slices in that window — once per (series, model, window), reused by
   every query of the study (memoised on the Volume, and in the on-disk
   :class:`~keyslice.selector.cache.EmbeddingCache` when given) — all windows of the study
   from one decoding pass: stored values stream in chunks from the decode pool (pinned
   memory on CUDA), go to the device as int16 and are preprocessed there in batches
   (:func:`~keyslice.selector.preprocess.prepare_chunk`), encoded with bf16 autocast on CUDA;
   on a CPU encoder a background thread preprocesses the next chunks while the encoder runs;
3. embed the sentences (once per sentence hash);
4. score all sentences of a window against all slices with one matrix product of unit
   vectors (cosine similarity), optionally smooth each curve along z with a Gaussian
   (``smooth_sigma`` in slices), optionally restrict to the z-range of the finding's
   organ in the study's masks, and take top-1 / top-k.

Slice embeddings are rounded through float16 (the cache's storage type) whether or not a
cache is used, so a cached rerun scores exactly like the first run.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch

from keyslice.errors import MaskError, TransientError
from keyslice.selector.cache import EmbeddingCache, geometry_fingerprint, text_hash
from keyslice.selector.model import ClipEncoder
from keyslice.selector.prefetch import prefetch as prefetch_items
from keyslice.selector.preprocess import PREPROCESS_VERSION, prepare_chunk
from keyslice.selector.spatial import SpatialConfig, plan_for_volume
from keyslice.selector.windows import choose_window, get_window

log = logging.getLogger(__name__)

#: Chunks preprocessed at once beside a CPU encoder. On 2 cores, with the encoder yielding its cores to
#: the workers (:class:`_EncoderThreads`), 1 and 2 workers tied for the tiny model at 64 px (medians
#: 848-1,087 against 814-982 slices/s, 4 interleaved pairs) and 1 led at 224 px (420-484 against
#: 380-444): the second worker only adds a thread to share the same cores.
PREPARE_WORKERS = 1


@dataclass(frozen=True)
class SelectorConfig:
    top_k: int = 5
    window: str = "auto"                # "auto": per query from its organs; or a window name / "W<w>L<l>"
    smooth_sigma: float = 0.0           # Gaussian sigma along z, in slices; 0 = off
    batch_size: int | str = "auto"      # "auto": from free GPU memory (CUDA) or 16 (CPU)
    restrict_to_organ: bool = True      # use the masks' z-range of the query's ts_labels when available
    z_margin_mm: float = 0.0            # widen the organ z-range by this much on both sides
    # Masks that do not overlap the series at all (another frame of reference, wrong affine):
    # "ignore" = select unrestricted (restricted_to None) and log a warning; "raise" = MaskError.
    on_mask_mismatch: str = "ignore"
    # batches read ahead of the encoder (into pinned memory on CUDA; on a CPU encoder also preprocessed, in a
    # background thread; 0: read and preprocess in turn with encoding, in the caller's thread)
    prefetch_batches: int = 2
    # CPU encoder: chunks preprocessed at once by that many single-threaded workers
    prepare_workers: int = PREPARE_WORKERS
    # Confidence: the margin compares the top-1 score with the best slice farther than this from it
    # (the same tolerance as Acc@1), and a margin below ``uncertain_margin`` flags the selection.
    confidence_tolerance_mm: float = 10.0
    uncertain_margin: float = 0.01
    #: spatial normalisation between HU and windowing (fixed mm/px, body-centred field of view); off by default
    spatial: SpatialConfig = field(default_factory=SpatialConfig)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.window != "auto":
            get_window(self.window)
        if self.on_mask_mismatch not in ("raise", "ignore"):
            raise ValueError("on_mask_mismatch must be 'raise' or 'ignore'")
        if self.confidence_tolerance_mm < 0:
            raise ValueError("confidence_tolerance_mm must be >= 0")
        if self.prefetch_batches < 0 or self.prepare_workers < 1:
            raise ValueError("prefetch_batches must be >= 0 and prepare_workers >= 1")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size > 0)):
            raise ValueError("batch_size must be 'auto' or a positive int")


@dataclass(frozen=True)
class Query:
    finding_id: str
    text: str
    organs: list[str] = field(default_factory=list)
    ts_labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SliceChoice:
    finding_id: str
    window: str
    n_slices: int
    top1_index: int
    top1_score: float
    topk_indices: tuple[int, ...]
    topk_scores: tuple[float, ...]
    restricted_to: str | None
    z_range_mm: tuple[float, float] | None
    top1_instance_number: int | None = None
    top1_z_mm: float | None = None
    model_id: str = ""
    weights_sha256: str = ""
    curve: tuple[float, ...] = field(default=(), repr=False, compare=False)  # scores of every slice
    margin: float | None = None
    peakedness: float | None = None
    uncertain: bool | None = None

    def record(self) -> dict:
        """The fields of a ``selections`` row that the selector knows (the caller adds study_id,
        series_id, image_path, created_at)."""
        return {
            "finding_id": self.finding_id, "model_id": self.model_id, "weights_sha256": self.weights_sha256,
            "window": self.window, "n_slices": self.n_slices, "top1_index": self.top1_index,
            "top1_instance_number": self.top1_instance_number, "top1_z_mm": self.top1_z_mm,
            "top1_score": self.top1_score, "topk_indices": list(self.topk_indices),
            "topk_scores": list(self.topk_scores), "restricted_to": self.restricted_to,
            "z_range_mm": list(self.z_range_mm) if self.z_range_mm is not None else None,
            "margin": self.margin, "peakedness": self.peakedness, "uncertain": self.uncertain,
            "curve": list(self.curve) if self.curve else None,
        }


# --------------------------------------------------------------------------- batch size


def auto_batch_size(encoder: ClipEncoder, slice_hw: tuple[int, int]) -> int:
    """CPU: 16. CUDA: what half the free device memory holds, from a per-image estimate."""
    if encoder.device.type != "cuda":
        return 16
    free, _total = torch.cuda.mem_get_info(encoder.device)
    visual = getattr(encoder.model, "visual", None)
    width = getattr(getattr(visual, "transformer", None), "width", 1024)
    heads = max(1, width // 64)
    grid = getattr(visual, "grid_size", (encoder.image_size // 16, encoder.image_size // 16))
    tokens = int(np.prod(grid)) + 1
    act = 2 if encoder.precision in ("bf16", "fp16") else 4
    per_image = (tokens * 4 * width * act * 3           # MLP hidden + residual stream, a few live copies
                 + tokens * tokens * heads * 4           # attention scores (fp32 softmax worst case)
                 + slice_hw[0] * slice_hw[1] * 4 * 4     # HU, windowed and resized intermediates
                 + 3 * encoder.image_size ** 2 * 4 * 2)  # model input
    bs = int(0.5 * free / per_image)
    return int(max(8, min(512, bs // 8 * 8 or 8)))


# --------------------------------------------------------------------------- slice embeddings


def _prepare(encoder: ClipEncoder, batch: "_Stored", windows: list, plan=None) -> list[torch.Tensor]:
    """One model input per window for a batch of stored values, on the encoder's device.
    ``plan``: spatial normalisation (HU -> fixed mm/px, body-centred square), applied before windowing."""
    return prepare_chunk(batch.stored.to(encoder.device, non_blocking=True), batch.slope, batch.intercept, windows,
                         encoder.image_size, encoder.mean, encoder.std, valid=batch.valid,
                         spatial=plan.apply if plan is not None else None, resize_mode=encoder.resize_mode)


@dataclass(frozen=True)
class _Stored:
    """A batch of stored slice values with their rescale parameters and validity, preprocessed
    on the encoder's device when encoded."""

    stored: torch.Tensor
    slope: np.ndarray
    intercept: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return self.stored.shape[0]

    def part(self, a: int, b: int) -> "_Stored":
        return _Stored(self.stored[a:b], self.slope[a:b], self.intercept[a:b], self.valid[a:b])

    def encode(self, encoder: ClipEncoder, windows: list, plan=None) -> list[torch.Tensor]:
        return [encoder.encode_images(x, keep_on_device=True) for x in _prepare(encoder, self, windows, plan)]


@dataclass(frozen=True)
class _Prepared:
    """A batch already preprocessed: one model input ``[B, 3, S, S]`` per window, and the seconds
    its preprocessing took on its worker."""

    inputs: list[torch.Tensor]
    seconds: float = 0.0

    def __len__(self) -> int:
        return self.inputs[0].shape[0]

    def part(self, a: int, b: int) -> "_Prepared":
        return _Prepared([x[a:b] for x in self.inputs], self.seconds * (b - a) / len(self))

    def encode(self, encoder: ClipEncoder, windows: list, plan=None) -> list[torch.Tensor]:
        return [encoder.encode_images(x, keep_on_device=True) for x in self.inputs]


def _encode_robust(encoder: ClipEncoder, batch: _Stored | _Prepared, windows: list, state: dict,
                   plan=None) -> list[list[torch.Tensor]]:
    """Embeddings per window (a list of parts each), halving the batch on out-of-memory;
    later batches of the series are cut to the size that fitted, so that the device runs out
    of memory once per series, not once per batch."""
    bs, n = state["batch_size"], len(batch)
    if n > bs:
        parts = [_encode_robust(encoder, batch.part(s, s + bs), windows, state, plan) for s in range(0, n, bs)]
        return [[e for p in parts for e in p[w]] for w in range(len(windows))]
    try:
        return [[e] for e in batch.encode(encoder, windows, plan)]
    except torch.OutOfMemoryError as e:
        if encoder.device.type == "cuda":
            torch.cuda.empty_cache()
        if n <= 1:
            raise TransientError(f"out of GPU memory encoding a single slice: {e}") from e
        half = n // 2
        state["batch_size"] = max(1, half)
        log.warning("CUDA OOM at batch %d; retrying with %d", n, half)
        first = _encode_robust(encoder, batch.part(0, half), windows, state, plan)
        second = _encode_robust(encoder, batch.part(half, n), windows, state, plan)
        return [a + b for a, b in zip(first, second)]


def encode_volume_windows(volume, window_names: list[str], encoder: ClipEncoder, batch_size: int | str = "auto",
                          prefetch: int = 2, spatial: SpatialConfig | None = None, *,
                          prepare_workers: int = PREPARE_WORKERS) -> dict[str, torch.Tensor]:
    """Embed every slice of ``volume`` in each window: ``{window: [n, D]}`` float32 unit vectors (CPU).

    The series is decoded once for all windows: :meth:`Volume.chunks` streams stored values
    in chunks of one batch, decoded ahead by the worker pool. On an accelerator, ``prefetch``
    chunks are decoded ahead into pinned memory while the current chunk is moved to the
    device as int16, preprocessed there for every window (:func:`prepare_chunk`) and encoded.
    On a CPU encoder, preprocessing is host work too, so it moves off the encoder's thread:
    one background thread reads and preprocesses up to ``prefetch`` chunks ahead
    (:func:`~keyslice.selector.prefetch.prefetch`) while the encoder encodes the current one;
    ``prefetch=0`` does both in turn in the caller's thread (same embeddings); ``prepare_workers``
    > 1 preprocesses that many chunks at once (:func:`prepared_chunks`). Embeddings stay
    on the device until the series is done and come back in one copy. ``spatial`` (when enabled):
    one plan per series (:func:`~keyslice.selector.spatial.plan_for_volume`) applied to the HU.
    """
    windows = [get_window(w) for w in window_names]
    plan = plan_for_volume(volume, spatial) if spatial is not None and spatial.enabled else None
    n, rows, cols = volume.shape
    bs = auto_batch_size(encoder, (rows, cols)) if batch_size == "auto" else int(batch_size)
    cuda = encoder.device.type == "cuda"
    state = {"batch_size": bs}
    out: list[list[torch.Tensor]] = [[] for _ in windows]
    if encoder.device.type == "cpu":
        prepared = prepared_chunks(volume, encoder, windows, bs, plan, workers=prepare_workers)
        beside = prefetch > 0 or prepare_workers > 1  # preprocessing runs in other threads
        with _EncoderThreads(prepare_workers if beside else 0) as threads:
            for batch in prefetch_items(prepared, max(0, prefetch), initializer=single_torch_thread):
                started = time.perf_counter()
                for w, embs in enumerate(_encode_robust(encoder, batch, windows, state)):
                    out[w].extend(embs)
                threads.update(batch.seconds, time.perf_counter() - started)
        return {name: torch.cat(embs) if embs else torch.zeros(0, encoder.embed_dim)
                for name, embs in zip(window_names, out)}
    for chunk in volume.chunks(bs, buffers=max(1, prefetch) + 1, pin=cuda):
        s, e = chunk.start, chunk.stop
        batch = _Stored(torch.from_numpy(chunk.stored), volume.slope[s:e], volume.intercept[s:e],
                        volume.valid[s:e] & chunk.valid)
        if cuda:  # copy to the device first; the buffer is reused once that copy is done
            batch = _Stored(batch.stored.to(encoder.device, non_blocking=True), batch.slope, batch.intercept,
                            batch.valid)
            copied = torch.cuda.Event()
            copied.record()
            chunk.release(wait=copied.synchronize)
        try:
            for w, embs in enumerate(_encode_robust(encoder, batch, windows, state, plan)):
                out[w].extend(embs)
        finally:
            chunk.release()
    return {name: torch.cat(embs).cpu() if embs else torch.zeros(0, encoder.embed_dim)
            for name, embs in zip(window_names, out)}


class _EncoderThreads:
    """The torch threads of a CPU encoder's thread beside ``workers`` single-threaded preprocessing
    workers, chosen again after every batch, and restored at the end.

    While the workers are the bottleneck (a batch's preprocessing, spread over the workers, took
    longer than its encoding) the encoder gives them its cores: it runs on the cores left over
    (at least 1), since its OpenMP threads would otherwise spin against the workers for the same
    cores. While the encoder is the bottleneck (any real model on a CPU) it keeps all of its
    threads. On 2 cores with the tiny model (64 px, 200 slices) end-to-end selection went from a
    median of 773 to 956 slices/s with it (``benchmarks/bench_encoder_threads.py``: 5 interleaved
    rounds, each the median of 15 runs; ahead in all 5).
    """

    def __init__(self, workers: int):
        self.full = torch.get_num_threads()
        self.shared = max(1, self.full - workers)
        self.workers = workers
        self.now = self.full

    def update(self, prep_seconds: float, encode_seconds: float) -> None:
        if not self.workers:
            return
        want = self.shared if prep_seconds / self.workers > encode_seconds else self.full
        if want != self.now:
            torch.set_num_threads(want)
            self.now = want

    def __enter__(self) -> "_EncoderThreads":
        return self

    def __exit__(self, *exc) -> None:
        if self.now != self.full:
            torch.set_num_threads(self.full)


def single_torch_thread() -> None:
    """Run this thread's torch kernels on one core (the setting is per thread; the encoder's
    thread keeps its own).

    A preprocessing thread beside a CPU encoder would otherwise start an OpenMP team as wide as
    the machine for every elementwise pass, and the teams of the encoder and of each
    preprocessing thread spin against each other for the same cores: on 2 cores, end-to-end
    selection of 200 slices with the tiny model and 2 workers went from 758 to 867 slices/s
    (medians of 11) with the workers at one torch thread each."""
    torch.set_num_threads(1)


def prepared_chunks(volume, encoder: ClipEncoder, windows: list, bs: int, plan=None, *,
                    workers: int = 1) -> Iterator[_Prepared]:
    """Model inputs (one per window) of each chunk of ``bs`` slices, in order, each chunk's buffer
    released as soon as they are made (the stored values are not needed after preprocessing).
    ``workers`` > 1 preprocesses that many chunks at once in a thread pool of single-threaded
    torch workers (:func:`single_torch_thread`; torch's kernels release the GIL, so each uses one core)."""

    def prepare(chunk) -> _Prepared:
        s, e = chunk.start, chunk.stop
        started = time.perf_counter()
        try:
            batch = _Stored(torch.from_numpy(chunk.stored), volume.slope[s:e], volume.intercept[s:e],
                            volume.valid[s:e] & chunk.valid)
            return _Prepared(_prepare(encoder, batch, windows, plan), time.perf_counter() - started)
        finally:
            chunk.release()

    if workers <= 1:
        for chunk in volume.chunks(bs, buffers=2):
            yield prepare(chunk)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="keyslice-prepare", initializer=single_torch_thread) as pool, \
            closing(volume.chunks(bs, buffers=workers + 1, release_on_next=False)) as chunks:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare, chunk))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_volume(volume, window_name: str, encoder: ClipEncoder, batch_size: int | str = "auto",
                  prefetch: int = 2, spatial: SpatialConfig | None = None) -> torch.Tensor:
    """Embed every slice of ``volume`` in one window: ``[n, D]`` (see :func:`encode_volume_windows`)."""
    return encode_volume_windows(volume, [window_name], encoder, batch_size, prefetch, spatial)[window_name]


def slice_embeddings_windows(volume, window_names: list[str], encoder: ClipEncoder, *,
                             batch_size: int | str = "auto", cache: EmbeddingCache | None = None,
                             cache_key: str | None = None, prefetch: int = 2,
                             spatial: SpatialConfig | None = None,
                             prepare_workers: int = PREPARE_WORKERS) -> dict[str, torch.Tensor]:
    """Slice embeddings of one series in several windows: each from the Volume's memo, the disk
    cache, or computed (all missing windows in one decoding pass), then stored in both.
    float16-rounded float32 ``[n, D]`` per window."""
    version = PREPROCESS_VERSION + (f"+{spatial.key()}" if spatial is not None and spatial.enabled else "")
    memo = volume._emb_memo
    result: dict[str, torch.Tensor] = {}
    missing: dict[str, str | None] = {}
    for window_name in dict.fromkeys(window_names):
        memo_key = (encoder.model_id, encoder.weights_sha256, window_name, version)
        if memo_key in memo:
            result[window_name] = memo[memo_key]
            continue
        disk_key = None
        if cache is not None and cache_key is not None:
            disk_key = cache.image_key(cache_key, encoder.model_id, encoder.weights_sha256, window_name,
                                       version, geometry_fingerprint(volume))
            hit = cache.get_images(disk_key)
            if hit is not None and hit.shape[0] == volume.n_slices:
                result[window_name] = memo[memo_key] = torch.from_numpy(hit)
                continue
        missing[window_name] = disk_key
    if missing:
        computed = encode_volume_windows(volume, list(missing), encoder, batch_size, prefetch, spatial,
                                         prepare_workers=prepare_workers)
        for window_name, disk_key in missing.items():
            emb16 = computed[window_name].to(torch.float16)
            if disk_key is not None:
                cache.put_images(disk_key, emb16.numpy())
            memo_key = (encoder.model_id, encoder.weights_sha256, window_name, version)
            result[window_name] = memo[memo_key] = emb16.float()
    return result


def slice_embeddings(volume, window_name: str, encoder: ClipEncoder, *, batch_size: int | str = "auto",
                     cache: EmbeddingCache | None = None, cache_key: str | None = None,
                     prefetch: int = 2, spatial: SpatialConfig | None = None) -> torch.Tensor:
    """Slice embeddings of one (series, model, window) (see :func:`slice_embeddings_windows`)."""
    return slice_embeddings_windows(volume, [window_name], encoder, batch_size=batch_size, cache=cache,
                                    cache_key=cache_key, prefetch=prefetch, spatial=spatial)[window_name]


def text_embeddings(texts: list[str], encoder: ClipEncoder, cache: EmbeddingCache | None = None) -> torch.Tensor:
    """``[len(texts), D]``; each distinct sentence encoded once (memo on the encoder + disk cache by hash)."""
    memo = encoder.__dict__.setdefault("_text_memo", {})
    mkey = EmbeddingCache.model_key(encoder.model_id, encoder.weights_sha256)
    missing = []
    for t in dict.fromkeys(texts):
        h = text_hash(t)
        if h in memo:
            if cache is not None and not cache.has_text(mkey, t):
                cache.put_text(mkey, t, memo[h].to(torch.float16).numpy())
            continue
        if cache is not None:
            hit = cache.get_text(mkey, t)
            if hit is not None:
                memo[h] = torch.from_numpy(hit)
                continue
        missing.append(t)
    if missing:
        emb = encoder.encode_texts(missing).to(torch.float16)
        for t, e in zip(missing, emb):
            memo[text_hash(t)] = e.float()
            if cache is not None:
                cache.put_text(mkey, t, e.numpy())
    if not texts:
        return torch.zeros(0, encoder.embed_dim)
    return torch.stack([memo[text_hash(t)] for t in texts])


# --------------------------------------------------------------------------- scoring


def gaussian_smooth(scores: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth ``[q, n]`` curves along the last axis (edge-replicated), sigma in slices."""
    if sigma <= 0 or scores.shape[-1] < 2:
        return scores
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(scores.dtype)
    padded = torch.nn.functional.pad(scores.unsqueeze(1), (radius, radius), mode="replicate")
    return torch.nn.functional.conv1d(padded, k.view(1, 1, -1)).squeeze(1)


@dataclass(frozen=True)
class Confidence:
    margin: float | None       # top-1 minus the best allowed slice outside the tolerance window
    peakedness: float | None   # z-score of the top-1 score among the allowed slices
    uncertain: bool | None     # margin < threshold; None when there is no margin


def selection_confidence(curve, allowed, z_mm, top: int, tolerance_mm: float, threshold: float) -> Confidence:
    """How clearly a curve singles out its top-1 slice.

    A second peak far from the top-1 slice (a different level of the body) means the model could
    as well have chosen elsewhere, whereas neighbours of the top-1 slice score alike in any smooth
    curve; so the margin is taken against the best *allowed* slice more than ``tolerance_mm`` away
    (the tolerance of Acc@1: a slice within it counts as the same answer). Peakedness says how far
    the top-1 stands above the bulk of the curve, in standard deviations.
    """
    scores = np.asarray(curve, dtype=np.float64)
    ok = np.asarray(allowed, dtype=bool)
    z = np.asarray(z_mm, dtype=np.float64)
    far = ok & (np.abs(z - z[top]) > tolerance_mm + 1e-6)
    margin = float(scores[top] - scores[far].max()) if far.any() else None
    peakedness = None
    if ok.sum() >= 2:
        std = float(scores[ok].std())
        peakedness = float((scores[top] - scores[ok].mean()) / std) if std > 0 else 0.0
    return Confidence(margin, peakedness, None if margin is None else bool(margin < threshold))


def window_for_query(query: Query, config: SelectorConfig, encoder: ClipEncoder) -> str:
    if config.window != "auto":
        return config.window
    return choose_window(list(query.organs), default=getattr(encoder, "training_window", None))


def select_key_slices(volume, queries: list[Query], encoder: ClipEncoder, config: SelectorConfig,
                      masks=None, cache: EmbeddingCache | None = None,
                      cache_key: str | None = None) -> list[SliceChoice]:
    """One :class:`SliceChoice` per query, in the order of ``queries`` (see the module docstring)."""
    if not queries:
        return []
    windows = [window_for_query(q, config, encoder) for q in queries]
    use_masks = masks is not None and config.restrict_to_organ and any(q.ts_labels for q in queries)
    if use_masks:
        try:
            masks.check_overlap(volume)
        except MaskError:
            if config.on_mask_mismatch == "raise":
                raise
            log.warning("organ masks do not overlap this series (%s); selecting without organ restriction",
                        volume.shape)
            use_masks = False

    texts = text_embeddings([q.text for q in queries], encoder, cache)
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(w, []).append(i)

    results: list[SliceChoice | None] = [None] * len(queries)
    # every window's slice embeddings from one decoding pass over the series
    slice_embeddings_windows(volume, list(groups), encoder, batch_size=config.batch_size, cache=cache,
                             cache_key=cache_key, prefetch=config.prefetch_batches, spatial=config.spatial,
                             prepare_workers=config.prepare_workers)
    for window_name, idxs in groups.items():
        img = slice_embeddings(volume, window_name, encoder, batch_size=config.batch_size, cache=cache,
                               cache_key=cache_key, prefetch=config.prefetch_batches, spatial=config.spatial)
        volume.wait()  # decode finished: validity of every slice is known
        valid = torch.from_numpy(np.asarray(volume.valid, dtype=bool))
        raw = texts[idxs] @ img.T                                    # [q, n] cosine similarities
        if not bool(valid.all()):
            fill = raw[:, valid].mean(dim=1, keepdim=True)
            raw = torch.where(valid.unsqueeze(0), raw, fill)
        curves = gaussian_smooth(raw, config.smooth_sigma)
        for row, qi in enumerate(idxs):
            results[qi] = _choose(volume, queries[qi], window_name, curves[row], valid, config, encoder,
                                  masks if use_masks else None)
    return results  # type: ignore[return-value]


def _choose(volume, query: Query, window_name: str, curve: torch.Tensor, valid: torch.Tensor,
            config: SelectorConfig, encoder: ClipEncoder, masks) -> SliceChoice:
    allowed = valid.clone()
    restricted_to, z_range = None, None
    if masks is not None and query.ts_labels:
        present = masks.present_labels(query.ts_labels)
        rng = masks.z_range(present, volume) if present else None
        if rng is not None:
            z = torch.from_numpy(np.asarray(volume.z_mm, dtype=np.float64))
            lo, hi = rng[0] - config.z_margin_mm - 1e-3, rng[1] + config.z_margin_mm + 1e-3
            inside = (z >= lo) & (z <= hi) & valid
            if bool(inside.any()):
                allowed = inside
                restricted_to = "+".join(present)
                z_range = (float(rng[0]), float(rng[1]))
    masked = torch.where(allowed, curve, torch.full_like(curve, -math.inf))
    k = min(config.top_k, int(allowed.sum()))
    scores, idx = torch.topk(masked, k)
    top = int(idx[0])
    inst = volume.instance_numbers[top] if volume.instance_numbers else None
    conf = selection_confidence(curve.numpy(), allowed.numpy(), volume.z_mm, top,
                                config.confidence_tolerance_mm, config.uncertain_margin)
    return SliceChoice(
        finding_id=query.finding_id, window=window_name, n_slices=volume.n_slices, top1_index=top,
        top1_score=float(scores[0]), topk_indices=tuple(int(i) for i in idx),
        topk_scores=tuple(float(s) for s in scores), restricted_to=restricted_to, z_range_mm=z_range,
        top1_instance_number=inst, top1_z_mm=float(volume.z_mm[top]), model_id=encoder.model_id,
        weights_sha256=encoder.weights_sha256, curve=tuple(float(c) for c in curve),
        margin=conf.margin, peakedness=conf.peakedness, uncertain=conf.uncertain,
    )
