"""DataLoaders and per-epoch seeding, so that a resumed run sees exactly the same data."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .data.errors import DataError
from .distributed import DistInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    """Seed for one epoch of one process. Everything random in an epoch (shuffling, augmentation,
    worker seeds, mixup) derives from it, so resuming at an epoch boundary reproduces the rest of
    an interrupted run exactly."""
    return base + 1_000_003 * epoch + 7919 * rank


def usable_workers(requested: int) -> int:
    """``requested`` loader workers, capped at the CPUs this process may use (one line saying so).

    More workers than CPUs only adds processes competing for the same cores; torch would warn
    about it on every loader of every run. The CPU count is torch's (the affinity mask)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested <= cpus:
        return requested
    if requested not in _reported:
        _reported.add(requested)
        print(f"workers: {requested} requested, this machine has {cpus} CPUs; using {cpus}")
    return cpus


_reported: set[int] = set()


class ShardSampler(Sampler[int]):
    """Evaluation sampler: every sample exactly once across processes (no padding, no shuffle),
    so distributed metrics equal single-process metrics."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochShuffleSampler(Sampler[int]):
    """Single-process training sampler: a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def train_loader(cfg, train_set, info: DistInfo) -> DataLoader:
    """Shuffled (per-epoch seed), full batches only, as the originals (timm: drop_last)."""
    if info.distributed:
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        sampler = EpochShuffleSampler(len(train_set), cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=usable_workers(cfg.workers), pin_memory=cfg.pin_memory and info.device.type == "cuda")
    if len(loader) == 0:
        raise DataError(f"the training set has {len(sampler)} samples per process, fewer than one batch "
                        f"of {cfg.batch_size}; lower --batch-size")
    return loader


def eval_loader(cfg, val_set, info: DistInfo) -> DataLoader:
    """Every sample once, in order, split across processes."""
    return DataLoader(val_set, batch_size=cfg.val_batch_size,
                      sampler=ShardSampler(len(val_set), info.rank, info.world_size),
                      num_workers=usable_workers(cfg.workers), pin_memory=cfg.pin_memory and info.device.type == "cuda")
