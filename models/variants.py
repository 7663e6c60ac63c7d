"""Every published variant, registered with timm: ``timm.create_model(name, **overrides)``.

The defaults reproduce what the original code builds for that row of the papers' tables;
keyword arguments override them (``T``, ``num_classes``, ``img_size``, ``fix_tb_merge``,
``backend``, ...). docs/models.md gives the paper each row comes from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Any

import torch
from timm.models import PretrainedCfg, build_model_with_cfg, register_model

from . import pretrained as _pretrained
from .checkpoint import extract_state_dict, filter_state_dict
from .options import split
from .qkformer import QKFormer
from .sglformer import SGLFormer
from .spikformer import Spikformer
from .spikingformer import Spikingformer

IMAGENET = dict(in_chans=3, num_classes=1000, T=4, img_size=224)
CIFAR = dict(in_chans=3, num_classes=10, T=4, img_size=32)
# Event frames: 2 polarity channels, 128x128; T comes with the data for QKFormer/Spikingformer,
# and is part of SGLFormer's head. 16 frames is the originals' default.
CIFAR10DVS = dict(in_chans=2, num_classes=10, T=16, img_size=128)
GESTURE = dict(in_chans=2, num_classes=11, T=16, img_size=128)

_DATA_CFG = {
    224: dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    32: dict(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    128: dict(input_size=(2, 128, 128), mean=(0.0, 0.0), std=(1.0, 1.0)),
}

#: name -> (model class, default arguments, one-line description)
VARIANTS: dict[str, tuple[type, dict[str, Any], str]] = {
    # QKFormer (NeurIPS 2024)
    "qkformer_10_384": (QKFormer, dict(layout="imagenet", embed_dim=384, depth=10, num_heads=6, **IMAGENET),
                        "ImageNet HST-10-384"),
    "qkformer_10_512": (QKFormer, dict(layout="imagenet", embed_dim=512, depth=10, num_heads=8, **IMAGENET),
                        "ImageNet HST-10-512"),
    "qkformer_10_768": (QKFormer, dict(layout="imagenet", embed_dim=768, depth=10, num_heads=12, **IMAGENET),
                        "ImageNet HST-10-768 (also evaluated at 288 and 384)"),
    "qkformer_cifar_4_384": (QKFormer, dict(layout="cifar", embed_dim=384, depth=4, num_heads=8, **CIFAR),
                             "CIFAR10/100 HST-4-384"),
    "qkformer_cifar10dvs_2_256": (QKFormer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                                 mlp_ratio=1, **CIFAR10DVS), "CIFAR10-DVS HST-2-256"),
    "qkformer_gesture_2_256": (QKFormer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                              mlp_ratio=4, **GESTURE), "DVS128 Gesture HST-2-256"),
    # Spikingformer (arXiv 2304.11954)
    "spikingformer_8_384": (Spikingformer, dict(layout="imagenet", embed_dim=384, depth=8, num_heads=12, **IMAGENET),
                            "ImageNet Spikingformer-8-384"),
    "spikingformer_8_512": (Spikingformer, dict(layout="imagenet", embed_dim=512, depth=8, num_heads=8, **IMAGENET),
                            "ImageNet Spikingformer-8-512"),
    "spikingformer_8_768": (Spikingformer, dict(layout="imagenet", embed_dim=768, depth=8, num_heads=8, **IMAGENET),
                            "ImageNet Spikingformer-8-768"),
    "spikingformer_cifar_4_384": (Spikingformer, dict(layout="cifar", embed_dim=384, depth=4, num_heads=12, **CIFAR),
                                  "CIFAR10/100 Spikingformer-4-384"),
    "spikingformer_cifar_4_256": (Spikingformer, dict(layout="cifar", embed_dim=256, depth=4, num_heads=8, **CIFAR),
                                  "CIFAR10/100 Spikingformer-4-256"),
    "spikingformer_cifar_2_384": (Spikingformer, dict(layout="cifar", embed_dim=384, depth=2, num_heads=12, **CIFAR),
                                  "CIFAR10/100 Spikingformer-2-384"),
    "spikingformer_cifar10dvs_2_256": (Spikingformer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                                           **CIFAR10DVS), "CIFAR10-DVS Spikingformer-2-256"),
    "spikingformer_gesture_2_256": (Spikingformer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                                        **GESTURE), "DVS128 Gesture Spikingformer-2-256"),
    # SGLFormer (Frontiers in Neuroscience 2024); "star" = the paper's "*" rows (early pooling)
    "sglformer_8_384": (SGLFormer, dict(layout="imagenet", embed_dim=384, depth=8, num_heads=6,
                                        stem_pool="late", **IMAGENET), "ImageNet SGLFormer-8-384"),
    "sglformer_8_512": (SGLFormer, dict(layout="imagenet", embed_dim=512, depth=8, num_heads=8,
                                        stem_pool="late", **IMAGENET), "ImageNet SGLFormer-8-512"),
    "sglformer_8_512_star": (SGLFormer, dict(layout="imagenet", embed_dim=512, depth=8, num_heads=8,
                                             stem_pool="early", **IMAGENET), "ImageNet SGLFormer-8-512*"),
    "sglformer_8_768_star": (SGLFormer, dict(layout="imagenet", embed_dim=768, depth=8, num_heads=12,
                                             stem_pool="early", **IMAGENET), "ImageNet SGLFormer-8-768*"),
    "sglformer_cifar_4_384": (SGLFormer, dict(layout="cifar", embed_dim=384, depth=1, num_heads=16, **CIFAR),
                              "CIFAR10/100 SGLFormer-4-384"),
    "sglformer_cifar10dvs_3_256": (SGLFormer, dict(layout="dvs", embed_dim=256, depth=1, num_heads=16,
                                                   **CIFAR10DVS), "CIFAR10-DVS SGLFormer-3-256 (T=10 or 16)"),
    "sglformer_gesture_3_256": (SGLFormer, dict(layout="dvs", embed_dim=256, depth=1, num_heads=16,
                                                **GESTURE), "DVS128 Gesture SGLFormer-3-256 (T=10 or 16)"),
    # Spikformer (ICLR 2023): no released weights. The original ImageNet file builds 8-512 with 8 heads;
    # the other rows keep 64 channels per head (12 for 768), except 8-384 with 12 as Spikingformer's.
    "spikformer_8_384": (Spikformer, dict(layout="imagenet", embed_dim=384, depth=8, num_heads=12, **IMAGENET),
                         "ImageNet Spikformer-8-384"),
    "spikformer_6_512": (Spikformer, dict(layout="imagenet", embed_dim=512, depth=6, num_heads=8, **IMAGENET),
                         "ImageNet Spikformer-6-512"),
    "spikformer_8_512": (Spikformer, dict(layout="imagenet", embed_dim=512, depth=8, num_heads=8, **IMAGENET),
                         "ImageNet Spikformer-8-512"),
    "spikformer_10_512": (Spikformer, dict(layout="imagenet", embed_dim=512, depth=10, num_heads=8, **IMAGENET),
                          "ImageNet Spikformer-10-512"),
    "spikformer_8_768": (Spikformer, dict(layout="imagenet", embed_dim=768, depth=8, num_heads=12, **IMAGENET),
                         "ImageNet Spikformer-8-768"),
    "spikformer_cifar_4_384": (Spikformer, dict(layout="cifar", embed_dim=384, depth=4, num_heads=12, **CIFAR),
                               "CIFAR10/100 Spikformer-4-384"),
    "spikformer_cifar_4_256": (Spikformer, dict(layout="cifar", embed_dim=256, depth=4, num_heads=8, **CIFAR),
                               "CIFAR10/100 Spikformer-4-256"),
    "spikformer_cifar_2_384": (Spikformer, dict(layout="cifar", embed_dim=384, depth=2, num_heads=12, **CIFAR),
                               "CIFAR10/100 Spikformer-2-384"),
    "spikformer_cifar10dvs_2_256": (Spikformer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                                     **CIFAR10DVS), "CIFAR10-DVS Spikformer-2-256"),
    "spikformer_gesture_2_256": (Spikformer, dict(layout="dvs", embed_dim=256, depth=2, num_heads=16,
                                                  **GESTURE), "DVS128 Gesture Spikformer-2-256"),
}


def _first_conv(cls: type, layout: str) -> str:
    if cls is QKFormer:
        return "patch_embed1.proj_conv"
    if cls is Spikingformer:
        return "patch_embed.block0_conv" if layout == "cifar" else "patch_embed.proj_conv"
    if cls is Spikformer:
        return "patch_embed.proj_conv"
    return "patch_embed.proj_conv" if layout == "imagenet" else "stem.conv.conv3x3"


def _timm_cfg(name: str) -> dict:
    """timm's registry entry (``timm.models.get_pretrained_cfg(name)``): data settings, the keys
    timm's API expects and, for the released weights, where the authors published them. No
    url/file: nothing downloads by itself."""
    cls, defaults, description = VARIANTS[name]
    layout = defaults["layout"]
    stb = cls is SGLFormer and layout != "imagenet"   # its head's kernel spans all tokens: a fixed size
    side = defaults["img_size"] // (4 if layout == "cifar" else 16)
    cfg = dict(_DATA_CFG[defaults["img_size"]], num_classes=defaults["num_classes"], interpolation="bicubic",
               crop_pct=1.0, classifier="head", first_conv=_first_conv(cls, layout),
               pool_size=(1, 1) if stb else (side, side), fixed_input_size=stb, description=description)
    entry = _pretrained.RELEASED.get(name)
    if entry:
        cfg.update(num_classes=entry["num_classes"], origin_url=entry["url"], paper_name=entry["paper"],
                   notes=(f"file: {entry['file_name'] or 'not stated'}",
                          f"sha256: {entry['sha256'] or 'none published'}",
                          f"{entry['num_classes']} classes, top-1 {entry['top1']} on {entry['dataset']}"))
    return cfg


def _construct(cls: type, device=None, dtype=None, **kwargs):
    """The model class, built on ``device`` (e.g. ``"meta"``: no memory) and cast to ``dtype``;
    the runtime options among ``kwargs`` go in as one :class:`models.options.RuntimeOptions`."""
    options, kwargs = split(kwargs)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(options=options, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def _released_cfg(name: str, pretrained_cfg, overlay) -> dict:
    """Released-weights defaults, then timm's pretrained_cfg (a dict from a hub config.json), then the overlay."""
    cfg = _pretrained.default_cfg(name)
    if hasattr(pretrained_cfg, "to_dict"):
        pretrained_cfg = pretrained_cfg.to_dict()
    if isinstance(pretrained_cfg, dict):
        cfg.update({k: v for k, v in pretrained_cfg.items() if v is not None})
    cfg.update(overlay or {})
    return cfg


