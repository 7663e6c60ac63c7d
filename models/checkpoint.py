"""Safe loading of model weights: ours and the original repositories' checkpoint layouts.

Checkpoints from the internet are untrusted, so they are read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only. The
originals also stored an ``argparse.Namespace`` of their arguments (MAE-style ``save_model``,
timm's ``CheckpointSaver``); that class is explicitly allowed. Anything else is refused with an
error naming the type, and is never executed.

Layouts understood: ``{'model': sd}`` (MAE/DeiT, the DVS scripts, ours), ``{'state_dict': sd}``
and ``{'state_dict_ema': sd}`` (timm), ``{'model_ema': sd}`` (ours), or a bare state dict; keys
may carry DDP's ``module.`` prefix.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Iterable

import torch

#: Classes a checkpoint may contain besides tensors and builtins.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


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


def check_compatible(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Raise one readable error listing every key/shape mismatch between `sd` and `model`."""
    own = model.state_dict()
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


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, use_ema: bool = False) -> dict:
    """Load weights from `path` into `model` (strict) and return the whole checkpoint dict.

    `path` may also be a converted folder, a .safetensors file or an ``hf_hub:`` id (models/pretrained.py)."""
    from . import pretrained  # imports this module
    if pretrained.is_weights_source(path):
        return pretrained.load_weights(model, path, use_ema=use_ema)
    checkpoint = safe_load(path)
    sd = extract_state_dict(checkpoint, use_ema=use_ema)
    check_compatible(model, sd)
    model.load_state_dict(sd, strict=True)
    return checkpoint if isinstance(checkpoint, dict) else {}
