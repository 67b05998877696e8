"""The recipe's reference block decoder: canvas layout, commit order on scripted logits, stopping, padding."""

from __future__ import annotations

import torch

from dlm.train.block_decode import block_canvas, block_decode
from dlm.train.builders import ModelSize, build_block

MASK, PAD, V = 3, 0, 40
SCORE = [2.0, 5.0, 1.0, 3.0, 4.0, 0.5, 6.0, 2.5, 3.5, 1.5, 5.5, 0.2]  # confidence of each row position


class Scripted(torch.nn.Module):
    """Greedy token ``10 + p`` at row position p, more probable where ``SCORE[p]`` is higher; ``eos_at``: the
    position whose greedy token is PAD (= EOS). Records the canvas it is given at every call."""

    def __init__(self, eos_at: int = -1):
        super().__init__()
        self.embed = torch.nn.Embedding(1, 1)  # the decoder reads the device from here
        self.eos_at, self.calls = eos_at, []

    def forward(self, ids, pos, key_mask=None, logits_index=None):
        self.calls.append(ids.clone())
        target = torch.where(pos == self.eos_at, torch.full_like(pos, PAD), 10 + pos)
        logits = torch.zeros(*ids.shape, V)
        logits.scatter_(2, target.unsqueeze(2), torch.tensor(SCORE)[pos].unsqueeze(2))
        return logits.gather(1, logits_index.unsqueeze(2).expand(-1, -1, V))


def _commits(calls: list[torch.Tensor]) -> list[int]:
    """The position of row 0 committed between consecutive forwards (exactly one each)."""
    out = []
    for a, b in zip(calls, calls[1:]):
        changed = (a[0] != b[0]).nonzero().flatten().tolist()
        assert len(changed) == 1, changed
        out.append(changed[0])
    return out


def test_canvas_layout():
    c = block_canvas([[1, 5, 6], [1, 7, 8, 9, 10, 11]], gen_length=6, block_size=4, mask_id=MASK, pad_id=PAD)
    # row 0: 3 left-padding positions, prompt 3 + 9 masks (canvas rounded up to 12); row 1: prompt 6 + 6 masks
    assert c.ids.shape == (2, 15)
    assert c.ids[0].tolist() == [PAD] * 3 + [1, 5, 6] + [MASK] * 9
    assert c.ids[1].tolist() == [1, 7, 8, 9, 10, 11] + [MASK] * 6 + [PAD] * 3
    assert c.valid[0].tolist() == [False] * 3 + [True] * 12 and c.valid[1].tolist() == [True] * 12 + [False] * 3
    assert c.pos[0, 3:].tolist() == list(range(12)) and c.start.tolist() == [6, 6]


def test_one_token_per_step_most_confident_of_the_current_block():
    model = Scripted()
    tokens, steps = block_decode(model, [[1, 5, 6]], gen_length=6, block_size=4, mask_id=MASK, pad_id=PAD,
                                 stop_ids=[PAD])
    assert steps == 9 == len(model.calls)
    # block 0 ends with position 3; block 1 (4-7) by descending SCORE: 6, 4, 7, 5; block 2 (8-11): 10, 8, 9, and
    # the last one (11) is committed after the last forward
    assert _commits(model.calls) == [3, 6, 4, 7, 5, 10, 8, 9]
    assert all((c[0, :3] == torch.tensor([1, 5, 6])).all() for c in model.calls)  # the prompt never changes
    assert tokens == [[13, 14, 15, 16, 17, 18]]  # the first gen_length answer tokens


def test_stop_token_ends_the_row_after_its_block():
    model = Scripted(eos_at=5)
    tokens, steps = block_decode(model, [[1, 5, 6]], 6, 4, MASK, PAD, stop_ids=[PAD])
    assert steps == 5  # position 3, then block 1; block 2 is never decoded
    assert tokens == [[13, 14, PAD, 16, 17, PAD]]
    full, full_steps = block_decode(Scripted(eos_at=5), [[1, 5, 6]], 6, 4, MASK, PAD, stop_ids=[])
    assert full_steps == 9 and full[0][:3] == tokens[0][:3]  # the same answer up to its first stop token


def test_batch_equals_rows_alone():
    model = build_block(ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=64), 40,
                        seed=7).eval()
    prompts = [[1, 5, 6], [1, 7, 8, 9, 10, 11, 12], [1, 20]]
    batch, steps = block_decode(model, prompts, 7, 4, MASK, PAD, stop_ids=[])
    alone = [block_decode(model, [p], 7, 4, MASK, PAD, stop_ids=[])[0][0] for p in prompts]
    assert batch == alone
    assert steps == max(-(-(len(p) + 7) // 4) * 4 - len(p) for p in prompts)
