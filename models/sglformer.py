"""SGLFormer (Zhang et al., Frontiers in Neuroscience 2024): spiking global-local-fusion transformer.

Blocks mix a local convolutional block, a local (window-partitioned) SSA and global SSAs.
One definition covers the layouts of the original code:

============  ===================================================================  ==========
layout        trunk                                                                head
============  ===================================================================  ==========
``cifar``     stem + 4-conv tokenizer (4x), ``depth`` fusion blocks:               STB conv
              local conv, local SSA, MLP, (global SSA, MLP) x2
``dvs``       as CIFAR with a 16x tokenizer (128 -> 8x8 tokens)                    STB conv
``imagenet``  5-conv patch embedding (16x), one local block (local conv,           mean + linear
              local SSA, MLP), then ``depth - 2`` global SSA blocks
============  ===================================================================  ==========

The CIFAR/DVS head is the paper's spatio-temporal block (STB): a depthwise conv whose kernel
spans all tokens and all time steps, so its weight shape depends on ``T`` and the image size
(``[C, 1, tokens, T]``). The ImageNet layout has two variants: ``stem_pool="early"`` (upstream
``sglformer_ima``, the paper's "*" models) pools after the first four convs;
``stem_pool="late"`` (``sglformer_ima2``) after the last four, and its first LIF sees T and B
merged (fixed by ``fix_tb_merge=True``, as is the global SSA projection LIF).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import memory
from .base import SpikingClassifier, Unused, block_layernorms, runtime_options
from .layers import (Checkpointable, ConvUnits, Residual, SpikingMLP, SpikingSelfAttention, Unit, bn_lif,
                     check_attention_order, check_heads, max_pool, spike_attention)
from .neuron import lif
from .options import RuntimeOptions
from .op_counts import ssa_op_counts, ssa_spike_ops


class Conv3x3(nn.Module):
    """3x3 conv + BN (+ 3x3/2 max-pool when ``stride == 2``) + LIF on ``[T, B, C, H, W]``."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv3x3 = nn.Conv2d(dim_in, dim_out, 3, 1, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(dim_out)
        if stride == 2:
            self.pool = max_pool()
        self.lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bn_lif(self.conv3x3(x.flatten(0, 1)), x.shape[0], self.bn, self.lif, self._modules.get("pool"))


class DWConv3x3(Conv3x3):
    """Depthwise 3x3 conv + BN + LIF."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, groups=dim)


class Conv1x1(nn.Module):
    """1x1 conv (no bias) + BN + LIF on ``[T, B, C, H, W]``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim_out)
        self.lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bn_lif(self.conv1x1(x.flatten(0, 1)), x.shape[0], self.bn, self.lif)


