"""Compact activation memory: spikes saved for backward as bits, cheap steps recomputed.

Training an SNN transformer keeps, for every layer and all T time steps, the tensors autograd
needs for the backward pass; most of them are spike tensors stored as 32-bit floats although
every element is 0 or 1 (or, in the residual streams of QKFormer and SGLFormer, a small
integer count). With ``activation_memory="compact"`` (the default of every model here) two
things change during a training forward, and neither changes a single bit of the outputs,
gradients or batch-norm statistics:

1. :class:`SpikePacker` (a ``saved_tensors_hooks`` context) stores each tensor autograd saves
   in the smallest exact form: neuron outputs (announced by the neurons with
   :func:`note_spikes`) and ``bool`` masks as 1 bit per element; other tensors whose values
   turn out to be integers as uint8/int16, after a sampled pre-check and a full exact check
   (so a non-binary tensor never gets the 1-bit form). Backward gets back a tensor of the same
   dtype, shape, strides and values.
2. :func:`recompute` runs the batch-norm -> [max-pool] -> LIF tail that follows each
   convolution under non-reentrant checkpointing: only the convolution's output is kept, and
   the tail runs again in backward with the same operations in the same order (batch norm
   with the same batch statistics, running statistics not updated twice; the neuron from the
   same starting potential), so the values are the same bits.

``activation_memory="standard"`` turns both off (autograd's usual storage). Evaluation,
``torch.no_grad`` and ``torch.compile`` never pack or recompute. Block-level gradient checkpointing
(``set_grad_checkpointing``) composes: inside a checkpointed block nothing is recomputed twice.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

MODES = ("compact", "standard")
MIN_NUMEL = 4096          # smaller tensors are kept as they are: packing them saves nothing
SAMPLE = 1024             # elements looked at before a full check of an unannounced tensor

_state = threading.local()


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"activation_memory must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def _flag(name: str) -> bool:
    return getattr(_state, name, False)


def packing() -> bool:
    """True inside a compact training forward (a :class:`SpikePacker` is active)."""
    return getattr(_state, "packer", None) is not None


def recomputing() -> bool:
    """True while a :func:`recompute` segment runs again during backward (hooks that count
    spikes use this to count each forward once)."""
    return _flag("replay")


# --- announcements -------------------------------------------------------------------------

def note_spikes(t: torch.Tensor) -> torch.Tensor:
    """Declare that every element of `t` (and of each view of its storage) is 0 or 1.

    Called by the neurons on their output. Only recorded inside a compact forward; the record
    is dropped when `t` dies or is modified in place (its version changes).
    """
    packer = getattr(_state, "packer", None)
    if packer is not None and t.layout == torch.strided:
        packer.binary[t.untyped_storage().data_ptr()] = (weakref.ref(t), t._version)
    return t


# --- packing -------------------------------------------------------------------------------

_LUTS: dict = {}


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 8] table: row b holds the 8 bits of b (least significant first) as `dtype`."""
    key = (device, dtype)
    if key not in _LUTS:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _LUTS[key] = bits.to(device=device, dtype=dtype)
    return _LUTS[key]


_GATHER = 0x0102040810204080   # sum of 2**(56 - 7 i): moves byte i's low bit to bit 56 + i


