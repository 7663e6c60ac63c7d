"""The recipe behind ``tests/data/reference/*.pt``: tiny configs, seeded weights, one step.

The reference files were produced by running the ORIGINAL repositories' model code (see the
docs/developer.md) through :func:`run_case` with the weights of :func:`fill_weights`; the
equivalence tests run our models through the same function and compare. Because both model
definitions have identical ``state_dict`` layouts, the seeded fill gives both the same weights,
so no weights need to be stored.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

# name -> (our class name, our kwargs, input shape, input kind). Sizes are tiny but keep every
# structural feature: all stages, pooling positions, shortcuts, local/global attention, heads.
# QKFormer's CIFAR and DVS files hard-code 8 and 16 heads; the tiny configs use those values.
# Each original model file is traced with one config (ORIGINAL_FILE); the *_cifar100 and *_gesture
# configs also have more tokens than head channels where the family allows, so that the two
# attention association orders differ.
TINY = {
    "qkformer_imagenet": ("QKFormer", dict(layout="imagenet", embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                                           num_classes=5, T=2), (2, 3, 64, 64), "image"),
    "qkformer_cifar": ("QKFormer", dict(layout="cifar", embed_dim=32, depth=3, num_heads=8, mlp_ratio=2,
                                        num_classes=5, T=2), (2, 3, 16, 16), "image"),
    "qkformer_dvs": ("QKFormer", dict(layout="dvs", embed_dim=32, depth=2, num_heads=16, mlp_ratio=1,
                                      in_chans=2, num_classes=5), (2, 3, 2, 64, 64), "events"),
    "spikingformer_imagenet": ("Spikingformer", dict(layout="imagenet", embed_dim=32, depth=2, num_heads=2,
                                                     mlp_ratio=2, num_classes=5, T=2), (2, 3, 64, 64), "image"),
    "spikingformer_cifar": ("Spikingformer", dict(layout="cifar", embed_dim=32, depth=2, num_heads=2,
                                                  mlp_ratio=2, num_classes=5, T=2), (2, 3, 16, 16), "image"),
    # The original DVS tokenizer hard-codes 128x128 inputs.
    "spikingformer_dvs": ("Spikingformer", dict(layout="dvs", embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                                                in_chans=2, num_classes=5), (2, 2, 2, 128, 128), "events"),
    "sglformer_imagenet_early": ("SGLFormer", dict(layout="imagenet", embed_dim=24, depth=3, num_heads=2,
                                                   mlp_ratio=2, num_classes=5, T=2, stem_pool="early"),
                                 (2, 3, 64, 64), "image"),
    "sglformer_imagenet_late": ("SGLFormer", dict(layout="imagenet", embed_dim=24, depth=3, num_heads=2,
                                                  mlp_ratio=2, num_classes=5, T=2, stem_pool="late"),
                                (2, 3, 64, 64), "image"),
    # The original CIFAR head hard-codes 64 tokens, i.e. 32x32 inputs.
    "sglformer_cifar": ("SGLFormer", dict(layout="cifar", embed_dim=24, depth=1, num_heads=2, mlp_ratio=2,
                                          num_classes=5, T=2), (2, 3, 32, 32), "image"),
    "sglformer_dvs": ("SGLFormer", dict(layout="dvs", embed_dim=24, depth=1, num_heads=2, mlp_ratio=2,
                                        in_chans=2, num_classes=5, T=2, img_size=64), (2, 2, 2, 64, 64), "events"),
    "qkformer_cifar100": ("QKFormer", dict(layout="cifar", embed_dim=32, depth=4, num_heads=8, mlp_ratio=2,
                                           num_classes=7, T=2), (2, 3, 16, 16), "image"),
    "qkformer_gesture": ("QKFormer", dict(layout="dvs", embed_dim=32, depth=2, num_heads=16, mlp_ratio=4,
                                          in_chans=2, num_classes=6), (2, 2, 2, 64, 64), "events"),
    "spikingformer_cifar100": ("Spikingformer", dict(layout="cifar", embed_dim=32, depth=2, num_heads=4,
                                                     mlp_ratio=2, num_classes=7, T=2), (2, 3, 16, 16), "image"),
    "spikingformer_gesture": ("Spikingformer", dict(layout="dvs", embed_dim=32, depth=1, num_heads=4, mlp_ratio=2,
                                                    in_chans=2, num_classes=6), (2, 2, 2, 128, 128), "events"),
    "sglformer_cifar100": ("SGLFormer", dict(layout="cifar", embed_dim=24, depth=1, num_heads=4, mlp_ratio=2,
                                             num_classes=7, T=2), (2, 3, 32, 32), "image"),
    "sglformer_gesture": ("SGLFormer", dict(layout="dvs", embed_dim=24, depth=1, num_heads=4, mlp_ratio=2,
                                            in_chans=2, num_classes=6, T=2, img_size=64), (2, 2, 2, 64, 64), "events"),
    # Spikformer's ImageNet file hard-codes T=4 in its forward, its DVS stem 128x128 inputs.
    "spikformer_imagenet": ("Spikformer", dict(layout="imagenet", embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                                               num_classes=5, T=4), (2, 3, 64, 64), "image"),
    "spikformer_cifar": ("Spikformer", dict(layout="cifar", embed_dim=32, depth=2, num_heads=4, mlp_ratio=2,
                                            num_classes=5, T=2), (2, 3, 16, 16), "image"),
    "spikformer_dvs": ("Spikformer", dict(layout="dvs", embed_dim=32, depth=1, num_heads=4, mlp_ratio=2,
                                          in_chans=2, num_classes=5), (2, 2, 2, 128, 128), "events"),
}

# config -> the original repository's model file it stands for (docs/developer.md).
ORIGINAL_FILE = {
    "qkformer_cifar": "QKFormer cifar10/model.py", "qkformer_cifar100": "QKFormer cifar100/model.py",
    "qkformer_dvs": "QKFormer cifar10-dvs/model.py", "qkformer_gesture": "QKFormer dvs128-gesture/model.py",
    "qkformer_imagenet": "QKFormer imagenet/qkformer.py",
    "spikingformer_cifar": "Spikingformer cifar10/model.py", "spikingformer_cifar100": "Spikingformer cifar100/model.py",
    "spikingformer_dvs": "Spikingformer cifar10-dvs/model.py",
    "spikingformer_gesture": "Spikingformer dvs128-gesture/model.py",
    "spikingformer_imagenet": "Spikingformer imagenet/model.py",
    "sglformer_cifar": "SGLFormer cifar10/sglformer.py", "sglformer_cifar100": "SGLFormer cifar100/sglformer.py",
    "sglformer_dvs": "SGLFormer cifar10-dvs/sglformer.py", "sglformer_gesture": "SGLFormer dvs128-gesture/sglformer.py",
    "sglformer_imagenet_early": "SGLFormer imagenet/sglformer_ima.py",
    "sglformer_imagenet_late": "SGLFormer imagenet/sglformer_ima2.py",
    "spikformer_imagenet": "Spikformer imagenet/model.py", "spikformer_cifar": "Spikformer cifar10/model.py",
    "spikformer_dvs": "Spikformer cifar10dvs/model.py",
}

SEED = 1234


def fill_weights(model: nn.Module, seed: int = SEED) -> None:
    """Deterministic weights that make every layer spike at a useful rate.

    Walks modules in ``state_dict`` order, drawing from one seeded generator: conv/linear
    weights uniform with variance 1/fan_in (x2), small biases, and batch norms with random
    affine parameters and running statistics (so eval mode is not an identity BN).
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    # The originals' never-called LayerNorms (left out of the models here) drew their values in
    # module order, just before the module they precede (``Unused.before``): draw them too.
    # (Parameters of the model itself, like Spikformer DVS's pos_embed, are not drawn.)
    unused = getattr(model, "unused_parameters", dict)()
    with torch.no_grad():
        for name, module in model.named_modules():
            for key, u in unused.items():
                if u.before == name and name and key.endswith(".weight"):
                    uniform(u.shape, 0.5, 1.5), uniform(u.shape, -0.1, 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias.shape, 0.4, 1.0))
                module.running_mean.copy_(uniform(module.running_mean.shape, -0.2, 0.2))
                module.running_var.copy_(uniform(module.running_var.shape, 0.05, 0.2))
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in) * 2.0
                module.weight.copy_(uniform(module.weight.shape, -bound, bound))
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))


