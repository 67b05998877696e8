"""The one-command recipe that builds the project's models: tokenizer, corpus, dlm-tiny, dlm-tiny-ar, evaluation.

    PYTHONPATH=. python3 -m dlm.train recipe --out /tmp/dlm-run --pack-dir $OUT      # one GPU, ~9 minutes
    PYTHONPATH=. python3 -m dlm.train recipe --preset smoke --out /tmp/dlm-smoke     # CPU, seconds

Steps, each written to ``--out`` as soon as it is done (a run killed at any point leaves what it finished):

1. corpus: the standard library's ``.py`` files split by file (``corpus_manifest.json`` with SHA-256 of each);
   the synthetic tasks' train/val/test splits (disjoint seeds, test prompts removed from train).
2. tokenizer: byte-level BPE on the training files + a sample of training task texts (``tokenizer/``).
3. data: task pairs, function-completion pairs from the training files (prompt = header + docstring, answer =
   body) and the training files as plain text, tokenised into pools on the device (:mod:`.prepare`).
4. one phase per model (:data:`.phases.PHASES`, run by one loop in :mod:`.run`): dlm-tiny (masked diffusion,
   exported to ``dlm-tiny/`` in the LLaDA format) then dlm-tiny-ar (next token, ``dlm-tiny-ar/`` in the
   transformers Llama format), each trained within its budget, exported every few minutes and at the end with its
   model card (:mod:`.card`, from the template ``model_card.md``), then evaluated.
5. ``eval.json`` / ``eval.md`` and the final model cards; with ``--pack-dir``, tar parts of at most 15 MiB of
   each model folder and of the logs are (re)written there after every export (:mod:`.packing`).

``--deadline-minutes`` bounds the whole run: the training budgets shrink when data preparation took longer than
planned, so that evaluation and packing still finish inside it. Every setting: :mod:`.config`.
"""

from .config import BUDGETS, PRESETS, SMOKE, RecipeConfig, preset
from .packing import PART_BYTES, pack_folder
from .phases import PHASES, Card, Phase
from .prepare import Prepared, prepare
from .run import run_recipe

__all__ = ["BUDGETS", "PART_BYTES", "PHASES", "PRESETS", "SMOKE", "Card", "Phase", "Prepared", "RecipeConfig",
           "pack_folder", "prepare", "preset", "run_recipe"]
