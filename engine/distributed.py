"""Process group setup for torchrun / torch.distributed.launch, and small collective helpers.

A single process (plain ``python train.py``) needs none of this: world size 1, rank 0. Under
``torchrun`` (or the older ``python -m torch.distributed.launch``, which passes
``--local_rank``/``--local-rank``) the environment carries RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; NCCL is used on CUDA and gloo on CPU.

A process that stops responding is named after ``dist_timeout`` seconds by engine/watchdog.py;
the backend's own timeout, a little later, is the backstop (NCCL's asynchronous error handling
tears the process down instead of leaving it blocked). Waits that may legitimately take longer
(rank 0 preparing a dataset) use :func:`patient_group`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import watchdog
from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but torch sees no CUDA GPU; use --device cpu "
                              f"(or install a CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) are "
                              f"visible; use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init(requested_device: str = "auto", local_rank_arg: int | None = None, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group if launched by torchrun/launch; otherwise a single process.
    ``timeout_s``: the config's ``dist_timeout``, after which a process that stopped is named."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
    device = pick_device(requested_device, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    if timeout_s <= 0:
        raise ConfigError(f"dist_timeout must be a positive number of seconds, got {timeout_s:g}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if "NCCL_ASYNC_ERROR_HANDLING" not in os.environ:   # the older spelling, if a user set it
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")   # tear down on error or timeout
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                timeout=timedelta(seconds=timeout_s + watchdog.BACKEND_GRACE_S))
        dog = watchdog.Watchdog.connect(dist.get_rank(), dist.get_world_size(), timeout_s)
        if dog is not None:
            dog.start()
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: torch.Tensor, what: str = "a sum over processes", group=None) -> torch.Tensor:
    """Sum a tensor over all processes (identity for a single process)."""
    if _joined():
        watchdog.arrive(what)
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values


def broadcast_object(obj, src: int = 0, what: str = "a broadcast from rank 0"):
    if _joined():
        watchdog.arrive(what)
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def gather_objects(obj, what: str = "gathering from every process") -> list:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` for a single process)."""
    if _joined():
        watchdog.arrive(what)
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


_patient = None


def patient_group():
    """A gloo group (CPU tensors) without a practical time limit, for waits that may take hours;
    made on first use, by every process at the same point."""
    global _patient
    if _patient is None and _joined():
        _patient = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    return _patient


def barrier(what: str = "a barrier") -> None:
    if _joined():
        watchdog.arrive(what)
        dist.barrier()


def cleanup() -> None:
    global _patient
    if watchdog._active is not None:
        watchdog._active.stop()
    _patient = None
    if _joined():
        dist.destroy_process_group()
