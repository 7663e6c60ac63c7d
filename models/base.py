"""What every model here shares: input handling, neuron reset, the classifier head, timm's API."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices

from . import memory
from .neuron import reset_net
from .options import RuntimeOptions, split
from .runtime import apply as apply_options

LAYOUTS = ("imagenet", "cifar", "dvs")


def runtime_options(options: RuntimeOptions | None, runtime: dict) -> RuntimeOptions:
    """A family constructor's ``options`` object with its keyword arguments of the same names on
    top (an unknown keyword is a TypeError, as for any constructor)."""
    merged, rest = split({**runtime, "options": options})
    if rest:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, rest))}")
    return merged


def check_no_dropout(family: str, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
    """The originals accept drop rates but never apply them; refuse rather than ignore."""
    if drop_rate or drop_path_rate:
        raise ValueError(
            f"{family} has no dropout or stochastic depth: the original code accepts "
            f"drop_rate/drop_path_rate but never applies them (its training scripts pass 0.1-0.2 "
            f"with no effect). Omit them or pass 0 (got drop_rate={drop_rate}, "
            f"drop_path_rate={drop_path_rate}).")


class Unused(NamedTuple):
    """A parameter the original code defines but never uses, left out of the models here so that
    every parameter gets a gradient (checkpoints account for it: models/checkpoint.py).

    ``value``: what it holds in every original checkpoint (a LayerNorm's 1 or 0, never trained),
    or None for a random initial value; ``before``: the module it precedes in the original's
    registration order ("" for a parameter of the model itself, which comes first)."""
    shape: tuple[int, ...]
    value: float | None
    before: str


def unused_layernorm(name: str, dim: int, before: str) -> dict[str, Unused]:
    """The weight (1) and bias (0) of a never-called ``nn.LayerNorm(dim)`` named `name`."""
    return {f"{name}.weight": Unused((dim,), 1.0, before), f"{name}.bias": Unused((dim,), 0.0, before)}


def block_layernorms(prefix: str, depth: int, dim: int) -> dict[str, Unused]:
    """``norm1`` and ``norm2`` of each of the `depth` blocks under `prefix`, as the originals
    define them in every block and never call them."""
    out: dict[str, Unused] = {}
    for i in range(depth):
        out.update(unused_layernorm(f"{prefix}.{i}.norm1", dim, f"{prefix}.{i}.attn"))
        out.update(unused_layernorm(f"{prefix}.{i}.norm2", dim, f"{prefix}.{i}.mlp"))
    return out


POOLS = ("avg", "")
FEATURE_TIME = ("mean", "keep")


class SpikingClassifier(nn.Module):
    """Base class: subclasses build the trunk and implement ``forward_trunk``, ``pool`` and
    ``feature_stages``.

    Input is ``[B, C, H, W]`` for static images (repeated over ``T`` time steps, the "direct
    encoding" of all three papers) or ``[B, T, C, H, W]`` for event frames (used as given).
    Neuron state is reset at the start of every forward, so a forgotten reset between batches
    can never leak membrane potential into the next batch.

    Inside, activations are time-major, ``[T, B, C, H, W]``. What timm's feature API returns
    (``forward_features``, ``forward_intermediates``, ``features_only=True``) is by default what
    a timm user expects, NCHW: the mean over the T time steps of each stage's output, i.e. of the
    residual stream (the real-valued input the next block's neurons integrate; for a spiking
    output, its firing rate). ``feature_time="keep"`` returns ``[T, B, C, H, W]`` instead.
    ``forward`` pools the time-major output in the originals' order (bit-identical to them);
    ``forward_head(forward_features(x))`` pools the time mean and equals it within rounding.
    """

    def __init__(self, layout: str, num_classes: int, embed_dim: int, T: int, img_size: int | None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, in_chans: int = 3,
                 global_pool: str = "avg", feature_time: str = "mean"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown {type(self).__name__} layout {layout!r}; choose one of {LAYOUTS}")
        check_no_dropout(type(self).__name__, drop_rate, drop_path_rate)
        if feature_time not in FEATURE_TIME:
            raise ValueError(f"feature_time must be one of {FEATURE_TIME}, not {feature_time!r}")
        super().__init__()
        self.layout = layout
        #: "image" models repeat a 4-D input T times; "events" models require a 5-D input.
        self.input_kind = "events" if layout == "dvs" else "image"
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.T = T
        self.global_pool = _check_pool(global_pool, num_classes)
        self.feature_time = feature_time
        #: "compact" or "standard": how a training forward stores what backward needs (models/memory.py)
        self.activation_memory = "compact"

    def init_head(self, options: RuntimeOptions) -> None:
        """Create the head, then apply the originals' init and the runtime options."""
        self.head = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        apply_options(self, options)
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for m, c, r in self.feature_layout()]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The originals only re-initialise Linear layers (the head); convs keep torch defaults.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def time_major(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[T, B, C, H, W]`` (repeat) or ``[B, T, ...]`` -> ``[T, B, ...]``.

        Event frames are announced as spike counts (models/memory.py: the energy meter reads how
        each layer's input was made); they are made contiguous here, the copy that the first
        convolution's ``flatten(0, 1)`` makes anyway, so the announcement reaches it."""
        if x.dim() == 4 and self.input_kind == "image":
            return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        if x.dim() == 5 and self.input_kind == "events":
            return memory.note_counts(x.permute(1, 0, 2, 3, 4).contiguous(), None)
        if x.dim() == 5:
            return x.permute(1, 0, 2, 3, 4)
        expected = "[B, C, H, W] or [B, T, C, H, W]" if self.input_kind == "image" else "[B, T, C, H, W]"
        raise ValueError(f"{type(self).__name__} expects input {expected}, got shape {tuple(x.shape)}")

    # --- what each family defines ---------------------------------------------------------
    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` -> the last block's output, ``[T, B, C, H', W']``."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk output -> ``[B, embed_dim]`` for the head, in the original file's order."""
        raise NotImplementedError

    def feature_stages(self) -> list:
        """``[(module name, fn)]``: applied in turn to the time-major input they give the trunk's
        output; each output is one feature level (``feature_info``)."""
        raise NotImplementedError

    def feature_layout(self) -> list[tuple[str, int, int]]:
        """``[(module name, channels, reduction)]`` of the feature levels."""
        raise NotImplementedError

    def prune_stages(self, keep: int) -> None:
        """Delete the feature levels after the first ``keep`` (and what only they feed)."""
        raise NotImplementedError

    def unused_parameters(self) -> dict[str, Unused]:
        """The original's never-used parameters that this model leaves out, by state-dict key."""
        return {}

    def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's time-major output as the unpooled features ``forward_features`` returns."""
        return x.mean(0)

    def pool_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` features -> ``[B, C]``."""
        return x.flatten(2).mean(2)

    # --- timm's model API -------------------------------------------------------------------
    def _features(self, x: torch.Tensor, stages) -> tuple[torch.Tensor, list]:
        reset_net(self)
        outs = []
        with memory.compact_forward(self.activation_memory, self.training):
            x = self.time_major(x)
            for _, fn in stages:
                x = fn(x)
                outs.append(x)
        return x, outs

    def forward_features(self, x: torch.Tensor, keep_time: bool | None = None) -> torch.Tensor:
        """Unpooled features: NCHW (the mean over time, see the class docstring) or, with
        ``keep_time`` (default: ``feature_time == "keep"``), the time-major trunk output."""
        reset_net(self)
        with memory.compact_forward(self.activation_memory, self.training):
            x = self.forward_trunk(self.time_major(x))
        keep = self.feature_time == "keep" if keep_time is None else keep_time
        return x if keep else self.to_nchw(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (unless ``global_pool=""``) and classify ``forward_features``' output, NCHW or time-major."""
        if x.dim() == 5:            # time-major: the originals' pooling
            x = self.pool(x) if self.global_pool else self.to_nchw(x)
        elif self.global_pool:
            x = self.pool_nchw(x)
        if pre_logits or isinstance(self.head, nn.Identity):
            return x
        if not self.global_pool:
            raise ValueError(f"global_pool='' leaves the features unpooled, and the {self.num_classes}-class head "
                             f"needs them pooled: reset_classifier({self.num_classes}, 'avg'), or num_classes=0")
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, keep_time=True))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature API: the outputs of the feature levels ``indices`` (None: all; an int n:
        the last n), NCHW means over time or NHWC (``feature_time="keep"``: time-major, a time
        axis in front). These models have no final norm, so ``norm`` changes nothing."""
        fmt = str(getattr(output_fmt, "value", output_fmt))
        if fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be NCHW or NHWC, not {fmt!r}")
        stages = self.feature_stages()
        take, last = feature_take_indices(len(stages), indices)
        early = (stop_early or intermediates_only) and last + 1 < len(stages)
        x, outs = self._features(x, stages[:last + 1] if early else stages)
        keep = self.feature_time == "keep"
        intermediates = []
        for i in take:
            out = outs[i] if keep else outs[i].mean(0)
            intermediates.append(out.movedim(-3, -1) if fmt == "NHWC" else out)
        if intermediates_only:
            return intermediates
        # (stopped early, the last level run is not the trunk's output: no head-side pooling)
        return (x if keep else x.mean(0) if early else self.to_nchw(x)), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Keep the feature levels up to the last of ``indices``; without the head if ``prune_head``."""
        take, last = feature_take_indices(len(self.feature_info), indices)
        self.prune_stages(last + 1)
        self.feature_info = self.feature_info[:last + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block, patch embedding and stem in the backward pass
        instead of storing its activations (timm's API). Outputs and gradients are unchanged."""
        apply_options(self, grad_checkpointing=enable)

    def set_activation_memory(self, mode: str) -> None:
        """``"compact"`` or ``"standard"`` (see :mod:`models.memory`); outputs and gradients are
        the same bits either way."""
        apply_options(self, activation_memory=mode)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none), on the model's device and in its dtype."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool, num_classes)
        self.num_classes = num_classes
        like = next(self.parameters(), None)
        if num_classes > 0:
            kwargs = {} if like is None else dict(device=like.device, dtype=like.dtype)
            self.head = nn.Linear(self.embed_dim, num_classes, **kwargs)
            if like is None or like.device.type != "meta":
                self._init_weights(self.head)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)


def _check_pool(global_pool: str, num_classes: int) -> str:
    """``"avg"``, or ``""``: no pooling, and ``forward`` returns the unpooled features (the head,
    if any, is kept for a later ``reset_classifier``)."""
    if global_pool not in POOLS:
        raise ValueError(f"global_pool must be 'avg' or '' (unpooled), not {global_pool!r}")
    return global_pool
