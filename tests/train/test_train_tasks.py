"""Synthetic tasks (determinism, disjoint splits, answers), the code-completion extraction and its parse rule."""

from __future__ import annotations

import pytest

from dlm.bench import tasks
from dlm.bench.tasks import (FAMILIES, TASKS, Example, code_completion, completion_body, completion_parses,
                             exact_match, extract_functions, get_task, make_splits, score, split_seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_deterministic_per_seed(family):
    task = get_task(family)
    a = task.generate("train", 50, seed=3)
    assert a == task.generate("train", 50, seed=3)
    assert a != task.generate("train", 50, seed=4)
    assert len({e.prompt for e in a}) == 50  # distinct within a call
    assert all(e.family == family and e.prompt.startswith(f"{family}: ") and e.prompt.endswith(" =") for e in a)


def test_split_seed_ranges_are_disjoint():
    ranges = {s: (split_seed(s, 0), split_seed(s, tasks.SEED_SPAN - 1)) for s in tasks.SPLITS}
    bounds = sorted(ranges.values())
    assert all(hi < lo for (_, hi), (lo, _) in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError, match="seed"):
        split_seed("train", tasks.SEED_SPAN)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        split_seed("dev", 0)


def test_splits_share_no_prompt():
    s = make_splits(n_train=3000, n_val=200, n_test=200, seed=0)
    train, val, test = ({e.prompt for e in s[k]} for k in ("train", "val", "test"))
    assert len(s["train"]) == 3000 * len(FAMILIES)
    assert not train & test and not train & val and not val & test
    # short problems coincide by chance: the exclusion is doing work for copy/reverse of length 2
    raw = {e.prompt for f in ("copy", "reverse") for e in get_task(f).generate("train", 3000, 0)}
    assert raw & test


def test_answers_are_right():
    ex = {f: get_task(f) for f in FAMILIES}
    assert ex["cumsum"].answer(list("3914")) == list("3237")
    assert ex["dedupe"].answer(list("cacba")) == list("cab")
    assert ex["sort"].answer(list("39147")) == list("13479")
    for e in make_splits(["add"], 200, 0, 0)["train"]:
        a, b = e.prompt.removeprefix("add: ").removesuffix(" =").split("+")
        assert int(e.answer) == int(a) + int(b)
    for e in make_splits(["reverse", "copy"], 100, 0, 0)["train"]:
        items = e.prompt.split(": ", 1)[1].removesuffix(" =").split(" ")
        assert e.answer.split(" ") == (items[::-1] if e.family == "reverse" else items)
    assert max(len(e.answer.replace(" ", "")) for e in make_splits(n_train=500, n_val=0, n_test=0)["train"]) <= 12


def test_scorer_and_errors():
    assert exact_match(" 1 2 3\n", "1 2 3") and not exact_match("1 2", "1 2 3")
    exs = [Example("p", "a", "copy"), Example("q", "b", "copy"), Example("r", "c", "add")]
    assert score(exs, ["a", "x", " c "]) == {"copy": {"n": 2, "correct": 1, "accuracy": 0.5},
                                               "add": {"n": 1, "correct": 1, "accuracy": 1.0}}
    with pytest.raises(ValueError, match="unknown task family 'mul'"):
        get_task("mul")
    with pytest.raises(ValueError, match="found only"):
        TASKS["copy"].__class__(1, 1).generate("train", 100)  # only 26 one-letter lists exist


SOURCE = '''\
import os


def top(a, b=(1,
              2)):
    """Add things."""
    c = a + b[0]
    return c


class K:
    @property
    def name(self):
        return self._name

    def only_doc(self):
        """Nothing else."""

    def one_liner(self): return 1

    async def run(self, x):
        # a comment first
        await x
'''


def test_extract_functions():
    found = {e.name.split(":")[0]: e for e in extract_functions(SOURCE, "m.py")}
    assert set(found) == {"top", "name", "run"}
    top = found["top"]
    assert top.prompt == 'def top(a, b=(1,\n              2)):\n    """Add things."""\n'
    assert top.reference == "    c = a + b[0]\n    return c\n"
    assert found["name"].prompt == "def name(self):\n"  # decorators are not part of the prompt; dedented
    assert found["run"].prompt == "async def run(self, x):\n"
    assert found["run"].reference == "    # a comment first\n    await x\n"
    assert [e.name for e in code_completion([("m.py", SOURCE)], max_body_chars=31)] == ["top:4", "name:13"]
    picked = code_completion([("m.py", SOURCE)], n=2, seed=1, count_tokens=len, max_body_tokens=40)
    assert picked == code_completion([("m.py", SOURCE)], n=2, seed=1, count_tokens=len, max_body_tokens=40)
    assert len(picked) == 2


def test_parse_rule():
    header = 'def f(x):\n    """Doc."""\n'
    # ended by EOS (finished): the whole text is the body
    assert completion_parses(header, "    return x + 1\n", finished=True)
    # ended by a non-indented line: the body stops there, whatever follows
    assert completion_body("    y = x\n    return y\nprint(f(2)) (((", False) == "    y = x\n    return y\n"
    assert completion_parses(header, "    y = x\n    return y\nprint(f(2)) (((", finished=False)
    # cut by the generation length: the unfinished last line is dropped, the rest must parse
    assert completion_parses(header, "    y = x\n    return fo", finished=False)
    assert not completion_parses(header, "    y = [x,\n    return fo", finished=False)  # open bracket stays
    assert not completion_parses(header, "    if x:\n", finished=False)  # a block with no body
    # the docstring alone is not a body; nor is a comment or nothing
    assert not completion_parses(header, "", finished=True)
    assert not completion_parses(header, "    # todo\n", finished=True)
    assert not completion_parses(header, "\n\nx = 1\n", finished=False)
    # bad indentation and garbage fail
    assert not completion_parses(header, "  a = 1\n    b = 2\n", finished=True)
    assert not completion_parses("def g():\n", "    return )\n", finished=True)
    assert completion_parses("def g():\n", "    pass", finished=True)  # EOS right after the line: complete
