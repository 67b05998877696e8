"""Evaluation with lm-evaluation-harness: the lm-eval model ``dlm`` (:class:`dlm.eval.harness.DLMEvalLM`),
``dlm eval`` (:func:`dlm.eval.run.evaluate`), and dlm's own task families as local lm-eval tasks
(:mod:`dlm.eval.tasks`). Needs the ``eval`` extra (``pip install 'dlm[eval]'``); docs/eval.md says how to use it.

Nothing here is imported by ``import dlm``; importing :mod:`dlm.eval.harness` imports lm-eval and registers the
model name ``dlm`` in lm-eval's registry (lm-eval releases that read the ``lm_eval.models`` entry points find it
without that import).
"""

from .args import EvalSettings, allowed_args, parse_model_args

__all__ = ["EvalSettings", "allowed_args", "evaluate", "parse_model_args"]


def evaluate(*args, **kwargs):
    """:func:`dlm.eval.run.evaluate` (imported on first use: it needs lm-eval)."""
    from .run import evaluate as run

    return run(*args, **kwargs)
