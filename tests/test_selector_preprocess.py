"""Batched device-side preprocessing equals open_clip's PIL/torchvision transform; windows; PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from keyslice.selector import get_window, load_volume, render_png
from keyslice.selector.model import OPENAI_MEAN, OPENAI_STD
from keyslice.selector.preprocess import preprocess_batch, reference_preprocess, to_uint8
from keyslice.selector.windows import WINDOWS, choose_window
from tests.real_data import DATA

SIEMENS_J2K = DATA / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom"
PHILIPS = DATA / "philips_phantom_study" / "S21570"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data not found at {DATA}")


@pytest.mark.parametrize("window", ["abdomen", "lung", "bone", "liver"])
@pytest.mark.parametrize("size", [224, 64])
def test_batched_matches_pil_reference_on_real_slices(window, size):
    vol = load_volume(sorted(SIEMENS_J2K.iterdir()))
    hu = vol.hu[[0, 9, 19]]
    w = get_window(window)
    fast = preprocess_batch(torch.from_numpy(hu), w, size, OPENAI_MEAN, OPENAI_STD)
    ref = torch.stack([reference_preprocess(s, w, size, OPENAI_MEAN, OPENAI_STD) for s in hu])
    assert fast.shape == ref.shape == (3, 3, size, size)
    # Difference in 8-bit grey levels: at most one step (fixed-point rounding inside PIL).
    levels = ((fast - ref) * torch.tensor(OPENAI_STD).view(1, 3, 1, 1) * 255).abs()
    assert levels.max() <= 1.001 and levels.mean() < 0.01


def test_non_square_slice_resizes_shortest_side_and_center_crops():
    hu = torch.linspace(-1000, 1000, 256 * 512).reshape(1, 256, 512)
    w = get_window("W2000L0")
    fast = preprocess_batch(hu, w, 64, OPENAI_MEAN, OPENAI_STD)
    ref = reference_preprocess(hu[0].numpy(), w, 64, OPENAI_MEAN, OPENAI_STD)
    assert fast.shape == (1, 3, 64, 64)
    levels = ((fast[0] - ref) * torch.tensor(OPENAI_STD).view(3, 1, 1) * 255).abs()
    assert levels.max() <= 1.001


def test_windows_and_choice():
    assert (WINDOWS["abdomen"].width, WINDOWS["abdomen"].level) == (400, 40)
    assert (WINDOWS["lung"].width, WINDOWS["lung"].level) == (1500, -600)
    assert (WINDOWS["mediastinum"].width, WINDOWS["mediastinum"].level) == (350, 50)
    assert (WINDOWS["bone"].width, WINDOWS["bone"].level) == (1800, 400)
    assert (WINDOWS["brain"].width, WINDOWS["brain"].level) == (80, 40)
    assert choose_window(["liver"]) == "liver"
    assert choose_window(["lung_upper_lobe_left"]) == "lung"
    assert choose_window(["vertebrae_L1"]) == "bone"
    assert choose_window(["pancreas"]) == "abdomen"
    assert choose_window(["head of pancreas"]) == "abdomen"
    assert choose_window(["aorta"]) == "mediastinum"
    assert choose_window(["brain"]) == "brain"
    assert choose_window([]) == "abdomen"
    assert choose_window([], default="lung") == "lung"  # the model's training window
    assert get_window("W1500L-600").low == -1350
    with pytest.raises(ValueError):
        get_window("nonsense")


def test_render_png_is_windowed_8bit_without_text_chunks():
    from PIL import Image

    vol = load_volume(sorted((PHILIPS / "S2010").iterdir()))
    png = render_png(vol, 10, "abdomen")
    img = Image.open(io.BytesIO(png))
    assert img.mode == "L" and img.size == (512, 512)
    assert np.array_equal(np.asarray(img), to_uint8(vol.hu[10], WINDOWS["abdomen"]))
    # Walk the chunks: only IHDR, IDAT and IEND (no tEXt/iTXt/zTXt/tIME/pHYs).
    pos, kinds = 8, set()
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kinds.add(png[pos + 4:pos + 8].decode())
        pos += 12 + length
    assert kinds == {"IHDR", "IDAT", "IEND"}
    with pytest.raises(IndexError):
        render_png(vol, 28, "abdomen")
