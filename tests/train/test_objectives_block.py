"""The block-diffusion objective: its attention mask, noise and targets on hand-built batches; the concatenated
forward against block-by-block forwards of the decoding layout; one training step lowering the loss."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.models.layers import block_causal_mask
from dlm.train.builders import ModelSize, build_block
from dlm.train.data import Batch
from dlm.train.objectives_block import (BlockDiffusionObjective, block_diffusion_attention, block_noise_levels,
                                        canvas_end)

from .test_objectives import _Uniform

MASK, BOS, EOS = 3, 1, 0
SIZE = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=64)


def _batch() -> Batch:
    # row 0: BOS + 2 prompt tokens, answer of 3 + EOS, canvas 7 of 12 positions (ends on the block boundary 8)
    # row 1: plain text, all 12 positions maskable
    ids = torch.tensor([[BOS, 10, 11, 20, 21, 22, EOS, EOS, EOS, EOS, EOS, EOS],
                        [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]])
    return Batch(ids, prompt_len=torch.tensor([3, 0]), answer_end=torch.tensor([7, 12]),
                 valid_len=torch.tensor([7, 12]))


def test_attention_mask_by_hand():
    # L = 4, blocks of 2, the last key outside the canvas; queries/keys 0-3 noisy, 4-7 clean
    got = block_diffusion_attention(4, 2, torch.tensor([[True, True, True, False]]))[0].int().tolist()
    want = [
        [1, 1, 0, 0, 0, 0, 0, 0],  # noisy block 0: itself only
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 1, 1, 0, 0],  # noisy block 1: itself (key 3 is outside) + clean block 0
        [0, 0, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # clean block 0: clean block 0
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],  # clean block 1: clean blocks 0 and 1
        [0, 0, 0, 0, 1, 1, 1, 0],
    ]
    assert got == want


def test_canvas_ends_on_block_boundaries():
    assert canvas_end(torch.tensor([1, 4, 5, 8, 11, 12]), 12, 4).tolist() == [4, 4, 8, 8, 12, 12]
    assert canvas_end(torch.tensor([9, 10]), 10, 4).tolist() == [10, 10]  # never beyond the row


def test_noise_levels_are_per_block_and_stratified():
    t = block_noise_levels(4, 3, 1e-3, torch.Generator().manual_seed(0))
    assert t.shape == (4, 3) and t.min() >= 1e-3 and t.max() < 1
    gaps = torch.sort(t.flatten()).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 12), atol=1e-6)
    assert ((t.max(1).values - t.min(1).values) > 0.5).all()  # each row's blocks spread over the interval


def test_each_block_is_masked_at_its_own_level():
    b = _batch()
    obj = BlockDiffusionObjective(MASK, block_size=4)
    t = torch.tensor([[1.0, 1e-9, 1.0], [1e-9, 1.0, 1e-9]])  # (B, 3 blocks): all or nothing
    batch, noisy, masked, maskable, t_pos = obj.noise(b, torch.Generator().manual_seed(0), t)
    assert batch.valid_len.tolist() == [8, 12]  # row 0's canvas extended to its block boundary
    assert maskable[0].tolist() == [False] * 3 + [True] * 5 + [False] * 4
    # row 0: block 0's one answer position masked, block 1 (t ~ 0) not, block 2 is outside the canvas
    assert masked[0].tolist() == [False] * 3 + [True] + [False] * 4 + [False] * 4
    assert masked[1].tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert torch.equal(noisy == MASK, masked) and torch.equal(noisy[~masked], b.ids[~masked])
    assert torch.equal(t_pos, t.repeat_interleave(4, 1))
    t = torch.ones(2, 3)
    _, _, masked, _, _ = obj.noise(b, torch.Generator().manual_seed(0), t)
    assert masked[0].tolist() == [False] * 3 + [True] * 5 + [False] * 4  # EOS padding up to the boundary too


def test_loss_feeds_noisy_and_clean_halves_and_weights_by_block():
    b = _batch()
    model = _Uniform(vocab=50)
    obj = BlockDiffusionObjective(MASK, block_size=4)
    t = torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.6, 0.4]])
    loss, n_masked = obj.loss(model, b, torch.Generator().manual_seed(3), t=t)
    (fed, key_mask), pos = model.seen[-1], model.positions[-1]
    noisy, clean = fed[:, :12], fed[:, 12:]
    assert torch.equal(clean, b.ids) and torch.equal(pos[:, :12], pos[:, 12:])
    assert pos[0, :12].tolist() == list(range(12))
    valid = torch.tensor([[True] * 8 + [False] * 4, [True] * 12])
    assert torch.equal(key_mask, block_diffusion_attention(12, 4, valid))
    masked = noisy == MASK
    assert n_masked == int(masked.sum()) > 0
    t_pos = t.repeat_interleave(4, 1)
    per_row = (masked * math.log(50) / t_pos).sum(1) / torch.tensor([5.0, 12.0])
    assert math.isclose(float(loss), float(per_row.mean()), rel_tol=1e-6)


def test_concatenated_forward_equals_decoding_each_block_from_clean_context():
    """The noisy half's hidden states at block b are what the model computes when decoding block b: the clean
    blocks before it, then the noisy block, under the block-causal mask."""
    torch.manual_seed(0)
    model = build_block(SIZE, 60, seed=1).eval()
    L, bs = 12, 4
    ids = torch.randint(4, 60, (2, L))
    noisy = torch.where(torch.rand(2, L) < 0.5, torch.full_like(ids, MASK), ids)
    valid = torch.tensor([[True] * 8 + [False] * 4, [True] * 12])
    pos = torch.arange(L).expand(2, L)
    with torch.no_grad():
        h = model.hidden_states(torch.cat([noisy, ids], 1), torch.cat([pos, pos], 1),
                                block_diffusion_attention(L, bs, valid))
        for blk in range(L // bs):
            end = (blk + 1) * bs
            seq = torch.cat([ids[:, : blk * bs], noisy[:, blk * bs : end]], 1)
            p = pos[:, :end]
            ref = model.hidden_states(seq, p, block_causal_mask(p, p, valid[:, :end], bs))
            rows = valid[:, blk * bs]  # rows whose canvas holds this block
            torch.testing.assert_close(h[rows, blk * bs : end], ref[rows, blk * bs :], atol=1e-5, rtol=1e-5)
            # and the clean half is the block-causal forward of the clean row
            clean = model.hidden_states(ids[:, :end], p, block_causal_mask(p, p, valid[:, :end], bs))
            torch.testing.assert_close(h[rows, L + blk * bs : L + end], clean[rows, blk * bs :], atol=1e-5,
                                       rtol=1e-5)


def test_one_step_lowers_the_loss():
    model = build_block(SIZE, 60, seed=2)
    obj = BlockDiffusionObjective(MASK, block_size=4)
    obj.prepare(model)
    b = _batch()
    t = torch.full((2, 3), 0.7)

    def loss() -> torch.Tensor:
        return obj.loss(model, b, torch.Generator().manual_seed(5), t=t)[0]  # the same noise every time

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach()) - 0.05


def test_bad_settings():
    with pytest.raises(ValueError, match="block_size"):
        BlockDiffusionObjective(MASK, block_size=0)
    with pytest.raises(ValueError, match="eps"):
        BlockDiffusionObjective(MASK, block_size=4, eps=0.0)
