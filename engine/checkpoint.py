"""Training checkpoints: written atomically, complete enough to resume exactly.

``last.pth`` is rewritten after every epoch and ``best.pth`` whenever the validation top-1
improves. Each write goes to a temporary file in the same folder, is flushed to disk, and then
atomically renamed over the old file, so a run killed at any moment leaves either the previous
checkpoint or the new one, never a torn file.

Contents: ``model`` (the bare model's state dict, the key the original ImageNet/DVS scripts
and :func:`models.load_checkpoint` use), ``model_ema``, ``optimizer``, ``scheduler``, ``scaler``,
``epoch`` (last completed), ``best_top1``/``best_epoch``, ``config`` (a plain dict) and ``rng``.
Only tensors and builtins, so they load with ``weights_only=True``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import CheckpointError, safe_load
from models.checkpoint import fit_state_dict, to_original

from .errors import CheckpointWriteError, ConfigError

# Config keys that change the model; resuming with different values cannot work.
MODEL_KEYS = ("model", "T", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size", "num_classes",
              "fix_tb_merge", "dataset")


# Config keys whose effect the checkpoint's optimizer and scheduler state restores on resume: a
# new value would be silently overridden, so resuming with one is refused.
SCHEDULE_KEYS = ("opt", "lr", "weight_decay", "momentum", "opt_eps", "opt_betas", "sched", "epochs",
                 "warmup_epochs", "warmup_lr", "min_lr", "cooldown_epochs", "decay_rate", "decay_epochs",
                 "warmup_prefix", "sched_on_updates")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` into a temporary file beside `path`, then rename: `path` is either the old
    checkpoint or the new one, never half of one. A failing write (full disk, quota, I/O error)
    removes the partial file and raises :class:`CheckpointWriteError` naming the path, the bytes
    the checkpoint needs and those free there, so that training stops instead of going on
    without checkpoints."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = f"; {path} from before is intact" if path.exists() else ""
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({exc.strerror or exc}): it needs about "
            f"{_tensor_bytes(obj) / 2**20:.0f} MB and {_free_bytes(path.parent) / 2**20:.0f} MB are free there{kept}. "
            f"Free space (or point --output elsewhere) and resume with --resume auto.") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _tensor_bytes(obj: Any, seen: set | None = None) -> int:
    """Bytes of the tensors in a (nested) checkpoint, each storage counted once."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _free_bytes(folder: Path) -> int:
    try:
        stat = os.statvfs(folder)
        return stat.f_bavail * stat.f_frsize
    except OSError:
        return 0


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, model_ema, optimizer, scheduler, scaler, epoch: int, best: tuple[float, int],
                   config: dict) -> dict:
    return {"model": model.state_dict(),
            "model_ema": model_ema.module.state_dict() if model_ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best_top1": best[0], "best_epoch": best[1],
            "config": config, "rng": rng_state()}


def without_unused_layernorms(state: dict, model, optimizer) -> dict:
    """A training checkpoint written while Spikingformer and SGLFormer-ImageNet still held the
    originals' never-called LayerNorms (models/checkpoint.py): the model and EMA weights without
    them, and the optimizer state without their entries (they never had a gradient, so no state),
    the other parameters' ids renumbered. Other checkpoints are returned as they are."""
    unused = getattr(model, "unused_parameters", dict)()
    if not any(k in state["model"] for k in unused):
        return state
    state = dict(state, model=fit_state_dict(model, state["model"]))
    if state.get("model_ema") is not None:
        state["model_ema"] = fit_state_dict(model, state["model_ema"])
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    group_of = {n: i for i, group in enumerate(ours) for n in group}
    # they were 1-D, so in the group without weight decay, in the original parameter order
    no_decay = next((i for i, g in enumerate(optimizer.param_groups) if not g.get("weight_decay")), 0)
    order = [k for k in to_original(model) if k in group_of or k in unused]
    old = [[n for n in order if group_of.get(n, no_decay if n in unused else None) == i] for i in range(len(ours))]
    saved = state["optimizer"]
    if [len(g["params"]) for g in saved["param_groups"]] != [len(g) for g in old]:
        raise CheckpointError("the checkpoint's optimizer state does not match this model's parameters (with the "
                              "originals' unused LayerNorms); start a new run from its weights with "
                              "--initial-checkpoint instead of --resume")
    name_of = {i: n for g, names_ in zip(saved["param_groups"], old) for i, n in zip(g["params"], names_)}
    new_id = {n: i for i, n in enumerate(n for group in ours for n in group)}
    groups = [dict(g, params=[new_id[n] for n in names_]) for g, names_ in zip(saved["param_groups"], ours)]
    kept = {new_id[name_of[i]]: v for i, v in saved["state"].items() if name_of[i] not in unused}
    state["optimizer"] = {"state": kept, "param_groups": groups}
    return state


def find_resume(cfg) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run.

    A fresh run refuses to start in a run directory that already holds a checkpoint, so no
    finished or interrupted run is overwritten by accident.
    """
    last = cfg.run_dir() / "last.pth"
    if cfg.resume is None:
        if last.exists():
            raise ConfigError(f"{cfg.run_dir()} already holds a checkpoint (last.pth). Pass --resume auto "
                                  f"to continue that run, or --experiment NAME / --output DIR for a new one.")
        return None
    if cfg.resume == "auto":
        return last if last.exists() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise ConfigError(f"--resume {path}: no such checkpoint")
    return path


def load_training_state(path: Path, cfg, normalise=None) -> dict:
    """The checkpoint's state, if ``cfg`` can continue it. ``normalise`` maps the stored config
    dict to the form ``cfg`` has (e.g. keys left to the variant table filled in) before comparing."""
    state = safe_load(path)
    if not isinstance(state, dict) or "optimizer" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this engine (no optimizer/config); "
                         f"to start from its weights use --initial-checkpoint instead of --resume")
    saved, now = state["config"], cfg.to_dict()
    if normalise is not None:
        saved = normalise(saved)
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in MODEL_KEYS if saved.get(k) != now.get(k)]
    if diff:
        raise CheckpointError(f"cannot resume {path}: it was trained with a different model or dataset "
                              f"({'; '.join(diff)})")
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in SCHEDULE_KEYS if k in saved and saved[k] != now[k]]
    if diff:
        raise CheckpointError(
            f"cannot resume {path} with a changed optimizer or schedule ({'; '.join(diff)}): its saved state "
            f"would override the new values. Resume with the run's own values (its config.yaml), or start a new "
            f"run from its weights: --initial-checkpoint {path} --start-epoch {state.get('epoch', -1) + 1} "
            f"--experiment NEW_NAME")
    return state
