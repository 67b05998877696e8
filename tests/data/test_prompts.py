"""JSONL prompt files: the accepted line forms and the errors naming the file and line."""

from __future__ import annotations

import json

import pytest

from dlm.data import read_prompt_lines
from dlm.errors import ConfigError


def test_line_forms(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([json.dumps("plain"), "", json.dumps({"prompt": "text", "gen_length": 8}),
                               json.dumps({"prompt_ids": [1, 2, 3]})]))
    rows = read_prompt_lines(path)
    assert [(n, p) for n, p, _ in rows] == [(1, "plain"), (3, "text"), (4, [1, 2, 3])]
    assert rows[1][2]["gen_length"] == 8 and rows[0][2] == {}


@pytest.mark.parametrize("text,match", [
    ("{not json", r"p.jsonl:1 is not valid JSON"),
    (json.dumps({"text": "x"}), r"p.jsonl:1: each line must be a JSON string or an object with 'prompt'"),
    ("\n\n", "holds no prompts"),
])
def test_errors_name_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_prompt_lines(path)
    with pytest.raises(ConfigError, match="cannot read the prompt file"):
        read_prompt_lines(tmp_path / "missing.jsonl")
