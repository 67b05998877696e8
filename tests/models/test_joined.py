"""Joined projections (dlm.models.joined): q/k/v and gate/up stacked into one weight each. The split path is the
unjoined model bit for bit; the joined product agrees with it to float32 rounding and gives the same tokens; the
join is undone without copies; quantized layers and mixtures of experts keep their own products."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.api.lm import set_fast_path
from dlm.models import joined
from dlm.models.joined import JoinedLinear, join_projections, split_projections
from dlm.testing_block import write_block_checkpoint

from ..conftest import random_prompts


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids)


@pytest.fixture(params=["llada", "Dream"])
def fresh(request, llada_path, dream_path):
    """A private copy of each tiny model in turn, so joining does not touch the shared ones."""
    return dlm.load(llada_path if request.param == "llada" else dream_path, device="cpu")


def test_join_stacks_the_weights_and_split_restores_them(fresh):
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    n_params = sum(p.numel() for p in fresh.model.parameters())
    assert join_projections(fresh.model) == 2 * fresh.arch.num_layers
    assert join_projections(fresh.model) == 0  # already joined
    layer = fresh.model.layers[0]
    assert isinstance(layer.q_k_v, JoinedLinear) and isinstance(layer.gate_up, JoinedLinear)
    assert not hasattr(layer, "q") and not hasattr(layer, "gate")
    assert sum(p.numel() for p in fresh.model.parameters()) == n_params  # nothing stored twice
    assert torch.equal(layer.q_k_v.weight, torch.cat([before[f"layers.0.{n}.weight"] for n in "qkv"]))
    ptr = layer.q_k_v.weight.data_ptr()
    assert split_projections(fresh.model) == 2 * fresh.arch.num_layers
    after = fresh.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert fresh.model.layers[0].q.weight.data_ptr() == ptr  # a view of the stacked weight, not a copy


def test_split_path_is_the_unjoined_model_bit_for_bit(fresh):
    ids = torch.tensor(random_prompts(fresh, 3, seed=4, min_len=9, max_len=9))
    ref = _logits(fresh, ids)
    join_projections(fresh.model)
    assert not joined.use_joined_product(ids.float())  # CPU: the parts' products
    assert torch.equal(_logits(fresh, ids), ref)


def test_joined_product_agrees_and_gives_the_same_tokens(fresh, monkeypatch):
    prompts = random_prompts(fresh, 12, seed=9, min_len=1, max_len=20)
    cfgs = [GenerationConfig(gen_length=16, block_length=8, cache=c, stop_at_eos=False) for c in ("none", "dual")]
    refs = [fresh.generate(prompts, c).sequences for c in cfgs]
    ids = torch.tensor(random_prompts(fresh, 2, seed=5, min_len=12, max_len=12))
    ref_logits = _logits(fresh, ids)
    join_projections(fresh.model)
    monkeypatch.setattr(joined, "use_joined_product", lambda x: True)
    torch.testing.assert_close(_logits(fresh, ids), ref_logits, rtol=1e-5, atol=1e-5)
    for cfg, ref in zip(cfgs, refs):
        assert torch.equal(fresh.generate(prompts, cfg).sequences, ref), cfg.cache


def test_joined_product_only_for_small_cuda_steps_outside_function_modes(monkeypatch):
    x = torch.zeros(2, joined.JOIN_MAX_ROWS // 2, 8)
    assert not joined.use_joined_product(x)  # not on CUDA
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert joined.use_joined_product(x)
    assert not joined.use_joined_product(torch.zeros(joined.JOIN_MAX_ROWS + 1, 8))
    from dlm.engine.numerics import BatchInvariantOps

    with BatchInvariantOps(tile=4):
        assert not joined.use_joined_product(x)  # batch-invariant tiling decides per tile


def test_fused_kernels_switch_joins_and_splits(llada_path):
    lm = dlm.load(llada_path, device="cpu", fused_kernels=True)
    assert hasattr(lm.model.layers[0], "q_k_v")
    set_fast_path(lm, False, False)
    assert hasattr(lm.model.layers[0], "q") and not hasattr(lm.model.layers[0], "q_k_v")
    assert not hasattr(dlm.load(llada_path, device="cpu").model.layers[0], "q_k_v")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def test_fp8_layers_join_as_one_fp8_layer(llada_path, dream_path):
    """FP8 q/k/v and gate/up stack into one FP8 layer each (weights, scales, biases), on the parts' path; the
    state keeps the parts' names; a split gives FP8 layers over views of the stacked tensors; logits agree and
    tokens are equal."""
    from dlm.models.fp8 import FP8, FP8Linear

    for path in (llada_path, dream_path):
        lm = dlm.load(path, device="cpu", quantize="fp8")
        ids = torch.tensor(random_prompts(lm, 2, seed=6, min_len=10, max_len=10))
        prompts = random_prompts(lm, 6, seed=2, min_len=1, max_len=16)
        cfg = GenerationConfig(gen_length=16, block_length=8, cache="dual", stop_at_eos=False)
        ref, ref_tokens = _logits(lm, ids), lm.generate(prompts, cfg).sequences
        before = {k: v.clone() for k, v in lm.model.state_dict().items()}
        assert join_projections(lm.model) == 2 * lm.arch.num_layers
        group = lm.model.layers[0].q_k_v
        assert isinstance(group, joined.JoinedFP8Linear) and group.impl == "reference"
        assert group.weight.dtype == FP8 and group.sizes == [before[f"layers.0.{n}.weight"].shape[0] for n in "qkv"]
        assert torch.equal(group.weight_scale, torch.cat([before[f"layers.0.{n}.weight_scale"] for n in "qkv"]))
        assert (group.bias is None) == ("layers.0.q.bias" not in before)
        torch.testing.assert_close(_logits(lm, ids), ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(lm.generate(prompts, cfg).sequences, ref_tokens)
        state = joined.unjoined_state(lm.model)
        assert state.keys() == before.keys() and all(torch.equal(_bits(state[k]), _bits(before[k])) for k in before)
        ptr = group.weight.data_ptr()
        assert split_projections(lm.model) == 2 * lm.arch.num_layers
        q = lm.model.layers[0].q
        assert type(q) is FP8Linear and q.impl == "reference" and q.weight.data_ptr() == ptr
        assert torch.equal(_logits(lm, ids), ref)  # the parts again: the unjoined model bit for bit


def test_fp8_parts_need_a_bias_on_all_or_none():
    from dlm.models.fp8 import FP8Linear

    with_bias, without = (FP8Linear.from_linear(torch.nn.Linear(32, 16, bias=b)) for b in (True, False))
    for parts in ([with_bias, without], [without, with_bias]):
        with pytest.raises(ValueError, match="a bias on every part or on none"):
            joined.JoinedFP8Linear(("a", "b"), parts)


def test_fp8_model_joins_with_the_fused_kernels_switch(llada_path):
    lm = dlm.load(llada_path, device="cpu", quantize="fp8", fused_kernels=True)
    assert isinstance(lm.model.layers[0].q_k_v, joined.JoinedFP8Linear)
    assert isinstance(lm.model.layers[0].gate_up, joined.JoinedFP8Linear)


def test_quantizing_a_joined_model_quantizes_every_part(fresh):
    from dlm.models.fp8 import FP8Linear, linear_names, quantize_model

    n = len(linear_names(fresh.model))
    join_projections(fresh.model)
    assert quantize_model(fresh.model) == n
    assert not any(isinstance(m, JoinedLinear) for m in fresh.model.modules())
    layer = fresh.model.layers[0]  # joined again, as FP8 layers
    assert isinstance(layer.q_k_v, joined.JoinedFP8Linear) and isinstance(layer.gate_up, joined.JoinedFP8Linear)
    split_projections(fresh.model)
    assert isinstance(layer.q, FP8Linear) and isinstance(layer.up, FP8Linear)
    plain = dlm.load(fresh.path, device="cpu").model
    assert quantize_model(plain) == n and not hasattr(plain.layers[0], "q_k_v")  # an unjoined one stays so


def test_hooked_or_subclassed_layers_are_not_joined(fresh):
    """A layer another component hooks (a tensor-parallel plan, an adapter) or whose weight is a tensor subclass
    (a DTensor) keeps its own products."""

    class Sub(torch.Tensor):
        pass

    layers = fresh.model.layers
    layers[0].k.register_forward_hook(lambda *a: None)
    layers[1].up.weight = torch.nn.Parameter(layers[1].up.weight.detach().as_subclass(Sub))
    join_projections(fresh.model)
    assert hasattr(layers[0], "q") and hasattr(layers[0], "gate_up")
    assert hasattr(layers[1], "q_k_v") and hasattr(layers[1], "gate")


def test_a_split_then_join_moves_no_weight(fresh):
    """Rejoining parts split from one stacked weight views that weight again: CUDA graphs captured before keep
    reading live memory."""
    ids = torch.tensor(random_prompts(fresh, 2, seed=6, min_len=7, max_len=7))
    join_projections(fresh.model)
    ptrs = [m.weight.data_ptr() for m in fresh.model.modules() if isinstance(m, JoinedLinear)]
    ref = _logits(fresh, ids)
    split_projections(fresh.model)
    join_projections(fresh.model)
    assert [m.weight.data_ptr() for m in fresh.model.modules() if isinstance(m, JoinedLinear)] == ptrs
    assert torch.equal(_logits(fresh, ids), ref)


@pytest.mark.parametrize("fmt, groups", [("llada2_moe", 1), ("sdar", 6)])
def test_block_families_join_what_they_have(fmt, groups, tmp_path, monkeypatch):
    """LLaDA2's checkpoint QKV and its experts stay as they are (only the dense layer's gate/up is joined); SDAR's
    q/k/v (with QK-norm) and gate/up are joined. Tokens equal before and after, with the joined product too."""
    lm = dlm.load(write_block_checkpoint(tmp_path / fmt, fmt, seed=3), device="cpu")
    prompts = random_prompts(lm, 4, seed=2, min_len=3, max_len=10)
    cfg = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    ref = lm.generate(prompts, cfg).sequences
    assert join_projections(lm.model) == groups
    assert torch.equal(lm.generate(prompts, cfg).sequences, ref)
    monkeypatch.setattr(joined, "use_joined_product", lambda x: True)
    assert torch.equal(lm.generate(prompts, cfg).sequences, ref)


def test_a_joined_model_saves_the_format_names(fresh, tmp_path):
    from dlm.models.loading import save_checkpoint

    ids = torch.tensor(random_prompts(fresh, 2, seed=6, min_len=7, max_len=7))
    ref = _logits(fresh, ids)
    join_projections(fresh.model)
    save_checkpoint(fresh.model, fresh.arch_cls, fresh.ids, tmp_path)
    again = dlm.load(tmp_path, device="cpu", tokenizer=False)
    assert hasattr(again.model.layers[0], "q")
    assert torch.equal(_logits(again, ids), ref)
