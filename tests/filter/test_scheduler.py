"""The ``learned_filter`` scheduler: its rule, its files and their errors, EoTP and caches, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.cli import main as dlm_main
from dlm.schedulers import learned_filter as LF
from dlm.schedulers.learned_filter import FilterConfig, FilterNet, save_filter

from ..schedulers.invariants import PROMPTS, check_run, record


def make_filter(tmp_path, name="f", bias: float | None = None, **config) -> str:
    """A random filter file; ``bias`` sets the output bias (large: accept everything, small: nothing)."""
    torch.manual_seed(0)
    net = FilterNet(FilterConfig(**config))
    if bias is not None:
        with torch.no_grad():
            last = net.net[-1]
            last.weight.zero_()
            last.bias.fill_(bias)
    weights, _ = save_filter(net, tmp_path / f"{name}.safetensors")
    return str(weights)


def cfg(path, threshold=None, **changes) -> dlm.GenerationConfig:
    kwargs = {"path": path} if threshold is None else {"path": path, "threshold": threshold}
    return dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="learned_filter", scheduler_kwargs=kwargs,
                                return_trace=True, **changes)


# ------------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("steps", [32, 16])
def test_threshold_one_is_low_confidence(tiny_llada, tiny_dream, tmp_path, steps):
    path = make_filter(tmp_path)
    for lm in (tiny_llada, tiny_dream):
        ref = lm.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, steps=steps,
                                                        scheduler="low_confidence"))
        out = lm.generate(PROMPTS, cfg(path, 1.0, steps=steps))
        assert out.sequences.tolist() == ref.sequences.tolist()
        assert out.nfe.tolist() == ref.nfe.tolist()


def test_accept_everything_commits_the_block_in_one_step(tiny_llada, tmp_path):
    everything = make_filter(tmp_path, "all", bias=30.0)
    out = tiny_llada.generate(PROMPTS, cfg(everything, stop_at_eos=False))
    assert out.trace.block_steps == [1, 1, 1, 1] and out.nfe.tolist() == [4, 4, 4]
    # the accepted positions are committed with their candidates: the same as threshold 0 (every mask passes)
    zero = tiny_llada.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="threshold",
                                                             scheduler_kwargs={"threshold": 0.0},
                                                             stop_at_eos=False))
    assert out.sequences.tolist() == zero.sequences.tolist()


def test_accept_nothing_keeps_the_quota(tiny_llada, tmp_path):
    nothing = make_filter(tmp_path, "none", bias=-30.0)
    out = tiny_llada.generate(PROMPTS, cfg(nothing, 0.5, steps=16))
    ref = tiny_llada.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, steps=16,
                                                            scheduler="low_confidence"))
    assert out.sequences.tolist() == ref.sequences.tolist() and out.nfe.tolist() == ref.nfe.tolist()


def test_commits_exactly_the_accepted_masks_plus_the_best(tiny_llada, tmp_path):
    # hand-built candidates: the filter accepts positions whose confidence is above 0.5 (a linear rule)
    net = FilterNet(FilterConfig(features=("confidence",), arch="local", context=0, hidden=(1,)))
    with torch.no_grad():
        net.net[0].weight.fill_(1.0)
        net.net[0].bias.fill_(-0.5)
        net.net[2].weight.fill_(100.0)
        net.net[2].bias.fill_(0.0)
    path, _ = save_filter(net, tmp_path / "rule.safetensors")
    sched = dlm.schedulers.create("learned_filter", {"path": str(path), "threshold": 0.9})
    from dlm.sampling import Candidates
    from dlm.schedulers.base import BlockInfo, StepView

    conf = torch.tensor([[0.2, 0.7, 0.4, 0.9, 0.3, 0.1], [0.2, 0.3, 0.1, 0.4, 0.45, 0.3]])
    masked = torch.tensor([[True, True, True, False, True, True], [True] * 6])
    block = BlockInfo(index=0, num_blocks=1, start=5, end=11, region_start=5, region_end=11, steps=6,
                      masks=masked.sum(1), total_steps=6, canvas_length=11, answer_start=5)
    view = StepView(masked=masked, in_block=torch.ones(6, dtype=torch.bool), active=torch.ones(2, dtype=torch.bool),
                    step=0, global_step=0, block=block, generator=None)
    cand = Candidates(tokens=torch.zeros(2, 6, dtype=torch.long), confidence=conf)
    decision, _ = sched.step(cand, view, sched.init_state(block))
    # row 0: 0.7 is accepted (0.9 is committed already); row 1: nothing passes, the quota takes the best (0.45)
    assert decision.commit.tolist() == [[False, True, False, False, False, False],
                                        [False, False, False, False, True, False]]


@pytest.mark.parametrize("block_length", [4, 8, 64])
def test_any_block_length(tiny_llada, tmp_path, block_length):
    # an mlp filter of width 32 pads shorter blocks and windows longer ones; a local one sees blocks as they are
    for path in (make_filter(tmp_path, "mlp"), make_filter(tmp_path, "local", arch="local", hidden=(8,))):
        config = dlm.GenerationConfig(gen_length=64, block_length=block_length, scheduler="learned_filter",
                                      scheduler_kwargs={"path": path, "threshold": 0.5}, return_trace=True)
        run = record(tiny_llada, PROMPTS, config)
        check_run(run, tiny_llada, config, "learned_filter")


def test_measures_follow_the_filter(tiny_llada, tmp_path):
    path = make_filter(tmp_path, "rich", features=("confidence", "masked", "margin", "entropy", "position",
                                                   "progress", "left_masked", "left_min_confidence",
                                                   "mean_confidence"))
    sched = dlm.schedulers.create("learned_filter", {"path": path})
    assert set(sched.measures) == {"margin", "entropy"}
    config = cfg(path, 0.5)
    check_run(record(tiny_llada, PROMPTS, config), tiny_llada, config, "learned_filter")
    plain = dlm.schedulers.create("learned_filter", {"path": make_filter(tmp_path)})
    assert set(plain.measures) == set()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "delayed", "window"])
@pytest.mark.parametrize("eotp", [False, True])
def test_caches_and_eotp(tiny_llada, tmp_path, cache, eotp):
    assert cache in dlm.cache.CACHES.names()
    path = make_filter(tmp_path)
    config = cfg(path, 0.5, cache=cache, eotp=eotp)
    if eotp:
        out = tiny_llada.generate(PROMPTS, config)
        assert not (out.sequences == tiny_llada.ids.mask_id).any()
        assert all(s <= 8 for s in out.trace.block_steps)
    else:
        check_run(record(tiny_llada, PROMPTS, config), tiny_llada, config, "learned_filter")


def test_eotp_with_a_stop_token_the_filter_accepts(tiny_llada, tmp_path):
    # stop tokens everywhere once committed: EoTP cuts the canvas; the filter keeps working on the shorter block
    path = make_filter(tmp_path, "all", bias=30.0)
    out = tiny_llada.generate(PROMPTS, cfg(path, eotp=True, eotp_threshold=0.0001))
    assert not (out.sequences == tiny_llada.ids.mask_id).any()


# ------------------------------------------------------------------------------------------------ files and errors
def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(dlm.ConfigError, match="no filter file at .*nope.safetensors"):
        cfg(str(missing))


def test_not_safetensors_is_a_clear_error(tmp_path):
    good = make_filter(tmp_path, "good")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all, just bytes" * 3)
    (tmp_path / "bad.json").write_text((tmp_path / "good.json").read_text())
    with pytest.raises(dlm.ConfigError, match="not a readable safetensors file"):
        cfg(str(bad))
    # a pickle under the right name is not read either
    torch.save(FilterNet(FilterConfig()).state_dict(), bad)
    with pytest.raises(dlm.ConfigError, match="not a readable safetensors file"):
        cfg(str(bad))
    assert good


def test_wrong_feature_size_is_a_clear_error(tmp_path):
    path = make_filter(tmp_path, "one", features=("confidence",))
    config = json.loads((tmp_path / "one.json").read_text())
    config["features"] = ["confidence", "masked"]
    (tmp_path / "one.json").write_text(json.dumps(config))
    with pytest.raises(dlm.ConfigError, match=r"does not match its config.*input size is len\(features\) x width = 64"):
        cfg(path)
    config["features"], config["width"] = ["confidence"], 16
    (tmp_path / "one.json").write_text(json.dumps(config))
    with pytest.raises(dlm.ConfigError, match="does not match its config"):
        cfg(path)


@pytest.mark.parametrize("change,match", [
    (None, "config .*one.json is missing"),
    ("{not json", "not valid JSON"),
    ({"format": "something-else"}, "format"),
    ({"features": ["colour"]}, "features must be"),
    ({"threshold": 2}, "threshold must be"),
    ({"widht": 3}, "unknown field"),
    ({"features": None}, "missing field.*features"),  # None: the field is dropped
    ({"hidden": None, "arch": None}, "missing field.*arch, hidden"),
])
def test_bad_config_is_a_clear_error(tmp_path, change, match):
    path = make_filter(tmp_path, "one")
    if change is None:
        (tmp_path / "one.json").unlink()
    elif isinstance(change, str):
        (tmp_path / "one.json").write_text(change)
    else:
        config = json.loads((tmp_path / "one.json").read_text())
        for k, v in change.items():
            if v is None:
                config.pop(k)
            else:
                config[k] = v
        (tmp_path / "one.json").write_text(json.dumps(config))
    with pytest.raises(dlm.ConfigError, match=match):
        cfg(path)


def test_parameters_are_validated():
    with pytest.raises(dlm.ConfigError, match="threshold must be a probability"):
        dlm.schedulers.create("learned_filter", {"threshold": 1.5})
    with pytest.raises(dlm.ConfigError, match="path must be"):
        dlm.schedulers.create("learned_filter", {"path": 3})


def test_folder_and_json_paths_name_the_same_filter(tmp_path):
    make_filter(tmp_path, LF.FILE_STEM)
    for p in (tmp_path, tmp_path / f"{LF.FILE_STEM}.json", tmp_path / f"{LF.FILE_STEM}.safetensors"):
        assert LF.resolve_path(str(p))[0] == tmp_path / f"{LF.FILE_STEM}.safetensors"
        dlm.schedulers.create("learned_filter", {"path": str(p)})


def test_missing_default_filter_fails_at_first_use_not_before(tiny_llada, tmp_path, monkeypatch):
    monkeypatch.setattr(LF, "default_filter_path", lambda: tmp_path / "absent" / "learned_filter.safetensors")
    sched = dlm.schedulers.create("learned_filter", {})  # cheap, and does not fail
    assert sched.config() == {"path": None, "threshold": None}
    config = dlm.GenerationConfig(gen_length=8, scheduler="learned_filter")
    with pytest.raises(dlm.ConfigError, match="default learned filter.*no filter file at .*absent"):
        tiny_llada.generate([[1, 2, 3]], config)


def test_default_filter_is_shipped_and_model_agnostic(tiny_llada, tiny_dream):
    # the shipped filter reads only probabilities, so it runs with any model (here random tiny ones)
    path, cfg_file = LF.resolve_path(None)
    assert path.is_file() and cfg_file.is_file(), "ship the trained filter (dlm train-filter) with the package"
    config = LF.read_config(None)
    sched = dlm.schedulers.create("learned_filter", {})
    assert sched.threshold == config.threshold
    for lm in (tiny_llada, tiny_dream):
        c = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="learned_filter", return_trace=True)
        check_run(record(lm, PROMPTS, c), lm, c, "learned_filter")


# ------------------------------------------------------------------------------------------------ the command
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
    config = LF.read_config(str(out))
    assert config.threshold in (0.5, 0.99) and config.info["train_prompts"] == 5 and config.info["val_prompts"] == 1
    assert len(config.info["threshold_tuning"]) == 2
    net = LF.load_filter(str(out))
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
    config = LF.read_config(str(out))
    assert config.threshold == 0.96 and config.info["threshold_tuning"] == []
    assert LF.load_filter(str(out)).num_parameters == 2112  # Learn2PD's two-layer MLP over 32 confidences


def test_train_filter_rejects_a_bad_out(tmp_path, capsys):
    rc = dlm_main(["train-filter", "--out", str(tmp_path / "f.pt")])
    assert rc == 2 and ".safetensors" in capsys.readouterr().err


def test_tensors_are_checked_before_anything_is_built(tmp_path):
    path = make_filter(tmp_path, "one")
    config = json.loads((tmp_path / "one.json").read_text())
    config["hidden"] = [10**9]  # building this network would need terabytes: the header check comes first
    (tmp_path / "one.json").write_text(json.dumps(config))
    with pytest.raises(dlm.ConfigError, match="does not match its config"):
        cfg(path)
    from safetensors.torch import save_file

    net = FilterNet(FilterConfig())
    save_file({k: v.to(torch.int64) for k, v in net.state_dict().items()}, str(tmp_path / "ints.safetensors"))
    (tmp_path / "ints.json").write_text(FilterConfig().to_json())
    with pytest.raises(dlm.ConfigError, match="must be floating point"):
        cfg(str(tmp_path / "ints.safetensors"))


def test_threshold_zero_commits_the_block_even_where_the_filter_says_zero(tiny_llada, tmp_path):
    path = make_filter(tmp_path, "never", bias=-200.0)  # sigmoid underflows to exactly 0
    config = dlm.GenerationConfig(gen_length=8, block_length=8, steps=8, scheduler="learned_filter",
                                  scheduler_kwargs={"path": path, "threshold": 0.0}, stop_at_eos=False)
    out = tiny_llada.generate([[5, 6, 7]], config)
    assert int(out.nfe[0]) == 1
