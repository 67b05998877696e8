"""Filter files: round trip, paths, and every way a file can be wrong raising a ConfigError that names it once."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.filter import FILE_STEM, FilterConfig, FilterNet, load_filter, resolve_path, save_filter

from .helpers import make_filter


def cfg(path, threshold=None, **changes) -> dlm.GenerationConfig:
    kwargs = {"path": path} if threshold is None else {"path": path, "threshold": threshold}
    return dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="learned_filter", scheduler_kwargs=kwargs,
                                return_trace=True, **changes)


def test_save_and_load(tmp_path):
    config = FilterConfig(features=("confidence", "masked", "margin"), hidden=(16, 8), threshold=0.9,
                          info={"note": "test"})
    torch.manual_seed(0)
    net = FilterNet(config)
    weights, cfg = save_filter(net, tmp_path / "f.safetensors")
    assert cfg.name == "f.json" and weights.is_file()
    again = load_filter(weights)
    assert again.config == config
    x = torch.rand(5, 3, 32)
    assert torch.equal(net(x), again(x))


def test_folder_and_json_paths_name_the_same_filter(tmp_path):
    make_filter(tmp_path, FILE_STEM)
    for p in (tmp_path, tmp_path / f"{FILE_STEM}.json", tmp_path / f"{FILE_STEM}.safetensors"):
        assert resolve_path(str(p))[0] == tmp_path / f"{FILE_STEM}.safetensors"
        dlm.schedulers.create("learned_filter", {"path": str(p)})


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


def test_non_finite_weights_are_rejected(tmp_path):
    # a NaN weight makes every accept probability NaN, which never passes the threshold: the filter would silently
    # accept nothing and the decode would lose its speed-up
    from safetensors.torch import save_file

    path = make_filter(tmp_path, "nan")
    net = FilterNet(FilterConfig())
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    tensors["net.2.bias"][0] = float("nan")
    save_file(tensors, path)
    with pytest.raises(dlm.ConfigError, match=r"nan.safetensors: tensor\(s\) net.2.bias hold NaN or infinite"):
        load_filter(path)
    with pytest.raises(dlm.ConfigError, match="hold NaN or infinite"):
        cfg(path)
    with torch.no_grad():
        net.net[0].weight[0, 0] = float("inf")
    with pytest.raises(dlm.ConfigError, match=r"net.0.weight hold NaN or infinite"):
        save_filter(net, tmp_path / "inf.safetensors")
    assert not (tmp_path / "inf.safetensors").exists()


@pytest.mark.parametrize("break_it", ["shape", "dtype"])
def test_errors_are_wrapped_once(tmp_path, break_it):
    from safetensors.torch import save_file

    path = make_filter(tmp_path, "one")
    if break_it == "shape":
        config = json.loads((tmp_path / "one.json").read_text())
        config["hidden"] = [7]
        (tmp_path / "one.json").write_text(json.dumps(config))
    else:
        save_file({k: v.to(torch.int32) for k, v in FilterNet(FilterConfig()).state_dict().items()}, path)
    with pytest.raises(dlm.ConfigError) as err:
        load_filter(path)
    message = str(err.value)
    assert "not a readable safetensors file" not in message, message
    assert message.count("learned filter") == 1, message