_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}


def create(name: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
           cache_dir=None, **kwargs):
    """A variant through timm's builder (``timm.create_model(name, ...)`` calls this).

    ``pretrained=True`` reads the weights with this repository's loader (models/checkpoint.py:
    sha256, ``weights_only``, the authors' layouts) from ``pretrained_cfg_overlay=dict(file=...)``
    or an ``hf_hub_id``; timm then adapts them (a different ``num_classes`` drops the head,
    ``in_chans`` adapts the first conv) and loads the rest strictly."""
    cls, defaults, _ = VARIANTS[name]
    kwargs.pop("pretrained_model_args", None)
    overlay = dict(pretrained_cfg_overlay or {})
    if pretrained:
        cfg = _released_cfg(name, pretrained_cfg, overlay)
        source = _pretrained.pretrained_source(name, cfg)
        if not _pretrained.is_hub_id(source) and os.path.isdir(source):
            # a converted folder records the arguments its weights need (T, num_classes, fix_tb_merge ...)
            kwargs = {**_pretrained.resolve(source)[1].get("model_args", {}), **kwargs}
        plain_file = not _pretrained.is_weights_source(source)
        checkpoint = _pretrained.read_checkpoint(source, cfg.get("sha256") if plain_file else None, cache_dir)
        head = extract_state_dict(checkpoint).get("head.weight")
        trained_classes = head.shape[0] if head is not None else cfg.get("num_classes") or defaults["num_classes"]
        kwargs.setdefault("num_classes", trained_classes)
        # timm loads what it is handed (the checkpoint read above), not from where the weights came
        where = ("url", "file", "hf_hub_id", "source")
        overlay = {k: v for k, v in cfg.items() if k in _CFG_FIELDS and k not in where}
        overlay.update(state_dict=checkpoint, num_classes=trained_classes, source=None)
        extra = {k: v for k, v in cfg.items() if k not in _CFG_FIELDS or k in where}   # file, sha256, top1 ...
        if isinstance(pretrained_cfg, dict):   # e.g. a hub config.json's, with this repository's keys too
            pretrained_cfg = {k: v for k, v in pretrained_cfg.items() if k in _CFG_FIELDS}
    features = kwargs.get("features_only", False)
    model = build_model_with_cfg(
        functools.partial(_construct, cls), name, pretrained, pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay, pretrained_filter_fn=filter_state_dict, cache_dir=cache_dir,
        feature_cfg=dict(feature_cls="getter", out_indices=None), **{**defaults, **kwargs})
    for holder in (model, getattr(model, "model", None)) if features else (model,):
        if holder is not None and isinstance(getattr(holder, "pretrained_cfg", None), dict):
            holder.pretrained_cfg.pop("state_dict", None)   # the weights are in the model now
            if pretrained:
                holder.pretrained_cfg.update(extra)
    return model


def build(name: str, **overrides):
    """A registered variant, as ``timm.create_model(name, **overrides)`` builds it."""
    if name not in VARIANTS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(VARIANTS)}")
    return create(name, **overrides)


def _register(name: str) -> None:
    entrypoint = functools.partial(create, name)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = VARIANTS[name][2]
    entrypoint.__module__ = __name__
    register_model(entrypoint)


#: read by timm's register_model
default_cfgs = {_name: _timm_cfg(_name) for _name in VARIANTS}

for _name in VARIANTS:
    _register(_name)
