"""Negative lesion rows (slices a reviewer rejected for a sentence) in the contrastive targets."""

from __future__ import annotations

from keyslice.finetune.loss import target_matrix
from keyslice.finetune.pairs import Pair


def test_rejected_slices_are_never_targets():
    rows = [
        Pair("lesion", "ct", 5, 1, None, "A lesion in the liver.", "s:liver"),     # accepted / chosen slice
        Pair("lesion", "ct", 9, 0, None, "A lesion in the liver.", "s:liver"),     # the rejected top-1
        Pair("lesion", "ct", 9, 1, None, "The spleen is normal.", "s:spleen"),     # same slice, other sentence
        Pair("organ", "ct", 5, 1, "liver", None, "liver"),
    ]
    t = target_matrix(rows, lambda src, k, organ: organ == "liver" and k == 5)
    assert t[0, 0] == 1 and t[0, 1] == 1        # the positive image is a target of the sentence of either row
    assert t[1, 1] == 0 and t[1, 0] == 0        # the rejected image is a target of neither liver text
    assert t[1, 2] == 1                         # ...but still of the sentence it does show (same slice)
    assert t[2, 1] == 0                         # no image is a target through a negative row's slice
    assert t[3, 0] == 1                         # the organ row shows slice 5: the liver sentence's positive
    # all-positive rows read exactly as before (same slice or same sentence group)
    pos = [Pair("lesion", "ct", 5, 1, None, "x", "s:x"), Pair("lesion", "ct", 7, 1, None, "x", "s:x")]
    assert target_matrix(pos, lambda *a: False).tolist() == [[1, 1], [1, 1]]
