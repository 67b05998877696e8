"""``learned_filter``: a learned unmasking filter, Learn2PD (Bao et al., 2025, "Learning to Parallel: Accelerating
Diffusion Large Language Models via Learnable Parallel Decoding", arXiv:2509.25188).

A tiny network looks at the active block's per-position features (at least the confidence of every position's
candidate token) and outputs, for every position, the probability that its current candidate is already what the
one-token-per-step decode will finally write there. Each step commits:

* every masked position of the block whose accept probability exceeds ``threshold``, plus
* the standard per-step quota: LLaDA's linear quota (floor(M/S) per step, one more in the first M mod S steps)
  and at least ``ceil(masks left / steps left)`` (the budget floor of :mod:`dlm.schedulers._parallel`), always at
  least one position, taken by candidate confidence as LLaDA's sampler does.

With ``threshold = 1`` nothing passes the filter and the scheduler is exactly ``low_confidence``. The filter is
trained with :mod:`dlm.train.filter` (``dlm train-filter``): decode prompts one token per step, record the
features of every masked position at every step, label a position 1 when its candidate equals the final output,
fit the network with binary cross-entropy.

Two architectures (``FilterConfig.arch``):

``mlp`` (the paper's)
    one MLP maps the features of a window of ``width`` positions (32, LLaDA's block), flattened, to ``width``
    accept logits; with one hidden layer of 32 over the confidences alone it is Learn2PD's ~2K-parameter filter.
    A shorter block is padded on the right with positions that look committed (their outputs ignored), a longer
    one is cut into windows of ``width`` positions, each judged on its own.
``local``
    one small MLP shared by every position maps the features of the position and of its ``context`` neighbours
    on each side (positions outside the block look committed) to its accept logit. It sees blocks of any length
    as they are, and learns a rule once instead of once per position (the shipped filter; see
    notes/README-filter.md for the comparison).

Features (per position, in positional order; a filter's config lists those it uses):
    ``confidence``: probability of the candidate token where masked, 1 where already committed (a ``-inf``
        confidence from ``confidence_eos_eot_inf`` reads as 0).
    ``masked``: 1 where still masked, 0 where committed.
    ``margin``: top-1 minus top-2 probability where masked, 1 where committed (candidate measure ``margin``).
    ``entropy``: exp(-entropy) of the predictive distribution where masked, in (0, 1], 1 where committed
        (candidate measure ``entropy``).
    ``position``: relative position in the block, 0 at its start, 1 at its end.
    ``progress``: share of the block's positions already committed.
    ``left_masked``: masked positions to the left, over the block length.
    ``left_min_confidence``: lowest confidence (as above) of the positions to the left (1 at the start).
    ``mean_confidence``: mean confidence of the block's masked positions.
All are probabilities or functions of them and of the block's layout, with no vocabulary- or model-specific
scale, so a filter runs with any model and any block length; trained on one model it is best for that model
(the shipped filter was trained on dlm-tiny).

Filter files: ``NAME.safetensors`` (the network's tensors, float32) and ``NAME.json`` beside it (format, features,
architecture and sizes, the recommended threshold, and how it was trained). Never pickle.

Parameters:
    path: the ``.safetensors`` file of the filter (its ``.json`` config beside it; the ``.json`` path or a folder
        holding ``learned_filter.safetensors`` also work). ``None``: the filter shipped with the bundled dlm-tiny.
        An explicit path is read and checked when the scheduler is built (so a bad path fails when the
        GenerationConfig is made); the default one when the scheduler is first used, so building the scheduler
        stays cheap and works without it. A missing or malformed file raises :class:`~dlm.errors.ConfigError`
        naming it.
    threshold: accept probability above which a masked position is committed. ``None``: the threshold stored
        with the filter (tuned on validation prompts when it was trained; Learn2PD's 0.96 when not tuned).
        1.0 disables the filter (``low_confidence``); 0 commits every masked position of the block.

Composes with every cache policy and with end-of-text prediction (``GenerationConfig.eotp``): the engine applies
EoTP after the scheduler's commits, and a block shortened by EoTP is just a shorter block to the filter.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ._parallel import budget_floor
from .base import BlockInfo, Decision, Scheduler, StepView, linear_quota, register_scheduler, select_top

FORMAT = "dlm-learned-filter"
VERSION = 1
FILE_STEM = "learned_filter"
#: per-position input features a filter may use, and the candidate measure each needs
FEATURES: dict[str, str | None] = {"confidence": None, "masked": None, "margin": "margin", "entropy": "entropy",
                                   "position": None, "progress": None, "left_masked": None,
                                   "left_min_confidence": None, "mean_confidence": None}
ARCHS = ("mlp", "local")
DEFAULT_THRESHOLD = 0.96  # Learn2PD's


# --------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FilterConfig:
    """What a filter file's JSON holds.

    Attributes:
        features: input features, in channel order (names of :data:`FEATURES`).
        arch: ``"mlp"`` (Learn2PD): one MLP maps a window of ``width`` positions (``len(features) * width``
            inputs) to ``width`` accept logits. ``"local"``: one small MLP shared by every position maps the
            features of the position and of its ``context`` neighbours on each side (``len(features) *
            (2 * context + 1)`` inputs) to its accept logit; it sees blocks of any length as they are.
        width: positions an ``mlp`` filter sees at once.
        context: neighbours on each side a ``local`` filter sees.
        hidden: hidden layer sizes (ReLU between layers); ``mlp`` with ``(32,)`` is Learn2PD's two-layer MLP.
        threshold: the recommended accept threshold (used when the scheduler's ``threshold`` is ``None``).
        info: how the filter was trained (model, data, metrics): free-form, for people.
    """

    features: tuple[str, ...] = ("confidence",)
    arch: str = "mlp"
    width: int = 32
    context: int = 4
    hidden: tuple[int, ...] = (32,)
    threshold: float = DEFAULT_THRESHOLD
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        feats = tuple(self.features) if isinstance(self.features, (list, tuple)) else None
        if not feats or any(f not in FEATURES for f in feats) or len(set(feats)) != len(feats):
            raise ValueError(f"features must be a non-empty list of distinct names among {', '.join(FEATURES)}; "
                             f"got {self.features!r}")
        object.__setattr__(self, "features", feats)
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width!r}")
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"context must be a non-negative integer, got {self.context!r}")
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else None
        if hidden is None or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers (layer sizes), got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)
        check_threshold(self.threshold)
        if not isinstance(self.info, Mapping):
            raise ValueError(f"info must be a JSON object, got {self.info!r}")

    @property
    def measures(self) -> frozenset[str]:
        """Candidate measures the features need."""
        return frozenset(m for f in self.features if (m := FEATURES[f]) is not None)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "features": list(self.features),
                           "arch": self.arch, "width": self.width, "context": self.context,
                           "hidden": list(self.hidden), "threshold": self.threshold, "info": dict(self.info)},
                          indent=1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FilterConfig":
        if d.get("format") != FORMAT:
            raise ValueError(f"'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"'version' is {d.get('version')!r}; this dlm reads version {VERSION}")
        known = {"format", "version", "features", "arch", "width", "context", "hidden", "threshold", "info"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = sorted(known - {"info"} - set(d))
        if missing:  # the tensors cannot tell which features (or which order) a filter was trained on
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k not in ("format", "version")})


def check_threshold(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"threshold must be a probability in [0, 1], got {value!r}")


# --------------------------------------------------------------------------------------------------- network
class FilterNet(nn.Module):
    """The filter: features (N, C, L) of N blocks -> per-position accept logits (N, L).

    ``mlp``: the C x W inputs of a window (L = W) are flattened channel by channel into one MLP with W outputs.
    ``local``: each position's C x (2 * context + 1) neighbourhood (positions outside the block read as
    committed) goes through one MLP with one output, shared by all positions. Hidden layers use ReLU.
    """

    def __init__(self, config: FilterConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        C = len(config.features)
        d = C * config.width if config.arch == "mlp" else C * (2 * config.context + 1)
        for h in config.hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, config.width if config.arch == "mlp" else 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("pad", torch.tensor([_PAD[f] for f in config.features]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, L)
        if self.config.arch == "mlp":
            return self.net(x.flatten(1))
        k = self.config.context
        N, C, L = x.shape
        if k:
            side = self.pad.to(x.dtype).view(1, C, 1).expand(N, C, k)
            x = torch.cat([side, x, side], dim=2)
        hood = x.unfold(2, 2 * k + 1, 1)  # (N, C, L, 2k + 1)
        return self.net(hood.permute(0, 2, 1, 3).reshape(N, L, -1)).squeeze(-1)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def accept_probability(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, n) accept probabilities of a block from its features (B, C, n), any n (padded / windowed)."""
        dtype = next(self.parameters()).dtype
        if self.config.arch == "local":
            return torch.sigmoid(self(feats.to(dtype)).float())
        windows, n = to_windows(feats, self.config, self.pad)
        B = feats.shape[0]
        logits = self(windows.to(dtype))  # (B * K, W)
        return torch.sigmoid(logits.float()).reshape(B, -1)[:, :n]


