"""``dlm train-filter``: the command end to end on a tiny model, Learn2PD's MLP, a bad --out."""

from __future__ import annotations

import json

import dlm
from dlm.cli import main as dlm_main
from dlm.filter import load_filter, read_config


def test_train_filter_command(tiny_llada, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt_ids": p, "gen_length": 8}) for p in
                                 [[72, 101, 108], [9, 8], [100, 101, 102], [7, 7, 7], [33, 34], [50, 51, 52, 53]]))
    out = tmp_path / "filt.safetensors"
    rc = dlm_main(["train-filter", "--model", str(tiny_llada.path), "--prompts", str(prompts), "--out", str(out),
                   "--block-length", "8", "--epochs", "3", "--grid", "0.5,0.99", "--device", "cpu",
                   "--decode-batch-size", "4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "false-positive rate" in text
    config = read_config(str(out))
    assert config.threshold in (0.5, 0.99) and config.info["train_prompts"] == 5 and config.info["val_prompts"] == 1
    assert len(config.info["threshold_tuning"]) == 2
    net = load_filter(str(out))
    assert (config.arch, config.features, config.context, config.hidden) == ("local", ("confidence", "masked"), 4,
                                                                             (32, 32))
    assert net.num_parameters == (2 * 9 * 32 + 32) + (32 * 32 + 32) + (32 + 1)
    c = dlm.GenerationConfig(gen_length=8, scheduler="learned_filter", scheduler_kwargs={"path": str(out)})
    tiny_llada.generate([[1, 2, 3]], c)


def test_train_filter_command_learn2pd_mlp(tiny_llada, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in ["abc", "hello", "x y z", "12+3"]))
    out = tmp_path / "mlp.safetensors"
    rc = dlm_main(["train-filter", "--model", str(tiny_llada.path), "--prompts", str(prompts), "--out", str(out),
                   "--gen-length", "8", "--block-length", "8", "--epochs", "2", "--threshold", "0.96",
                   "--arch", "mlp", "--features", "confidence", "--device", "cpu"])
    assert rc == 0
    config = read_config(str(out))
    assert config.threshold == 0.96 and config.info["threshold_tuning"] == []
    assert load_filter(str(out)).num_parameters == 2112  # Learn2PD's two-layer MLP over 32 confidences


def test_train_filter_rejects_a_bad_out(tmp_path, capsys):
    rc = dlm_main(["train-filter", "--out", str(tmp_path / "f.pt")])
    assert rc == 2 and ".safetensors" in capsys.readouterr().err


def _prompt_args(**kw):
    import argparse

    from dlm.train.filter.cli import configure
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(["--out", "f.safetensors", *[a for k, v in kw.items() for a in (f"--{k}", str(v))]])


def test_train_filter_families_choose_the_default_prompts():
    from dlm.train.filter.cli import prompt_sets
    train, val = prompt_sets(_prompt_args(**{"families": "pick,brackets", "n-per-family": 3, "val-per-family": 2}),
                             lm=None)
    assert [p.family for p in train] == ["pick"] * 3 + ["brackets"] * 3
    assert [p.family for p in val] == ["pick"] * 2 + ["brackets"] * 2
    assert not {p.text for p in train} & {p.text for p in val}
    default, _ = prompt_sets(_prompt_args(**{"n-per-family": 1}), lm=None)
    assert [p.family for p in default] == list(dlm.data.FAMILIES)


def test_train_filter_rejects_an_unknown_family():
    import pytest

    from dlm.errors import ConfigError
    from dlm.train.filter.cli import prompt_sets
    with pytest.raises(ConfigError, match="--families.*'nope'.*pick"):
        prompt_sets(_prompt_args(families="copy,nope"), lm=None)
