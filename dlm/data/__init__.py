"""Data shared by training and benchmarking (``dlm.train`` and ``dlm.bench`` both import it; neither imports the
other): the synthetic task families (:mod:`.tasks`), code completion on standard-library functions (:mod:`.code`),
the standard-library corpus split by file (:mod:`.corpus`) and JSONL prompt files (:mod:`.prompts`).

Pure Python: nothing here imports torch or a model, so every layer may use it.
"""

from .code import (CODE, CodeExample, code_completion, completion_body, completion_parses, extract_functions,
                   stdlib_code_completion)
from .corpus import Corpus, SourceFile, stdlib_corpus
from .prompts import read_prompt_lines
from .tasks import FAMILIES, SPLITS, TASKS, Example, Task, exact_match, get_task, make_splits, score

__all__ = [
    "CODE", "FAMILIES", "SPLITS", "TASKS", "CodeExample", "Corpus", "Example", "SourceFile", "Task", "code_completion",
    "completion_body", "completion_parses", "exact_match", "extract_functions", "get_task", "make_splits",
    "read_prompt_lines", "score", "stdlib_code_completion", "stdlib_corpus",
]
