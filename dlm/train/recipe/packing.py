"""Tar parts of the run's folders (at most 15 MiB each, so that every file fits a size-limited transfer), rewritten
after every export: a run stopped at any point has recent parts in ``--pack-dir``."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Callable

PART_BYTES = 15 * 2**20 - 64 * 1024
# the files of the report bundle, besides the logs' JSONL metrics and PNG curves
REPORT_FILES = ("recipe.json", "summary.json", "corpus_manifest.json", "eval.json", "eval.md")


def pack_folder(src: Path, dest_dir: Path, name: str, part_bytes: int = PART_BYTES) -> list[Path]:
    """Tar ``src`` (uncompressed) and write it as ``{name}.tar.partNN`` files of at most ``part_bytes`` in
    ``dest_dir`` (old parts of ``name`` are removed). Join with ``cat {name}.tar.part* | tar x``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(src), arcname=src.name)
    data = buf.getvalue()
    dest_dir.mkdir(parents=True, exist_ok=True)
    for old in dest_dir.glob(f"{name}.tar.part*"):
        old.unlink()
    parts = []
    for i in range(0, max(1, len(data)), part_bytes):
        p = dest_dir / f"{name}.tar.part{i // part_bytes:02d}"
        p.write_bytes(data[i : i + part_bytes])
        parts.append(p)
    return parts


class Packer:
    """Packs model folders and the report of the run in ``out`` into ``pack_dir`` (does nothing without one)."""

    def __init__(self, pack_dir: Path | None, out: Path, log: Callable[[str], None]):
        self.pack_dir, self.out, self.log = pack_dir, out, log

    def folder(self, folder: Path, name: str) -> None:
        """``folder`` as ``{name}.tar.partNN`` (when it exists)."""
        if self.pack_dir is not None and folder.exists():
            parts = pack_folder(folder, self.pack_dir, name)
            self.log(f"packed {folder.name} into {len(parts)} part(s) in {self.pack_dir}")

    def report(self) -> None:
        """The report bundle (configuration, summary, manifest, evaluation, metrics, curves, log) as
        ``report.tar.partNN``, and ``eval.md`` and ``recipe.log`` as plain files beside it."""
        if self.pack_dir is None:
            return
        logs = self.out / "logs"
        bundle = self.out / "report"
        if bundle.exists():
            shutil.rmtree(bundle)
        bundle.mkdir()
        for p in [*(self.out / n for n in REPORT_FILES), *sorted(logs.glob("*.jsonl")), *sorted(logs.glob("*.png")),
                  logs / "recipe.log"]:
            if p.is_file():
                shutil.copyfile(p, bundle / p.name)
        pack_folder(bundle, self.pack_dir, "report")
        for p in (self.out / "eval.md", logs / "recipe.log"):
            if p.is_file():
                shutil.copyfile(p, self.pack_dir / p.name)