class ConvMLP(nn.Module):
    """``mlp1``, ``mlp2``: two Conv1x1 units (``MLP``/``LocalMLP`` upstream)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp1 = Conv1x1(dim, hidden)
        self.mlp2 = Conv1x1(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp2(self.mlp1(x))


class LocalConv(nn.Module):
    """Local feature block: a residual depthwise conv, then an inverted bottleneck with its own
    residual (``LocalBlock``/``LocalFeature1`` upstream). Note the caller adds the input once
    more, as the original does."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = DWConv3x3(dim)
        self.conv1x1_1 = Conv1x1(dim, 4 * dim)
        self.dwconv3x3 = DWConv3x3(4 * dim)
        self.conv1x1_2 = Conv1x1(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = memory.add(x, self.conv(x))            # spike counts: announced for compact memory
        return memory.add(x, self.conv1x1_2(self.dwconv3x3(self.conv1x1_1(x))))


class GlobalSSA(nn.Module):
    """SSA over all tokens with Conv1x1 units for Q, K, V and the projection.

    As upstream: ``(Q K^T) V`` on strided head views, ``attn_lif`` on the per-head product
    (``attention_order="fast"``: the cheaper order, see :func:`models.layers.spike_attention`).
    """

    # Energy accounting (models/op_counts.py): the neurons whose spikes feed Q K^T V, and its size
    # (LocalSSA attends groups of tokens: the same total over all groups).
    energy_kind = "attention"
    spike_sources = {"q": "q_conv.lif", "k": "k_conv.lif", "v": "v_conv.lif"}

    def op_counts(self, input_shape) -> int:
        return ssa_op_counts(input_shape, self.num_heads)

    spike_ops = staticmethod(ssa_spike_ops)

    def __init__(self, dim: int, num_heads: int, attention_order: str = "original"):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.attention_order = check_attention_order(attention_order)
        self.q_conv = Conv1x1(dim, dim)
        self.k_conv = Conv1x1(dim, dim)
        self.v_conv = Conv1x1(dim, dim)
        self.attn_lif = lif(v_threshold=0.5)
        self.proj_conv = Conv1x1(dim, dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, k, v = (m(x).flatten(3) for m in (self.q_conv, self.k_conv, self.v_conv))
        product = "qk_v" if self.attention_order == "original" else "fast"
        x = spike_attention(q, k, v, self.num_heads, self.attn_lif, product, lif_on_heads=True)
        return self.proj_conv(memory.reshape(x, shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)


class LocalSSA(GlobalSSA):
    """SSA inside groups of tokens: the map is split into ``num_hw`` x ``num_hw`` interleaved
    sub-grids (pixels with the same (h mod n, w mod n)), each attended separately."""

    def __init__(self, dim: int, num_heads: int, num_hw: int = 2, attention_order: str = "original"):
        super().__init__(dim, num_heads, attention_order)
        self.num_hw = num_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        n = self.num_hw
        x = x.reshape(T, B, C, H // n, n, W // n, n).permute(0, 1, 4, 6, 2, 3, 5)
        x = self.attend(memory.reshape(x, T, B * n * n, C, H // n, W // n))
        x = x.reshape(T, B, n, n, C, H // n, W // n).permute(0, 1, 4, 5, 2, 6, 3)
        return memory.reshape(x, T, B, C, H, W)


class Stem(Checkpointable):
    def __init__(self, in_chans: int, e: int):
        super().__init__()
        self.conv = Conv3x3(in_chans, e // 6)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Tokenizer(Checkpointable):
    """Four Conv3x3 units ``e/6 -> e/4 -> e/2 -> e -> e``; the first two pool only for DVS."""

    def __init__(self, e: int, early_stride: int):
        super().__init__()
        self.conv1 = Conv3x3(e // 6, e // 4, stride=early_stride)
        self.conv2 = Conv3x3(e // 4, e // 2, stride=early_stride)
        self.conv3 = Conv3x3(e // 2, e, stride=2)
        self.conv4 = Conv3x3(e, e, stride=2)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.conv3(self.conv2(self.conv1(x))))


def _fusion_block(dim: int, num_heads: int, mlp_ratio: float, attention_order: str) -> Residual:
    """CIFAR/DVS block (``SpikingTransformer`` upstream): local conv, local SSA and two global SSAs."""
    hidden = int(dim * mlp_ratio)
    return Residual({"loc": LocalConv(dim),
                     "ssa1": LocalSSA(dim, num_heads, attention_order=attention_order), "mlp1": ConvMLP(dim, hidden),
                     "ssa2": GlobalSSA(dim, num_heads, attention_order), "mlp2": ConvMLP(dim, hidden),
                     "ssa3": GlobalSSA(dim, num_heads, attention_order), "mlp3": ConvMLP(dim, hidden)})


class SGLFormer(SpikingClassifier):
    """SGLFormer-``depth``-``embed_dim``.

    Args:
        layout: ``"imagenet"``, ``"cifar"`` or ``"dvs"`` (see the module docstring).
        embed_dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP expansion. ``depth``
            counts fusion blocks for CIFAR/DVS (1 in every published model) and, as upstream,
            the local block as two for ImageNet (``depth - 2`` global blocks follow it).
        in_chans, num_classes: input channels and classes.
        T: time steps. Fixed for CIFAR/DVS: the STB head's kernel has T columns.
        img_size: input side; sets the STB head's token count (CIFAR/DVS).
        stem_pool: ImageNet only, ``"early"`` (8-512*, 8-768*) or ``"late"`` (8-384, 8-512).
        global_pool, feature_time: ``"avg"`` or ``""``; ``"mean"`` or ``"keep"`` (see
            :class:`models.base.SpikingClassifier`).
        options, **runtime: how the model runs (backend, attention order, activation memory,
            gradient checkpointing, ``fix_tb_merge``): a :class:`models.options.RuntimeOptions`
            and/or keyword arguments of the same names.
    """

    def __init__(self, layout: str = "cifar", embed_dim: int = 384, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4.0, in_chans: int = 3,
                 num_classes: int = 10, T: int = 4, img_size: int | None = None,
                 stem_pool: str = "late", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg", feature_time: str = "mean", options: RuntimeOptions | None = None,
                 **runtime):
        if stem_pool not in ("early", "late"):
            raise ValueError(f"stem_pool must be 'early' or 'late', not {stem_pool!r}")
        o = runtime_options(options, runtime)
        fix_tb_merge, attention_order = o.fix_tb_merge, o.attention_order
        img_size = img_size or {"imagenet": 224, "cifar": 32, "dvs": 128}.get(layout)
        super().__init__(layout, num_classes, embed_dim, T, img_size, drop_rate, drop_path_rate, in_chans,
                         global_pool, feature_time)
        e = embed_dim
        if layout == "imagenet":
            if depth < 3:
                raise ValueError(f"depth {depth} is too small for the imagenet layout (min 3)")
            pools = (True, True, True, True, False) if stem_pool == "early" else (False, True, True, True, True)
            chans = [in_chans, e // 8, e // 4, e // 2, e, e]
            self.patch_embed = ConvUnits(
                [Unit(n, chans[i], chans[i + 1], pool=pools[i], merged_tb=(i == 0 and stem_pool == "late"))
                 for i, n in enumerate(["proj", "proj1", "proj2", "proj3", "proj4"])],
                order="post", fix_tb_merge=fix_tb_merge)
            hidden = int(e * mlp_ratio)
            self.localblock = nn.ModuleList([Residual({
                "local1": LocalConv(e), "local2_SSA": LocalSSA(e, num_heads, attention_order=attention_order),
                "local2_MLP": ConvMLP(e, hidden)})])
            # (the original's blocks also hold two LayerNorms it never calls: see Spikingformer)
            self.blocks = nn.ModuleList(
                Residual({"attn": SpikingSelfAttention(e, num_heads, fix_tb_merge=fix_tb_merge,
                                                       attention_order=attention_order),
                          "mlp": SpikingMLP(e, hidden, names=("fc1", "fc2"), dims=1)})
                for _ in range(depth - 2))
        else:
            self.stem = Stem(in_chans, e)
            self.tokenizer = Tokenizer(e, early_stride=2 if layout == "dvs" else 1)
            self.blocks = nn.Sequential(*[_fusion_block(e, num_heads, mlp_ratio, attention_order)
                                          for _ in range(depth)])
            side = img_size // (16 if layout == "dvs" else 4)
            self.num_patches = side * side
            self.full_size_conv = nn.Conv2d(e, e, kernel_size=(self.num_patches, T), groups=e)
            self.bn = nn.BatchNorm2d(e)
        self.init_head(o)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.feature_stages():
            x = stage(x)
        return x

    @staticmethod
    def _global_block(blk: nn.Module):
        """An ImageNet global block works on ``[T, B, C, H*W]``; the map keeps its shape around it."""
        def run(x: torch.Tensor) -> torch.Tensor:
            return memory.reshape(blk(memory.reshape(x, *x.shape[:3], -1)), x.shape)
        return run

    def _check_steps(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.T and hasattr(self, "full_size_conv"):
            raise ValueError(f"this SGLFormer's head was built for T={self.T} time steps, the input "
                             f"has {x.shape[0]}; build the model with T={x.shape[0]}")
        return self.stem(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "imagenet":
            return x.flatten(3).mean(-1).mean(0)
        x = self.to_nchw(x)
        return x.reshape(x.shape[0], -1)

    def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """CIFAR/DVS: the STB head's conv over all tokens and time steps, ``[B, C, 1, 1]`` (it is the
        pooling, and needs the time axis); the mean over time once the STB has been pruned away."""
        if self.layout == "imagenet" or not hasattr(self, "full_size_conv"):
            return x.mean(0)
        tokens = x.flatten(3)
        if tokens.shape[-1] != self.num_patches:
            raise ValueError(f"this SGLFormer's head was built for {self.num_patches} tokens "
                             f"(img_size={self.img_size}); the input gives {tokens.shape[-1]}")
        return self.bn(self.full_size_conv(tokens.permute(1, 2, 3, 0)))   # [B, C, 1, 1]

    def unused_parameters(self) -> dict[str, Unused]:
        """The original ImageNet blocks' never-called LayerNorms."""
        return block_layernorms("blocks", len(self.blocks), self.embed_dim) if self.layout == "imagenet" else {}

    # feature levels: ImageNet patch embedding, local block, each global block;
    # CIFAR/DVS stem, tokenizer, each fusion block
    def feature_layout(self) -> list[tuple[str, int, int]]:
        e = self.embed_dim
        if self.layout == "imagenet":
            return [("patch_embed", e, 16)] + [(f"localblock.{i}", e, 16) for i in range(len(self.localblock))] + \
                   [(f"blocks.{i}", e, 16) for i in range(len(self.blocks))]
        r = 16 if self.layout == "dvs" else 4
        levels = [("stem", e // 6, 1), ("tokenizer", e, r)] + [(f"blocks.{i}", e, r) for i in range(len(self.blocks))]
        return levels[:1 + hasattr(self, "tokenizer") + len(self.blocks)]

    def feature_stages(self) -> list:
        if self.layout == "imagenet":
            stages = [("patch_embed", self.patch_embed)] + [(f"localblock.{i}", b) for i, b in enumerate(self.localblock)]
            return stages + [(f"blocks.{i}", self._global_block(b)) for i, b in enumerate(self.blocks)]
        stages = [("stem", self._check_steps)] + ([("tokenizer", self.tokenizer)] if hasattr(self, "tokenizer") else [])
        return stages + [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]

    def prune_stages(self, keep: int) -> None:
        if self.layout == "imagenet":
            self.localblock = self.localblock[:keep - 1]
            self.blocks = self.blocks[:max(keep - 2, 0)]
            return
        if keep >= len(self.feature_layout()):
            return
        if keep < 2 and hasattr(self, "tokenizer"):
            del self.tokenizer
        self.blocks = self.blocks[:max(keep - 2, 0)]
        if hasattr(self, "full_size_conv"):
            del self.full_size_conv, self.bn   # the STB head belongs to the last block's output
