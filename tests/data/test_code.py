"""Code completion: the extraction of functions from source and the parse rule of completions."""

from __future__ import annotations

from dlm.data.code import CODE, CodeExample, code_completion, completion_body, completion_parses, extract_functions


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
    assert all(isinstance(e, CodeExample) and e.family == CODE == "code" for e in picked)


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
