"""compute_candidates' two ways of keeping never-chosen ids out of the choice: a second copy of the logits
(logits the caller owns, or another sampling mode), or filling them into its own float32 copy after the
confidences' softmax (Gumbel sampling of logits in another dtype, as a GPU's bf16 logits are). Both give the same
tokens, confidences and measures, bit for bit, and the caller's logits are never changed."""

from __future__ import annotations

import pytest
import torch

from dlm.sampling import compute_candidates

V = 40
MASK = 5  # the never-chosen id


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (0.7, None, None), (1.0, 5, None),
                                                       (0.9, None, 0.8)])
@pytest.mark.parametrize("ban", [(), (7,)])
def test_in_place_path_equals_the_copying_one(temperature, top_k, top_p, ban):
    g = torch.Generator().manual_seed(3)
    logits16 = (torch.randn(6, 9, V, generator=g) * 3).bfloat16()
    logits16[:, :3, MASK] = 30.0  # the never-chosen id is the best token of some positions
    logits16[0, 0, :] = 1.0  # all tied: the first allowed id wins
    logits32 = logits16.float()
    before16, before32 = logits16.clone(), logits32.clone()
    kwargs = {"mode": "gumbel", "temperature": temperature, "top_k": top_k, "top_p": top_p, "ban_ids": ban,
              "never_ids": (MASK,), "measures": {"margin", "entropy", "logit_gap"}}
    fast = compute_candidates(logits16, generator=torch.Generator().manual_seed(1), **kwargs)  # its own copy
    ref = compute_candidates(logits32, generator=torch.Generator().manual_seed(1), **kwargs)  # copies again
    for name in ("tokens", "confidence", "margin", "neg_entropy", "logit_gap"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    assert not (fast.tokens == MASK).any()
    if temperature == 0:
        assert fast.tokens[0, 0] == 0  # the tie goes to the first id
    assert torch.equal(logits16, before16) and torch.equal(logits32, before32)
