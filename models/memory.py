"""Compact activation memory: spikes saved for backward as bits, cheap steps recomputed.

Training an SNN transformer keeps, for every layer and all T time steps, the tensors autograd
needs for the backward pass; most of them are spike tensors stored as 32-bit floats although
every element is 0 or 1 (or, in the residual streams of QKFormer and SGLFormer, a small
integer count). With ``activation_memory="compact"`` (the default of every model here) two
things change during a training forward, and neither changes a single bit of the outputs,
gradients or batch-norm statistics:

1. :class:`SpikePacker` (a ``saved_tensors_hooks`` context) stores each tensor autograd saves
   in the smallest exact form: neuron outputs (announced by the neurons with
   :func:`note_spikes`) and ``bool`` masks as 1 bit per element; spike counts (announced with
   their integer bound where they are made: residual sums, spike products) as uint8/int16.
   Values are never inspected, so packing costs no host synchronisation on a GPU; whatever is
   not announced is kept as it is. Backward gets back a tensor of the same dtype, shape,
   strides and values.
2. :func:`recompute` runs the batch-norm -> [max-pool] -> LIF tail that follows each
   convolution under non-reentrant checkpointing: only the convolution's output is kept, and
   the tail runs again in backward with the same operations in the same order (batch norm
   with the same batch statistics, running statistics not updated twice; the neuron from the
   same starting potential), so the values are the same bits. The replay costs no bookkeeping
   launches: no statistics are copied or restored. The neuron that ends a tail saves its input
   and, where its backward can recompute its state from it (Triton), is not run in the replay
   (:func:`tail`). A batch norm -> Triton LIF tail is not replayed at all: it is one autograd
   node whose backward normalises again inside the LIF kernel (models/bn_lif.py).

``activation_memory="standard"`` turns both off (autograd's usual storage). Evaluation,
``torch.no_grad`` and ``torch.compile`` never pack or recompute. Block-level gradient checkpointing
(``set_grad_checkpointing``) composes: inside a checkpointed block nothing is recomputed twice.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .options import ACTIVATION_MEMORY as MODES

MIN_NUMEL = 4096          # smaller tensors are kept as they are: packing them saves nothing

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
#
# What a compact forward may store in fewer bits is known when a tensor is made, not found by
# looking at its values (that would stall the host on a GPU): neurons announce their spikes
# (bound 1); the places that add, multiply or matmul spike tensors announce the integer bound of
# the result (see :func:`add`, :func:`mul`, :func:`matmul`, :func:`reshape`). Announcements
# are keyed by storage, so views of an announced tensor are announced too; one is forgotten when
# its tensor dies or is changed in place. Nothing else is ever packed. They are recorded inside a
# compact forward (for packing) and inside :class:`Announcements` (the energy meter reads from
# them how each layer's input was made).

def note_counts(t: torch.Tensor, bound: int | None, bits: torch.Tensor | None = None) -> torch.Tensor:
    """Declare that every element of `t` (and of each view of its storage) is an integer in
    ``[0, bound]`` (``bound=None``: a non-negative integer of unknown size, e.g. event counts;
    never packed). `bits`: `t` already in its compact form, written by the kernel that made it
    (:func:`pack_bits`'s bits for bound 1, as the Triton neuron writes them; else the uint8 codes
    of :func:`add`), used when exactly `t` is saved.

    Only recorded inside a compact forward or :class:`Announcements`.
    """
    packer, listener = getattr(_state, "packer", None), getattr(_state, "announcements", None)
    if (packer is None and listener is None) or t.layout != torch.strided:
        return t
    key = t.untyped_storage().data_ptr()
    if bound is not None and math.isinf(bound):
        bound = None
    if packer is not None and bound is not None:
        packer.announced[key] = (weakref.ref(t), t._version, int(bound), bits)
    if listener is not None:
        listener.announced[key] = (weakref.ref(t), t._version, math.inf if bound is None else int(bound), None)
    return t


def note_spikes(t: torch.Tensor, bits: torch.Tensor | None = None) -> torch.Tensor:
    """Declare that every element of `t` is 0 or 1 (:func:`note_counts` with bound 1)."""
    return note_counts(t, 1, bits)


def _store():
    """Where announcements are kept now: the compact forward's packer, else an :class:`Announcements`."""
    return getattr(_state, "packer", None) or getattr(_state, "announcements", None)


def bound_of(t: torch.Tensor) -> int | float | None:
    """The announced integer bound of `t` (``math.inf``: unknown size), or None (not announced, or
    neither in a compact forward nor inside :class:`Announcements`)."""
    store = _store()
    return None if store is None else store.bound(t)


