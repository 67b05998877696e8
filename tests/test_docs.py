"""Every registered component is documented on its docs page: a scheduler, cache, verifier or checkpoint format
added to a registry without a line in docs/ fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

import dlm
from dlm.models.base import MODELS

DOCS = Path(__file__).resolve().parents[1] / "docs"
MASKED_DIFFUSION = ("llada", "Dream", "llada_moe")  # fully bidirectional formats: docs/formats.md

PAGES = {
    "schedulers.md": lambda: dlm.schedulers.names(),
    "caches.md": lambda: dlm.cache.names(),
    "lossless.md": lambda: dlm.verify.names(),
    "formats.md": lambda: [n for n in MODELS.names() if n in MASKED_DIFFUSION],
    "block-diffusion.md": lambda: [n for n in MODELS.names() if n not in MASKED_DIFFUSION],
}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_registered_name_is_on_its_page(page):
    text = (DOCS / page).read_text()
    missing = [name for name in PAGES[page]() if f"`{name}`" not in text and f'"{name}"' not in text]
    assert not missing, f"docs/{page} does not mention {missing}"


def test_every_format_is_on_a_page():
    assert set(PAGES["formats.md"]()) | set(PAGES["block-diffusion.md"]()) == set(MODELS.names())
