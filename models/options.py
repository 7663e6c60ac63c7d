"""How a model runs, as opposed to what it is: the runtime options, defined once.

None of them changes a parameter, so a checkpoint fits a model whatever its options; each changes
speed, memory, or (``fix_tb_merge``) a documented upstream quirk. The model families take them
as one :class:`RuntimeOptions` (or as keyword arguments of the same names), the config keys of the
same names are made from :data:`OPTIONS`, and :func:`models.runtime.apply` changes them on a built
model in one walk over its modules.

This file imports nothing heavy: the command line reads names, choices and help texts here
before torch is imported.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKENDS = ("auto", "torch", "fused", "cupy", "triton")
ATTENTION_ORDERS = ("original", "fast")
ACTIVATION_MEMORY = ("compact", "standard")


@dataclass(frozen=True)
class Option:
    default: Any
    choices: tuple
    help: str


OPTIONS: dict[str, Option] = {
    "backend": Option(None, BACKENDS, "LIF neuron backend: auto (cupy or Triton on CUDA, fused on the CPU), "
                      "torch (spikingjelly's loop), fused, cupy, triton; None: $SNN_LIF_BACKEND, else auto"),
    "attention_order": Option("original", ATTENTION_ORDERS, "attention products in the original files' order "
                              "(gradients bit-identical to the originals) or the cheaper order (fast: same "
                              "outputs, gradients within rounding)"),
    "activation_memory": Option("compact", ACTIVATION_MEMORY, "compact: spikes saved for backward as bits, "
                                "batch-norm/neuron steps recomputed in backward (bit-identical, less memory); "
                                "standard: autograd's usual storage"),
    "grad_checkpointing": Option(False, (False, True), "recompute blocks in backward: less memory, same "
                                 "gradients"),
    "fix_tb_merge": Option(False, (False, True), "fix the upstream LIF that sees time steps and batch merged "
                           "(QKFormer issue #14; docs/faithfulness.md)"),
}


@dataclass(frozen=True)
class RuntimeOptions:
    """The runtime options of one model (help texts: :data:`OPTIONS`)."""
    backend: str | None = None
    attention_order: str = "original"
    activation_memory: str = "compact"
    grad_checkpointing: bool = False
    fix_tb_merge: bool = False

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            check(name, value)


def check(name: str, value: Any) -> Any:
    """``value`` if it is one of the option's choices (None for ``backend``), else a one-line error."""
    option = OPTIONS[name]
    if value is None and option.default is None:
        return value
    if value not in option.choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, option.choices))}, not {value!r}")
    return value


def split(kwargs: dict) -> tuple[RuntimeOptions, dict]:
    """(the options among ``kwargs``, including an ``options`` object they override, the rest)."""
    rest = dict(kwargs)
    base = rest.pop("options", None) or RuntimeOptions()
    changes = {name: rest.pop(name) for name in OPTIONS if name in rest}
    return dataclasses.replace(base, **changes), rest
