"""Training of the project's own models: dlm-tiny (masked diffusion, LLaDA format) and dlm-tiny-ar (causal).

Modules: :mod:`.corpus` (the standard library split by file), :mod:`.tokenizer` (byte-level BPE),
:mod:`.data` (token pools and batches), :mod:`.objectives` (masked diffusion, next token), :mod:`.trainer`
(the loop), :mod:`.builders` (model construction and export), :mod:`.evaluate`, :mod:`.recipe` (one command for
everything) and :mod:`.cli` (``dlm train ...`` / ``python -m dlm.train ...``).
"""
