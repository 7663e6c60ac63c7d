"""Spikformer (Zhou et al., ICLR 2023): the first spiking transformer, ancestor of the others here.

A spiking patch splitting stem (SPS) and ``depth`` blocks of spiking self-attention (SSA) + MLP,
each ending in a LIF ("post-activation"): the residual stream adds spikes to spikes, so it holds
integer spike counts (0, 1, 2, ...) that the next block's convolutions read. Spikingformer later
moved the LIF in front of each convolution to make those inputs binary.

One definition covers the three model files of the original code (github.com/ZK-Zhou/spikformer):

============  ================================  ==========================================  =======
layout        stem (SPS)                         blocks                                     scale
============  ================================  ==========================================  =======
``imagenet``  4 units, 4 pools (224 -> 14x14)    1x1 Conv1d/Conv2d on ``[T, B, C, H, W]``   0.125
``cifar``     4 units, 2 pools (32 -> 8x8)       ``nn.Linear`` on tokens ``[T, B, N, C]``    0.125
``dvs``       4 units, 4 pools (128 -> 8x8)      1x1 Conv1d on ``[T, B, C, N]``             0.25
============  ================================  ==========================================  =======

Each SPS unit is conv -> BN -> LIF -> [max-pool] (the pool reads spikes, unlike QKFormer's and
SGLFormer's stems); a fifth unit (``rpe``) is added to its own input, the relative position
embedding. The upstream tree has no DVS128 Gesture folder; the paper trains DVS128 Gesture with the
CIFAR10-DVS model, so the ``dvs`` layout serves both (11 classes for Gesture).

Upstream quirks kept (docs/faithfulness.md):

* the blocks define ``norm1``/``norm2`` LayerNorms, and the DVS model a ``pos_embed`` and a final
  ``norm``, that are never used: left out here (every parameter gets a gradient), accounted for
  by models/checkpoint.py, so the original state dicts load strictly and ``to_original`` exports
  one that the original code loads;
* drop path is accepted upstream and never applied (refused here, as for the other families);
* the DVS SSA scales by 0.25, the others by 0.125; the DVS file also defines an unused
  ``Dropout(0.2)`` and ``res_lif``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from . import memory
from .base import SpikingClassifier, Unused, block_layernorms, runtime_options, unused_layernorm
from .layers import (ConvUnits, Residual, SpikingMLP, SpikingSelfAttention, Unit, check_attention_order,
                     check_heads)
from .neuron import lif
from .op_counts import ssa_op_counts, ssa_spike_ops
from .options import RuntimeOptions

#: which stem units end in a max-pool, per layout
_POOLS = {"imagenet": (True,) * 4, "cifar": (False, False, True, True), "dvs": (True,) * 4}


class SpikingPatchSplitting(ConvUnits):
    """SPS: four conv-BN-LIF-[pool] units (``proj_conv``, ``proj_conv1``, ...), then the relative
    position embedding ``rpe`` (conv-BN-LIF) added to its input. ``[T, B, C, H, W]`` in and out."""

    def __init__(self, layout: str, in_chans: int, embed_dim: int):
        chans = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        units = [Unit("proj", chans[i], chans[i + 1], pool=pool, lif_pool=True, suffix=str(i) if i else "")
                 for i, pool in enumerate(_POOLS[layout])]
        super().__init__(units + [Unit("rpe", embed_dim, embed_dim)], order="post")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        *stem, rpe = self.units
        for u in stem:
            x = self.run(u, x)
        return memory.add(self.run(rpe, x), x)    # spikes + spikes: counts 0..2


def _token_tail(x: torch.Tensor, T: int, norm: nn.Module, neuron: nn.Module) -> torch.Tensor:
    """``[T*B, N, C]`` -> BN over C -> ``[T, B, N, C]`` -> LIF, as the original CIFAR file does."""
    x = norm(x.transpose(-1, -2)).transpose(-1, -2).reshape(T, -1, *x.shape[1:])
    with memory.tail():
        return neuron(x)


def token_bn_lif(x: torch.Tensor, T: int, norm: nn.Module, neuron: nn.Module) -> torch.Tensor:
    """:func:`_token_tail` after a Linear layer; recomputed in backward under compact memory."""
    return memory.recompute(functools.partial(_token_tail, T=T, norm=norm, neuron=neuron), x, norm, neuron)


class TokenSelfAttention(nn.Module):
    """Spikformer's CIFAR SSA: Linear + BN + LIF for Q, K and V on tokens ``[T, B, N, C]``,
    ``LIF((Q K^T * 0.125) V)`` per head, then a Linear + BN + LIF projection.
    ``attention_order="fast"``: ``Q (K^T V) * 0.125`` where tokens outnumber head channels (the
    same outputs: every product is an exact count; gradients within rounding)."""

    # Energy accounting (models/op_counts.py): as SpikingSelfAttention, on [T, B, N, C] input.
    energy_kind = "attention"
    spike_sources = {"q": "q_lif", "k": "k_lif", "v": "v_lif"}
    spike_ops = staticmethod(ssa_spike_ops)

    def op_counts(self, input_shape) -> int:
        T, B, N, C = input_shape
        return ssa_op_counts((T, B, C, N), self.num_heads)

    def __init__(self, dim: int, num_heads: int, scale: float = 0.125, attention_order: str = "original"):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.scale = scale
        self.attention_order = check_attention_order(attention_order)
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_linear", nn.Linear(dim, dim))
            setattr(self, f"{name}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{name}_lif", lif())
        self.attn_lif = lif(v_threshold=0.5)
        self.proj_linear = nn.Linear(dim, dim)
        self.proj_bn = nn.BatchNorm1d(dim)
        self.proj_lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        h = self.num_heads
        flat = x.flatten(0, 1)
        part = self._modules

        def heads(name: str) -> torch.Tensor:    # [T, B, N, C] spikes -> [T, B, h, N, d], a copy
            t = token_bn_lif(part[f"{name}_linear"](flat), T, part[f"{name}_bn"], part[f"{name}_lif"])
            return memory.note_spikes(t.reshape(T, B, N, h, C // h).permute(0, 1, 3, 2, 4).contiguous())

        q, k, v = heads("q"), heads("k"), heads("v")
        if self.attention_order == "fast" and N > C // h:
            x = q @ memory.matmul(k.transpose(-2, -1), v) * self.scale
        else:
            x = (memory.matmul(q, k.transpose(-2, -1)) * self.scale) @ v
        x = self.attn_lif(x.transpose(2, 3).reshape(T, B, N, C))
        return token_bn_lif(self.proj_linear(x.flatten(0, 1)), T, self.proj_bn, self.proj_lif)


class TokenMLP(nn.Module):
    """Spikformer's CIFAR MLP: two Linear + BN + LIF units on tokens ``[T, B, N, C]``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_linear = nn.Linear(dim, hidden)
        self.fc1_bn = nn.BatchNorm1d(hidden)
        self.fc1_lif = lif()
        self.fc2_linear = nn.Linear(hidden, dim)
        self.fc2_bn = nn.BatchNorm1d(dim)
        self.fc2_lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = token_bn_lif(self.fc1_linear(x.flatten(0, 1)), T, self.fc1_bn, self.fc1_lif)
        return token_bn_lif(self.fc2_linear(x.flatten(0, 1)), T, self.fc2_bn, self.fc2_lif)


