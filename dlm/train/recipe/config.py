"""Every setting of the recipe (:class:`RecipeConfig`, one command-line option per field) and its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ...data import FAMILIES, NEW_FAMILIES
from ...errors import ConfigError
from ..builders import ModelSize

#: the training budgets: each names the ``minutes_X``, ``steps_X``, ``lr_X`` and ``compile_X`` fields of a phase
#: (:data:`dlm.train.recipe.phases.PHASES`); a new phase adds its key here and its four fields below
BUDGETS = ("diffusion", "ar", "block")


@dataclass(frozen=True)
class RecipeConfig:
    """Every setting of the recipe (each is a command-line option: ``--field-name``)."""

    out: str = "out/dlm-train"
    only: str | None = None
    device: str = "auto"
    seed: int = 0
    deadline_minutes: float | None = 15.0
    eval_reserve_minutes: float = 0.4
    resume: bool = False
    pack_dir: str | None = None
    keep_state: bool = False
    workers: int = 0
    cpu_threads: int = 0
    # corpus
    heldout_fraction: float = 0.08
    max_files: int | None = None
    max_file_bytes: int = 300_000
    # tokenizer
    vocab_size: int = 8192
    tokenizer_task_examples: int = 3000
    tokenizer_from: str | None = None
    # synthetic tasks
    families: str = ",".join(FAMILIES)
    family_weights: str = "add=3,cumsum=3"
    stress_families: str = ""
    train_per_task: int = 100_000
    val_per_task: int = 256
    test_per_task: int = 500
    # code completion
    code_prompt_tokens: int = 96
    code_body_tokens: int = 63
    code_eval_n: int = 300
    # batches
    task_len: int = 64
    code_len: int = 192
    task_batch: int = 512
    code_batch: int = 64
    code_fn_fraction: float = 0.5
    code_task_fraction: float = 0.2
    long_task_pairs: int = 200_000
    task_weight: float = 1.0
    code_weight: float = 0.5
    val_batches: int = 2
    # model (every phase; block_size: dlm-tiny-block's attention blocks)
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    mlp_hidden: int = 704
    max_seq_len: int = 1024
    block_size: int = 4
    # optimisation (every phase); each phase of :data:`BUDGETS` has its minutes_, steps_, lr_ and compile_ fields
    init_from: str | None = None
    minutes_diffusion: float | None = 5.7
    steps_diffusion: int | None = None
    lr_diffusion: float = 1.5e-3
    minutes_ar: float | None = 2.1
    steps_ar: int | None = None
    lr_ar: float = 2e-3
    minutes_block: float | None = 5.0
    steps_block: int | None = None
    lr_block: float = 2e-3
    warmup_steps: int = 300
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mask_eps: float = 1e-3
    compile_diffusion: bool = True
    compile_ar: bool = False
    compile_block: bool = True
    val_every: int = 500
    log_every: int = 50
    export_every_minutes: float = 2.0
    state_every_minutes: float = 0.0
    progress: bool = True
    # evaluation
    eval_gen_length: int = 32
    eval_batch: int = 512
    skip_eval: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.family_list if f not in FAMILIES + NEW_FAMILIES]
        if unknown:
            raise ConfigError(f"unknown task families {unknown} in families={self.families!r} / stress_families="
                             f"{self.stress_families!r}; known: {', '.join(FAMILIES)}; stress: {', '.join(NEW_FAMILIES)}")
        if not self.family_list:
            raise ConfigError("families must name at least one task family")
        self.family_weight  # validates family_weights
        for key in BUDGETS:
            if getattr(self, f"minutes_{key}") is None and getattr(self, f"steps_{key}") is None:
                raise ConfigError(f"give --minutes-{key} or --steps-{key}")
        for name in ("code_fn_fraction", "code_task_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.code_body_tokens + 1 > self.eval_code_gen_length:
            raise ConfigError("code_body_tokens + 1 must fit the code generation length")
        for name in ("task_len", "code_len", "task_batch", "code_batch", "eval_gen_length", "eval_batch", "val_batches",
                     "train_per_task", "test_per_task", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        ModelSize(self.d_model, self.n_layers, self.n_heads, self.mlp_hidden, self.max_seq_len)

    @property
    def phase_names(self) -> list[str] | None:
        """The phases named by ``only`` (checked against the recipe's phases when the run starts); None: all."""
        if self.only is None:
            return None
        return [n.strip() for n in self.only.split(",") if n.strip()]

    @property
    def family_list(self) -> list[str]:
        # the new stress families (dlm.data.stress) join the task mix only when asked for: default off
        names = f"{self.families},{self.stress_families}"
        return list(dict.fromkeys(f.strip() for f in names.split(",") if f.strip()))

    @property
    def family_weight(self) -> dict[str, float]:
        """Sampling weight of each family in the task batch (``family_weights``; unnamed families weigh 1)."""
        weights = {f: 1.0 for f in self.family_list}
        for item in filter(None, (x.strip() for x in self.family_weights.split(","))):
            name, sep, value = item.partition("=")
            try:
                w = float(value)
            except ValueError:
                w = -1.0
            if not sep or name.strip() not in FAMILIES + NEW_FAMILIES or w < 0:
                raise ConfigError(f"family_weights must be 'family=weight,...' with known families and weights >= 0, "
                                 f"got {item!r} in {self.family_weights!r}")
            if name.strip() in weights:
                weights[name.strip()] = w
        if sum(weights.values()) <= 0:
            raise ConfigError(f"family_weights {self.family_weights!r} leave every family at weight 0")
        return weights

    @property
    def eval_code_gen_length(self) -> int:
        """Generation length of code completion: the body limit + 1, rounded up to a multiple of 32."""
        return -(-(self.code_body_tokens + 1) // 32) * 32

    @property
    def size(self) -> ModelSize:
        return ModelSize(self.d_model, self.n_layers, self.n_heads, self.mlp_hidden, self.max_seq_len)

    def replace(self, **changes: Any) -> "RecipeConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: the CPU smoke configuration: tiny everything, a few steps (tests and local dry runs)
SMOKE = dict(
    deadline_minutes=None, heldout_fraction=0.25, max_files=24, vocab_size=512, tokenizer_task_examples=300,
    train_per_task=300, val_per_task=8, test_per_task=6, code_prompt_tokens=64, code_body_tokens=31, code_eval_n=4,
    task_len=48, code_len=96, task_batch=16, code_batch=8, val_batches=1, d_model=64, n_layers=2, n_heads=4,
    mlp_hidden=160, max_seq_len=256, minutes_diffusion=None, steps_diffusion=30, minutes_ar=None, steps_ar=30,
    minutes_block=None, steps_block=30, lr_diffusion=3e-3, lr_ar=3e-3, lr_block=3e-3, warmup_steps=5, val_every=15,
    log_every=5, export_every_minutes=0.0, progress=False, eval_gen_length=16, eval_batch=64, compile_diffusion=False,
    compile_block=False, cpu_threads=1,
)
PRESETS: dict[str, dict[str, Any]] = {"gpu": {}, "smoke": SMOKE}


def preset(name: str, **overrides: Any) -> RecipeConfig:
    """The settings of preset ``name`` ("gpu", the default of every option, or "smoke") with ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return RecipeConfig(**{**PRESETS[name], **overrides})
