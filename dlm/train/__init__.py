"""Training of the project's own models: dlm-tiny (masked diffusion, LLaDA format), dlm-tiny-ar (causal) and the
learned filter.

Modules: :mod:`.tokenizer` (byte-level BPE), :mod:`.data` (token pools and batches), :mod:`.objectives` (masked
diffusion, next token), :mod:`.trainer` (the loop; :mod:`.optim`, :mod:`.state`, :mod:`.curves`), :mod:`.builders`
(model construction and export), :mod:`.evaluate`, :mod:`.recipe` (one command for everything, its models as
phases), :mod:`.filter` (the learned filter: collect, fit, tune) and :mod:`.cli` (``dlm train ...`` /
``python -m dlm.train ...``). The corpus and the task families are :mod:`dlm.data`, shared with :mod:`dlm.bench`.
"""
