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

followed by ``depth`` blocks of spiking self-attention + MLP. The original also defines two
LayerNorms per block that it never calls (always weight 1, bias 0); they are left out here, so
every parameter gets a gradient and DDP needs no unused-parameter search. The authors'
checkpoints still load strictly (models/checkpoint.py accounts for those keys) and
:func:`models.checkpoint.to_original` adds them back for the original code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import SpikingClassifier, Unused, block_layernorms, runtime_options
from .options import RuntimeOptions
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
        global_pool, feature_time: ``"avg"`` or ``""``; ``"mean"`` or ``"keep"`` (see
            :class:`models.base.SpikingClassifier`).
        options, **runtime: how the model runs (backend, attention order, activation memory,
            gradient checkpointing, ``fix_tb_merge``): a :class:`models.options.RuntimeOptions`
            and/or keyword arguments of the same names.
    """

    def __init__(self, layout: str = "imagenet", embed_dim: int = 384, depth: int = 8,
                 num_heads: int = 12, mlp_ratio: float = 4.0, in_chans: int = 3,
                 num_classes: int = 1000, T: int = 4, img_size: int | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 feature_time: str = "mean", options: RuntimeOptions | None = None, **runtime):
        o = runtime_options(options, runtime)   # (fix_tb_merge: Spikingformer has no LIF over merged T and B)
        super().__init__(layout, num_classes, embed_dim, T, img_size, drop_rate, drop_path_rate, in_chans,
                         global_pool, feature_time)
        tau = 1.5 if layout == "dvs" else 2.0
        product = "q_kv" if layout == "imagenet" else "qk_v"
        self.patch_embed = _tokenizer(layout, in_chans, embed_dim, tau)
        self.block = nn.ModuleList(
            Residual({"attn": SpikingSelfAttention(embed_dim, num_heads, order="pre", tau=tau, product=product,
                                                   attention_order=o.attention_order),
                      "mlp": SpikingMLP(embed_dim, int(embed_dim * mlp_ratio), order="pre", tau=tau)})
            for _ in range(depth))
        self._reduction = 4 if layout == "cifar" else 16
        self.init_head(o)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(3).mean(3).mean(0)

    def unused_parameters(self) -> dict[str, Unused]:
        """The original blocks' never-called LayerNorms (``norm1`` before ``attn``, ``norm2`` before ``mlp``)."""
        return block_layernorms("block", len(self.block), self.embed_dim)

    # feature levels: the tokenizer's output, then each block's
    def feature_layout(self) -> list[tuple[str, int, int]]:
        return [(m, self.embed_dim, self._reduction) for m in ["patch_embed"] + [f"block.{i}" for i in
                                                                                   range(len(self.block))]]

    def feature_stages(self) -> list:
        return [("patch_embed", self.patch_embed)] + [(f"block.{i}", b) for i, b in enumerate(self.block)]

    def prune_stages(self, keep: int) -> None:
        self.block = self.block[:keep - 1]
