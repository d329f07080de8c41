"""End-to-end key-slice selection with a tiny open_clip model on real DICOM series."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import keyslice.selector.pixels as pixels_mod
from keyslice.selector import (
    EmbeddingCache,
    Query,
    SelectorConfig,
    load_model,
    load_volume,
    plot_similarity_curve,
    render_png,
    save_tiny_checkpoint,
    select_key_slices,
)
from keyslice.selector.model import OPENAI_MEAN, OPENAI_STD
from keyslice.selector.preprocess import reference_preprocess
from keyslice.selector.select import gaussian_smooth
from keyslice.selector.windows import get_window
from tests.real_data import DATA

REF = DATA / "totalsegmentator_reference" / "tests" / "reference_files"
SIEMENS_J2K = REF / "example_ct_dicom"
PHILIPS = DATA / "philips_phantom_study" / "S21570" / "S2010"
CT3 = DATA / "dcmqi_ct3slice" / "ct-3slice"
CAPTIONS = DATA / "roco_ct_captions" / "captions.json"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=11)


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_model(str(model_dir), device="cpu")


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def real_sentences(n: int) -> list[str]:
    """Real CT finding sentences (ROCO captions, CC BY)."""
    items = json.loads(CAPTIONS.read_text())
    caps = [it["caption"] if isinstance(it, dict) else str(it) for it in (items if isinstance(items, list) else items.values())]
    return [c.strip() for c in caps if c and c.strip()][:n]


ORGANS = [(["liver"], ["liver"]), (["lung"], ["lung_upper_lobe_left"]), (["spine"], ["vertebrae_T12"]),
          (["pancreas"], ["pancreas"]), (["aorta"], ["aorta"]), ([], []), (["kidney"], ["kidney_left"]),
          (["rib"], ["rib_left_6"])]


def queries(n: int = 8) -> list[Query]:
    return [Query(f"f{i}", s, *ORGANS[i % len(ORGANS)]) for i, s in enumerate(real_sentences(n))]


@pytest.mark.parametrize("series", [SIEMENS_J2K, PHILIPS, CT3], ids=["siemens-j2k", "philips-phantom", "dcmqi-3slice"])
def test_full_path_on_real_series(series, encoder):
    vol = load_volume(files(series))
    qs = queries(8)
    choices = select_key_slices(vol, qs, encoder, SelectorConfig(top_k=5, smooth_sigma=1.0))
    assert [c.finding_id for c in choices] == [q.finding_id for q in qs]
    for q, c in zip(qs, choices):
        assert c.n_slices == vol.n_slices
        assert 0 <= c.top1_index < vol.n_slices and c.top1_index == c.topk_indices[0]
        assert len(c.topk_indices) == min(5, vol.n_slices) == len(set(c.topk_indices))
        assert list(c.topk_scores) == sorted(c.topk_scores, reverse=True)
        assert c.top1_score == pytest.approx(c.curve[c.top1_index]) and -1 <= c.top1_score <= 1
        assert c.top1_z_mm == vol.z_mm[c.top1_index]
        assert c.top1_instance_number == vol.instance_numbers[c.top1_index]
        assert c.model_id == encoder.model_id and c.weights_sha256 == encoder.weights_sha256
        assert c.window == {"liver": "liver", "lung": "lung", "spine": "bone", "rib": "bone", "aorta": "mediastinum"}.get(
            (q.organs or ["-"])[0], "abdomen")
        rec = c.record()
        assert rec["top1_index"] == c.top1_index and rec["z_range_mm"] is None
        png = render_png(vol, c.top1_index, c.window)
        assert png.startswith(b"\x89PNG")


def test_scores_equal_reference_loop(encoder):
    """The batched path scores like the straightforward loop (PIL per slice, encode, cosine)."""
    vol = load_volume(files(PHILIPS))
    q = Query("x", real_sentences(1)[0], ["liver"], [])
    c = select_key_slices(vol, [q], encoder, SelectorConfig(top_k=28))[0]
    w = get_window(c.window)
    with torch.no_grad():
        imgs = torch.stack([reference_preprocess(s, w, encoder.image_size, OPENAI_MEAN, OPENAI_STD) for s in vol.hu])
        ie = torch.nn.functional.normalize(encoder.model.encode_image(imgs), dim=-1)
        te = torch.nn.functional.normalize(encoder.model.encode_text(encoder.tokenizer([q.text], context_length=encoder.context_length)), dim=-1)
    ref = (te @ ie.T)[0]
    assert np.allclose(np.array(c.curve), ref.numpy(), atol=3e-3)
    assert c.top1_index == int(ref.argmax()) or ref[c.top1_index] >= ref.max() - 3e-3


def test_each_series_decoded_and_encoded_once_for_many_findings(encoder, monkeypatch, tmp_path):
    calls = {"decode": 0, "encode_images": 0, "slices": 0, "encode_texts": 0}
    lock = threading.Lock()
    real_decode = pixels_mod.read_stored

    def counting_decode(sp, out):
        with lock:
            calls["decode"] += 1
        return real_decode(sp, out)

    monkeypatch.setattr(pixels_mod, "read_stored", counting_decode)
    real_images, real_texts = encoder.encode_images, encoder.encode_texts

    def counting_images(batch, **kw):
        calls["encode_images"] += 1
        calls["slices"] += batch.shape[0]
        return real_images(batch, **kw)

    def counting_texts(texts):
        calls["encode_texts"] += 1
        return real_texts(texts)

    monkeypatch.setattr(encoder, "encode_images", counting_images)
    monkeypatch.setattr(encoder, "encode_texts", counting_texts)
    encoder.__dict__.pop("_text_memo", None)

    vol = load_volume(files(SIEMENS_J2K))
    sents = real_sentences(12)
    # 24 findings: 12 sentences x 2 (duplicates), all with the same organ -> one window.
    qs = [Query(f"f{i}", sents[i % 12], ["liver"], ["liver"]) for i in range(24)]
    cfg = SelectorConfig(batch_size=8)
    choices = select_key_slices(vol, qs, encoder, cfg)
    assert len(choices) == 24
    assert calls["decode"] == 20                       # every slice decoded exactly once
    assert calls["slices"] == 20 and calls["encode_images"] == 3   # 20 slices in batches of 8
    assert calls["encode_texts"] == 1                  # 12 distinct sentences, one call
    # Same study, more findings, another call: nothing is decoded or encoded again.
    select_key_slices(vol, qs[:5], encoder, cfg)
    assert calls["decode"] == 20 and calls["slices"] == 20 and calls["encode_texts"] == 1
    # A second window encodes the series once more (different pixels), and only once; the
    # series streams through bounded buffers, so it is decoded again for it.
    qs2 = [Query(f"l{i}", sents[i], ["lung"], []) for i in range(6)]
    select_key_slices(vol, qs + qs2, encoder, cfg)
    assert calls["slices"] == 40 and calls["decode"] == 40
    # Windows asked for together share one decoding pass.
    qs3 = [Query(f"b{i}", sents[i], ["spine"], []) for i in range(2)] + [Query("m", sents[0], ["aorta"], [])]
    select_key_slices(vol, qs3, encoder, cfg)
    assert calls["slices"] == 80 and calls["decode"] == 60


def test_disk_cache_reused_across_builds(encoder, model_dir, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    qs = queries(6)
    first = select_key_slices(load_volume(files(PHILIPS)), qs, encoder, SelectorConfig(), cache=cache, cache_key="seriesA")
    stored = list((tmp_path / "cache" / "images").rglob("*.npy"))
    assert stored and all(np.load(p).dtype == np.float16 for p in stored)
    assert len(list((tmp_path / "cache" / "texts").rglob("*.npy"))) == len(set(q.text for q in qs))

    # A new process would have a new encoder and a new Volume: no image or text encoding at all.
    load_model.cache_clear()
    enc2 = load_model(str(model_dir), device="cpu")
    enc2.encode_images = lambda b, **kw: pytest.fail("slices re-encoded despite the cache")
    enc2.encode_texts = lambda t: pytest.fail("sentences re-encoded despite the cache")
    cache2 = EmbeddingCache(tmp_path / "cache")
    again = select_key_slices(load_volume(files(PHILIPS)), qs, enc2, SelectorConfig(), cache=cache2, cache_key="seriesA")
    assert [(c.top1_index, c.topk_indices) for c in again] == [(c.top1_index, c.topk_indices) for c in first]
    assert [c.top1_score for c in again] == pytest.approx([c.top1_score for c in first], abs=1e-6)
    assert cache2.hits >= 1


def test_cache_key_includes_model_window_and_geometry(encoder, tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    vol = load_volume(files(CT3))
    select_key_slices(vol, [Query("a", "liver lesion", ["liver"], [])], encoder, SelectorConfig(), cache=cache, cache_key="s")
    select_key_slices(vol, [Query("a", "lung nodule", ["lung"], [])], encoder, SelectorConfig(), cache=cache, cache_key="s")
    two = load_volume(files(CT3)[:2])
    select_key_slices(two, [Query("a", "liver lesion", ["liver"], [])], encoder, SelectorConfig(), cache=cache, cache_key="s")
    assert len(list((tmp_path / "c" / "images").rglob("*.npy"))) == 3
    # Another model (other weights): its own slice and sentence entries, the first model's untouched.
    other = load_model(str(save_tiny_checkpoint(tmp_path / "other", seed=12)), device="cpu")
    select_key_slices(load_volume(files(CT3)), [Query("a", "liver lesion", ["liver"], [])], other, SelectorConfig(),
                      cache=cache, cache_key="s")
    assert len(list((tmp_path / "c" / "images").rglob("*.npy"))) == 4
    assert len(list((tmp_path / "c" / "texts").iterdir())) == 2  # one folder of sentence hashes per model


def test_corrupt_slice_is_never_selected(encoder, tmp_path):
    from pydicom.encaps import encapsulate, generate_fragmented_frames
    import pydicom

    (tmp_path / "s").mkdir()
    for f in files(SIEMENS_J2K):
        shutil.copy(f, tmp_path / "s" / f.name)
    ref = load_volume(files(SIEMENS_J2K))
    qs = queries(8)
    c_ref = select_key_slices(ref, qs, encoder, SelectorConfig(top_k=20))
    victim = c_ref[0].top1_index  # break the slice the first query liked best
    path = tmp_path / "s" / ref.files[victim].name
    ds = pydicom.dcmread(path)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame[:16] + bytes(len(frame) - 16)])
    ds.save_as(path)
    vol = load_volume(files(tmp_path / "s"))
    choices = select_key_slices(vol, qs, encoder, SelectorConfig(top_k=20))
    for c in choices:
        assert victim not in c.topk_indices and len(c.topk_indices) == 19
    assert choices[0].top1_index != victim


def test_single_slice_series(encoder):
    vol = load_volume(files(CT3)[:1])
    c = select_key_slices(vol, queries(3), encoder, SelectorConfig(top_k=5, smooth_sigma=2.0))
    assert all(x.top1_index == 0 and x.topk_indices == (0,) for x in c)


def test_named_window_and_training_window(tmp_path):
    enc = load_model(str(save_tiny_checkpoint(tmp_path / "m", training_window="lung")), device="cpu")
    vol = load_volume(files(CT3))
    qs = [Query("a", "no organ named", [], []), Query("b", "liver", ["liver"], [])]
    auto = select_key_slices(vol, qs, enc, SelectorConfig())
    assert [c.window for c in auto] == ["lung", "liver"]
    fixed = select_key_slices(vol, qs, enc, SelectorConfig(window="bone"))
    assert [c.window for c in fixed] == ["bone", "bone"]


def test_gaussian_smoothing():
    x = torch.zeros(2, 21)
    x[0, 10] = 1.0
    x[1, 0] = 1.0
    y = gaussian_smooth(x, 2.0)
    assert y.shape == x.shape
    assert int(y[0].argmax()) == 10 and y[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(y[0, :10].flip(0), y[0, 11:])
    assert torch.equal(gaussian_smooth(x, 0), x)
    assert torch.equal(gaussian_smooth(x[:, :1], 3.0), x[:, :1])


def test_config_validation():
    with pytest.raises(ValueError):
        SelectorConfig(top_k=0)
    with pytest.raises(ValueError):
        SelectorConfig(window="nonsense")
    with pytest.raises(ValueError):
        SelectorConfig(batch_size=0)
    assert select_key_slices(None, [], None, SelectorConfig()) == []


def test_similarity_curve_plot(encoder):
    from PIL import Image

    vol = load_volume(files(PHILIPS))
    c = select_key_slices(vol, queries(1), encoder, SelectorConfig(smooth_sigma=1.0))[0]
    png = plot_similarity_curve(c, vol)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size[0] > 300
    assert plot_similarity_curve(c).startswith(b"\x89PNG")


def test_encoding_starts_while_the_series_is_still_decoding(encoder, monkeypatch):
    """Decode and encode overlap: the last slice's decode is held until the first batch has been
    encoded. A pipeline that waited for the whole series first would never encode (the held
    decode gives up after 120 s and the test fails)."""
    first_encode = threading.Event()
    real_decode = pixels_mod.read_stored
    files_ = files(SIEMENS_J2K)
    last = load_volume(files_).files[-1].name  # highest z: decoded last

    def held_decode(sp, out):
        if sp.path.name == last:
            first_encode.wait(timeout=120)
        return real_decode(sp, out)

    monkeypatch.setattr(pixels_mod, "read_stored", held_decode)
    real_images = encoder.encode_images

    def noting_images(batch, **kw):
        out = real_images(batch, **kw)
        first_encode.set()
        return out

    monkeypatch.setattr(encoder, "encode_images", noting_images)
    vol = load_volume(files_)
    choices = select_key_slices(vol, queries(2), encoder, SelectorConfig(batch_size=4))
    assert first_encode.is_set() and all(0 <= c.top1_index < 20 for c in choices)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(encoder, monkeypatch):
    """The CUDA OOM fallback (halve the batch, retry), driven on the CPU by an encoder that
    refuses batches over 3 slices the way a full GPU would."""
    vol = load_volume(files(PHILIPS))
    qs = queries(4)
    ref = select_key_slices(vol, qs, encoder, SelectorConfig(batch_size=16))
    sizes = []
    real_images = encoder.encode_images

    def small_memory(batch, **kw):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return real_images(batch, **kw)

    monkeypatch.setattr(encoder, "encode_images", small_memory)
    got = select_key_slices(load_volume(files(PHILIPS)), qs, encoder, SelectorConfig(batch_size=16))
    assert [(c.top1_index, c.topk_indices) for c in got] == [(c.top1_index, c.topk_indices) for c in ref]
    # Other batch sizes change fp32 summation order (and so the float16 rounding of a few values).
    assert np.allclose([c.curve for c in got], [c.curve for c in ref], atol=1e-3)
    n_windows = len({c.window for c in got})
    assert sum(s for s in sizes if s <= 3) == vol.n_slices * n_windows  # every slice encoded once per window
    # Out of memory at 16, 8 and 4 once per series (all windows of a chunk are encoded together),
    # then every batch fits (2 slices).
    assert [s for s in sizes if s > 3] == [16, 8, 4]


def test_batch_size_from_free_device_memory(encoder, monkeypatch):
    """auto_batch_size on a CUDA encoder reads the free memory (faked here: no GPU in CI)."""
    import copy

    from keyslice.selector.select import auto_batch_size

    assert auto_batch_size(encoder, (512, 512)) == 16  # CPU
    gpu_like = copy.copy(encoder)
    gpu_like.device = torch.device("cuda", 0)
    gpu_like.precision = "bf16"
    sizes = []
    for free_mb in (1, 16, 64, 256, 1024, 80_000):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free_mb: (f << 20, 80_000 << 20))
        sizes.append(auto_batch_size(gpu_like, (512, 512)))
    assert sizes == sorted(sizes) and sizes[0] == 8 and sizes[-1] == 512
    assert all(s % 8 == 0 for s in sizes) and len(set(sizes)) >= 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU path not exercised")
def test_cuda_selection_matches_cpu(model_dir):
    vol = load_volume(files(SIEMENS_J2K))
    qs = queries(8)
    cpu = select_key_slices(vol, qs, load_model(str(model_dir), device="cpu"), SelectorConfig(top_k=3))
    vol2 = load_volume(files(SIEMENS_J2K))
    gpu = select_key_slices(vol2, qs, load_model(str(model_dir), device="cuda"), SelectorConfig(top_k=3))
    for a, b in zip(cpu, gpu):
        assert np.allclose(a.curve, b.curve, atol=2e-2)
