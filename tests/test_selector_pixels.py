"""The host path of step 3: pixels read at step 2's offset (or decoded by imagecodecs) equal pydicom's,
chunked decoding stays within its buffers, and the new path selects the same slices as the PIL loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from keyslice.dicom.headers import NotDicomError, read_header
from keyslice.selector import Query, SelectorConfig, load_model, load_volume, save_tiny_checkpoint, select_key_slices
from keyslice.selector.model import OPENAI_MEAN, OPENAI_STD
from keyslice.selector.pixels import ChunkStream, SlicePixels, decode_workers, read_stored
from keyslice.selector.preprocess import hu_from_stored, prepare_chunk, preprocess_batch, reference_preprocess
from keyslice.selector.windows import choose_window, get_window
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SIEMENS_J2K = REF / "example_ct_dicom"
PHILIPS = DATA / "philips_phantom_study" / "S21570" / "S2010"
CT3 = DATA / "dcmqi_ct3slice" / "ct-3slice"
GE_TILT = DATA / "ge_head_ct_tilt"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def slice_pixels(path: Path) -> SlicePixels:
    return SlicePixels.from_header(path, read_header(path))


def real_grayscale_images() -> list[Path]:
    out = []
    for p in sorted(DATA.rglob("*")):
        if not p.is_file() or p.suffix in (".gz", ".json", ".nrrd", ".txt", ".md", ".csv", ".nii"):
            continue
        try:
            hdr = read_header(p)
        except NotDicomError:
            continue
        if (hdr.extra.get("pixel_data") and (hdr.int("SamplesPerPixel") or 1) == 1 and hdr.get("Rows")
                and (hdr.int("NumberOfFrames") or 1) == 1):
            out.append(p)
    return out


def test_every_real_dicom_image_reads_exactly_like_pydicom():
    """Every single-frame grayscale DICOM image of the real test data (uncompressed implicit and
    explicit VR, JPEG 2000, Siemens, GE tilted head, Philips, dcmqi, localizer and summary
    images): stored values and HU identical to pydicom's pixel_array, and read the fast way."""
    paths = real_grayscale_images()
    methods = {}
    assert len(paths) >= 80
    for p in paths:
        sp = slice_pixels(p)
        methods[p] = sp.method
        out = np.empty((sp.rows, sp.cols), dtype=sp.dtype)
        read_stored(sp, out)
        ds = pydicom.dcmread(p)
        ref = ds.pixel_array
        assert out.dtype == ref.dtype and np.array_equal(out, ref), p
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        hu = hu_from_stored(torch.from_numpy(out)[None], [slope], [intercept])[0].numpy()
        assert np.array_equal(hu, ref.astype(np.float32) * np.float32(slope) + np.float32(intercept)), p
    # Nothing fell back to pydicom: uncompressed files are read at their offset, JPEG 2000 by imagecodecs.
    assert {m for p, m in methods.items() if p.parent == SIEMENS_J2K} == {"jpeg2k"}
    assert {m for p, m in methods.items() if p.parent != SIEMENS_J2K} == {"native"}


