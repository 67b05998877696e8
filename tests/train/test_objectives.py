"""The masked-diffusion and causal objectives on hand-built batches, and the batch pools."""

from __future__ import annotations

import math

import torch

from dlm.train.data import Batch, Group, PairPool, TextPool
from dlm.train.objectives import CausalObjective, DiffusionObjective, add_noise, masked_diffusion_loss, sample_t

MASK, BOS, EOS = 3, 1, 0


def _batch() -> Batch:
    # row 0: BOS + 3 prompt tokens, answer of 2 + EOS, canvas (valid_len) 9 of 10 positions
    # row 1: plain text, everything maskable
    ids = torch.tensor([[BOS, 10, 11, 12, 20, 21, EOS, EOS, EOS, EOS],
                        [30, 31, 32, 33, 34, 35, 36, 37, 38, 39]])
    return Batch(ids, prompt_len=torch.tensor([4, 0]), answer_end=torch.tensor([7, 10]),
                 valid_len=torch.tensor([9, 10]))


def test_noise_never_touches_prompt_or_padding():
    b = _batch()
    g = torch.Generator().manual_seed(0)
    for t in (0.999, 0.5, 0.05):
        for _ in range(50):
            noisy, masked, maskable = add_noise(b, MASK, torch.full((2,), t), g)
            assert (noisy[0, :4] == b.ids[0, :4]).all()  # prompt (with BOS) never masked
            assert (noisy[0, 9:] == b.ids[0, 9:]).all()  # beyond the canvas never masked
            assert torch.equal(noisy == MASK, masked)
            assert torch.equal(maskable.sum(1), torch.tensor([5, 10]))
    noisy, masked, _ = add_noise(b, MASK, torch.ones(2), g)  # t = 1 masks every maskable token, EOS included
    assert masked[0].tolist() == [False] * 4 + [True] * 5 + [False] and masked[1].all()


def test_loss_weights_by_one_over_t():
    V = 7
    logits = torch.zeros(3, V)  # uniform predictions: CE = log V at every masked position
    targets = torch.tensor([1, 2, 3])
    rows = torch.tensor([0, 0, 1])  # two masked positions in row 0, one in row 1
    t = torch.tensor([0.5, 0.25])
    n = torch.tensor([5, 10])
    got = masked_diffusion_loss(logits, targets, rows, t, n)
    want = (2 * math.log(V) / (0.5 * 5) + 1 * math.log(V) / (0.25 * 10)) / 2
    assert math.isclose(float(got), want, rel_tol=1e-6)
    # halving t doubles the weight of the row
    got2 = masked_diffusion_loss(logits, targets, rows, torch.tensor([0.25, 0.25]), n)
    row0 = 2 * math.log(V) / (0.5 * 5)
    assert math.isclose(float(got2), (2 * row0 + math.log(V) / 2.5) / 2, rel_tol=1e-6)


class _Uniform(torch.nn.Module):
    """A stand-in model whose logits are uniform: the loss then only depends on the masking and the weights."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.seen: list[tuple] = []
        self.positions: list[torch.Tensor] = []

    def hidden_states(self, ids, pos, key_mask):
        self.seen.append((ids.clone(), key_mask))
        self.positions.append(pos.clone())
        return torch.zeros(*ids.shape, 4)

    def logits(self, h):
        return torch.zeros(*h.shape[:-1], self.vocab)


def test_diffusion_objective_end_to_end_on_a_hand_batch():
    b = _batch()
    model = _Uniform(vocab=50)
    obj = DiffusionObjective(MASK)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.6, 0.3])
    loss, n_masked = obj.loss(model, b, g, t=t)
    fed, key_mask = model.seen[-1]
    masked = fed == MASK
    assert n_masked == int(masked.sum())
    assert key_mask.tolist()[0] == [True] * 9 + [False] and key_mask[1].all()  # the canvas ends at valid_len
    per_row = masked.sum(1).float() * math.log(50) / (t * torch.tensor([5.0, 10.0]))
    assert math.isclose(float(loss), float(per_row.mean()), rel_tol=1e-6)


def test_stratified_t_covers_the_interval():
    t = sample_t(8, 1e-3, torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() < 1
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), atol=1e-6)


def test_causal_objective_targets_answer_and_eos_only():
    b = _batch()
    seen = {}

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = self

        def forward(self, input_ids):
            return type("Out", (), {"last_hidden_state": torch.zeros(*input_ids.shape, 4)})()

        def lm_head(self, h):
            seen["n"] = h.shape[0]
            return torch.zeros(h.shape[0], 50)

    loss, n = CausalObjective().loss(Fake(), b)
    # row 0: answer tokens 20, 21 and the first EOS (positions 4..6); row 1: positions 1..9
    assert n == seen["n"] == 3 + 9
    assert math.isclose(float(loss), math.log(50), rel_tol=1e-6)


def test_pools_and_groups():
    pool = PairPool([[5, 6], [7], [8] * 20], [[9], [10, 11], [12]], row_len=8, bos_id=BOS, eos_id=EOS)
    assert len(pool) == 2 and pool.dropped == 1  # the third pair does not fit 8 tokens
    assert pool.rows.tolist()[1] == [BOS, 7, 10, 11, EOS, EOS, EOS, EOS]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = pool.sample(4, g)
        assert ((b.valid_len >= b.answer_end) & (b.valid_len <= 8)).all()
        assert (b.answer_end == b.prompt_len + torch.tensor([1, 2])[(b.ids[:, 1] == 7).long()] + 1).all()
    text = TextPool(torch.arange(100), row_len=8)
    w = text.windows(3)
    assert w.ids[0].tolist() == list(range(8)) and w.ids[-1].tolist() == list(range(92, 100))
    group = Group("g", [PairPool([[5]], [[6]], 8, BOS, EOS), text], [0.25, 0.75], batch_size=8)
    assert group.counts == [2, 6] and group.sample(g).ids.shape == (8, 8)
