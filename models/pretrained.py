"""Released weights: where the authors published them, and what ``pretrained=True`` adds to a
variant's pretrained_cfg. Reading and loading any weights source is models/checkpoint.py's job.
"""
from __future__ import annotations

from typing import Any

from .checkpoint import (CONFIG_NAME, HUB_PREFIXES, WEIGHTS_NAME, CheckpointError, check_sha256,  # noqa: F401
                         is_hub_id, is_weights_source, load_checkpoint, read_checkpoint, resolve, sha256_of)

#: Checkpoints the authors released (README links). No checksum was ever published for any of
#: them, so ``sha256`` is None and the loader prints the digest it computes instead of checking.
RELEASED: dict[str, dict[str, Any]] = {
    "spikingformer_8_768": dict(
        dataset="imagenet", num_classes=1000, T=4, img_size=224, top1=75.85,
        file_name="checkpoint-284.pth.tar", sha256=None, config="imagenet/spikingformer_8_768.yml",
        url="https://pan.baidu.com/s/1LsECpFOxh30O3vHWow8OGQ (password abcd)",
        paper="Spikingformer, arXiv 2304.11954"),
    "spikingformer_cifar_4_384": dict(
        dataset="cifar10", num_classes=10, T=4, img_size=32, top1=95.81,
        file_name="checkpoint-405.pth.tar", sha256=None, config="cifar10/spikingformer.yml",
        url="https://pan.baidu.com/s/1mjpD2gtz5ZX0M8N3jobjzA (400-epoch model)",
        paper="Spikingformer, arXiv 2304.11954"),
    "sglformer_cifar_4_384": dict(
        dataset="cifar100", num_classes=100, T=4, img_size=32, top1=82.26,
        file_name=None, sha256=None, config="cifar100/sglformer.yml",
        url="https://pan.baidu.com/s/1F5vsg9V4Vaj4jbTC103m3A?pwd=thd3 (CIFAR100 and ImageNet folder)",
        paper="SGLFormer, Frontiers in Neuroscience 2024"),
    "qkformer_10_384": dict(
        dataset="imagenet", num_classes=1000, T=4, img_size=224, top1=78.80,
        file_name="checkpoint-199.pth", sha256=None, config="imagenet/qkformer_10_384.yml",
        url="announced 2024-10-10; the link is no longer public (QKFormer issue #14)",
        paper="QKFormer, NeurIPS 2024"),
    "qkformer_10_768": dict(
        dataset="imagenet", num_classes=1000, T=4, img_size=224, top1=84.22,
        file_name="checkpoint-191.pth", sha256=None, config="imagenet/qkformer_10_768.yml",
        url="announced 2024-10-10; the link is no longer public (QKFormer issue #14)",
        paper="QKFormer, NeurIPS 2024"),
}


def missing_weights_message(name: str) -> str:
    entry = RELEASED.get(name)
    if entry is None:
        return (f"{name}: no released weights are known for this variant (docs/released-weights.md); "
                f"train it, or pass pretrained_cfg_overlay=dict(file='your.pth' or a converted folder)")
    return (f"{name}: no local weights (none download automatically). Get {entry['file_name'] or 'the checkpoint'} "
            f"from: {entry['url']}; "
            f"then pass pretrained_cfg_overlay=dict(file='PATH'), or convert it with python -m "
            f"tools.convert_checkpoint PATH --variant {name} --out DIR and use pretrained_cfg_overlay=dict(file='DIR') "
            f"or an hf_hub: id")


def default_cfg(name: str) -> dict:
    """The pretrained_cfg part a variant's released weights add (file name, checksum, num_classes)."""
    entry = RELEASED.get(name)
    if entry is None:
        return {}
    return dict(file_name=entry["file_name"], sha256=entry["sha256"], num_classes=entry["num_classes"],
                url=entry["url"], paper=entry["paper"], dataset=entry["dataset"], top1=entry["top1"])


def pretrained_source(name: str, cfg: dict) -> str:
    """Where `cfg` (a variant's pretrained_cfg, after overlay) says the weights are."""
    if cfg.get("file"):
        return cfg["file"]
    if cfg.get("hf_hub_id"):
        return "hf_hub:" + cfg["hf_hub_id"]
    raise CheckpointError(missing_weights_message(name))
