"""The project's own task families as lm-eval tasks, over local JSONL files (no dataset hub needed).

This folder is an lm-eval task folder: pass it as ``--include_path`` (``dlm eval`` always does).

=================  ==================  ====================================================================
task               output type         what
=================  ==================  ====================================================================
``dlm_copy`` ...   generate_until      one per synthetic family of :mod:`dlm.data.tasks` (copy, reverse, sort,
                                       add, cumsum, dedupe): the test split, scored by the family's own
                                       checker (exact match after stripping whitespace), as ``dlm bench`` does
``dlm_synthetic``  group               the six above, accuracy weighted by size
``dlm_choice``     multiple_choice     the answer among 4 candidates (3 made by changing one item of it or
                                       swapping two neighbours), by log-likelihood: a local task for
                                       ``loglikelihood``
=================  ==================  ====================================================================

The JSONL files under ``data/`` are written by :func:`dlm.eval.tasks.data.write_data` (``dlm eval-data``) from
the families' generators (test split, seed 0): deterministic, so a test checks that the shipped files equal a
fresh write. Another folder of the same layout can be used with ``--metadata '{"dlm_data_dir": "DIR"}'``
(lm-eval) or ``dlm eval --data-dir DIR``.
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
DATA_DIR = TASK_DIR / "data"

__all__ = ["DATA_DIR", "TASK_DIR"]
