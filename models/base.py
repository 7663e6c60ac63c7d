"""What every model here shares: input handling, neuron reset, the classifier head, timm's API."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from . import memory
from .neuron import reset_net, set_backend

LAYOUTS = ("imagenet", "cifar", "dvs")


def check_no_dropout(family: str, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
    """The originals accept drop rates but never apply them; refuse rather than ignore."""
    if drop_rate or drop_path_rate:
        raise ValueError(
            f"{family} has no dropout or stochastic depth: the original code accepts "
            f"drop_rate/drop_path_rate but never applies them (its training scripts pass 0.1-0.2 "
            f"with no effect). Omit them or pass 0 (got drop_rate={drop_rate}, "
            f"drop_path_rate={drop_path_rate}).")


class SpikingClassifier(nn.Module):
    """Base class: subclasses build the trunk and implement ``forward_trunk`` and ``pool``.

    Input is ``[B, C, H, W]`` for static images (repeated over ``T`` time steps, the "direct
    encoding" of all three papers) or ``[B, T, C, H, W]`` for event frames (used as given).
    Neuron state is reset at the start of every forward, so a forgotten reset between batches
    can never leak membrane potential into the next batch.
    """

    def __init__(self, layout: str, num_classes: int, embed_dim: int, T: int, img_size: int | None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, activation_memory: str = "compact"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown {type(self).__name__} layout {layout!r}; choose one of {LAYOUTS}")
        check_no_dropout(type(self).__name__, drop_rate, drop_path_rate)
        super().__init__()
        self.layout = layout
        #: "image" models repeat a 4-D input T times; "events" models require a 5-D input.
        self.input_kind = "events" if layout == "dvs" else "image"
        self.img_size = img_size
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.T = T
        #: "compact" or "standard": how a training forward stores what backward needs (models/memory.py)
        self.activation_memory = memory.check_mode(activation_memory)

    def init_head(self, backend: str | None) -> None:
        """Create the head, then apply the originals' init and the neuron backend."""
        self.head = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        set_backend(self, backend)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The originals only re-initialise Linear layers (the head); convs keep torch defaults.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def time_major(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[T, B, C, H, W]`` (repeat) or ``[B, T, ...]`` -> ``[T, B, ...]``."""
        if x.dim() == 4 and self.input_kind == "image":
            return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        if x.dim() == 5:
            return x.permute(1, 0, 2, 3, 4)
        expected = "[B, C, H, W] or [B, T, C, H, W]" if self.input_kind == "image" else "[B, T, C, H, W]"
        raise ValueError(f"{type(self).__name__} expects input {expected}, got shape {tuple(x.shape)}")

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` -> the last block's output (time-major)."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk output -> ``[B, embed_dim]`` features for the head."""
        raise NotImplementedError

    # timm's model API -------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        reset_net(self)
        with memory.compact_forward(self.activation_memory, self.training):
            return self.forward_trunk(self.time_major(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block, patch embedding and stem in the backward pass
        instead of storing its activations (timm's API). Outputs and gradients are unchanged."""
        from .layers import Checkpointable

        def mark(module: nn.Module) -> None:     # the outermost checkpointable parts only
            for child in module.children():
                if isinstance(child, Checkpointable):
                    child.grad_checkpointing = enable
                else:
                    mark(child)
        mark(self)

    def set_activation_memory(self, mode: str) -> None:
        """``"compact"`` or ``"standard"`` (see :mod:`models.memory`); outputs and gradients are
        the same bits either way."""
        self.activation_memory = memory.check_mode(mode)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)