# --------------------------------------------------------------------------------------------------- features
def block_features(features: Sequence[str], confidence: torch.Tensor, masked: torch.Tensor,
                   margin: torch.Tensor | None = None, neg_entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The filter's input channels for a block: (B, C, n) float32.

    confidence, masked, margin, neg_entropy: (B, n), the block's candidate measures and its still-masked
    positions (``margin`` / ``neg_entropy`` only when a feature needs them). See the module doc for the channels.
    """
    masked = masked.bool()
    B, n = masked.shape
    one = torch.ones((), dtype=torch.float32, device=confidence.device)

    def prob(t: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(t.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
        return torch.where(masked, t, one)

    conf = prob(confidence)
    count = masked.sum(1, keepdim=True)
    chans = []
    for f in features:
        if f == "confidence":
            chans.append(conf)
        elif f == "masked":
            chans.append(masked.float())
        elif f == "margin":
            if margin is None:
                raise ConfigError("the filter uses the 'margin' feature but the candidates carry no margin")
            chans.append(prob(margin))
        elif f == "entropy":
            if neg_entropy is None:
                raise ConfigError("the filter uses the 'entropy' feature but the candidates carry no entropy")
            chans.append(prob(neg_entropy.float().exp()))
        elif f == "position":
            pos = torch.arange(n, device=masked.device, dtype=torch.float32) / max(1, n - 1)
            chans.append(pos.expand(B, n))
        elif f == "progress":
            chans.append((1 - count.float() / n).expand(B, n))
        elif f == "left_masked":
            chans.append((masked.long().cumsum(1) - masked.long()).float() / n)
        elif f == "left_min_confidence":
            chans.append(torch.cat([one.expand(B, 1), conf.cummin(dim=1).values[:, :-1]], dim=1))
        elif f == "mean_confidence":
            mean = torch.where(masked, conf, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
            chans.append(torch.where(count > 0, mean, one).expand(B, n))
        else:
            raise ConfigError(f"unknown filter feature {f!r}; known: {', '.join(FEATURES)}")
    return torch.stack(chans, dim=1)


# value of each channel at padding positions: what a committed position looks like
_PAD = {"confidence": 1.0, "masked": 0.0, "margin": 1.0, "entropy": 1.0, "position": 1.0, "progress": 1.0,
        "left_masked": 0.0, "left_min_confidence": 1.0, "mean_confidence": 1.0}


def to_windows(feats: torch.Tensor, config: FilterConfig, pad: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, int]:
    """(B, C, n) features -> ((B * K, C, W) windows, n): n padded up to K * W with committed-looking positions
    (``pad``: the (C,) padding values, already on the features' device; built from the config when omitted)."""
    B, C, n = feats.shape
    W = config.width
    K = max(1, math.ceil(n / W))
    if K * W != n:
        if pad is None:
            pad = torch.tensor([_PAD[f] for f in config.features], device=feats.device)
        feats = torch.cat([feats, pad.to(feats.dtype).view(1, C, 1).expand(B, C, K * W - n)], dim=2)
    return feats.reshape(B, C, K, W).permute(0, 2, 1, 3).reshape(B * K, C, W), n


# --------------------------------------------------------------------------------------------------- files
def default_filter_path() -> Path:
    """The filter shipped for the bundled dlm-tiny: ``dlm/assets/dlm-tiny/learned_filter.safetensors``, or
    ``dlm/assets/learned_filter/learned_filter.safetensors`` while the model folder does not hold one."""
    from ..assets import ASSETS

    candidates = [ASSETS / "dlm-tiny" / f"{FILE_STEM}.safetensors", ASSETS / FILE_STEM / f"{FILE_STEM}.safetensors"]
    return next((p for p in candidates if p.is_file()), candidates[0])


def resolve_path(path: str | Path | None) -> tuple[Path, Path]:
    """(weights file, config file) of a filter ``path`` (see the scheduler's ``path`` parameter); not checked."""
    if path is None:
        weights = default_filter_path()
    else:
        weights = Path(path).expanduser()
        if weights.is_dir():
            weights = weights / f"{FILE_STEM}.safetensors"
        elif weights.suffix == ".json":
            weights = weights.with_suffix(".safetensors")
    return weights, weights.with_suffix(".json")


def read_config(path: str | Path | None) -> FilterConfig:
    """The :class:`FilterConfig` of the filter at ``path``; ConfigError naming the file when it is unusable."""
    weights, cfg_file = resolve_path(path)
    what = "the default learned filter (shipped with the bundled dlm-tiny)" if path is None else "learned filter"
    if not weights.is_file():
        hint = ("train one with `dlm train-filter --model PATH --out FILE.safetensors` and pass path=FILE"
                if path is None else "pass the .safetensors file written by `dlm train-filter` (or its folder)")
        raise ConfigError(f"{what}: no filter file at {weights}; {hint}")
    if not cfg_file.is_file():
        raise ConfigError(f"{what} {weights}: its config {cfg_file} is missing (a filter is NAME.safetensors + "
                          "NAME.json, both written by `dlm train-filter`)")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} config {cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} config {cfg_file} must hold a JSON object, got {type(data).__name__}")
    try:
        return FilterConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} config {cfg_file}: {exc}") from exc


