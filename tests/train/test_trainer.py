"""The training loop on tiny configurations: the loss goes down, resume works, non-finite steps are skipped."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.data import make_splits
from dlm.train import builders
from dlm.train.builders import ModelSize
from dlm.train.data import Group, Mixture, PairPool, TextPool
from dlm.train.objectives import CausalObjective, DiffusionObjective
from dlm.train.optim import TrainConfig
from dlm.train.tokenizer import load_fast, token_ids
from dlm.train.trainer import Trainer

SIZE = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=64)
CODE = "def add(a, b):\n    return a + b\n\nclass A:\n    def f(self, x=1):\n        return [x, 'y']\n"


@pytest.fixture(scope="module")
def data(small_tokenizer):
    tok = load_fast(small_tokenizer)
    ids = token_ids(tok)

    def enc(texts):
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    ex = make_splits(["copy", "reverse"], n_train=300, n_val=16, n_test=0)
    pairs = PairPool(enc([e.prompt for e in ex["train"]]), enc([e.answer for e in ex["train"]]), 32, ids.bos, ids.eos)
    text = TextPool.from_documents(enc([CODE] * 30), ids.eos, 32)
    mixture = Mixture([Group("tasks", [pairs], [1.0], 16), Group("code", [text], [1.0], 4, weight=0.5)])
    val_pairs = PairPool(enc([e.prompt for e in ex["val"]]), enc([e.answer for e in ex["val"]]), 32, ids.bos, ids.eos)
    g = torch.Generator().manual_seed(0)
    val = {"tasks": [Group("tasks", [val_pairs], [1.0], 16).sample(g)], "code": [text.windows(4)]}
    return tok, ids, mixture, val


def _config(**kw) -> TrainConfig:
    base = dict(lr=1e-2, warmup_steps=3, max_steps=40, val_every=1000, log_every=10, export_every_minutes=0.0,
                progress=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", ["diffusion", "causal"])
def test_loss_decreases(kind, data, tmp_path):
    tok, ids, mixture, val = data
    n = tok.get_vocab_size()
    if kind == "diffusion":
        model, objective = builders.build_diffusion(SIZE, n, seed=0), DiffusionObjective(ids.mask)
    else:
        model, objective = builders.build_causal(SIZE, n, ids, seed=0), CausalObjective()
    trainer = Trainer(kind, model, objective, mixture, val, _config(), tmp_path)
    before = trainer.validate()
    result = trainer.fit()
    after = result.val_loss
    assert result.steps == 40 and result.stopped_by == "max_steps"
    assert after["tasks"] < 0.8 * before["tasks"] and after["code"] < before["code"]
    assert after["total"] == pytest.approx(after["tasks"] + 0.5 * after["code"])
    assert (tmp_path / f"{kind}_loss.png").stat().st_size > 1000
    lines = [json.loads(x) for x in (tmp_path / f"{kind}_metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and lines[-1]["step"] == 40 and "val_total" in lines[-1]


def test_resume_continues_from_the_saved_state(data, tmp_path):
    tok, ids, mixture, val = data
    model = builders.build_diffusion(SIZE, tok.get_vocab_size(), seed=0)
    Trainer("m", model, DiffusionObjective(ids.mask), mixture, val, _config(max_steps=6), tmp_path).fit()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = builders.build_diffusion(SIZE, tok.get_vocab_size(), seed=1)
    trainer = Trainer("m", fresh, DiffusionObjective(ids.mask), mixture, val, _config(max_steps=6), tmp_path)
    result = trainer.fit(resume=True)  # already at step 6: restores the state and stops
    assert result.steps == 6
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)
    result = Trainer("m", fresh, DiffusionObjective(ids.mask), mixture, val, _config(max_steps=9), tmp_path).fit(
        resume=True)
    assert result.steps == 9 and result.tokens == 9 * mixture.tokens_per_step()


class _NaNAt:
    """Wraps an objective so that its loss is NaN at the given calls (as a bf16 overflow would make it)."""

    def __init__(self, inner, calls: set[int]):
        self.inner, self.calls, self.n = inner, calls, 0

    def prepare(self, model, compile=False):
        self.inner.prepare(model, compile)

    def loss(self, model, batch, generator=None):
        loss, n = self.inner.loss(model, batch, generator)
        self.n += 1
        return (loss * float("nan") if self.n in self.calls else loss), n


def test_non_finite_steps_are_skipped(data, tmp_path):
    tok, ids, mixture, val = data
    model = builders.build_diffusion(SIZE, tok.get_vocab_size(), seed=0)
    # two groups per step: calls 5 and 6 are step 3; call 11 is step 6
    objective = _NaNAt(DiffusionObjective(ids.mask), {5, 11})
    result = Trainer("nan", model, objective, mixture, val, _config(max_steps=10, log_every=1), tmp_path).fit()
    assert result.steps == 10 and result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(v == v for v in result.val_loss.values())  # no NaN
    with pytest.raises(FloatingPointError, match="steps in a row had non-finite gradients"):
        always = _NaNAt(DiffusionObjective(ids.mask), set(range(1, 1000)))
        Trainer("nan2", builders.build_diffusion(SIZE, tok.get_vocab_size()), always, mixture, val,
                _config(max_steps=100), tmp_path).fit()
