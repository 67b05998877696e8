"""The shipped models' builders: exported checkpoints reload bit-exact (dlm-tiny and dlm-tiny-block through
dlm.load, dlm-tiny-ar through transformers)."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.train import builders
from dlm.train.builders import ModelSize
from dlm.train.tokenizer import load_fast, token_ids

SIZE = ModelSize(d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=64)


@pytest.fixture(scope="module")
def data(small_tokenizer):
    tok = load_fast(small_tokenizer)
    return tok, token_ids(tok), None, None


def test_dlm_tiny_checkpoint_reloads_bit_exact(data, small_tokenizer, tmp_path):
    tok, ids, _, _ = data
    model = builders.build_diffusion(SIZE, tok.get_vocab_size(), seed=3)
    folder = builders.save_diffusion(model, ids, small_tokenizer, tmp_path / "dlm-tiny", {"MODEL_CARD.md": "# x\n"})
    assert (folder / "MODEL_CARD.md").read_text() == "# x\n"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["d_model"] == 32 and cfg["mask_token_id"] == ids.mask
    assert all(p.stat().st_size < 15 * 2**20 for p in folder.glob("*.safetensors"))
    lm = dlm.load(folder, dtype="bfloat16", device="cpu")
    assert (lm.ids.mask_id, lm.ids.eos_id, lm.ids.bos_id) == (ids.mask, ids.eos, ids.bos)
    assert ids.eot in lm.ids.stop_ids
    want = model.state_dict()
    got = lm.model.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        assert torch.equal(got[name], w.to(torch.bfloat16)), name
    out = lm.generate(["copy: a b ="], gen_length=8, steps=8)
    assert out.sequences.shape == (1, 8)


def test_dlm_tiny_ar_reloads_bit_exact(data, small_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, ids, _, _ = data
    model = builders.build_causal(SIZE, tok.get_vocab_size(), ids, seed=4)
    folder = builders.save_causal(model, small_tokenizer, tmp_path / "dlm-tiny-ar")
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, trust_remote_code=False)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        assert torch.equal(got[name], w.to(torch.bfloat16)), name
    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    assert hf_tok.eos_token_id == ids.eos and hf_tok.bos_token_id == ids.bos


def test_dlm_tiny_block_is_an_sdar_checkpoint_that_reloads_bit_exact(data, small_tokenizer, tmp_path):
    from dlm.models.sdar import SDAR
    from dlm.train.block_decode import generate_block

    tok, ids, _, _ = data
    model = builders.build_block(SIZE, tok.get_vocab_size(), seed=5)
    folder = builders.save_block(model, ids, 4, small_tokenizer, tmp_path / "dlm-tiny-block", {"MODEL_CARD.md": "x"})
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"], cfg["block_size"]) == ("sdar", ["SDARForCausalLM"], 4)
    assert (cfg["mask_token_id"], cfg["eos_token_id"], cfg["bos_token_id"]) == (ids.mask, ids.eos, ids.bos)
    assert SDAR.parse_config(cfg) == model.cfg  # the loader rebuilds exactly the trained geometry
    assert json.loads((folder / "tokenizer_config.json").read_text())["mask_token"] == "<|mdm_mask|>"
    lm = dlm.load(folder, dtype="float32", device="cpu")
    assert (lm.model_type, lm.block_size, lm.ids.mask_id, lm.ids.eos_id) == ("sdar", 4, ids.mask, ids.eos)
    want = model.state_dict()
    got = lm.model.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        assert torch.equal(got[name], w.to(torch.bfloat16).float()), name
    texts, finished = generate_block(lm, ["copy: a b =", "add: 1+2 ="], gen_length=8, batch_size=2)
    assert len(texts) == len(finished) == 2 and all(isinstance(t, str) for t in texts)