def _reencode(src: Path, dst: Path, syntax: str) -> np.ndarray:
    """A SYNTHETIC re-encoding of one real slice in another (lossless) transfer syntax."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless, RLELossless

    ds = pydicom.dcmread(src)
    arr = ds.pixel_array.copy()
    bits = 8 * arr.dtype.itemsize
    raw = arr.view(f"u{arr.dtype.itemsize}")  # the stored bit patterns, as codecs expect them
    if syntax == "rle":
        ds.compress(RLELossless)
    else:
        if syntax == "jpegls":
            frame, uid = imagecodecs.jpegls_encode(raw), JPEGLSLossless
        else:
            frame, uid = imagecodecs.jpeg8_encode(raw, lossless=True, bitspersample=bits), JPEGLosslessSV1
        ds.PixelData = encapsulate([frame])
        ds.file_meta.TransferSyntaxUID = uid
        ds["PixelData"].VR = "OB"
    ds.save_as(dst, enforce_file_format=True)
    return arr


@pytest.mark.parametrize("syntax,method", [("rle", "dicomrle"), ("jpegls", "jpegls"), ("jpeg-lossless", "jpeg8")])
def test_other_compressed_syntaxes_decode_through_imagecodecs(tmp_path, syntax, method):
    """SYNTHETIC: the real signed GE slices and unsigned Philips slices re-encoded losslessly decode
    to exactly their stored values (sign included) through imagecodecs."""
    for src in (files(CT3)[0], files(PHILIPS)[3]):
        dst = tmp_path / f"{src.name}.{syntax}.dcm"
        expect = _reencode(src, dst, syntax)
        sp = slice_pixels(dst)
        assert sp.method == method
        out = np.empty((sp.rows, sp.cols), dtype=sp.dtype)
        read_stored(sp, out)
        assert np.array_equal(out, expect), (src, syntax)


def _nvimgcodec_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device on this machine: GPU JPEG 2000 decoding not exercised"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return "nvImageCodec not installed (pip install 'keyslice[gpu-decode]')"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_nvimgcodec_missing() is not None, reason=str(_nvimgcodec_missing()))
def test_gpu_jpeg2000_decoder_equals_pydicom(monkeypatch):
    monkeypatch.setenv("KEYSLICE_J2K_DECODER", "nvimgcodec")
    for p in files(SIEMENS_J2K):
        sp = slice_pixels(p)
        out = np.empty((sp.rows, sp.cols), dtype=sp.dtype)
        read_stored(sp, out)
        assert np.array_equal(out, pydicom.dcmread(p).pixel_array), p


def test_decode_workers_setting(monkeypatch):
    monkeypatch.setenv("KEYSLICE_DECODE_WORKERS", "3")
    assert decode_workers() == 3
    monkeypatch.setenv("KEYSLICE_DECODE_WORKERS", "zero")
    with pytest.raises(ValueError, match="KEYSLICE_DECODE_WORKERS"):
        decode_workers()
    monkeypatch.delenv("KEYSLICE_DECODE_WORKERS")
    assert 1 <= decode_workers() <= 16
    from keyslice.selector.pixels import j2k_decoder

    assert j2k_decoder() == "imagecodecs"
    monkeypatch.setenv("KEYSLICE_J2K_DECODER", "nvjpeg")
    with pytest.raises(ValueError, match="KEYSLICE_J2K_DECODER"):
        j2k_decoder()


def test_chunk_stream_is_bounded_ordered_and_marks_failures():
    """A long series through a slow consumer: never more than `buffers` chunk buffers exist or are
    in flight, chunks come in order with the right slices, and a failed slice is marked invalid."""
    n, chunk, buffers = 203, 8, 3
    allocated, held, peak = [], set(), [0]
    lock = threading.Lock()

    def allocate(size):
        arr = np.zeros((size, 4, 4), dtype=np.int16)
        allocated.append(arr)
        return arr, arr

    def decode(k, out):
        if k == 77:
            raise ValueError("corrupt slice")
        with lock:  # never write into a buffer the consumer still holds
            if id(out.base) in held:
                raise AssertionError("decoder wrote into a held buffer")
        out[...] = k

    errors = []
    stream = ChunkStream(n, chunk, decode, allocate, workers=4, buffers=buffers,
                         on_error=lambda k, e: errors.append((k, str(e))))
    seen = []
    for c in stream:
        with lock:
            held.add(id(c.stored.base))
        peak[0] = max(peak[0], len(held))
        assert c.stored.shape == (c.stop - c.start, 4, 4)
        for i, k in enumerate(range(c.start, c.stop)):
            if k == 77:
                assert not c.valid[i]
            else:
                assert c.valid[i] and np.all(c.stored[i] == k)
        seen.extend(range(c.start, c.stop))
        time.sleep(0.002)  # a consumer slower than the decoder
        with lock:
            held.discard(id(c.stored.base))
        c.release()
    assert seen == list(range(n))
    assert len(allocated) == buffers and peak[0] <= buffers
    assert errors == [(77, "corrupt slice")]


def test_chunk_stream_stops_cleanly_when_the_consumer_stops():
    def allocate(size):
        arr = np.zeros((size, 2, 2), dtype=np.int16)
        return arr, arr

    stream = ChunkStream(100, 4, lambda k, out: out.fill(k), allocate, workers=2, buffers=2)
    before = threading.active_count()
    for c in stream:
        if c.start >= 8:
            break  # without releasing: the producer must still end
    time.sleep(0.05)
    assert threading.active_count() <= before


def test_volume_streams_through_a_few_reused_buffers():
    """The Volume streams its slices through `buffers` buffers whatever its length, and keeps no
    decoded copy of the series unless asked (``hu``)."""
    vol = load_volume(files(PHILIPS))
    eager = load_volume(files(PHILIPS), decode="eager")
    addresses = set()
    for c in vol.chunks(4, buffers=2):
        addresses.add(c.stored.__array_interface__["data"][0])
        s, e = c.start, c.stop
        hu = hu_from_stored(torch.from_numpy(c.stored), vol.slope[s:e], vol.intercept[s:e]).numpy()
        assert np.array_equal(hu, eager.hu[s:e])
        c.release()
    assert len(addresses) <= 2 and vol._hu is None
    assert vol._decoded.all() and vol.valid.all()


# --------------------------------------------------------------------------- preprocessing


def _interpolate_path(hu: torch.Tensor, window, size: int) -> torch.Tensor:
    """The previous device path: F.interpolate (antialiased bicubic) in two clamped, 8-bit-rounded
    passes on [0, 1] images, then centre crop and normalisation (square input only)."""
    import torch.nn.functional as F

    x = torch.round(((hu - window.low) / window.width).clamp(0, 1) * 255) / 255
    x = x.unsqueeze(1)
    h, w = hu.shape[1:]
    x = F.interpolate(x, size=(h, size), mode="bicubic", align_corners=False, antialias=True)
    x = torch.round(x.clamp(0, 1) * 255) / 255
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = torch.round(x.clamp(0, 1) * 255) / 255
    m = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - m) / s


def _level_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) * torch.tensor(OPENAI_STD).view(1, 3, 1, 1) * 255).abs()


@pytest.mark.parametrize("series", [SIEMENS_J2K, PHILIPS, GE_TILT], ids=["siemens-j2k", "philips", "ge-tilt"])
def test_chunk_pipeline_matches_the_previous_path_and_pil(series):
    """prepare_chunk from stored values, several windows at once: within one 8-bit level of the
    previous F.interpolate path and of the PIL reference on every pixel, differing on < 1 %."""
    vol = load_volume(files(series))
    idx = [0, vol.n_slices // 2, vol.n_slices - 1]
    chunk = next(vol.chunks(vol.n_slices))
    stored = torch.from_numpy(chunk.stored[idx].copy())
    chunk.release()
    windows = [get_window(w) for w in ("abdomen", "lung", "bone", "brain")]
    outs = prepare_chunk(stored, vol.slope[idx], vol.intercept[idx], windows, 64, OPENAI_MEAN, OPENAI_STD)
    hu = torch.from_numpy(vol.slab(0, vol.n_slices)[idx])
    for window, out in zip(windows, outs):
        assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32
        assert torch.equal(out, preprocess_batch(hu, window, 64, OPENAI_MEAN, OPENAI_STD))
        for ref in (_interpolate_path(hu, window, 64),
                    torch.stack([reference_preprocess(s.numpy(), window, 64, OPENAI_MEAN, OPENAI_STD) for s in hu])):
            d = _level_diff(out, ref)
            assert d.max() <= 1.001 and (d > 0.5).float().mean() < 0.01, window.name


def test_spatial_step_is_applied_between_hu_and_window():
    vol = load_volume(files(CT3))
    chunk = next(vol.chunks(3))
    stored = torch.from_numpy(chunk.stored.copy())
    chunk.release()
    seen = []

    def crop(hu):  # stands in for spatial normalisation: receives HU, returns HU on a new grid
        seen.append((hu.dtype, float(hu.min())))
        return hu[:, 64:448, 96:416]

    w = get_window("abdomen")
    out = prepare_chunk(stored, vol.slope, vol.intercept, [w], 64, OPENAI_MEAN, OPENAI_STD, spatial=crop)[0]
    expect = preprocess_batch(torch.from_numpy(vol.hu[:, 64:448, 96:416].copy()), w, 64, OPENAI_MEAN, OPENAI_STD)
    assert seen and seen[0][0] == torch.float32 and seen[0][1] < -900  # HU, not stored values
    assert torch.equal(out, expect)


def test_invalid_rows_become_air():
    stored = torch.full((2, 4, 4), 1000, dtype=torch.int16)
    hu = hu_from_stored(stored, [1, 1], [-1024, -1024], valid=[True, False])
    assert torch.all(hu[0] == -24) and torch.all(hu[1] == -1024) and torch.all(stored == 1000)


# --------------------------------------------------------------------------- selections


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_model(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)), device="cpu")


@pytest.mark.parametrize("series", [SIEMENS_J2K, CT3, GE_TILT], ids=["siemens-j2k", "dcmqi", "ge-tilt"])
def test_same_key_slices_as_the_pydicom_pil_loop(series, encoder):
    """The streamed path picks the slices that the straightforward loop picks (pydicom HU, PIL
    preprocessing per slice, one encode per slice), on the real series, in four windows
    (the Philips series: test_selector_select.py::test_scores_equal_reference_loop)."""
    import json

    caps = json.loads((DATA / "roco_ct_captions" / "captions.json").read_text())
    organs = [["liver"], ["lung"], ["spine"], []]
    qs = [Query(f"f{i}", caps[i]["caption"], organs[i], []) for i in range(4)]
    vol = load_volume(files(series))
    got = select_key_slices(vol, qs, encoder, SelectorConfig(top_k=3, batch_size=8))
    order = np.argsort([float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient @ vol.normal)
                        for f in vol.files])
    assert list(order) == list(range(vol.n_slices))
    hu = []
    for f in vol.files:
        ds = pydicom.dcmread(f)
        hu.append(ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    with torch.no_grad():
        for q, c in zip(qs, got):
            w = get_window(choose_window(q.organs))
            assert c.window == w.name
            x = torch.stack([reference_preprocess(s, w, encoder.image_size, encoder.mean, encoder.std) for s in hu])
            ie = torch.nn.functional.normalize(encoder.model.encode_image(x), dim=-1)
            te = torch.nn.functional.normalize(encoder.model.encode_text(
                encoder.tokenizer([q.text], context_length=encoder.context_length)), dim=-1)
            ref = (te @ ie.T)[0].numpy()
            assert np.allclose(c.curve, ref, atol=3e-3)
            assert c.top1_index == int(ref.argmax()) or ref[c.top1_index] >= ref.max() - 3e-3
