"""Released weights: where they are, how to resolve a weights source, and sha256-checked loading.

A *source* is any of: a checkpoint file (``.pth``/``.pth.tar`` in the three original layouts, or
``.safetensors``), a folder written by ``python -m tools.convert_checkpoint`` (``model.safetensors``
+ ``config.json``), or ``hf_hub:<org>/<name>`` (fetched by ``huggingface_hub``, so
``HF_HUB_OFFLINE=1`` and its cache work as usual). Pickles are only read with
``weights_only=True`` (models/checkpoint.py); safetensors files are never unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, check_compatible, extract_state_dict, safe_load

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HUB_PREFIXES = ("hf_hub:", "hf-hub:")

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


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_hub_id(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(HUB_PREFIXES)


def is_weights_source(source: Any) -> bool:
    """True for a source only this module understands (a converted folder, a hub id, safetensors)."""
    if source is None:
        return False
    if is_hub_id(source):
        return True
    path = Path(source)
    return path.is_dir() or path.suffix == ".safetensors"


def _hub_file(repo_id: str, filename: str, cache_dir=None) -> Path:
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except Exception as exc:  # offline without a cached copy, unknown repo, no network ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"hf_hub:{repo_id}: cannot get {filename} ({reason}); check the id, or unset "
                              f"HF_HUB_OFFLINE / pass cache_dir where it is cached") from None


def resolve(source: str | os.PathLike, cache_dir=None) -> tuple[Path, dict]:
    """The weights file a source names, and the config.json next to it ({} if none)."""
    if is_hub_id(source):
        repo_id = str(source).split(":", 1)[1]
        weights = _hub_file(repo_id, WEIGHTS_NAME, cache_dir)
        try:  # config.json carries the sha256 to check and the training settings
            config = _hub_file(repo_id, CONFIG_NAME, cache_dir)
        except CheckpointError:
            return weights, {}
        return weights, json.loads(config.read_text())
    path = Path(source)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} in this folder; make one with "
                                  f"python -m tools.convert_checkpoint SRC.pth --variant NAME --out {path}")
        config = path / CONFIG_NAME
        return weights, json.loads(config.read_text()) if config.is_file() else {}
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path, {}


def check_sha256(path: Path, expected: str | None) -> str:
    """Compare the file's sha256 with `expected`; with none known, print it so users can record it."""
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        raise CheckpointError(f"{path}: sha256 {actual} does not match the expected {expected}; the file is "
                              f"corrupt or a different checkpoint, download it again")
    if not expected:
        print(f"{path}: sha256 {actual} (no published checksum to compare with)")
    return actual


def read_checkpoint(source: str | os.PathLike, sha256: str | None = None, cache_dir=None) -> dict:
    """The checkpoint dict a source holds: pickles as saved, safetensors as ``{'model': sd}``."""
    path, config = resolve(source, cache_dir)
    expected = sha256 or config.get("pretrained_cfg", {}).get("sha256")
    if sha256 or expected or path.suffix == ".safetensors":
        check_sha256(path, expected)
    if path.suffix != ".safetensors":
        return safe_load(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    # a converted folder's config.json says what the weights were trained with (test.py reads it)
    return {"model": sd, "config": config["train_config"]} if "train_config" in config else {"model": sd}


def load_weights(model: torch.nn.Module, source: str | os.PathLike, sha256: str | None = None,
                 use_ema: bool = False, cache_dir=None) -> dict:
    """Load a source's weights into `model` (strict); return the checkpoint dict."""
    checkpoint = read_checkpoint(source, sha256, cache_dir)
    sd = extract_state_dict(checkpoint, use_ema=use_ema)
    check_compatible(model, sd)
    model.load_state_dict(sd, strict=True)
    return checkpoint


def missing_weights_message(name: str) -> str:
    entry = RELEASED.get(name)
    if entry is None:
        return (f"{name}: no released weights are known for this variant (README, 'Evaluate released weights'); "
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
