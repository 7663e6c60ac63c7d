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


@functools.cache
def _kernels(interpret: bool):
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:
        from triton.runtime.jit import JITFunction as wrap
    return wrap(_pack_kernel), wrap(_unpack_kernel)


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
        pack, _ = _kernels(lif_triton.interpreting())
        pack[(triton.cdiv(packed.numel(), BYTES_PER_PROGRAM),)](flat, packed, n, packed.numel(),
                                                                 BLOCK=BYTES_PER_PROGRAM)
    return packed


def _unpack(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.uint8 if dtype == torch.bool else dtype, device=packed.device)
    if numel:
        _, unpack = _kernels(lif_triton.interpreting())
        block = 8 * BYTES_PER_PROGRAM
        unpack[(triton.cdiv(numel, block),)](packed, out, numel, BLOCK=block)
    return out.view(torch.bool) if dtype == torch.bool else out


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
