"""Spike tensors to bits and back, one Triton launch each (compact activation memory on a GPU).

:func:`models.memory.pack_bits` with torch operators costs four launches (a cast, a multiply, a
shift, a cast) and its inverse two; on a launch-bound GPU step that adds up over dozens of saved
spike tensors. These kernels do each direction in one launch with the same layout: byte ``k``
holds values ``8k .. 8k+7``, least significant bit first. The Triton LIF forward kernel writes
the same bytes next to its spikes (models/lif_triton.py), so a neuron's output costs no packing
launch at all. Used for CUDA tensors, and under Triton's CPU interpreter (``TRITON_INTERPRET=1``)
for the tests; elsewhere memory.py keeps its torch operators.
"""
from __future__ import annotations

import functools

import torch

from . import lif_triton

triton, tl = lif_triton.triton, lif_triton.tl

BYTES_PER_PROGRAM = 1024


def _pack_kernel(values_ptr, packed_ptr, N, NBYTES, BLOCK: tl.constexpr):
    # Eight strided loads rather than a reduction: Triton's reductions are jitted helpers, made for
    # one mode (GPU or interpreter) only (see models/lif_triton.py).
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    word = tl.full([BLOCK], 0, dtype=tl.int32)
    for j in tl.static_range(8):
        idx = byte * 8 + j
        v = tl.load(values_ptr + idx, mask=idx < N, other=0)
        word = word | ((v != 0).to(tl.int32) << j)
    tl.store(packed_ptr + byte, word.to(tl.uint8), mask=byte < NBYTES)


def _unpack_kernel(packed_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    word = tl.load(packed_ptr + offs // 8, mask=mask, other=0).to(tl.int32)
    value = (word >> (offs % 8).to(tl.int32)) & 1
    tl.store(out_ptr + offs, value.to(tl.float32).to(out_ptr.dtype.element_ty), mask=mask)


def _add_encode_kernel(a_ptr, b_ptr, out_ptr, codes_ptr, N, BLOCK: tl.constexpr):
    # a + b in the tensors' dtype (one IEEE rounding, as torch's add), and the sum as uint8
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    total = tl.load(a_ptr + offs, mask=mask, other=0.0) + tl.load(b_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total, mask=mask)
    tl.store(codes_ptr + offs, total.to(tl.float32).to(tl.uint8), mask=mask)


@functools.cache
def _kernels(interpret: bool):
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:
        from triton.runtime.jit import JITFunction as wrap
    return wrap(_pack_kernel), wrap(_unpack_kernel), wrap(_add_encode_kernel)


def usable(device: torch.device) -> bool:
    """Whether these kernels run for tensors on `device`."""
    if lif_triton.import_error():
        return False
    return device.type == "cuda" or (device.type == "cpu" and lif_triton.interpreting())


def _pack(values: torch.Tensor) -> torch.Tensor:
    flat = values.contiguous().view(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    n = flat.numel()
    packed = torch.empty((n + 7) // 8, dtype=torch.uint8, device=flat.device)
    if n:
        pack = _kernels(lif_triton.interpreting())[0]
        pack[(triton.cdiv(packed.numel(), BYTES_PER_PROGRAM),)](flat, packed, n, packed.numel(),
                                                                 BLOCK=BYTES_PER_PROGRAM)
    return packed


def _unpack(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.uint8 if dtype == torch.bool else dtype, device=packed.device)
    if numel:
        unpack = _kernels(lif_triton.interpreting())[1]
        block = 8 * BYTES_PER_PROGRAM
        unpack[(triton.cdiv(numel, block),)](packed, out, numel, BLOCK=block)
    return out.view(torch.bool) if dtype == torch.bool else out


def can_add_encode(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`add_encode` computes exactly torch's ``a + b`` for these tensors."""
    # the interpreter rounds to bfloat16 by truncation, not to nearest: float32/float16 only there
    dtypes = (torch.float32, torch.float16) if a.device.type == "cpu" else (torch.float32, torch.float16, torch.bfloat16)
    return (a.dtype == b.dtype and a.dtype in dtypes and a.shape == b.shape and a.is_contiguous()
            and b.is_contiguous() and usable(a.device) and not torch.compiler.is_compiling())


def _add_encode(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    out = torch.empty_like(a)
    codes = torch.empty(a.shape, dtype=torch.uint8, device=a.device)
    if a.numel():
        kernel = _kernels(lif_triton.interpreting())[2]
        kernel[(triton.cdiv(a.numel(), 8 * BYTES_PER_PROGRAM),)](a, b, out, codes, a.numel(),
                                                                   BLOCK=8 * BYTES_PER_PROGRAM)
    return [out, codes.view(-1)]


torch.library.custom_op("spiking_transformers::add_encode", _add_encode, mutates_args=(),
                        schema="(Tensor a, Tensor b) -> Tensor[]")


@torch.library.register_fake("spiking_transformers::add_encode")
def _add_encode_fake(a, b):
    return [torch.empty_like(a), a.new_empty(a.numel(), dtype=torch.uint8)]


class _AddEncode(torch.autograd.Function):
    """``a + b`` (gradient: the same to both) with the sum's uint8 codes as a second output."""

    @staticmethod
    def forward(ctx, a, b):
        out, codes = torch.ops.spiking_transformers.add_encode(a, b)
        ctx.mark_non_differentiable(codes)
        ctx.set_materialize_grads(False)
        return out, codes

    @staticmethod
    def backward(ctx, grad, grad_codes):
        return grad, grad


def add_encode(a: torch.Tensor, b: torch.Tensor):
    return _AddEncode.apply(a, b)


torch.library.custom_op("spiking_transformers::pack_bits", _pack, mutates_args=(),
                        schema="(Tensor values) -> Tensor")
torch.library.custom_op("spiking_transformers::unpack_bits", _unpack, mutates_args=(),
                        schema="(Tensor packed, SymInt numel, ScalarType dtype) -> Tensor")


@torch.library.register_fake("spiking_transformers::pack_bits")
def _pack_fake(values):
    return values.new_empty((values.numel() + 7) // 8, dtype=torch.uint8)


@torch.library.register_fake("spiking_transformers::unpack_bits")
def _unpack_fake(packed, numel, dtype):
    return packed.new_empty(numel, dtype=dtype)


def pack(values: torch.Tensor) -> torch.Tensor:
    return torch.ops.spiking_transformers.pack_bits(values)


def unpack(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.ops.spiking_transformers.unpack_bits(packed, numel, dtype)
