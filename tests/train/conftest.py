"""Fixtures of the training tests: one intra-op thread (tiny models; avoids thread oversubscription stalls)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A 400-token tokenizer trained on a little code and task text; returns its folder."""
    from dlm.data import make_splits
    from dlm.train.tokenizer import save_tokenizer, train_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "class A:\n    def f(self, x=1):\n        return [x, 'y']\n"] * 20
    texts += [f"{e.prompt} {e.answer}" for e in make_splits(n_train=200, n_val=0, n_test=0)["train"]]
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(texts, vocab_size=400), folder)
    return folder
