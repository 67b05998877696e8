"""More than one device: a model split by layers over GPUs (``dlm.load(path, device_map="auto")``,
:mod:`~dlm.parallel.placement`), one replica per GPU with the prompts split between them
(:func:`generate_data_parallel`, :class:`ReplicaPool`, ``dlm generate --data-parallel N``, :mod:`~dlm.parallel.data`),
and each layer split over the processes of a torchrun launch (``dlm.load(path, tensor_parallel=N)``,
:mod:`~dlm.parallel.tensor`). See docs/parallel.md.

Layering: ``placement`` and ``tensor`` work on the model and are used by ``dlm.load``; ``data`` sits above the API
(its workers call ``dlm.load``). Names are imported lazily so that importing one does not import the others.
"""

from __future__ import annotations

_EXPORTS = {
    "ReplicaPool": "data", "generate_data_parallel": "data", "replica_devices": "data",
    "DevicePlacement": "placement", "infer_device_map": "placement", "TensorParallel": "tensor",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
