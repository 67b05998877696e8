"""Examples for the benchmark tests: a few synthetic ones and a hand-made function (no scan of the stdlib)."""

from __future__ import annotations

from dlm.bench.items import Item
from dlm.data import get_task


def tiny_items() -> list[Item]:
    items = [Item(e.family, e.prompt, e.answer) for fam in ("copy", "add") for e in get_task(fam).generate("test", 2)]
    items.append(Item("code", "def double(x):\n", None, "handmade:double"))  # no stdlib scan in the fast test
    return items
