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
* ``T[i, i] = label_i`` (1 for positive rows, 0 for the negative rows of the organ pairs).

Image->text: each row with any target is a cross-entropy against its targets spread evenly
(``T[i] / sum T[i]``); text->image likewise per column. The loss is the mean of the two. With
``soft=False`` the targets are the diagonal of the positive rows only (plain CLIP).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def target_matrix(rows, inside_lookup, soft: bool = True) -> np.ndarray:
    """``rows``: sequence of Pair-like objects (kind, source, slice, label, organ, group).
    ``inside_lookup(source, slice, organ) -> bool``. Returns float32 [B, B]."""
    b = len(rows)
    t = np.zeros((b, b), dtype=np.float32)
    if not soft:
        for i, r in enumerate(rows):
            t[i, i] = float(r.label)
        return t
    for j, rj in enumerate(rows):
        if rj.kind == "organ":
            for i, ri in enumerate(rows):
                t[i, j] = 1.0 if inside_lookup(ri.source, ri.slice, rj.organ) else 0.0
        else:
            for i, ri in enumerate(rows):
                same_image = ri.source == rj.source and ri.slice == rj.slice and rj.label == 1
                same_group = ri.kind == "lesion" and ri.label == 1 and ri.group == rj.group
                t[i, j] = 1.0 if (same_image or same_group) else 0.0
    for i, r in enumerate(rows):
        t[i, i] = float(r.label)
    return t


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
