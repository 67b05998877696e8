"""The training corpus: the running Python's standard library, split by file, recorded in a manifest.

Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` is a candidate except third-party and generated
folders (``site-packages``, test suites, ``idlelib``, ``lib2to3``, ``turtledemo``, ``ensurepip``, ``pydoc_data``),
the codec tables of ``encodings`` and files over ``max_file_bytes``. A file is held out when the first 8 bytes of
``sha256(salt + ":" + relative path)`` read as a fraction below ``heldout_fraction``: the split depends only on
the path, so it is the same on every machine and for every Python version that has the file.

The manifest (:meth:`Corpus.manifest`) lists each file with its SHA-256, size and split, so a training run can be
reproduced, or at least its data compared, on another machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3", "turtledemo",
    "ensurepip", "pydoc_data", "__phello__",
})
_CODEC_TABLE_MARKER = "### Decoding Table"


@dataclass(frozen=True)
class SourceFile:
    """One corpus file: ``rel`` (POSIX path relative to the root), absolute ``path``, ``sha256`` and ``bytes``."""

    rel: str
    path: Path
    sha256: str
    bytes: int

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass
class Corpus:
    """The files of a corpus split into ``train`` and ``heldout`` lists (each sorted by relative path)."""

    root: Path
    train: list[SourceFile]
    heldout: list[SourceFile]
    settings: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        files = [{"path": f.rel, "sha256": f.sha256, "bytes": f.bytes, "split": split}
                 for split, group in (("train", self.train), ("heldout", self.heldout)) for f in group]
        files.sort(key=lambda r: r["path"])
        return {
            "source": "python standard library",
            "python": sys.version.split()[0],
            "root": str(self.root),
            "settings": self.settings,
            "counts": {"train_files": len(self.train), "heldout_files": len(self.heldout),
                       "train_bytes": sum(f.bytes for f in self.train),
                       "heldout_bytes": sum(f.bytes for f in self.heldout)},
            "files": files,
        }

    def write_manifest(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.manifest(), indent=1))
        return path


def heldout_score(rel: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) from the relative path (the file's split key)."""
    digest = hashlib.sha256(f"{salt}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def iter_stdlib_files(root: str | os.PathLike | None = None, max_file_bytes: int = 300_000) -> Iterator[SourceFile]:
    """The candidate ``.py`` files under ``root`` (default: the running Python's stdlib), sorted by path."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {str(root)!r} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-"))
        for name in filenames:
            if name.endswith(".py"):
                found.append(Path(dirpath) / name)
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        data = path.read_bytes()
        if len(data) > max_file_bytes or len(data) == 0:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if _CODEC_TABLE_MARKER in text:
            continue
        yield SourceFile(path.relative_to(root).as_posix(), path, hashlib.sha256(data).hexdigest(), len(data))


def stdlib_corpus(root: str | os.PathLike | None = None, *, heldout_fraction: float = 0.08, salt: str = "dlm-corpus-v1",
                  max_file_bytes: int = 300_000, max_files: int | None = None) -> Corpus:
    """The standard library split by file. ``max_files`` keeps only the first files by split key (smoke runs)."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    files = list(iter_stdlib_files(root, max_file_bytes))
    if max_files is not None:
        # a pseudo-random subset, independent of the split key so both splits keep their share
        files = sorted(files, key=lambda f: heldout_score(f.rel, salt + "/subset"))[:max_files]
        files.sort(key=lambda f: f.rel)
    train = [f for f in files if heldout_score(f.rel, salt) >= heldout_fraction]
    heldout = [f for f in files if heldout_score(f.rel, salt) < heldout_fraction]
    root_path = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    settings = {"heldout_fraction": heldout_fraction, "salt": salt, "max_file_bytes": max_file_bytes,
                "max_files": max_files, "excluded_dirs": sorted(EXCLUDED_DIRS)}
    return Corpus(root_path, train, heldout, settings)