class Spikformer(SpikingClassifier):
    """Spikformer-``depth``-``embed_dim``.

    Args:
        layout: ``"imagenet"``, ``"cifar"`` or ``"dvs"`` (see the module docstring).
        embed_dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP expansion.
        in_chans, num_classes, T: input channels, classes, time steps for image input.
        img_size: the input size; the DVS layout's unused ``pos_embed`` has one row per 16x16 patch.
        global_pool, feature_time: ``"avg"`` or ``""``; ``"mean"`` or ``"keep"`` (see
            :class:`models.base.SpikingClassifier`).
        options, **runtime: how the model runs (backend, attention order, activation memory,
            gradient checkpointing): a :class:`models.options.RuntimeOptions` and/or keyword
            arguments of the same names. (``fix_tb_merge``: Spikformer's LIFs all see T apart.)
    """

    def __init__(self, layout: str = "imagenet", embed_dim: int = 512, depth: int = 8,
                 num_heads: int = 8, mlp_ratio: float = 4.0, in_chans: int = 3,
                 num_classes: int = 1000, T: int = 4, img_size: int | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 feature_time: str = "mean", options: RuntimeOptions | None = None, **runtime):
        o = runtime_options(options, runtime)
        super().__init__(layout, num_classes, embed_dim, T, img_size, drop_rate, drop_path_rate, in_chans,
                         global_pool, feature_time)
        hidden = int(embed_dim * mlp_ratio)
        self.patch_embed = SpikingPatchSplitting(layout, in_chans, embed_dim)

        def block() -> Residual:
            if layout == "cifar":
                return Residual({"attn": TokenSelfAttention(embed_dim, num_heads, attention_order=o.attention_order),
                                 "mlp": TokenMLP(embed_dim, hidden)})
            dvs = layout == "dvs"
            attn = SpikingSelfAttention(embed_dim, num_heads, product="qk_v_copies" if dvs else "q_kv",
                                        scale=0.25 if dvs else 0.125, merged_tb=False,
                                        attention_order=o.attention_order)
            return Residual({"attn": attn, "mlp": SpikingMLP(embed_dim, hidden, names=("fc1", "fc2"),
                                                             dims=1 if dvs else 2)})

        self.block = nn.ModuleList(block() for _ in range(depth))
        self._reduction = 4 if layout == "cifar" else 16
        self.init_head(o)

    # The blocks run on the original file's token layout; between the stem, the blocks and the
    # head the trunk passes [T, B, C, H, W] views of it (no copies, so the same bits).
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "cifar":
            return x.flatten(-2).transpose(-1, -2)          # [T, B, N, C]
        return x.flatten(3) if self.layout == "dvs" else x  # [T, B, C, N] / as is

    def _grid(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.layout == "cifar":
            x = x.transpose(-1, -2)
        return x.unflatten(-1, tuple(size)) if self.layout != "imagenet" else x

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._grid(blk(self._tokens(x)), x.shape[-2:])

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        size = x.shape[-2:]
        x = self._tokens(x)
        for blk in self.block:
            x = blk(x)
        return self._grid(x, size)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "cifar":
            return self._tokens(x).mean(2).mean(0)
        if self.layout == "dvs":
            return self._tokens(x).mean(3).mean(0)
        return x.flatten(3).mean(3).mean(0)

    def unused_parameters(self) -> dict[str, Unused]:
        """The blocks' never-called LayerNorms; the DVS model's ``pos_embed`` (a random initial
        value, first in its state dict) and final ``norm`` too."""
        out = block_layernorms("block", len(self.block), self.embed_dim)
        if self.layout == "dvs":
            patches = ((self.img_size or 128) // 16) ** 2
            out = {"pos_embed": Unused((1, patches, self.embed_dim), None, ""), **out,
                   **unused_layernorm("norm", self.embed_dim, "head")}
        return out

    # feature levels: the stem's output, then each block's
    def feature_layout(self) -> list[tuple[str, int, int]]:
        names = ["patch_embed"] + [f"block.{i}" for i in range(len(self.block))]
        return [(m, self.embed_dim, self._reduction) for m in names]

    def feature_stages(self) -> list:
        return [("patch_embed", self.patch_embed)] + [
            (f"block.{i}", functools.partial(self._block, b)) for i, b in enumerate(self.block)]

    def prune_stages(self, keep: int) -> None:
        self.block = self.block[:keep - 1]
