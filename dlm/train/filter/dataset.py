"""The data a filter is fitted on (:class:`FilterData`): every recorded block state of the reference decode, with
the label of each masked position, saved as safetensors + JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ...errors import ConfigError
from ...filter import block_features


@dataclass
class FilterData:
    """Recorded steps, one sample per (prompt, step, block): tensors (N, n) over the n positions of the block.

    Attributes:
        confidence, margin, neg_entropy: float32 candidate measures.
        masked: bool, still-masked positions (the samples; committed positions are context).
        label: bool, the candidate equals the final output.
        prompt: (N,) long, index of the prompt in ``families`` / ``references``.
        step: (N,) long, step within the block; block: (N,) long, block index.
        families: family label of each prompt.
        references: each prompt's final answer tokens (the reference decode's output).
        block_length: n.
    """

    confidence: torch.Tensor
    margin: torch.Tensor
    neg_entropy: torch.Tensor
    masked: torch.Tensor
    label: torch.Tensor
    prompt: torch.Tensor
    step: torch.Tensor
    block: torch.Tensor
    families: list[str] = field(default_factory=list)
    references: list[list[int]] = field(default_factory=list)
    block_length: int = 32
    fingerprint: str = ""  # of the model, prompts and block length it was collected with (see data_fingerprint)

    TENSORS = ("confidence", "margin", "neg_entropy", "masked", "label", "prompt", "step", "block")

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def positions(self) -> int:
        """Masked positions recorded (training samples)."""
        return int(self.masked.sum())

    def features(self, names: Sequence[str]) -> torch.Tensor:
        """(N, C, n) input channels ``names`` (see :func:`dlm.filter.block_features`)."""
        return block_features(names, self.confidence, self.masked, self.margin, self.neg_entropy)

    def select(self, rows: torch.Tensor) -> "FilterData":
        return dataclasses.replace(self, **{k: getattr(self, k)[rows] for k in self.TENSORS})

    def canonical(self) -> "FilterData":
        """Samples sorted by (prompt, block, step): the order does not depend on how prompts were batched."""
        key = (self.prompt * (self.block.max().clamp(min=0) + 1) + self.block) * (self.step.max().clamp(min=0) + 1) \
            + self.step
        return self.select(torch.argsort(key, stable=True))

    def without_families(self, families: Sequence[str]) -> "FilterData":
        """The samples of prompts whose family is not in ``families`` (prompt indices unchanged)."""
        drop = torch.tensor([f in set(families) for f in self.families], dtype=torch.bool)
        return self.select(~drop[self.prompt]) if len(self) else self

    @classmethod
    def concat(cls, parts: Sequence["FilterData"]) -> "FilterData":
        """One dataset of ``parts`` (prompt indices renumbered in order)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({p.block_length for p in parts}) != 1:
            raise ValueError(f"parts have different block lengths: {[p.block_length for p in parts]}")
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += len(p.families)
        tensors = {k: torch.cat([getattr(p, k) for p in parts]) for k in cls.TENSORS}
        tensors["prompt"] = torch.cat([p.prompt + o for p, o in zip(parts, offsets)])
        return cls(**tensors, families=[f for p in parts for f in p.families],
                   references=[r for p in parts for r in p.references], block_length=parts[0].block_length)

    def save(self, path: str | Path) -> None:
        """``path`` (.safetensors: the tensors) + ``path`` with .json (prompt families, references)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).contiguous() for k in self.TENSORS}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"families": self.families, "references": self.references,
                                                         "block_length": self.block_length,
                                                         "fingerprint": self.fingerprint}))

    @classmethod
    def load(cls, path: str | Path) -> "FilterData":
        path = Path(path)
        try:
            t = load_file(str(path))
            meta = json.loads(path.with_suffix(".json").read_text())
            return cls(**{k: t[k] for k in cls.TENSORS}, families=meta["families"], references=meta["references"],
                       block_length=meta["block_length"], fingerprint=meta.get("fingerprint", ""))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise ConfigError(f"{path} (+ {path.with_suffix('.json').name}) is not filter data saved by "
                              f"FilterData.save / `dlm train-filter --data-dir`: {exc!r}") from exc