def expected_tensors(config: FilterConfig) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a :class:`FilterNet` with ``config`` (computed, nothing allocated)."""
    C = len(config.features)
    d = C * config.width if config.arch == "mlp" else C * (2 * config.context + 1)
    out: dict[str, tuple[int, ...]] = {}
    sizes = list(config.hidden) + [config.width if config.arch == "mlp" else 1]
    for i, h in enumerate(sizes):  # nn.Sequential indices: Linear, ReLU, Linear, ..., Linear
        out[f"net.{2 * i}.weight"], out[f"net.{2 * i}.bias"] = (h, d), (h,)
        d = h
    return out


def load_filter(path: str | Path | None) -> FilterNet:
    """The filter at ``path`` (see :func:`resolve_path`), checked against its config; ConfigError when the file
    is missing, not safetensors, or its tensors do not match the config (names, shapes from the feature count,
    width / context and hidden sizes, floating-point dtypes). The header is checked before anything is built."""
    from safetensors import SafetensorError, safe_open

    config = read_config(path)
    weights, cfg_file = resolve_path(path)
    expected = expected_tensors(config)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
            if expected != got:
                raise ConfigError(
                    f"learned filter {weights} does not match its config {cfg_file} (features "
                    f"{list(config.features)}, arch {config.arch}, width {config.width}, context {config.context}, "
                    f"hidden {list(config.hidden)}): expected tensors {expected}, the file holds {got}; the input "
                    f"size is len(features) x " + (f"width = {len(config.features) * config.width}"
                    if config.arch == "mlp" else f"(2 x context + 1) = {len(config.features) * (2 * config.context + 1)}"))
            bad = {k: t for k, t in dtypes.items() if t not in ("F32", "F16", "BF16", "F64")}
            if bad:
                raise ConfigError(f"learned filter {weights}: tensors must be floating point, got {bad}")
            tensors = {k: f.get_tensor(k).float() for k in expected}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"learned filter {weights} is not a readable safetensors file ({exc}); a filter is "
                          "NAME.safetensors + NAME.json as written by `dlm train-filter` (pickle is never read)") from exc
    net = FilterNet(config)
    net.load_state_dict(tensors)
    return net.eval()


def save_filter(net: FilterNet, path: str | Path, config: FilterConfig | None = None) -> tuple[Path, Path]:
    """Write ``net`` as ``path`` (.safetensors) + its JSON config beside it; returns both paths."""
    from safetensors.torch import save_file

    config = config or net.config
    weights = Path(path)
    if weights.suffix != ".safetensors":
        raise ConfigError(f"a filter file must end with .safetensors, got {weights}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}, str(weights),
              metadata={"format": FORMAT})
    cfg_file = weights.with_suffix(".json")
    cfg_file.write_text(config.to_json() + "\n")
    return weights, cfg_file


_CACHE: dict[tuple, FilterNet] = {}
_CACHE_LOCK = threading.Lock()


def cached_filter(path: str | Path | None, device: torch.device) -> FilterNet:
    """:func:`load_filter`, memoised per (file, its size and modification time, device)."""
    weights, cfg_file = resolve_path(path)
    try:
        key = (str(weights.resolve()), weights.stat().st_mtime_ns, weights.stat().st_size,
               cfg_file.stat().st_mtime_ns, str(device))
    except OSError:
        key = None
    if key is not None:
        with _CACHE_LOCK:
            net = _CACHE.get(key)
        if net is not None:
            return net
    net = load_filter(path).to(device)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = net
    return net


# --------------------------------------------------------------------------------------------------- scheduler
@register_scheduler("learned_filter")
class LearnedFilter(Scheduler):
    """Learn2PD: commit the masks a learned filter accepts, plus LLaDA's per-step quota (arXiv:2509.25188)."""

    sampling = "gumbel"
    deterministic = True
    # per instance: the measures the filter's features need (read from its config when the scheduler is built)
    measures = frozenset()

    @dataclass(frozen=True)
    class Params:
        path: str | None = None
        threshold: float | None = None

        def __post_init__(self):
            if self.path is not None and (not isinstance(self.path, str) or not self.path):
                raise ValueError(f"path must be a filter file path (a non-empty string) or None for the default "
                                 f"filter, got {self.path!r}")
            if self.threshold is not None:
                check_threshold(self.threshold)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._config: FilterConfig | None = None
        self._nets: dict[torch.device, FilterNet] = {}  # the loaded filter per device (no file access per step)
        if self.params.path is not None:
            # an explicit file is checked now, so a bad path fails when the GenerationConfig is built
            self._config = cached_filter(self.params.path, torch.device("cpu")).config
        else:
            # the default filter may be absent (it is shipped with the bundled model): building the scheduler
            # must stay cheap and must not fail; its first use raises the clear error instead
            try:
                self._config = read_config(None)
            except ConfigError:
                self._config = None
        if self._config is not None:
            self.measures = self._config.measures

    @property
    def filter_config(self) -> FilterConfig:
        if self._config is None:
            self._config = read_config(self.params.path)
        return self._config

    @property
    def threshold(self) -> float:
        t = self.params.threshold
        return float(self.filter_config.threshold if t is None else t)

    def accept_probability(self, cand, view: StepView) -> torch.Tensor:
        """(B, n) the filter's probability that each position's candidate is final (meaningful where masked)."""
        device = cand.confidence.device
        net = self._nets.get(device)
        if net is None:
            net = self._nets[device] = cached_filter(self.params.path, device)
        feats = block_features(net.config.features, cand.confidence, view.masked_in_block, cand.margin,
                               cand.neg_entropy)
        return net.accept_probability(feats)

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block
        t = self.threshold
        accept = self.accept_probability(cand, view) > t if t > 0 else allowed
        k = torch.maximum(linear_quota(view.block.masks, view.block.steps, view.step), budget_floor(allowed, view))
        commit = (accept & allowed) | select_top(cand.confidence, allowed, k)
        return Decision(commit), state
