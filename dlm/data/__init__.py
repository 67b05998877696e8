"""Data shared by training and benchmarking (``dlm.train`` and ``dlm.bench`` both import it; neither imports the
other): the synthetic task families (:mod:`.tasks`), code completion on standard-library functions (:mod:`.code`),
the standard-library corpus split by file (:mod:`.corpus`), JSONL prompt files (:mod:`.prompts`) and the stress
families with their dependency measure (:mod:`.stress`).

Pure Python: nothing here imports torch or a model, so every layer may use it.
"""

from .code import (CODE, CodeExample, code_completion, completion_body, completion_parses, extract_functions,
                   stdlib_code_completion)
from .corpus import Corpus, SourceFile, stdlib_corpus
from .prompts import read_prompt_lines
from .stress import (NEW_FAMILIES, STRESS_FAMILIES, STRESS_TASKS, answer_length, check_answer, dependency,
                     stress_view)
from .tasks import FAMILIES, SPLITS, TASKS, Example, Task, exact_match, get_task, make_splits, score

__all__ = [
    "CODE", "FAMILIES", "NEW_FAMILIES", "SPLITS", "STRESS_FAMILIES", "STRESS_TASKS", "TASKS", "CodeExample", "Corpus",
    "Example", "SourceFile", "Task", "answer_length", "check_answer", "code_completion", "completion_body",
    "completion_parses", "dependency", "exact_match", "extract_functions", "get_task", "make_splits",
    "read_prompt_lines", "score", "stdlib_code_completion", "stdlib_corpus", "stress_view",
]
