"""Prompts of the filter's training: JSONL files and the tasks' splits."""

from __future__ import annotations

import json

import pytest

import dlm
from dlm.train.filter.prompts import read_prompts, task_prompts


def test_read_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([json.dumps("add: 1+2 ="), json.dumps({"prompt": "copy: a b =", "gen_length": 64}),
                               json.dumps({"prompt_ids": [5, 6, 7], "family": "x"}), ""]))
    ps = read_prompts(path, gen_length=32)
    assert [(p.text, p.ids, p.gen_length, p.family) for p in ps] == [
        ("add: 1+2 =", None, 32, ""), ("copy: a b =", None, 64, ""), (None, (5, 6, 7), 32, "x")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt key"}))
    with pytest.raises(dlm.ConfigError, match="prompt"):
        read_prompts(bad)


def test_task_prompts_come_from_the_requested_split():
    train = task_prompts("train", 3)
    test = task_prompts("test", 3)
    assert len(train) == 3 * 6 and all(p.answer is not None for p in train)
    assert not {p.text for p in train} & {p.text for p in test}
