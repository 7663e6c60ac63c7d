"""Safe loading of model weights: ours and the original repositories' checkpoint layouts.

Checkpoints from the internet are untrusted, so they are read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only. The
originals also stored an ``argparse.Namespace`` of their arguments (MAE-style ``save_model``,
timm's ``CheckpointSaver``); that class is explicitly allowed. Anything else is refused with an
error naming the type, and is never executed.

Layouts understood: ``{'model': sd}`` (MAE/DeiT, the DVS scripts, ours), ``{'state_dict': sd}``
and ``{'state_dict_ema': sd}`` (timm), ``{'model_ema': sd}`` (ours), or a bare state dict; keys
may carry DDP's ``module.`` prefix.

A *source* is any of: a checkpoint file (``.pth``/``.pth.tar`` in those layouts, or
``.safetensors``), a folder written by ``python -m tools.convert_checkpoint`` (``model.safetensors``
+ ``config.json``), or ``hf_hub:<org>/<name>`` (fetched by ``huggingface_hub``, so
``HF_HUB_OFFLINE=1`` and its cache work as usual); safetensors files are never unpickled.
:func:`load_checkpoint` is the one loader: ``pretrained=True`` (through timm's builder and
:func:`filter_state_dict`), ``--initial-checkpoint``, ``test.py --checkpoint`` and
``tools.convert_checkpoint`` all read weights through it.

Unused LayerNorms: Spikingformer and SGLFormer-ImageNet define two LayerNorms per block that
their code never calls (so they always hold weight 1, bias 0). The models here leave them out;
:func:`fit_state_dict` accounts for those keys of the authors' checkpoints (and refuses any
that holds other values), and :func:`to_original` puts them back for the original code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

#: Classes a checkpoint may contain besides tensors and builtins.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HUB_PREFIXES = ("hf_hub:", "hf-hub:")


def safe_load(path: str | os.PathLike, extra_globals: Iterable[Any] = ()) -> Any:
    """``torch.load`` restricted to tensors, builtins and :data:`SAFE_GLOBALS`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        blocked = [ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln]
        if blocked:
            raise CheckpointError(
                f"{path}: refused to unpickle a non-tensor object ({blocked[0]}). Only tensors, "
                f"builtins and argparse.Namespace are allowed; re-save the weights alone with "
                f"torch.save(model.state_dict(), ...) from a trusted environment.") from None
        # torch wraps the unpickler's reason in boilerplate; keep the line that says what broke.
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        useful = [ln for ln in lines if not ln.startswith(boilerplate)]
        detail = useful[0] if useful else (lines[0] if lines else exc.__class__.__name__)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from None


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights inside any supported checkpoint layout, without ``module.`` prefixes."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    keys = ("model_ema", "state_dict_ema") if use_ema else ("model", "state_dict", "model_state_dict")
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            sd = checkpoint[key]
            break
    else:
        if use_ema:
            raise CheckpointError(f"no EMA weights in this checkpoint (keys: {sorted(checkpoint)[:8]})")
        if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError("no model weights found: expected a state dict or a dict with one "
                                  f"of {keys} (keys: {sorted(map(str, checkpoint))[:8]})")
        sd = checkpoint
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def check_compatible(model: torch.nn.Module, sd: dict[str, torch.Tensor], skip=None) -> None:
    """Raise one readable error listing every key/shape mismatch between `sd` and `model`
    (the model's keys for which ``skip(key)`` is true are not compared)."""
    own = {k: v for k, v in model.state_dict().items() if skip is None or not skip(k)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def some(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {some(shapes)}")
    if missing:
        parts.append(f"{len(missing)} keys missing from the checkpoint: {some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {some(unexpected)}")
    hint = ("the checkpoint is for another variant or configuration (check the model name, "
            "num_classes, T and img_size)")
    raise CheckpointError(f"checkpoint does not fit {type(model).__name__}: {'; '.join(parts)}. "
                          f"Probably {hint}.")


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


def fit_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor],
                   adaptable: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """`sd` without the original's never-used parameters (the LayerNorms checked to hold their
    initial values), checked to fit `model` exactly (one error listing every mismatch). Keys that
    start with one of ``adaptable`` are not checked (timm adapts or drops them: the head, the
    first conv)."""
    sd = dict(sd)
    for key, unused in _unused(model).items():
        if key in sd and tuple(sd[key].shape) == unused.shape:    # another shape: listed by the check below
            value = sd.pop(key)
            if unused.value is not None and not bool((value == unused.value).all()):
                raise CheckpointError(f"{key} in the checkpoint holds trained values, but the original code never "
                                      f"uses this parameter (it stays {unused.value:g}): the checkpoint is not "
                                      f"from {type(model).__name__}'s original architecture")
    prefixes = tuple(f"{name}." for name in adaptable)
    check_compatible(model, {k: v for k, v in sd.items() if not k.startswith(prefixes)},
                     skip=lambda k: k.startswith(prefixes))
    return sd


def _unused(model: torch.nn.Module) -> dict:
    """``model.unused_parameters()`` (models/base.py), or nothing for a model without them."""
    return getattr(model, "unused_parameters", dict)()


def filter_state_dict(checkpoint: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: any supported layout -> the model's keys. The classifier
    and the first conv are left to timm, which drops the head for another ``num_classes`` and
    adapts the first conv to another ``in_chans``, then loads the rest strictly."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    adaptable = [cfg.get("classifier", "head"), cfg.get("first_conv", "")]
    return fit_state_dict(model, extract_state_dict(checkpoint), adaptable=[a for a in adaptable if a])


def to_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict as the original code's ``load_state_dict(strict=True)`` wants it: the
    never-used parameters back, in the original order, at the values they keep there (a random
    initial value is written as zeros: nothing reads it)."""
    own = model.state_dict()
    unused = _unused(model)
    if not unused:
        return own
    like = next(iter(own.values()))

    def make(u) -> torch.Tensor:
        return torch.full(u.shape, 0.0 if u.value is None else u.value, dtype=like.dtype, device=like.device)

    out = {name: make(u) for name, u in unused.items() if not u.before}
    for key, value in own.items():
        for name, u in unused.items():
            if u.before and name not in out and (key == u.before or key.startswith(u.before + ".")):
                out[name] = make(u)
        out[key] = value
    for name, u in unused.items():      # what they preceded is gone (a model without its head): at the end
        if name not in out:
            out[name] = make(u)
    return out


def load_checkpoint(model: torch.nn.Module, source: str | os.PathLike, use_ema: bool = False,
                    sha256: str | None = None, cache_dir=None) -> dict:
    """Load the weights of a source (see the module docstring) into `model`, strictly, and return
    the whole checkpoint dict. ``sha256``: checked before anything is read."""
    checkpoint = read_checkpoint(source, sha256, cache_dir)
    model.load_state_dict(fit_state_dict(model, extract_state_dict(checkpoint, use_ema=use_ema)), strict=True)
    return checkpoint if isinstance(checkpoint, dict) else {}
