"""The learned unmasking filter of the ``learned_filter`` scheduler (Learn2PD, Bao et al., 2025, arXiv:2509.25188).

A tiny network looks at the active block's per-position features (:mod:`.features`; at least the confidence of
every position's candidate token) and outputs, for every position, the probability that its current candidate is
already what the one-token-per-step decode will finally write there (:mod:`.network`). Two architectures
(:attr:`FilterConfig.arch`):

``mlp`` (the paper's)
    one MLP maps the features of a window of ``width`` positions (32, LLaDA's block), flattened, to ``width``
    accept logits; with one hidden layer of 32 over the confidences alone it is Learn2PD's ~2K-parameter filter.
    A shorter block is padded on the right with positions that look committed (their outputs ignored), a longer
    one is cut into windows of ``width`` positions, each judged on its own.
``local``
    one small MLP shared by every position maps the features of the position and of its ``context`` neighbours
    on each side (positions outside the block look committed) to its accept logit. It sees blocks of any length
    as they are, and learns a rule once instead of once per position (the shipped filter; docs/learned-filter.md
    compares them).

A filter is two files (:mod:`.files`, format :mod:`.config`): ``NAME.safetensors`` and ``NAME.json``. The shipped
one, trained on dlm-tiny, is ``dlm/assets/dlm-tiny/learned_filter.{safetensors,json}``. Training (collect, fit,
tune) is :mod:`dlm.train.filter`; the scheduler using it is :mod:`dlm.schedulers.learned_filter`.
"""

from .config import ARCHS, DEFAULT_THRESHOLD, FEATURES, FILE_STEM, FORMAT, VERSION, FilterConfig, check_threshold
from .features import PAD, block_features, to_windows
from .files import cached_filter, default_filter_path, load_filter, read_config, resolve_path, save_filter
from .network import FilterNet, expected_tensors

__all__ = [
    "ARCHS", "DEFAULT_THRESHOLD", "FEATURES", "FILE_STEM", "FORMAT", "PAD", "VERSION", "FilterConfig", "FilterNet",
    "block_features", "cached_filter", "check_threshold", "default_filter_path", "expected_tensors", "load_filter",
    "read_config", "resolve_path", "save_filter", "to_windows",
]
