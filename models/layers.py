"""Building blocks shared by the three model families.

Tensors inside the models are ``[T, B, C, H, W]`` (or ``[T, B, C, N]`` for token sequences):
time first, as spikingjelly's multi-step neurons expect. Convolutions and batch norms see
``T`` and ``B`` merged into one batch axis, exactly as in the original code, so batch-norm
statistics are taken over time and batch together.

The original files store most convs/BNs/LIFs as flat attributes named ``<unit>_conv``,
``<unit>_bn``, ``<unit>_lif``. :class:`ConvUnits` keeps those names (they are the checkpoints'
parameter names) while the list of units itself is data, so one class serves every stem and
MLP. Modules are registered in the original order, which makes ``parameters()`` (and with it
the layout of optimizer state in checkpoints) identical to the original's.
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from torch.utils.checkpoint import checkpoint

from . import bn_lif as bn_lif_node
from . import memory
from .neuron import lif, reset_net
from .op_counts import ssa_op_counts, ssa_spike_ops
from .options import ATTENTION_ORDERS


class Unit(NamedTuple):
    """One conv unit: conv (``kernel``, ``stride``, no bias unless ``bias``) + BN + LIF.

    ``dims=1`` uses Conv1d/BatchNorm1d on token sequences. ``pool`` adds a 3x3/2 max-pool
    after the BN. ``lif=False`` leaves the neuron out (the first unit of a pre-activation stem).
    ``merged_tb`` marks a LIF that the original applied to T and B merged (see
    :func:`lif_on_merged_tb`). ``lif_pool`` puts the pool after the LIF, on spikes (Spikformer).
    The modules are ``<name>_conv<suffix>``, ``<name>_bn<suffix>``, ``<name>_lif<suffix>``
    (Spikformer's stem numbers them ``proj_conv1``, ``proj_bn1``, ...).
    """
    name: str
    cin: int
    cout: int
    pool: bool = False
    kernel: int = 3
    stride: int = 1
    bias: bool = False
    dims: int = 2
    lif: bool = True
    merged_tb: bool = False
    lif_pool: bool = False
    suffix: str = ""

    def part(self, kind: str) -> str:
        """The attribute name of this unit's ``conv``, ``bn``, ``lif`` or ``maxpool``."""
        return f"{self.name}_{kind}{self.suffix}"


class MaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` that computes on CPU in the channels_last layout and returns the usual
    NCHW tensor: torch's CPU kernel is about 2x faster there, and its values, argmax choices (ties
    included) and gradients are the same (tested). ``channels_last_cpu=False`` gives the plain
    NCHW kernel (the benchmark's reference uses it)."""

    channels_last_cpu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_cpu and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous():
            x = _ContiguousGrad.apply(x).contiguous(memory_format=torch.channels_last)
            return super().forward(x).contiguous()
        return super().forward(x)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns the gradient in the NCHW layout: the layers before the
    pool (batch norm) reduce over it, and a channels_last gradient would change their summation
    order."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def max_pool() -> nn.MaxPool2d:
    """The down-sampling pool of all three families: 3x3, stride 2, padding 1."""
    return MaxPool(kernel_size=3, stride=2, padding=1)


def check_heads(dim: int, num_heads: int) -> None:
    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")


def lif_on_merged_tb(neuron: nn.Module, x: torch.Tensor, T: int, fix: bool) -> torch.Tensor:
    """Apply `neuron` to ``x = [T*B, ...]``, reproducing or fixing an upstream bug.

    Some original layers call a multi-step LIF on a tensor whose first axis is T and B merged
    (QKFormer issue #14; also SGLFormer's ImageNet models). The neuron then treats all T*B slices
    as one sequence: membrane potential leaks from one sample into the next, and outputs depend
    on the batch size and on the order of samples in the batch. The released checkpoints were
    trained that way, so ``fix=False`` (the default everywhere) keeps it; ``fix=True`` splits T
    back out first, as the papers describe.
    """
    if not fix:
        return neuron(x)
    return neuron(x.reshape(T, -1, *x.shape[1:])).flatten(0, 1)


class Checkpointable(nn.Module):
    """A part of the trunk that gradient checkpointing can recompute as a whole (timm's
    ``set_grad_checkpointing`` marks the outermost ones: blocks, patch embeddings, stems).

    With ``grad_checkpointing`` the module keeps only its input for the backward pass and runs
    its forward (``_run``) again there. The neurons are reset before each run and the batch norms
    do not count the second run, so outputs, gradients and running statistics are identical.
    """

    grad_checkpointing = False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run_from_reset(self, x: torch.Tensor) -> torch.Tensor:
        reset_net(self)
        with memory.no_recompute():    # the whole module runs again in backward anyway
            return self._run(x)

    def _contexts(self):
        return contextlib.nullcontext(), memory.FrozenBatchNormStats([self])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile cannot trace a checkpoint with a context_fn: compiled models store all
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return checkpoint(self._run_from_reset, x, use_reentrant=False, preserve_rng_state=False,
                              context_fn=self._contexts)
        return self._run(x)


class ConvUnits(Checkpointable):
    """A chain of conv units stored under the original attribute names.

    ``order="post"`` runs conv -> BN -> [pool] -> LIF per unit (QKFormer, SGLFormer);
    ``order="pre"`` runs LIF -> [pool] -> conv -> BN (Spikingformer's spike-driven residual
    design: a block's input is real-valued and is turned into spikes first).
    """

    def __init__(self, units: Sequence[Unit], order: str = "post", tau: float = 2.0,
                 fix_tb_merge: bool = False):
        super().__init__()
        if order not in ("post", "pre"):
            raise ValueError(f"order must be 'post' or 'pre', not {order!r}")
        self.order = order
        self.units = tuple(units)
        self.fix_tb_merge = fix_tb_merge
        for u in self.units:
            if u.lif_pool and (not u.lif or order != "post"):
                raise ValueError(f"unit {u.name!r}: lif_pool (a pool on spikes) needs a post-order unit with a LIF")
            conv = nn.Conv1d if u.dims == 1 else nn.Conv2d
            norm = nn.BatchNorm1d if u.dims == 1 else nn.BatchNorm2d
            if order == "pre" and u.lif:
                setattr(self, u.part("lif"), lif(tau=tau))
            if order == "pre" and u.pool:
                setattr(self, u.part("maxpool"), max_pool())
            setattr(self, u.part("conv"), conv(u.cin, u.cout, u.kernel, u.stride, padding=u.kernel // 2,
                                               bias=u.bias))
            setattr(self, u.part("bn"), norm(u.cout))
            if order == "post" and u.pool and not u.lif_pool:
                setattr(self, u.part("maxpool"), max_pool())
            if order == "post" and u.lif:
                setattr(self, u.part("lif"), lif(tau=tau))
            if order == "post" and u.pool and u.lif_pool:
                setattr(self, u.part("maxpool"), max_pool())

    def run(self, u: Unit, x: torch.Tensor) -> torch.Tensor:
        """One post-order unit on ``[T, B, C, ...]``."""
        part = self._modules
        T = x.shape[0]
        x = part[u.part("conv")](x.flatten(0, 1))
        return bn_lif(x, T, part[u.part("bn")], part.get(u.part("lif")), part.get(u.part("maxpool")),
                      merged_tb=u.merged_tb, fix_tb_merge=self.fix_tb_merge, lif_pool=u.lif_pool)

    def _forward_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-order units: [LIF -> [pool]] -> conv -> BN each. Each BN is applied at the start
        of the next unit's segment, so that a compact forward recomputes BN -> LIF -> pool
        from the convolution's output, which the BN keeps anyway (see
        :func:`models.memory.recompute`)."""
        part = self._modules
        T = x.shape[0]
        x, norm = x.flatten(0, 1), None
        for u in self.units:
            neuron, pool = part.get(u.part("lif")), part.get(u.part("maxpool"))
            segment = functools.partial(_norm_lif_pool, T=T, norm=norm, neuron=neuron, pool=pool)
            if norm is not None and pool is None and neuron is not None and bn_lif_node.applies(x, norm, neuron):
                x = neuron(x, norm=norm, lif_shape=(T, x.shape[0] // T, *x.shape[1:])).flatten(0, 1)
            elif norm is not None:
                x = memory.recompute(segment, x, *(m for m in (norm, neuron, pool) if m is not None))
            else:   # a real-valued block input: keeping it costs what the neuron keeps, nothing to gain
                x = segment(x)
            x = part[u.part("conv")](x)
            norm = part[u.part("bn")]
        x = norm(x)
        return x.reshape(T, -1, *x.shape[1:])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "pre":
            return self._forward_pre(x)
        for u in self.units:
            x = self.run(u, x)
        return x


def _norm_lif_pool(x: torch.Tensor, T: int, norm, neuron, pool) -> torch.Tensor:
    """``[T*B, C, ...]`` -> [BN] -> [LIF over T] -> [max-pool] -> ``[T*B, C', ...]``."""
    if norm is not None:
        x = norm(x)
    if neuron is None:
        return pool(x) if pool is not None else x
    if pool is not None:
        x = neuron(x.reshape(T, -1, *x.shape[1:])).flatten(0, 1)
        return memory.note_spikes(pool(x))                            # max-pooled spikes are spikes
    with memory.tail():
        return neuron(x.reshape(T, -1, *x.shape[1:])).flatten(0, 1)


def _bn_pool_lif(x: torch.Tensor, T: int, norm, neuron, pool, merged_tb: bool, fix_tb_merge: bool) -> torch.Tensor:
    x = norm(x)
    if pool is not None:
        x = pool(x)
    if neuron is not None and merged_tb:
        with memory.tail():
            x = lif_on_merged_tb(neuron, x, T, fix_tb_merge)
        return x.reshape(T, -1, *x.shape[1:])
    x = x.reshape(T, -1, *x.shape[1:])
    if neuron is None:
        return x
    with memory.tail():
        return neuron(x)


def bn_lif(x: torch.Tensor, T: int, norm: nn.Module, neuron: nn.Module | None = None, pool: nn.Module | None = None,
           merged_tb: bool = False, fix_tb_merge: bool = False, lif_pool: bool = False) -> torch.Tensor:
    """The tail after a convolution: ``[T*B, C, ...]`` -> BN -> [max-pool] -> [LIF] -> ``[T, B, C, ...]``.

    Under compact activation memory only the convolution's output is kept for backward and
    the tail runs again there (:func:`models.memory.recompute`). ``merged_tb``: the LIF sees T
    and B merged, as in some originals (see :func:`lif_on_merged_tb`). ``lif_pool``: the pool
    comes after the LIF instead (Spikformer's stem); it keeps the spikes it reads, as bits.
    """
    if lif_pool and pool is not None and neuron is not None:
        x = pool(bn_lif(x, T, norm, neuron).flatten(0, 1))
        return memory.note_spikes(x).reshape(T, -1, *x.shape[1:])     # max-pooled spikes are spikes
    if pool is None and neuron is not None and bn_lif_node.applies(x, norm, neuron):
        # one autograd node on the Triton path: nothing to recompute (models/bn_lif.py)
        lif_shape = tuple(x.shape) if merged_tb and not fix_tb_merge else (T, x.shape[0] // T, *x.shape[1:])
        return neuron(x, norm=norm, lif_shape=lif_shape).reshape(T, -1, *x.shape[1:])
    fn = functools.partial(_bn_pool_lif, T=T, norm=norm, neuron=neuron, pool=pool, merged_tb=merged_tb,
                           fix_tb_merge=fix_tb_merge)
    return memory.recompute(fn, x, *(m for m in (norm, neuron, pool) if m is not None))


class SpikingMLP(ConvUnits):
    """Two 1x1 conv units, ``dim -> hidden -> dim`` (conv with bias, BN, LIF).

    ``names`` are the original attribute prefixes ('fc1', 'fc2' or 'mlp1', 'mlp2'); ``dims=1``
    for token sequences ``[T, B, C, N]`` (SGLFormer ImageNet), 2 for feature maps.
    """

    def __init__(self, dim: int, hidden: int, names=("mlp1", "mlp2"), order: str = "post",
                 dims: int = 2, tau: float = 2.0):
        super().__init__([Unit(names[0], dim, hidden, kernel=1, bias=True, dims=dims),
                          Unit(names[1], hidden, dim, kernel=1, bias=True, dims=dims)],
                         order=order, tau=tau)




def check_attention_order(attention_order: str) -> str:
    if attention_order not in ATTENTION_ORDERS:
        raise ValueError(f"attention_order must be one of {', '.join(ATTENTION_ORDERS)}, not {attention_order!r}")
    return attention_order


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, attn_lif: nn.Module,
                    product: str = "q_kv", lif_on_heads: bool = False, scale: float = 0.125) -> torch.Tensor:
    """Spiking self-attention without softmax: ``attn_lif(Q K^T V * scale)`` per head.

    Takes and returns ``[T, B, C, N]``. The scale is 0.125 in every original whatever the head
    width (0.25 in Spikformer's DVS file). Q, K and V are binary spikes, so every product is an exact integer count in float32
    and all forms below give bit-identical outputs; the gradients round differently, so each
    model computes what its original file computes:

    * ``"q_kv"``: heads made contiguous, ``Q (K^T V)`` (QKFormer; Spikingformer's and SGLFormer's
      ImageNet global attention);
    * ``"qk_v"``: heads as strided views, ``(Q K^T) V`` (Spikingformer CIFAR/DVS; SGLFormer's
      CIFAR/DVS attention and its local attention everywhere). SGLFormer applies ``attn_lif`` to
      the per-head ``[T, B, h, N, d]`` product (``lif_on_heads``), the others after merging heads;
    * ``"qk_v_copies"``: heads made contiguous, ``(Q K^T) V`` (Spikformer DVS);
    * ``"fast"``: views and the cheaper order (``Q (K^T V)`` when tokens outnumber head channels).
      Same outputs, gradients within rounding of the original's (``attention_order="fast"``).
    """
    if product not in ("q_kv", "qk_v", "qk_v_copies", "fast"):
        raise ValueError(f"unknown attention product {product!r}")
    T, B, C, N = q.shape
    d = C // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:  # [T,B,C,N] -> [T,B,h,N,d]
        return t.transpose(-1, -2).reshape(T, B, N, num_heads, d).permute(0, 1, 3, 2, 4)

    q, k, v = heads(q), heads(k), heads(v)
    if product == "q_kv":
        q, k, v = (memory.note_spikes(t.contiguous()) for t in (q, k, v))   # copies of spikes
        x = q @ memory.matmul(k.transpose(-2, -1), v)
    elif product == "qk_v_copies":
        q, k, v = (memory.note_spikes(t.contiguous()) for t in (q, k, v))
        x = memory.matmul(q, k.transpose(-2, -1)) @ v
    elif product == "qk_v" or N <= d:
        x = memory.matmul(q, k.transpose(-2, -1)) @ v
    else:
        x = q @ memory.matmul(k.transpose(-2, -1), v)
    x = x * scale
    if lif_on_heads and product != "fast":
        return memory.reshape(attn_lif(x).transpose(3, 4), T, B, C, N)
    return attn_lif(x.transpose(3, 4).reshape(T, B, C, N))


class SpikingSelfAttention(nn.Module):
    """Spikformer-style SSA: 1x1 conv+BN+LIF for Q, K, V; ``Q K^T V``; LIF(0.5); 1x1 projection.

    Takes ``[T, B, C, H, W]`` or ``[T, B, C, N]`` and returns the same shape.

    * ``order="post"`` (QKFormer, SGLFormer ImageNet, Spikformer): the projection ends in a LIF,
      which QKFormer and SGLFormer apply to T and B merged (``merged_tb``; ``fix_tb_merge``
      fixes it, see :func:`lif_on_merged_tb`).
    * ``order="pre"`` (Spikingformer): the input passes a LIF first (named ``proj_lif`` in the
      original) and the projection ends at its BN, so the residual stream stays real-valued.

    ``product`` is the original file's form of the attention product (see :func:`spike_attention`);
    ``attention_order="fast"`` replaces it with the cheaper one. ``scale``: 0.125 in every original
    but Spikformer's DVS file (0.25).
    """

    # Energy accounting (models/op_counts.py): the neurons whose spikes feed Q K^T V, and its size.
    energy_kind = "attention"
    spike_sources = {"q": "q_lif", "k": "k_lif", "v": "v_lif"}

    def op_counts(self, input_shape) -> int:
        return ssa_op_counts(input_shape, self.num_heads)

    spike_ops = staticmethod(ssa_spike_ops)

    def __init__(self, dim: int, num_heads: int, order: str = "post", tau: float = 2.0,
                 fix_tb_merge: bool = False, product: str = "q_kv", attention_order: str = "original",
                 scale: float = 0.125, merged_tb: bool = True):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.order = order
        self.fix_tb_merge = fix_tb_merge
        self.scale = scale
        self.merged_tb = merged_tb
        self.product = product
        self.attention_order = check_attention_order(attention_order)
        if order == "pre":
            self.proj_lif = lif(tau=tau)
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_conv", nn.Conv1d(dim, dim, kernel_size=1, bias=False))
            setattr(self, f"{name}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{name}_lif", lif(tau=tau))
        self.attn_lif = lif(v_threshold=0.5, tau=tau)
        self.proj_conv = nn.Conv1d(dim, dim, kernel_size=1)
        self.proj_bn = nn.BatchNorm1d(dim)
        if order == "post":
            self.proj_lif = lif(tau=tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        T, B, C = shape[:3]
        if self.order == "pre":
            x = self.proj_lif(x)
        x = x.flatten(3) if x.dim() == 5 else x
        N = x.shape[-1]
        flat = x.flatten(0, 1)
        q, k, v = (bn_lif(self._modules[f"{n}_conv"](flat), T, self._modules[f"{n}_bn"], self._modules[f"{n}_lif"])
                   for n in ("q", "k", "v"))
        product = self.product if self.attention_order == "original" else "fast"
        x = spike_attention(q, k, v, self.num_heads, self.attn_lif, product, scale=self.scale)
        x = self.proj_conv(x.flatten(0, 1))
        if self.order == "post":
            x = bn_lif(x, T, self.proj_bn, self.proj_lif, merged_tb=self.merged_tb, fix_tb_merge=self.fix_tb_merge)
            return x.reshape(shape)
        return self.proj_bn(x).reshape(shape)


class Residual(Checkpointable):
    """``x = x + f(x)`` for each sub-module in order: the block pattern of all three families.

    ``parts`` maps the original attribute names to modules. ``grad_checkpointing``: see
    :class:`Checkpointable`.
    """

    def __init__(self, parts: dict[str, nn.Module]):
        super().__init__()
        for name, module in parts.items():
            setattr(self, name, module)
        self.residual_names = tuple(parts)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.residual_names:
            x = memory.add(x, self._modules[name](x))   # spike counts where both are
        return x
