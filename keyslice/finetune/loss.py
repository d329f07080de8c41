"""Contrastive loss with soft targets for false negatives (after fVLM).

In a batch of B rows (image_i, text_i), plain CLIP treats every off-diagonal pair as a negative.
In CT that is wrong twice: a slice through the liver also shows the spleen, the aorta and the
spine, so "spleen" is not a negative of a liver-paired slice that lies inside the spleen's
z-range; and normal sentences repeat ("The liver is normal."), so two rows with the same
sentence are not negatives of each other. The target matrix ``T[i, j]`` is therefore

* organ text j (organ o): 1 when slice i lies inside o's z-range (from the masks), else 0;
* lesion text j: 1 when image i is the same slice of the same CT as a positive row j, or row i is
  a positive lesion row whose sentence falls in the same normalised group (repeated sentences),
  else 0; a negative lesion row (a slice a reviewer rejected for the sentence) is never a target;
* station text j (a body station): 1 when slice i's station label (from the masks) is that station;
* finding-level false negatives (``false_negatives=True``): positive lesion rows whose findings share a key
  of :func:`keyslice.finetune.pairs.finding_group_keys` (normal findings of one organ; abnormal findings of
  one organ and abnormality type) are positives of each other;
* ``T[i, i] = label_i`` (1 for positive rows, 0 for the negative rows of the organ pairs).

With anatomy-level alignment image i is the region of organ ``regions[i]`` (its in-plane mask) rather than
the whole slice: an organ text is a positive of a region of that organ only, and :func:`anatomy_clip_loss`
adds one contrastive problem per anatomy.

Image->text: each row with any target is a cross-entropy against its targets spread evenly
(``T[i] / sum T[i]``); text->image likewise per column. The loss is the mean of the two. With
``soft=False`` the targets are the diagonal of the positive rows only (plain CLIP).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def target_matrix(rows, inside_lookup, soft: bool = True, *, false_negatives: bool = True, station_lookup=None,
                  regions=None) -> np.ndarray:
    """``rows``: sequence of Pair-like objects (kind, source, slice, label, organ, group, fn_keys).
    ``inside_lookup(source, slice, organ) -> bool``; ``station_lookup(source, slice) -> str | None``;
    ``regions[i]``: the organ whose region image i shows (anatomy-level alignment), None for a whole slice.
    Returns float32 [B, B]."""
    b = len(rows)
    t = np.zeros((b, b), dtype=np.float32)
    regions = list(regions) if regions is not None else [None] * b
    if not soft:
        for i, r in enumerate(rows):
            t[i, i] = float(r.label)
        return t
    for j, rj in enumerate(rows):
        for i, ri in enumerate(rows):
            if rj.kind == "organ":
                # a region shows its own organ; a whole slice shows every organ whose z-range holds it
                hit = regions[i] == rj.organ if regions[i] is not None else inside_lookup(ri.source, ri.slice, rj.organ)
            elif rj.kind == "station":
                st = station_lookup(ri.source, ri.slice) if station_lookup is not None else None
                hit = st is not None and "station:" + st == rj.group
            else:
                positive = rj.label == 1
                same_image = (positive and ri.source == rj.source and ri.slice == rj.slice
                              and regions[i] == regions[j])
                same_group = ri.kind == "lesion" and ri.label == 1 and ri.group == rj.group
                shared = (false_negatives and positive and ri.kind == "lesion" and ri.label == 1
                          and bool(set(getattr(ri, "fn_keys", ())) & set(getattr(rj, "fn_keys", ()))))
                hit = same_image or same_group or shared
            t[i, j] = 1.0 if hit else 0.0
    for i, r in enumerate(rows):
        t[i, i] = float(r.label)
    return t


def anatomy_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                      targets: torch.Tensor, anatomies: list[str | None]) -> torch.Tensor:
    """Anatomy-level alignment (after fVLM): one soft-target contrastive problem per anatomy (the rows whose
    image is that organ's region: its region embeddings vs its texts) plus one across all rows (which organ a
    region is). A per-anatomy block whose targets are all 1 (e.g. only organ-name prompts of that organ) holds no
    information and is skipped; so is an anatomy with a single row."""
    losses = [soft_clip_loss(image_features, text_features, logit_scale, targets)]
    by: dict[str, list[int]] = {}
    for i, a in enumerate(anatomies):
        if a is not None:
            by.setdefault(a, []).append(i)
    per = []
    for idx in by.values():
        if len(idx) < 2:
            continue
        ix = torch.tensor(idx, device=targets.device)
        block = targets[ix][:, ix]
        if bool((block > 0).all()):
            continue
        per.append(soft_clip_loss(image_features[ix], text_features[ix], logit_scale, block))
    if per:
        losses.append(torch.stack(per).mean())
    return torch.stack(losses).mean()


def soft_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets; features must be L2-normalised."""
    logits = logit_scale * image_features @ text_features.t()
    t = targets.to(logits.dtype)
    losses = []
    rows = t.sum(1) > 0
    if rows.any():
        tr = t[rows] / t[rows].sum(1, keepdim=True)
        losses.append(-(tr * F.log_softmax(logits[rows], dim=1)).sum(1).mean())
    cols = t.sum(0) > 0
    if cols.any():
        tc = t[:, cols] / t[:, cols].sum(0, keepdim=True)
        losses.append(-(tc * F.log_softmax(logits[:, cols], dim=0)).sum(0).mean())
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()
