"""Step 3: choose the key slice of a CT series for each finding sentence with a CLIP-style model.

Entry points (the pipeline calls exactly these)::

    encoder = load_model("biomedclip")                      # or a preset / hf-hub id / local folder
    volume = load_volume(files)                             # headers, sorted; pixels stream in chunks
    masks = find_masks(study_dir)                           # optional precomputed organ masks
    choices = select_key_slices(volume, queries, encoder, SelectorConfig(), masks, cache, cache_key)
    png = render_png(volume, choices[0].top1_index, choices[0].window)

See the submodules' docstrings for the conventions: :mod:`.volume` (bad-input policy),
:mod:`.masks` (find_masks layout, world coordinates, mismatch policy), :mod:`.totalseg` (masks
for a series that shipped none, ``keyslice segment``), :mod:`.loaders`
(model specs, offline weights), :mod:`.preprocess`, :mod:`.cache`, :mod:`.select`.
"""

from keyslice.selector.cache import EmbeddingCache
from keyslice.selector.masks import OrganMasks, find_masks
from keyslice.selector.model import PRESETS, ClipEncoder
from keyslice.selector.loaders import load_model
from keyslice.selector.tiny import save_tiny_checkpoint
from keyslice.selector.render import plot_similarity_curve, render_png
from keyslice.selector.totalseg import segment_volume, totalsegmentator_segmenter, volume_to_nifti
from keyslice.selector.select import (
    Query,
    SelectorConfig,
    SliceChoice,
    encode_volume,
    encode_volume_windows,
    select_key_slices,
    slice_embeddings,
    slice_embeddings_windows,
    text_embeddings,
)
from keyslice.selector.volume import Volume, load_volume, volume_from_nifti
from keyslice.selector.windows import WINDOWS, choose_window, get_window

__all__ = [
    "ClipEncoder", "EmbeddingCache", "OrganMasks", "PRESETS", "Query", "SelectorConfig", "SliceChoice",
    "Volume", "WINDOWS", "choose_window", "encode_volume", "encode_volume_windows", "find_masks", "get_window",
    "load_model", "load_volume", "plot_similarity_curve", "render_png",
    "save_tiny_checkpoint", "segment_volume", "select_key_slices", "slice_embeddings", "slice_embeddings_windows",
    "text_embeddings", "totalsegmentator_segmenter", "volume_from_nifti", "volume_to_nifti",
]
