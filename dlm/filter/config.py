"""The learned filter's file format: what its JSON config holds (:class:`FilterConfig`), the features it may use
and the architectures it may have."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

FORMAT = "dlm-learned-filter"
VERSION = 1
FILE_STEM = "learned_filter"
#: per-position input features a filter may use, and the candidate measure each needs
FEATURES: dict[str, str | None] = {"confidence": None, "masked": None, "margin": "margin", "entropy": "entropy",
                                   "position": None, "progress": None, "left_masked": None,
                                   "left_min_confidence": None, "mean_confidence": None}
ARCHS = ("mlp", "local")
DEFAULT_THRESHOLD = 0.96  # Learn2PD's


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
