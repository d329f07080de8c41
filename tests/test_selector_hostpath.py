"""Step 3's host data path: windows applied to stored values equal the HU path bit for bit on the
real series, the prefetch thread overlaps preprocessing with encoding without changing a value
and stays bounded, and step 2's headers are used instead of reading them again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from keyslice.dicom import index_study
from keyslice.selector import load_model, load_volume, save_tiny_checkpoint
from keyslice.selector import preprocess as pre
from keyslice.selector.prefetch import prefetch
from keyslice.selector.select import encode_volume_windows
from keyslice.selector.windows import WINDOWS, get_window
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SERIES = {
    "siemens-j2k": REF / "example_ct_dicom",
    "philips": DATA / "philips_phantom_study" / "S21570" / "S2010",
    "dcmqi": DATA / "dcmqi_ct3slice" / "ct-3slice",
    "ge-tilt": DATA / "ge_head_ct_tilt",
}

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def stored_of(vol) -> torch.Tensor:
    chunk = next(vol.chunks(vol.n_slices))
    stored = torch.from_numpy(chunk.stored.copy())
    chunk.release()
    return stored


# --------------------------------------------------------------------------- windows from stored values


@needs_data
@pytest.mark.parametrize("name", list(SERIES))
def test_window_from_stored_values_equals_the_hu_window_on_real_series(name, monkeypatch):
    """Every window of the vocabulary, on every slice of the real series (uint16 and int16 stored
    values, intercepts -1024 and 0): the same 8-bit levels as HU -> window, value for value,
    by the folded shift (the HU path's own window_levels is not used)."""
    vol = load_volume(files(SERIES[name]))
    stored = stored_of(vol)
    values = pre.stored_as_float(stored)
    expect = {wname: pre.window_levels(pre.hu_from_stored(stored, vol.slope, vol.intercept), get_window(wname))
              for wname in WINDOWS}

    def no_hu_window(*a, **k):
        raise AssertionError("fell back to the HU window")

    monkeypatch.setattr(pre, "window_levels", no_hu_window)
    for wname in WINDOWS:
        got = pre.window_stored(values, vol.slope, vol.intercept, get_window(wname))
        assert torch.equal(got, expect[wname]), (name, wname)
    assert torch.equal(values, stored.to(torch.float32))  # not inplace: shared by the windows


def test_window_from_stored_values_general_rescale_and_invalid_rows():
    """Slopes other than 1, fractional intercepts and intercepts that differ per slice take the HU
    path's own operations (still equal); undecodable rows show air, as in the HU path."""
    rng = np.random.default_rng(0)
    stored = torch.from_numpy(rng.integers(-2048, 4096, (4, 16, 16)).astype(np.int16))
    valid = [True, False, True, True]
    cases = [([1, 1, 1, 1], [-1024, -1024, -1000, 0]),       # whole-number shift, per slice
             ([1, 1, 1, 1], [-1024.5] * 4),                   # fractional intercept
             ([0.5, 0.5, 2.0, 1.0], [-1024, -1024, 10, 0])]   # slopes other than 1
    for slope, intercept in cases:
        for wname in ("abdomen", "lung", "bone", "W355L47.5", "W400L40.5"):
            w = get_window(wname)
            expect = pre.window_levels(pre.hu_from_stored(stored, slope, intercept, valid), w)
            got = pre.window_stored(pre.stored_as_float(stored), slope, intercept, w, valid)
            assert torch.equal(got, expect), (slope, intercept, wname)
            assert torch.all(got[1] == pre.air_level(w))


@needs_data
def test_prepare_chunk_without_spatial_never_makes_hu(monkeypatch):
    vol = load_volume(files(SERIES["dcmqi"]))
    stored = stored_of(vol)
    windows = [get_window(w) for w in ("abdomen", "lung")]
    expect = [pre.preprocess_batch(pre.hu_from_stored(stored, vol.slope, vol.intercept), w, 64, (0.5,) * 3, (0.25,) * 3)
              for w in windows]

    def no_hu(*a, **k):
        raise AssertionError("HU image made")

    monkeypatch.setattr(pre, "hu_from_stored", no_hu)
    got = pre.prepare_chunk(stored, vol.slope, vol.intercept, windows, 64, (0.5,) * 3, (0.25,) * 3)
    assert all(torch.equal(g, e) for g, e in zip(got, expect))


# --------------------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_stays_within_depth():
    """A fast producer and a slow consumer: items come in order, and the producer is never more
    than ``depth`` finished items (+ the one it is making) ahead of the consumer."""
    made, taken = [0], [0]
    ahead = []

    def produce():
        for i in range(40):
            made[0] += 1
            ahead.append(made[0] - taken[0])
            yield i

    got = []
    for x in prefetch(produce(), 3):
        got.append(x)
        taken[0] += 1
        time.sleep(0.002)
    assert got == list(range(40))
    assert max(ahead) <= 3 + 2  # queue (3) + the item being made + the one the consumer holds
    assert max(ahead) >= 3  # and it did run ahead


def test_prefetch_runs_the_producer_in_another_thread_unless_depth_is_zero():
    def names():
        for _ in range(3):
            yield threading.current_thread().name

    assert set(prefetch(names(), 2)) == {"keyslice-prefetch"}
    assert set(prefetch(names(), 0)) == {threading.current_thread().name}


def test_prefetch_raises_the_producers_error_in_the_consumer():
    def produce():
        yield 1
        raise ValueError("corrupt chunk")

    it = prefetch(produce(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="corrupt chunk"):
        next(it)


def test_prefetch_stops_and_closes_the_producer_when_the_consumer_stops():
    closed = []

    def produce():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.append(threading.current_thread().name)

    before = threading.active_count()
    for x in prefetch(produce(), 2):
        if x == 5:
            break
    assert closed == ["keyslice-prefetch"]  # the source's cleanup ran in the producer's thread
    assert threading.active_count() <= before


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_model(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=5)), device="cpu")


