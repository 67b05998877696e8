"""The corpus: which files are candidates, the split by path, the manifest."""

from __future__ import annotations

import hashlib
import json

import pytest

from dlm.data.corpus import heldout_score, iter_stdlib_files, stdlib_corpus


@pytest.fixture
def root(tmp_path):
    for rel, text in {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "pkg/c.py": "z = 3\n", "d.py": "w = 4\n",
                      "site-packages/e.py": "no = 1\n", "tests/f.py": "no = 2\n", "g.txt": "not python\n",
                      "big.py": "#" * 500 + "\n", "codec.py": "### Decoding Table\n", "empty.py": ""}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_candidates_skip_third_party_tests_large_and_codec_files(root):
    files = list(iter_stdlib_files(root, max_file_bytes=100))
    assert [f.rel for f in files] == ["a.py", "d.py", "pkg/b.py", "pkg/c.py"]
    assert files[0].sha256 == hashlib.sha256(b"x = 1\n").hexdigest() and files[0].bytes == 6


def test_split_depends_only_on_the_path(root, tmp_path_factory):
    corpus = stdlib_corpus(root, heldout_fraction=0.5, max_file_bytes=100)
    held = {f.rel for f in corpus.heldout}
    names = ("a.py", "d.py", "pkg/b.py", "pkg/c.py")
    assert held == {rel for rel in names if heldout_score(rel, "dlm-corpus-v1") < 0.5}
    assert held.isdisjoint(f.rel for f in corpus.train) and len(corpus.train) + len(held) == 4
    # the same paths with other contents elsewhere split the same way
    other = tmp_path_factory.mktemp("other")
    for f in corpus.train + corpus.heldout:
        (other / f.rel).parent.mkdir(parents=True, exist_ok=True)
        (other / f.rel).write_text("changed = True\n")
    assert {f.rel for f in stdlib_corpus(other, heldout_fraction=0.5).heldout} == held


def test_manifest_lists_every_file_with_its_hash(root, tmp_path):
    corpus = stdlib_corpus(root, heldout_fraction=0.5, max_file_bytes=100)
    path = corpus.write_manifest(tmp_path / "out" / "manifest.json")
    m = json.loads(path.read_text())
    assert m["counts"]["train_files"] + m["counts"]["heldout_files"] == 4
    assert [f["path"] for f in m["files"]] == ["a.py", "d.py", "pkg/b.py", "pkg/c.py"]
    assert all(f["split"] in ("train", "heldout") and len(f["sha256"]) == 64 for f in m["files"])


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="heldout_fraction"):
        stdlib_corpus(tmp_path, heldout_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list(iter_stdlib_files(tmp_path / "missing"))
