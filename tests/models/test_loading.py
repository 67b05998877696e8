"""Loading both formats, and the clear errors for every broken or unsafe checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dlm
from dlm.errors import CheckpointError, ConfigError
from dlm.models import save_checkpoint
from dlm.testing import random_model, tiny_arch, write_tiny_checkpoint


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_both_formats_load(llada, dream, llada_path, dream_path):
    assert llada.model_type == "llada" and llada.logits_shift == 0
    assert dream.model_type == "Dream" and dream.logits_shift == 1
    for lm, path in ((llada, llada_path), (dream, dream_path)):
        cfg = json.loads((path / "config.json").read_text())
        assert lm.ids.mask_id == cfg["mask_token_id"]
        assert lm.ids.eos_id == cfg["eos_token_id"] and lm.ids.pad_id == cfg["pad_token_id"]
        assert len(list(path.glob("model-*.safetensors"))) > 1  # sharded, with an index
        assert (path / "model.safetensors.index.json").is_file()
        assert all(not p.is_meta for p in lm.model.parameters())
    # end-of-turn tokens come from the tokenizer
    assert llada.tokenizer.convert_ids_to_tokens(llada.ids.stop_ids[1]) == "<|eot_id|>"
    assert dream.tokenizer.convert_ids_to_tokens(dream.ids.stop_ids[1]) == "<|im_end|>"


def test_dream_tokenizer_needs_no_remote_code(dream_path, dream):
    tc = json.loads((dream_path / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "DreamTokenizer" and "auto_map" in tc  # as shipped: remote code only
    assert not (dream_path / "tokenization_dream.py").exists()
    assert "Qwen2" in type(dream.tokenizer).__name__
    assert dream.tokenizer.decode(dream.tokenizer("hello <|im_end|>")["input_ids"]) == "hello <|im_end|>"


def test_weight_names_are_the_official_ones(llada_path, dream_path):
    names = json.loads((llada_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.transformer.wte.weight" in names and "model.transformer.ff_out.weight" in names
    assert "model.transformer.blocks.0.attn_out.weight" in names and "model.transformer.blocks.1.up_proj.weight" in names
    names = json.loads((dream_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.self_attn.q_proj.bias" in names and "lm_head.weight" in names


def test_save_reload_bit_exact(tmp_path):
    arch = tiny_arch("llada")
    model = random_model(arch, seed=7)
    ids = dlm.models.SpecialIds(mask_id=261, eos_id=257, pad_id=257, bos_id=256)
    save_checkpoint(model, "llada", ids, tmp_path / "m", max_shard_bytes=80_000)
    from dlm.testing import write_tokenizer

    write_tokenizer(tmp_path / "m", "llada")
    lm = dlm.load(tmp_path / "m", device="cpu", dtype="float32")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), lm.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_missing_folder_and_config(tmp_path, llada_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        dlm.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        dlm.load(tmp_path / "file")
    d = copy_ckpt(llada_path, tmp_path / "c")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        dlm.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        dlm.load(d)


def test_unknown_model_type_lists_known(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown model_type 'gpt2'.*Dream, llada"):
        dlm.load(d)
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no 'model_type'"):
        dlm.load(d)


def _edit_index(d: Path, fn) -> None:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    fn(index["weight_map"])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_and_unexpected_weights(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "missing")
    _edit_index(d, lambda wm: wm.pop("model.transformer.blocks.1.q_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 weight\(s\): model.transformer.blocks.1.q_proj.weight"):
        dlm.load(d)
    d = copy_ckpt(llada_path, tmp_path / "unexpected")
    save_file({"model.transformer.extra.weight": torch.zeros(2)}, str(d / "extra.safetensors"))
    _edit_index(d, lambda wm: wm.__setitem__("model.transformer.extra.weight", "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected 1 weight\(s\): model.transformer.extra.weight"):
        dlm.load(d)


def test_shape_mismatch(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["mlp_hidden_size"] += 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"has shape \[\d+, \d+\] but config.json implies"):
        dlm.load(d)


def test_missing_shard(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    sorted(d.glob("model-*.safetensors"))[0].unlink()
    with pytest.raises(CheckpointError, match="lists shard\\(s\\) that are not in the folder"):
        dlm.load(d)


def test_pickle_only_checkpoint_is_refused(tmp_path, llada_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(llada_path / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")  # never opened
    with pytest.raises(CheckpointError, match="only pickle weights.*refuses to unpickle"):
        dlm.load(d)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        dlm.load(d)


def test_unsupported_config_values(tmp_path, llada_path, dream_path):
    d = copy_ckpt(llada_path, tmp_path / "l")
    cfg = json.loads((d / "config.json").read_text())
    cfg["block_type"] = "sequential"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="block_type='sequential' is not supported"):
        dlm.load(d)
    d = copy_ckpt(dream_path, tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has no 'hidden_size' field"):
        dlm.load(d)


def test_tokenizer_options(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer.*tokenizer=False"):
        dlm.load(d)
    lm = dlm.load(d, tokenizer=False)
    assert lm.tokenizer is None and lm.ids.mask_id == 261
    out = lm.generate([[1, 2, 3]], gen_length=8)
    assert out.texts is None and out.sequences.shape == (1, 8)
    with pytest.raises(ConfigError, match="no tokenizer"):
        lm.generate("text prompt", gen_length=8)
    lm = dlm.load(d, tokenizer=llada_path)
    assert lm.tokenizer is not None


def test_bad_dtype_and_backend(llada_path):
    with pytest.raises(CheckpointError, match="unknown dtype 'float8'"):
        dlm.load(llada_path, dtype="float8")
    with pytest.raises(ConfigError, match="unknown attn_backend"):
        dlm.load(llada_path, attn_backend="xformers")


def test_default_model_missing_is_clear(monkeypatch, tmp_path):
    from dlm import assets

    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    with pytest.raises(CheckpointError, match="bundled dlm-tiny model is missing"):
        dlm.load()


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_loading_never_holds_two_copies(tmp_path, stored):
    """Peak resident memory while loading (then reading every weight) stays well below twice the weights,
    even when one shard holds everything and when the stored dtype differs from the loaded one."""
    folder = write_tiny_checkpoint(tmp_path / "big", "llada", layers=4, hidden=512, heads=8, mlp=1536,
                                   max_shard_bytes=2**31, dtype=getattr(torch, stored))  # ~14M params, 56 MB fp32
    assert len(list(folder.glob("*.safetensors"))) == 1
    script = Path(__file__).resolve().parents[2] / "examples" / "load_memory.py"
    out = subprocess.run([sys.executable, str(script), str(folder), "--dtype", "float32"], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = json.loads(out.stdout)
    assert r["weights_bytes"] > 50e6
    assert r["ratio"] < 1.5, f"peak grew by {r['peak_growth_bytes'] / 1e6:.1f} MB for {r['weights_bytes'] / 1e6:.1f} MB"


# ------------------------------------------------------------------------ fault sweep: files that lie or break
def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_config_json_that_is_not_an_object(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json must hold a JSON object \(\{...\}\), got a list"):
        dlm.load(d)
    (d / "config.json").write_bytes(b'{"model_type": "llada\xff"}')
    with pytest.raises(CheckpointError, match=r"config.json is not UTF-8 text \(byte 21\)"):
        dlm.load(d)
    (d / "config.json").write_text(json.dumps({"model_type": ["llada"]}))
    with pytest.raises(CheckpointError, match=r"unknown model_type \['llada'\]"):
        dlm.load(d)


@pytest.mark.parametrize("fmt, changes, match", [
    ("llada", {"n_heads": 0}, r"config.json field 'n_heads' must be >= 1, got 0"),
    ("llada", {"n_layers": -2}, r"'n_layers' must be >= 1, got -2"),
    ("llada", {"d_model": "256"}, r"'d_model' must be an integer, got '256'"),
    ("llada", {"max_sequence_length": -5}, r"'max_sequence_length' must be >= 1, got -5"),
    ("llada", {"mask_token_id": 10**6}, r"'mask_token_id' must be a token id in \[0, \d+\) \(the vocabulary\)"),
    ("llada", {"pad_token_id": -1}, r"'pad_token_id' must be a token id"),
    ("llada", {"weight_tying": "false"}, r"'weight_tying' must be true or false, got 'false'"),
    ("llada", {"rms_norm_eps": 0}, r"'rms_norm_eps' must be a finite number > 0"),
    ("llada", {"rope_theta": "big"}, r"'rope_theta' must be a finite number > 0"),
    ("llada", {"n_kv_heads": 3}, r"cannot be built: num_heads \(\d+\) must be a multiple of num_kv_heads \(3\)"),
    ("llada", {"block_type": ["llama"]}, r"block_type=\['llama'\] is not supported"),
    ("llada", {"rope": 1}, r"rope=1 is not supported"),
    ("Dream", {"num_attention_heads": 0}, r"'num_attention_heads' must be >= 1, got 0"),
    ("Dream", {"max_position_embeddings": -1}, r"'max_position_embeddings' must be >= 1"),
    ("Dream", {"eos_token_id": [5, 10**7]}, r"'eos_token_id' must be a token id in \[0, \d+\)"),
    ("Dream", {"use_sliding_window": "no"}, r"'use_sliding_window' must be true or false"),
])
def test_config_fields_are_checked_at_load(tmp_path, llada_path, dream_path, fmt, changes, match):
    d = copy_ckpt(llada_path if fmt == "llada" else dream_path, tmp_path / "c")
    _edit_config(d, **changes)
    with pytest.raises(CheckpointError, match=match):
        dlm.load(d)


def test_eos_token_id_may_be_a_list(tmp_path, dream_path, dream):
    d = copy_ckpt(dream_path, tmp_path / "c")
    _edit_config(d, eos_token_id=[dream.ids.eos_id, 7])
    lm = dlm.load(d)
    assert lm.ids.eos_id == dream.ids.eos_id and 7 in lm.ids.stop_ids


def _rewrite_shard(d: Path, name: str, fn) -> None:
    shard = d / json.loads((d / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = fn(tensors[name])
    save_file(tensors, str(shard))


def test_integer_weights_are_refused_float_ones_converted(tmp_path, llada_path, llada):
    name = "model.transformer.blocks.0.q_proj.weight"
    d = copy_ckpt(llada_path, tmp_path / "int8")
    _rewrite_shard(d, name, lambda t: (t * 100).to(torch.int8))  # what an int8 export stores
    with pytest.raises(CheckpointError, match=rf"weight '{name}' is stored as I8, not a floating-point type"):
        dlm.load(d)
    d = copy_ckpt(llada_path, tmp_path / "f64")
    _rewrite_shard(d, name, lambda t: t.to(torch.float64))
    lm = dlm.load(d, dtype="float32")
    q = lm.model.layers[0].q.weight
    assert q.dtype == torch.float32 and torch.equal(q, llada.model.layers[0].q.weight)


@pytest.mark.parametrize("target, match", [
    ("../../etc/passwd", "outside the checkpoint folder"),
    ("/etc/passwd", "outside the checkpoint folder"),
    ("sub/../../x.safetensors", "outside the checkpoint folder"),
    ("..\\..\\x.safetensors", "outside the checkpoint folder"),
    ("C:/x.safetensors", "outside the checkpoint folder"),
    (42, "outside the checkpoint folder"),
    ("pytorch_model.bin", "not a .safetensors file"),
])
def test_index_entries_stay_inside_the_folder(tmp_path, llada_path, target, match):
    d = copy_ckpt(llada_path, tmp_path / "c")
    _edit_index(d, lambda wm: wm.__setitem__("model.transformer.wte.weight", target))
    with pytest.raises(CheckpointError, match=rf"weight 'model.transformer.wte.weight' points at .*{match}"):
        dlm.load(d)


def test_broken_index_and_headers(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "index")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CheckpointError, match="needs a 'weight_map' object"):
        dlm.load(d)
    d = copy_ckpt(llada_path, tmp_path / "moved")
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    name = "model.transformer.wte.weight"
    _edit_index(d, lambda wm: wm.__setitem__(name, next(s for s in shards if s != wm[name])))
    with pytest.raises(CheckpointError, match=rf"puts weight '{name}' in model-.*, which does not hold it"):
        dlm.load(d)
    d = tmp_path / "single"
    d.mkdir()
    shutil.copy(llada_path / "config.json", d / "config.json")
    header = json.dumps({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(CheckpointError, match=r"tensor 'x' has a corrupt header entry \(needs dtype, shape"):
        dlm.load(d, tokenizer=False)
    header = json.dumps({"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(CheckpointError, match=r"unsupported dtype 'Q4'"):
        dlm.load(d, tokenizer=False)


def test_tokenizer_config_that_is_not_an_object(tmp_path, llada_path):
    d = copy_ckpt(llada_path, tmp_path / "c")
    (d / "tokenizer_config.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="tokenizer_config.json is not UTF-8"):
        dlm.load(d)