def make_input(shape, kind: str, seed: int = SEED) -> torch.Tensor:
    """Static images ~ N(0, 1); event frames = small non-negative spike counts."""
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "image":
        return torch.randn(shape, generator=g)
    return (torch.rand(shape, generator=g) < 0.25).float() + (torch.rand(shape, generator=g) < 0.05).float()


@contextlib.contextmanager
def _nothing(model, x):
    yield


def run_case(model: nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype, reset, wrap=None) -> dict:
    """Fresh seeded weights, one forward in `mode`, backward of a seeded projection of the logits.

    Returns the logits and every parameter gradient, in `dtype`. `reset` is the
    neuron-reset function of the implementation under test. ``wrap(model, x)``, a context
    manager, surrounds the forward and backward (``optrace.record`` traces them with it).
    """
    model.float()  # fill in float32 first so both dtypes start from the same values
    fill_weights(model)
    model.to(dtype)
    model.train(mode == "train")
    reset(model)
    model.zero_grad(set_to_none=True)
    x = x.to(dtype).clone().requires_grad_(True)
    with (wrap or _nothing)(model, x):
        logits = model(x)
        g = torch.Generator().manual_seed(SEED + 2)
        weight = torch.randn(logits.shape, generator=g, dtype=torch.float64).to(dtype)
        (logits * weight).sum().backward()
    out = {"logits": logits.detach().clone(),
           "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}}
    reset(model)
    return out
