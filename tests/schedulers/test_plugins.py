"""The scheduler plugin system: registration rules, entry-point plugins (faked with ``*.dist-info`` folders on
sys.path, as an installed distribution would leave), the example plugin of ``examples/plugin`` through the
Python API and the CLI, and the errors of broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import dlm
from dlm import registry
from dlm.schedulers import SCHEDULERS, Decision, Scheduler

from .invariants import PROMPTS, check_run, record

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "examples" / "plugin"


def fake_distribution(site: Path, name: str, entry_points: dict[str, str], group: str = "dlm.schedulers") -> None:
    """What ``pip install`` leaves for a distribution's metadata: ``<name>-<version>.dist-info`` on sys.path."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def example_entry_points() -> dict[str, str]:
    meta = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())
    return dict(meta["project"]["entry-points"]["dlm.schedulers"])


BROKEN_MODULE = '''raise ImportError("dlm_broken_sched needs libquantum, which is not installed")\n'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site folder with the example plugin's metadata and a plugin whose module fails to import; the registry
    reads the entry points again with it on sys.path, and once more after the test without it."""
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "dlm-ltr-plugin", example_entry_points())
    fake_distribution(site, "dlm-broken-plugin", {"broken_sched": "dlm_broken_sched:Sched"})
    (site / "dlm_broken_sched.py").write_text(BROKEN_MODULE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    SCHEDULERS.reset_plugins()
    yield site
    SCHEDULERS.reset_plugins()
    for mod in ("dlm_ltr", "dlm_broken_sched", "dlm_selfreg"):
        sys.modules.pop(mod, None)


# ------------------------------------------------------------------------------------------------ entry points
def test_plugin_is_found_by_name_and_loaded_lazily(site, monkeypatch):
    reads = []
    real = registry._entry_points
    monkeypatch.setattr(registry, "_entry_points", lambda group: reads.append(group) or real(group))
    sys.modules.pop("dlm_ltr", None)
    assert dlm.schedulers.get("threshold").__name__ == "Threshold"
    assert reads == [], "a built-in name must not read the entry points"
    names = dlm.schedulers.names()
    assert "ltr_threshold" in names and "broken_sched" in names
    assert "dlm_ltr" not in sys.modules, "listing must not import plugin modules"
    cls = dlm.schedulers.get("ltr_threshold")
    assert cls.__module__ == "dlm_ltr" and cls.registered_name == "ltr_threshold"
    dlm.schedulers.names()
    assert reads == ["dlm.schedulers"], "the group is read once"
    entry = next(e for e in SCHEDULERS.entries() if e.name == "ltr_threshold")
    assert entry.source == "dlm-ltr-plugin" and entry.plugin


def test_plugin_through_the_python_api_keeps_the_invariants(site, peaky):
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="ltr_threshold",
                               scheduler_kwargs={"threshold": 0.7}, return_trace=True)
    run = record(peaky, PROMPTS, cfg)
    check_run(run, peaky, cfg, "ltr_threshold")
    assert int(run.out.nfe.min()) < 32, "the plugin committed one token per step: its rule was not exercised"
    again = peaky.generate(PROMPTS, cfg)
    assert torch.equal(again.sequences, run.out.sequences)


def test_plugin_commits_left_to_right(site, peaky):
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, scheduler="ltr_threshold", return_trace=True,
                               stop_at_eos=False)
    out = peaky.generate(PROMPTS, cfg)
    for row in out.trace.commit_step.tolist():
        assert row == sorted(row), f"commit steps not left to right: {row}"


def test_a_plugin_that_fails_to_import_names_itself_and_its_distribution(site):
    with pytest.raises(dlm.RegistryError) as err:
        dlm.schedulers.get("broken_sched")
    msg = str(err.value)
    assert "broken_sched" in msg and "dlm-broken-plugin" in msg and "dlm_broken_sched:Sched" in msg
    assert "libquantum" in msg
    with pytest.raises(dlm.RegistryError, match="broken_sched"):
        dlm.GenerationConfig(scheduler="broken_sched")
    # it stays broken (never dropped), and the other plugin still works
    assert "broken_sched" in dlm.schedulers.names()
    assert dlm.schedulers.get("ltr_threshold").__name__ == "LeftToRightThreshold"


def test_unknown_name_lists_the_known_ones(site):
    with pytest.raises(dlm.RegistryError) as err:
        dlm.schedulers.get("no_such_scheduler")
    msg = str(err.value)
    assert "no_such_scheduler" in msg
    for name in ("low_confidence", "threshold", "early_commit", "ltr_threshold"):
        assert name in msg


def test_an_entry_point_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    site = tmp_path / "clash"
    fake_distribution(site, "dlm-clash-plugin", {"threshold": "dlm_ltr:LeftToRightThreshold"})
    monkeypatch.syspath_prepend(str(site))
    SCHEDULERS.reset_plugins()
    try:
        for _ in range(2):  # raised every time, never half-applied
            with pytest.raises(dlm.RegistryError, match="'threshold' from distribution 'dlm-clash-plugin'"):
                dlm.schedulers.names()
        assert dlm.schedulers.get("threshold").__module__ == "dlm.schedulers.threshold"
    finally:
        monkeypatch.undo()
        SCHEDULERS.reset_plugins()
    assert "threshold" in dlm.schedulers.names()


def test_a_plugin_module_may_also_register_itself(tmp_path, monkeypatch):
    # the entry point and the module's own decorator name the same class: not a clash, in either order
    site = tmp_path / "selfreg"
    site.mkdir()
    (site / "dlm_selfreg.py").write_text(
        "import dlm\nfrom dlm.schedulers.low_confidence import LowConfidence\n\n"
        "@dlm.register_scheduler('selfreg')\nclass SelfReg(LowConfidence):\n    '''Registers itself.'''\n")
    fake_distribution(site, "dlm-selfreg", {"selfreg": "dlm_selfreg:SelfReg"})
    monkeypatch.syspath_prepend(str(site))
    SCHEDULERS.reset_plugins()
    try:
        cls = dlm.schedulers.get("selfreg")  # entry point first, then the import registers the class
        assert cls.__name__ == "SelfReg"
        SCHEDULERS.unregister("selfreg")
        sys.modules.pop("dlm_selfreg")
        SCHEDULERS.reset_plugins()
        __import__("dlm_selfreg")  # the module first, then the entry points are read
        assert "selfreg" in dlm.schedulers.names()
        entry = next(e for e in SCHEDULERS.entries() if e.name == "selfreg")
        assert entry.source == "dlm-selfreg" and dlm.schedulers.get("selfreg").__name__ == "SelfReg"
    finally:
        SCHEDULERS.unregister("selfreg")
        sys.modules.pop("dlm_selfreg", None)
        monkeypatch.undo()
        SCHEDULERS.reset_plugins()


# ------------------------------------------------------------------------------------------------ registration
class Minimal(Scheduler):
    """Commits the best mask of the block."""

    def step(self, cand, view, state):
        from dlm.schedulers import at_least_one

        allowed = view.masked_in_block
        return Decision(at_least_one(torch.zeros_like(allowed), cand.confidence, allowed)), state


def test_decorator_registration_and_duplicates(registered):
    dlm.register_scheduler("test_minimal")(Minimal)
    try:
        assert dlm.schedulers.get("test_minimal") is Minimal
        entry = next(e for e in SCHEDULERS.entries() if e.name == "test_minimal")
        assert entry.source == __name__ and not entry.plugin  # a user registration, not "built-in"

        class Other(Minimal):
            """Another one."""

        with pytest.raises(dlm.RegistryError, match="'test_minimal' is already registered.*override=True"):
            dlm.register_scheduler("test_minimal")(Other)
        with pytest.raises(dlm.RegistryError, match="'threshold' is already registered"):
            dlm.register_scheduler("threshold")(Other)
        dlm.register_scheduler("test_minimal", override=True)(Other)
        assert dlm.schedulers.get("test_minimal") is Other
        SCHEDULERS.reset_plugins()
        assert "test_minimal" in dlm.schedulers.names(), "reset_plugins must keep in-process registrations"
    finally:
        SCHEDULERS.unregister("test_minimal")


def test_lazy_string_target(registered):
    registered("test_lazy", f"{__name__}:Minimal")
    assert dlm.schedulers.get("test_lazy") is Minimal
    registered("test_lazy_bad", f"{__name__}:NoSuchClass")
    with pytest.raises(dlm.RegistryError, match="test_lazy_bad.*failed to import"):
        dlm.schedulers.get("test_lazy_bad")
    with pytest.raises(dlm.RegistryError, match="module:Class"):
        SCHEDULERS.register("test_lazy_worse", "no_colon_here")


def bad_classes():
    class NoStep(Scheduler):
        """No step()."""

    class NoDefaults(Minimal):
        @dataclass(frozen=True)
        class Params:
            tau: float

    class BadSampling(Minimal):
        sampling = "nucleus"

    class BadMeasure(Minimal):
        measures = frozenset({"perplexity"})

    class NotJson(Minimal):
        @dataclass(frozen=True)
        class Params:
            window: tuple = (1, 2)  # comes back from JSON as a list

    return [(NoStep, "does not implement step"), (NoDefaults, "need defaults"), (BadSampling, "sampling"),
            (BadMeasure, "perplexity"), (NotJson, "JSON round-trip"), (int, "not a subclass")]


@pytest.mark.parametrize("cls,match", bad_classes(), ids=lambda x: getattr(x, "__name__", str(x))[:20])
def test_registration_checks(cls, match):
    with pytest.raises(dlm.RegistryError, match=match):
        dlm.register_scheduler("test_bad")(cls)
    assert "test_bad" not in dlm.schedulers.names()


def test_bad_names_are_refused():
    for name in ("", "with space", "semi;colon"):
        with pytest.raises(dlm.RegistryError, match="identifier"):
            dlm.register_scheduler(name)


# ------------------------------------------------------------------------------------------------ CLI
def cli(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGIN_DIR), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "dlm", *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300)


def test_cli_lists_and_uses_the_plugin(site, peaky_llada_path):
    listing = cli(["schedulers"], site)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "[plugin from dlm-ltr-plugin]" in lines["ltr_threshold"]
    assert "Left to right" in lines["ltr_threshold"]
    assert "BROKEN" in lines["broken_sched"] and "dlm-broken-plugin" in lines["broken_sched"]
    for name in dlm.schedulers.names():
        assert name in lines
    gen = cli(["generate", "--model", str(peaky_llada_path), "--device", "cpu", "--scheduler", "ltr_threshold",
               "--scheduler-arg", "threshold=0.7", "--gen-length", "16", "--block-length", "8", "--json",
               "--return-trace", "Hello"], site)
    assert gen.returncode == 0, gen.stderr
    rec = json.loads(gen.stdout.strip().splitlines()[-1])
    assert len(rec["tokens"]) == 16 and 1 <= rec["nfe"] <= 16
    steps = rec["commit_step"]
    assert [s for s in steps if s >= 0] == sorted(s for s in steps if s >= 0)
    bad = cli(["generate", "--model", str(peaky_llada_path), "--device", "cpu", "--scheduler", "broken_sched",
               "--gen-length", "8", "Hello"], site)
    assert bad.returncode == 2 and "broken_sched" in bad.stderr and "dlm-broken-plugin" in bad.stderr