@needs_data
def test_prefetched_preprocessing_gives_the_same_embeddings(encoder, monkeypatch):
    """On a CPU encoder, chunks are preprocessed in the prefetch thread (or a pool of workers)
    while the encoder runs, each preprocessing thread on one torch thread: bit-identical
    embeddings to preprocessing in turn (prefetch 0), in several windows; the caller's own torch
    thread count is what it was before."""
    import keyslice.selector.select as sel

    threads = []
    real = sel.prepare_chunk

    def spy(*a, **k):
        threads.append((threading.current_thread().name, torch.get_num_threads()))
        return real(*a, **k)

    monkeypatch.setattr(sel, "prepare_chunk", spy)
    vol = load_volume(files(SERIES["philips"]))
    windows = ["abdomen", "lung"]
    before = torch.get_num_threads()
    seq = encode_volume_windows(vol, windows, encoder, batch_size=4, prefetch=0, prepare_workers=1)
    assert set(threads) == {(threading.current_thread().name, before)}
    threads.clear()
    ahead = encode_volume_windows(vol, windows, encoder, batch_size=4, prefetch=2, prepare_workers=1)
    assert set(threads) == {("keyslice-prefetch", 1)} and len(threads) == -(-vol.n_slices // 4)
    threads.clear()
    pooled = encode_volume_windows(vol, windows, encoder, batch_size=4, prefetch=2, prepare_workers=2)
    assert {(name.rsplit("_", 1)[0], n) for name, n in threads} == {("keyslice-prepare", 1)}
    assert torch.get_num_threads() == before
    for w in windows:
        assert seq[w].shape == (vol.n_slices, encoder.embed_dim)
        assert torch.equal(seq[w], ahead[w]) and torch.equal(seq[w], pooled[w]), w


def test_encoder_gives_its_cores_to_the_workers_only_while_they_are_the_bottleneck():
    """Beside 2 preprocessing workers, a CPU encoder with 4 threads drops to 2 while a batch's
    preprocessing (per worker) takes longer than its encoding, goes back to 4 when encoding is
    slower, and leaves with the count it came with; with no workers beside it, it never changes."""
    from keyslice.selector.select import _EncoderThreads

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with _EncoderThreads(2) as threads:
            threads.update(prep_seconds=0.5, encode_seconds=0.1)    # 0.25 s per worker > 0.1 s
            assert torch.get_num_threads() == 2
            threads.update(prep_seconds=0.5, encode_seconds=0.3)    # 0.25 s per worker < 0.3 s
            assert torch.get_num_threads() == 4
            threads.update(prep_seconds=0.5, encode_seconds=0.1)
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
        with _EncoderThreads(0) as alone:
            alone.update(prep_seconds=9.0, encode_seconds=0.1)
            assert torch.get_num_threads() == 4
        torch.set_num_threads(1)
        with _EncoderThreads(2) as one:
            one.update(prep_seconds=9.0, encode_seconds=0.1)
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@needs_data
def test_several_preprocessing_workers_hold_at_most_their_chunks(encoder):
    """With prepare_workers=3 the chunk stream lends out at most 3 chunks at once, and every
    chunk comes back (the stream allocates workers + 1 buffers and would stall otherwise)."""
    from keyslice.selector.select import prepared_chunks

    vol = load_volume(files(SERIES["philips"]))
    held, peak = set(), [0]
    lock = threading.Lock()
    real_chunks = vol.chunks

    def watched(*a, **k):
        for c in real_chunks(*a, **k):
            release = c.release

            def tracked_release(wait=None, c=c, release=release):
                with lock:
                    held.discard(id(c))
                release(wait)

            c.release = tracked_release
            with lock:
                held.add(id(c))
                peak[0] = max(peak[0], len(held))
            yield c

    vol.chunks = watched
    got = list(prepared_chunks(vol, encoder, [get_window("abdomen")], 2, workers=3))
    assert sum(len(p) for p in got) == vol.n_slices
    assert peak[0] <= 3 and not held


# --------------------------------------------------------------------------- headers from step 2


@needs_data
def test_load_volume_uses_step_2s_headers_without_reading_them_again(monkeypatch):
    import keyslice.dicom.headers as headers_mod

    study = DATA / "philips_phantom_study"
    index = index_study(study, lambda kind, value: f"{kind}-{abs(hash(value)) % 10**8}", image_phase=False)
    series = max(index.series_files().values(), key=len)
    assert all(f in index.headers for f in series)
    plain = load_volume(series)
    calls = []
    real = headers_mod.read_header
    monkeypatch.setattr(headers_mod, "read_header", lambda *a, **k: calls.append(a) or real(*a, **k))
    vol = load_volume(series, headers=index.headers)
    assert calls == []
    assert np.array_equal(vol.z_mm, plain.z_mm) and vol.files == plain.files
    assert vol.pixels == plain.pixels and np.array_equal(vol.intercept, plain.intercept)
    assert np.array_equal(vol.hu, plain.hu)
    # a file the index does not know is read as before
    partial = {f: h for f, h in index.headers.items() if f != series[0]}
    again = load_volume(series, headers=partial)
    assert len(calls) == 1 and again.files == plain.files
