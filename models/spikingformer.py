"""Spikingformer (Zhou et al., 2023): spike-driven residual learning for spiking transformers.

Spikformer's architecture with pre-activation ("spike-driven") residuals: every block reads the
real-valued residual stream through a LIF first (LIF -> conv -> BN), so all convs and matmuls
take binary spikes and the stream itself is never thresholded.

One definition covers the three layouts of the original code:

============  =================================================  ======  =======
layout        tokenizer (pre-activation conv units)              tau     input
============  =================================================  ======  =======
``imagenet``  5 units ``proj``..``proj4``, 4 max-pools (16x)      2.0     image
``cifar``     5 units ``block0``..``block4``, 2 max-pools (4x)    2.0     image
``dvs``       as ImageNet (128 -> 8x8 tokens)                     1.5     events
============  =================================================  ======  =======

followed by ``depth`` blocks of spiking self-attention + MLP. Each block also holds two
LayerNorms that the original defines but never calls; they are kept (unused) because the
authors' checkpoints and parameter counts include them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import SpikingClassifier
from .layers import ConvUnits, Residual, SpikingMLP, SpikingSelfAttention, Unit


def _tokenizer(layout: str, in_chans: int, e: int, tau: float) -> ConvUnits:
    """``SpikingTokenizer`` upstream: conv-BN, then four LIF-[pool]-conv-BN units."""
    names = [f"block{i}" for i in range(5)] if layout == "cifar" else ["proj"] + [f"proj{i}" for i in range(1, 5)]
    pools = (False, False, False, True, True) if layout == "cifar" else (False, True, True, True, True)
    chans = [in_chans, e // 8, e // 4, e // 2, e, e]
    units = [Unit(n, chans[i], chans[i + 1], pool=pools[i], lif=i > 0) for i, n in enumerate(names)]
    return ConvUnits(units, order="pre", tau=tau)


class Spikingformer(SpikingClassifier):
    """Spikingformer-``depth``-``embed_dim``.

    Args:
        layout: ``"imagenet"``, ``"cifar"`` or ``"dvs"`` (see the module docstring).
        embed_dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP expansion.
        in_chans, num_classes, T: input channels, classes, time steps for image input.
        fix_tb_merge: accepted for a uniform interface with the other families; Spikingformer
            has no LIF over merged T and B, so it changes nothing.
        attention_order: ``"original"`` (default: the original file's attention product,
            ``Q (K^T V)`` for ImageNet and ``(Q K^T) V`` for CIFAR/DVS, so gradients are
            bit-identical) or ``"fast"`` (the cheaper order; same outputs, gradients within rounding).
        backend: LIF backend, ``"auto"``/``"fused"``/``"torch"``/``"cupy"``/``"triton"``
            (None: $SNN_LIF_BACKEND).
        activation_memory: ``"compact"`` (default: spikes saved for backward as bits, cheap
            batch-norm/neuron steps recomputed in backward; bit-identical) or ``"standard"``.
            See :mod:`models.memory`.
    """

    def __init__(self, layout: str = "imagenet", embed_dim: int = 384, depth: int = 8,
                 num_heads: int = 12, mlp_ratio: float = 4.0, in_chans: int = 3,
                 num_classes: int = 1000, T: int = 4, img_size: int | None = None,
                 fix_tb_merge: bool = False, backend: str | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, attention_order: str = "original",
                 activation_memory: str = "compact"):
        super().__init__(layout, num_classes, embed_dim, T, img_size, drop_rate, drop_path_rate,
                         activation_memory)
        tau = 1.5 if layout == "dvs" else 2.0
        product = "q_kv" if layout == "imagenet" else "qk_v"
        self.patch_embed = _tokenizer(layout, in_chans, embed_dim, tau)
        self.block = nn.ModuleList(
            Residual({"norm1": nn.LayerNorm(embed_dim),
                      "attn": SpikingSelfAttention(embed_dim, num_heads, order="pre", tau=tau, product=product,
                                                   attention_order=attention_order),
                      "norm2": nn.LayerNorm(embed_dim),
                      "mlp": SpikingMLP(embed_dim, int(embed_dim * mlp_ratio), order="pre", tau=tau)},
                     unused=("norm1", "norm2"))
            for _ in range(depth))
        self.init_head(backend)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(3).mean(3).mean(0)
