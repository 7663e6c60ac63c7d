"""Batch norm -> LIF as one autograd node: compact activation memory on the Triton path without a replay.

Compact memory (models/memory.py) keeps only a convolution's output ``y`` and runs the batch
norm -> LIF tail again in backward; that replay is one batch-norm launch per tail. Here, for a
Triton neuron, the tail is one autograd node instead:

* forward: batch norm exactly as ``nn.BatchNorm`` runs it in training (``_batch_norm_impl_index``,
  which is what ``F.batch_norm`` calls: native or cuDNN kernels, running statistics updated), then
  the Triton LIF forward. Saved: ``y`` (which batch norm's own backward needs anyway) and the batch
  statistics; neither the normalised input nor ``h_seq``.
* backward: one Triton launch normalises ``y`` again with the saved statistics, runs the neuron's
  forward recurrence and its backward (models/lif_triton.py, ``NORM``), then batch norm's own
  backward kernel (``_batch_norm_impl_index_backward``, the one autograd would call).

So the step makes as many launches as with autograd's usual storage, and the same bits, provided
the kernel normalises exactly as the device's batch norm did. That is checked, not assumed: the
first time a tail of a given shape, dtype and batch-norm kernel runs, the kernel's normalisation is
compared with batch norm's output for each known formula (the CPU kernel's, and the two CUDA kernels'
of ATen); the first one equal in every element is used from then on. If none is (e.g. a cuDNN
version that computes differently), that tail saves batch norm's output as well and stays exact.
The check is one host sync per shape, in the first training step only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import memory

# ATen's batch-norm output formulas: 0 CPU: fma(x, a, fma(-mean, a, b)) with a = invstd * w;
# 1 CUDA (contiguous kernel): fma(w * (x - mean), invstd, b); 2 CUDA (TensorIterator): fma((x - mean) * invstd, w, b)
FORMULAS = {0: "cpu", 1: "cuda contiguous", 2: "cuda elementwise"}
_verified: dict = {}     # (device, dtype, shape, kernel) -> formula index or None


def applies(x: torch.Tensor, norm: nn.Module, neuron: nn.Module) -> bool:
    """Whether the tail ``norm -> neuron`` on the convolution output `x` runs as one node here:
    a compact training forward that would recompute it, a Triton neuron, a standard batch norm."""
    if not (memory.packing() and not memory._flag("no_recompute") and torch.is_grad_enabled() and x.requires_grad):
        return False
    # (a LIF of models/neuron.py, which imports this module: recognised by its method, not its class)
    if not hasattr(neuron, "backend_for") or torch.compiler.is_compiling():
        return False
    if not (isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and norm.affine
            and norm.track_running_stats and norm.momentum is not None):
        return False
    if norm.weight.dtype != torch.float32 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    if not x.is_contiguous() or x.dim() < 3:
        return False
    try:
        return neuron.backend_for(x.device) == "triton"
    except RuntimeError:
        return False


def _formula(y: torch.Tensor, out: torch.Tensor, stats: list, kernel: int) -> int | None:
    key = (y.device, y.dtype, tuple(y.shape), kernel)
    if key not in _verified:
        flat = y.reshape(1, -1)
        candidates = (0,) if y.device.type == "cpu" else (1, 2, 0)
        _verified[key] = None
        expected = out.reshape(1, -1).float()
        for formula in candidates:
            from . import lif_triton     # imported on first use: Triton is slow to import
            z = lif_triton.backward(flat, None, 2.0, 1.0, 4.0, y.dtype, x_seq=flat, norm=stats, channels=y.shape[1],
                                    inner=y[0, 0].numel(), formula=formula, only_norm=True)
            if torch.equal(z, expected):
                _verified[key] = formula
                break
    return _verified[key]


class BatchNormLIF(torch.autograd.Function):
    """``spikes, v_last, bits = BatchNormLIF.apply(y, weight, bias, norm, neuron, lif_shape, v0, pack)``."""

    @staticmethod
    def forward(ctx, y, weight, bias, norm, neuron, lif_shape, v0, pack):
        # nn.BatchNorm's forward in training mode, with the statistics it keeps to itself
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
        out, mean, invstd, reserve, kernel = torch._batch_norm_impl_index(
            y, weight, bias, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps,
            torch.backends.cudnn.enabled)
        tau, v_th, alpha = float(neuron.tau), float(neuron.v_threshold), float(neuron.surrogate_function.alpha)
        spikes, v_last, _, bits = torch.ops.spiking_transformers.lif_triton_forward(
            out.reshape(lif_shape), v0, tau, v_th, alpha, pack, False)
        stats = [mean, invstd, weight.detach(), bias.detach()]
        formula = _formula(y, out, stats, kernel)
        ctx.lif = (tau, v_th, alpha, tuple(spikes.shape))
        ctx.bn = (kernel, norm.eps, formula, y.shape[1], y[0, 0].numel())
        ctx.has_v0 = v0 is not None
        extra = (out,) if formula is None else ()     # no exact formula: keep batch norm's output too
        ctx.save_for_backward(y, weight, bias, norm.running_mean, norm.running_var, mean, invstd, reserve,
                              *((v0,) if v0 is not None else ()), *extra)
        ctx.mark_non_differentiable(v_last, bits)
        ctx.set_materialize_grads(False)
        return spikes, v_last, bits

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last, grad_bits):
        if grad_spikes is None:
            return (None,) * 8
        y, weight, bias, running_mean, running_var, mean, invstd, reserve, *rest = ctx.saved_tensors
        v0 = rest.pop(0) if ctx.has_v0 else None
        tau, v_th, alpha, lif_shape = ctx.lif
        kernel, eps, formula, channels, inner = ctx.bn
        backward = torch.ops.spiking_transformers.lif_triton_backward
        if formula is not None:
            grad_out = backward(grad_spikes, None, tau, v_th, alpha, y.dtype, y.reshape(lif_shape), v0,
                                [mean, invstd, weight, bias], channels, inner, formula)
        else:
            grad_out = backward(grad_spikes, None, tau, v_th, alpha, y.dtype, rest[0].reshape(lif_shape), v0)
        grad_y, grad_w, grad_b = torch.ops.aten._batch_norm_impl_index_backward(
            kernel, y, grad_out.reshape(y.shape), weight, running_mean, running_var, mean, invstd, True, eps,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]], reserve)
        return grad_y, grad_w, grad_b, None, None, None, None, None