def pack_bits(values: torch.Tensor) -> torch.Tensor:
    """Contiguous 0/1 values (any dtype) -> uint8, 8 per byte (least significant bit first).

    Eight 0/1 bytes read as one int64 word are multiplied by ``_GATHER``: every partial product
    lands on its own bit (no carries), and bits 56..63 of the product are the eight values.
    """
    flat = values.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return ((flat.view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat tensor of `numel` 0/1 values of `dtype`."""
    return _bit_table(packed.device, dtype).index_select(0, packed.int()).view(-1)[:numel]


def _dense_order(t: torch.Tensor) -> list[int] | None:
    """Dims of `t` from outermost to innermost in memory if `t` covers its memory densely
    without overlap (contiguous, channels_last, permuted...), else None (e.g. expanded)."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    expected = 1
    for d in reversed(order):
        if t.size(d) != 1 and t.stride(d) != expected:
            return None
        expected *= t.size(d)
    return order


class _Packed:
    """A saved tensor in compact form; ``unpack()`` rebuilds dtype, shape, strides and values."""

    __slots__ = ("kind", "data", "dtype", "order", "shape", "numel")

    def __init__(self, kind, data, dtype, order, shape, numel):
        self.kind, self.data, self.dtype, self.order, self.shape, self.numel = kind, data, dtype, order, shape, numel

    def unpack(self) -> torch.Tensor:
        if self.kind == "bits":
            flat = unpack_bits(self.data, self.numel, self.dtype)
        else:
            flat = self.data.to(self.dtype)
        memory_order = flat.view([self.shape[d] for d in self.order])
        return memory_order.permute([self.order.index(d) for d in range(len(self.shape))])

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def _in_memory_order(t: torch.Tensor):
    order = _dense_order(t)
    if order is None:
        return None, None
    return t.permute(order), order   # contiguous: a view of the same memory


def _as_integers(t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """('bits', packed) or ('int', uint8/int16 copy) if every element of the contiguous float
    tensor `t` is an integer that the form holds exactly, else None. A spread sample is looked at
    first, so most non-integer tensors cost almost nothing; the rest is checked element by element."""
    flat = t.view(-1)
    sample = flat[::max(flat.numel() // SAMPLE, 1)]
    if not torch.equal(sample, sample.round()):
        return None
    lo, hi = (v.item() for v in torch.aminmax(flat))
    if lo >= 0 and hi <= 255:
        code = torch.uint8
    elif lo >= -32768 and hi <= 32767:
        code = torch.int16
    else:
        return None                                   # also NaN (aminmax propagates it)
    data = flat.to(code)
    if not torch.equal(data.to(t.dtype), flat):       # a non-integer somewhere
        return None
    return ("bits", pack_bits(data)) if hi <= 1 and lo >= 0 else ("int", data)


class SpikePacker(torch.autograd.graph.saved_tensors_hooks):
    """Stores what autograd saves in the smallest exact form (see the module docstring).

    ``stats`` counts, per form, the tensors and bytes before and after packing (for tests and
    the benchmark).
    """

    def __init__(self):
        self.binary: dict[int, tuple] = {}
        self.stats = {"bits": [0, 0, 0], "int": [0, 0, 0], "kept": [0, 0, 0]}  # count, bytes in, bytes out
        super().__init__(self.pack, self.unpack)

    def __enter__(self):
        self.outer = getattr(_state, "packer", None)
        _state.packer = self
        super().__enter__()
        return self

    def __exit__(self, *exc):
        _state.packer = self.outer
        self.binary = {}
        return super().__exit__(*exc)

    def _announced(self, t: torch.Tensor) -> bool:
        entry = self.binary.get(t.untyped_storage().data_ptr())
        if entry is None:
            return False
        ref, version = entry
        return ref() is not None and t._version == version

    def _count(self, kind: str, t: torch.Tensor, out_bytes: int) -> None:
        s = self.stats[kind]
        s[0] += 1
        s[1] += t.numel() * t.element_size()
        s[2] += out_bytes

    def pack(self, t: torch.Tensor):
        if (t.numel() < MIN_NUMEL or isinstance(t, nn.Parameter) or t.layout != torch.strided
                or not (t.dtype == torch.bool or t.is_floating_point())):
            return t
        dense, order = _in_memory_order(t)
        if dense is None:
            return t
        form = ("bits", pack_bits(dense)) if t.dtype == torch.bool or self._announced(t) else _as_integers(dense)
        if form is None:
            self._count("kept", t, t.numel() * t.element_size())
            return t
        packed = _Packed(form[0], form[1], t.dtype, order, tuple(t.shape), t.numel())
        self._count(form[0], t, packed.nbytes())
        return packed

    @staticmethod
    def unpack(obj):
        return obj.unpack() if isinstance(obj, _Packed) else obj


# --- recomputation -------------------------------------------------------------------------

class FrozenBatchNormStats:
    """Context: the batch norms in `modules` normalise with batch statistics but leave their
    running statistics and ``num_batches_tracked`` untouched (momentum 0, counter restored)."""

    def __init__(self, modules):
        self.norms = [m for mod in modules for m in mod.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                      for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0
        _state.replay = True

    def __exit__(self, *exc):
        _state.replay = False
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def no_recompute():
    """Inside: :func:`recompute` runs its function plainly (e.g. within a checkpointed block,
    which recomputes everything anyway)."""
    before = _flag("no_recompute")
    _state.no_recompute = True
    try:
        yield
    finally:
        _state.no_recompute = before


def _neurons(modules):
    from .neuron import LIF
    return [m for mod in modules for m in mod.modules() if isinstance(m, LIF)]


def recompute(fn, x: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
    """``fn(x)``; inside a compact training forward, keep only `x` and run `fn` again in backward.

    `modules` are those `fn` uses: their neurons restart from the potential they had before the
    first run, their batch norms do not count the second run.
    """
    if not packing() or _flag("no_recompute") or not torch.is_grad_enabled() or not x.requires_grad:
        return fn(x)
    neurons = _neurons(modules)
    start = [n.v for n in neurons]

    def run(inp):
        for n, v in zip(neurons, start):
            n.v = v
        with no_recompute():
            return fn(inp)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=False,
                      context_fn=lambda: (contextlib.nullcontext(), FrozenBatchNormStats(modules)))


def compact_forward(mode: str, training: bool):
    """The context a model's forward runs in: a :class:`SpikePacker` for a compact training
    forward with gradients, else nothing. Under ``torch.compile`` nothing either: dynamo traces
    neither saved-tensor hooks nor checkpoints with a ``context_fn``, so a compiled model stores
    activations as ``"standard"`` does (same numerics)."""
    if mode == "compact" and training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return SpikePacker()
    return contextlib.nullcontext()


def set_activation_memory(model: nn.Module, mode: str) -> nn.Module:
    """Switch every model inside `model` to ``"compact"`` or ``"standard"`` activation memory."""
    check_mode(mode)
    for m in model.modules():
        if hasattr(m, "activation_memory"):
            m.activation_memory = mode
    return model
