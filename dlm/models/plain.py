"""Whether calling a module's parts directly skips nothing its call would run: no hooks on it or on every
module, no ``compile()``, no ``forward`` of the instance's own. Used where a forward bypasses a module's call:
the layers' halves (:func:`dlm.models.transformer.plain_layers`) and the few-rows products
(:mod:`dlm.models.skinny`). Both run at eager forwards, hence no generators."""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as nn_module


def global_hooks() -> bool:
    """Hooks registered for every module (a device map's moving hooks, for one)."""
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


def plain_module(m: nn.Module) -> bool:
    """No hooks of ``m``'s own, no ``compile()`` and no instance ``forward`` (global hooks: :func:`global_hooks`)."""
    own = m.__dict__  # (not through nn.Module's __getattr__)
    return not (own.get("_forward_hooks") or own.get("_forward_pre_hooks") or own.get("_backward_hooks")
                or own.get("_backward_pre_hooks") or own.get("_compiled_call_impl") is not None or "forward" in own)