def _both(a, b):
    store = _store()
    if store is None or not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return None
    ba, bb = store.bound(a), store.bound(b)
    return None if ba is None or bb is None else (ba, bb)


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``; a sum of announced counts is announced with the sum of their bounds (the
    residual streams of QKFormer and SGLFormer add spikes to spike counts). On the Triton path one
    launch writes the sum and its uint8 codes, so saving it later costs no packing launch."""
    bounds = _both(a, b)
    if bounds is None:
        return a + b
    bound = bounds[0] + bounds[1]
    kernels = _kernels(a.device) if packing() and integer_code(bound, a.dtype) == torch.uint8 else None
    if kernels is not None and kernels.can_add_encode(a, b):
        out, codes = kernels.add_encode(a, b)
        return note_counts(out, bound, codes)
    return note_counts(a + b, bound)


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b``; announced with the product of the bounds (a spike gate times spikes is spikes)."""
    out = a * b
    bounds = _both(a, b)
    return out if bounds is None else note_counts(out, bounds[0] * bounds[1])


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; announced with ``bound(a) * bound(b) * inner size`` (spike attention products)."""
    out = a @ b
    bounds = _both(a, b)
    return out if bounds is None else note_counts(out, bounds[0] * bounds[1] * a.shape[-1])


def reshape(t: torch.Tensor, *shape) -> torch.Tensor:
    """``t.reshape(*shape)``; a copy of an announced tensor is announced with the same bound."""
    out = t.reshape(*shape)
    bound = bound_of(t)
    if bound is not None and out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
        note_counts(out, bound)
    return out


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


def _kernels(device: torch.device):
    """models/bits_triton.py where its one-launch kernels run (CUDA, or Triton's interpreter), else None."""
    if device.type != "cuda" and "TRITON_INTERPRET" not in os.environ:
        return None                       # CPU run: no need to import Triton
    from . import bits_triton
    return bits_triton if bits_triton.usable(device) else None


def pack_bits(values: torch.Tensor) -> torch.Tensor:
    """Contiguous 0/1 values (any dtype) -> uint8, 8 per byte (least significant bit first).

    One Triton launch on a GPU. With torch operators: eight 0/1 bytes read as one int64 word
    are multiplied by ``_GATHER``; every partial product lands on its own bit (no carries), and
    bits 56..63 of the product are the eight values.
    """
    kernels = _kernels(values.device)
    if kernels is not None:
        return kernels.pack(values)
    flat = values.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return ((flat.view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat tensor of `numel` 0/1 values of `dtype`."""
    kernels = _kernels(packed.device)
    if kernels is not None:
        return kernels.unpack(packed, numel, dtype)
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
    """A saved tensor in compact form; ``unpack()`` rebuilds dtype, shape, strides and values.

    One tensor saved by several operations (a block's input, read by the Q, K and V convolutions)
    is packed once; the first of its ``users`` to unpack it in backward keeps the result for the
    others, so it is also unpacked once (and held no longer than the last of them needs it)."""

    __slots__ = ("kind", "data", "dtype", "order", "shape", "numel", "users", "unpacked")

    def __init__(self, kind, data, dtype, order, shape, numel):
        self.kind, self.data, self.dtype, self.order, self.shape, self.numel = kind, data, dtype, order, shape, numel
        self.users, self.unpacked = 1, None

    def unpack(self) -> torch.Tensor:
        result = self.unpacked if self.unpacked is not None else self._rebuild()
        self.users = max(self.users - 1, 0)
        self.unpacked = result if self.users else None
        return result

    def _rebuild(self) -> torch.Tensor:
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


def integer_code(bound: int, dtype: torch.dtype) -> torch.dtype | None:
    """The integer dtype that holds every value of a `dtype` tensor of integers in ``[0, bound]``
    exactly, or None. In float16/bfloat16 an integer above 2048/256 may round up to the next
    representable one, hence the margin."""
    top = bound if bound <= 256 else bound * 1.01 + 2
    if top <= 255:
        return torch.uint8
    if top <= 32767:
        return torch.int16
    return None


class _Store:
    """Announcements by storage: ``{data_ptr: (weakref, version, bound, bits)}``."""

    announced: dict

    def _entry(self, t: torch.Tensor):
        entry = self.announced.get(t.untyped_storage().data_ptr())
        if entry is None:
            return None
        ref, version, bound, bits = entry
        if ref() is None or t._version != version:
            return None
        return entry

    def bound(self, t: torch.Tensor) -> int | float | None:
        if t.dtype == torch.bool:
            return 1
        entry = self._entry(t) if t.layout == torch.strided else None
        return None if entry is None else entry[2]


class Announcements(_Store):
    """Context manager: records the announcements of everything computed inside it, outside a
    compact forward too (evaluation, ``torch.no_grad``), so that :func:`bound_of` tells how a
    tensor was made: spikes (1), spike counts (their bound; ``math.inf`` for data such as event
    counts) or None (real-valued). The energy meter classifies layer inputs with it."""

    def __init__(self):
        self.announced: dict[int, tuple] = {}

    def __enter__(self) -> "Announcements":
        self.outer = getattr(_state, "announcements", None)
        _state.announcements = self
        return self

    def __exit__(self, *exc) -> None:
        _state.announcements = self.outer
        self.announced = {}


class SpikePacker(_Store, torch.autograd.graph.saved_tensors_hooks):
    """Stores what autograd saves in the smallest exact form (see the module docstring).

    ``stats`` counts, per form, the tensors and bytes before and after packing (for tests and
    the benchmark). Packing never looks at values: only announced tensors and bool masks are
    packed, everything else is kept as it is.
    """

    def __init__(self):
        self.announced: dict[int, tuple] = {}
        self.packed: dict[tuple, tuple] = {}     # the same tensor saved again: the same _Packed
        self.stats = {"bits": [0, 0, 0], "int": [0, 0, 0], "kept": [0, 0, 0]}  # count, bytes in, bytes out
        super().__init__(self.pack, self.unpack)

    def __enter__(self):
        self.outer = getattr(_state, "packer", None)
        _state.packer = self
        super().__enter__()
        return self

    def __exit__(self, *exc):
        _state.packer = self.outer
        self.announced, self.packed = {}, {}
        return super().__exit__(*exc)

    def _count(self, kind: str, t: torch.Tensor, out_bytes: int) -> None:
        s = self.stats[kind]
        s[0] += 1
        s[1] += t.numel() * t.element_size()
        s[2] += out_bytes

    def _form(self, t: torch.Tensor, dense: torch.Tensor):
        if t.dtype == torch.bool:
            return "bits", pack_bits(dense)
        entry = self._entry(t)
        if entry is None:
            return None
        ref, _, bound, made = entry
        owner = ref()
        # the compact form written by the kernel that made `t` (the neuron's bits, add's codes), if
        # `t` is a contiguous view of all of it
        whole = made is not None and owner is not None and t.is_contiguous() and t.numel() == owner.numel() \
            and t.data_ptr() == owner.data_ptr()
        if bound <= 1:
            return "bits", made if whole else pack_bits(dense)
        code = integer_code(bound, t.dtype)
        if code is None:
            return None
        return "int", made if whole else dense.reshape(-1).to(code)

    def pack(self, t: torch.Tensor):
        if (t.numel() < MIN_NUMEL or isinstance(t, nn.Parameter) or t.layout != torch.strided
                or not (t.dtype == torch.bool or t.is_floating_point())):
            return t
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        again = self.packed.get(key)
        # the same memory and layout under the same announcement (its owner, and so that memory, alive:
        # not a new tensor that happens to reuse the address), unchanged since
        if again is not None and again[1] == t._version and self._entry(t) is again[2]:
            again[0].users += 1
            return again[0]
        dense, order = _in_memory_order(t)
        form = None if dense is None else self._form(t, dense)
        if form is None:
            self._count("kept", t, t.numel() * t.element_size())
            return t
        packed = _Packed(form[0], form[1], t.dtype, order, tuple(t.shape), t.numel())
        self._count(form[0], t, packed.nbytes())
        entry = self._entry(t) if t.dtype != torch.bool else None
        if entry is not None:
            self.packed[key] = (packed, t._version, entry)
        return packed

    @staticmethod
    def unpack(obj):
        return obj.unpack() if isinstance(obj, _Packed) else obj


# --- recomputation -------------------------------------------------------------------------

class FrozenBatchNormStats:
    """Context: the batch norms in `modules` normalise with batch statistics but leave their
    running statistics and ``num_batches_tracked`` as they are.

    Momentum 0 (the running statistics are passed, so that the replay saves the same tensors
    for backward, but keep their values) and no ``num_batches_tracked`` buffer while inside, so
    the counter is not incremented: Python attributes only, no kernel launch and no copy of
    the statistics to restore afterwards.
    """

    def __init__(self, modules):
        self.norms = [m for mod in modules for m in mod.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m._buffers.get("num_batches_tracked")) for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0
            if "num_batches_tracked" in m._buffers:
                m._buffers["num_batches_tracked"] = None
        _state.replay = True

    def __exit__(self, *exc):
        _state.replay = False
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m._buffers["num_batches_tracked"] = tracked


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
    # (the LIFs of models/neuron.py, which imports this module: recognised by their marker)
    return [m for mod in modules for m in mod.modules() if getattr(m, "is_lif", False)]


@contextlib.contextmanager
def tail():
    """Around the neuron that ends a :func:`recompute` segment (its spikes leave the segment and
    nothing inside it reads them): :func:`tail_mode` tells that neuron which run this is."""
    _state.tail = getattr(_state, "segment", None)
    try:
        yield
    finally:
        _state.tail = None


def tail_mode() -> str | None:
    """For a neuron inside :func:`tail`: "first" (the segment's first run, in the forward pass) or
    "replay" (its run again in backward), else None. A neuron with a backward kernel that can
    recompute its state from its input (the Triton backend) saves that input and, in the replay,
    need not run at all."""
    return getattr(_state, "tail", None)


def recompute(fn, x: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
    """``fn(x)``; inside a compact training forward, keep only `x` and run `fn` again in backward.

    `modules` are those `fn` uses: their neurons restart from the potential they had before the
    first run, their batch norms do not count the second run.
    """
    if not packing() or _flag("no_recompute") or not torch.is_grad_enabled() or not x.requires_grad:
        return fn(x)
    neurons = _neurons(modules)
    start = [n.v for n in neurons]
    runs = [0]

    def run(inp):
        for n, v in zip(neurons, start):
            n.v = v
        _state.segment = "replay" if runs[0] else "first"
        runs[0] += 1
        try:
            with no_recompute():
                return fn(inp)
        finally:
            _state.segment = None

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
