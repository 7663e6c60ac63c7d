"""Changing the runtime options (models/options.py) of a built model: one walk over its modules."""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from .layers import Checkpointable
from .neuron import LIF, check_backend, default_backend
from .options import RuntimeOptions, check


def apply(model, options: RuntimeOptions | None = None, **changes):
    """Set options on a built model in one walk: all of ``options`` (if given), then ``changes``
    (e.g. ``apply(model, backend="torch")``). Returns the model."""
    values = dataclasses.asdict(options) if options is not None else {}
    values.update(changes)
    for name, value in values.items():
        check(name, value)
    if "backend" in values:
        values["backend"] = check_backend(values["backend"] or default_backend())

    def walk(module: nn.Module, outermost_checkpoint: bool) -> None:
        if isinstance(module, LIF) and "backend" in values:
            module.requested_backend = values["backend"]
        for name in ("attention_order", "activation_memory", "fix_tb_merge"):
            if name in values and hasattr(module, name):
                setattr(module, name, values[name])
        if isinstance(module, Checkpointable) and outermost_checkpoint and "grad_checkpointing" in values:
            module.grad_checkpointing = values["grad_checkpointing"]   # the outermost checkpointable parts only
            outermost_checkpoint = False
        for child in module.children():
            walk(child, outermost_checkpoint)
    walk(model, True)
    return model


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Every LIF's backend (None: $SNN_LIF_BACKEND, else auto)."""
    return apply(model, backend=backend)


def set_attention_order(model: nn.Module, attention_order: str) -> nn.Module:
    """Every spiking attention's product order, ``"original"`` or ``"fast"`` (parameters unchanged)."""
    return apply(model, attention_order=attention_order)


def set_activation_memory(model: nn.Module, mode: str) -> nn.Module:
    """``"compact"`` or ``"standard"`` activation memory for every model inside `model`."""
    return apply(model, activation_memory=mode)
