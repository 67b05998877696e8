"""The functions the task YAMLs name with ``!function hooks.<name>``.

lm-eval loads a ``!function`` module from the file next to the YAML, outside the package (older releases only
that way), so this module uses absolute imports and only re-exports.
"""

from dlm.eval.tasks.data import load_choice, load_family
from dlm.eval.tasks.scoring import process_results

__all__ = ["load_choice", "load_family", "process_results"]
