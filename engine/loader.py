"""DataLoaders and seeding, so that a resumed run sees exactly the same data.

Randomness in data loading is drawn per sample: :class:`SeededSamples` seeds ``random``, numpy and
torch from (run seed, epoch, sample index) before each training sample is transformed. A sample's
augmentation therefore depends neither on which loader process makes it nor on what that process
made before, so the number of ``workers`` does not change the results, and a run resumed in the
middle of an epoch (after preemption) continues with exactly the samples and augmentations an
uninterrupted run would have seen. :class:`ResumableSampler` skips what was already trained on.
"""
from __future__ import annotations

import functools
import os
import random
import signal
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from .data.errors import DataError
from .distributed import DistInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    """Seed of the training process's generators for one epoch (dropout, mixup, the DVS
    augmentation on the device). The shuffle comes from (seed, epoch) and each sample's
    augmentation from :func:`sample_seed`; inside an epoch the checkpoint carries the state."""
    return base + 1_000_003 * epoch + 7919 * rank


def _mix64(x: int) -> int:
    """splitmix64's finaliser: nearby inputs give unrelated 64-bit outputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def sample_seed(base: int, epoch: int, index: int) -> int:
    """The seed of one training sample's augmentation in one epoch (63 bits)."""
    return _mix64(_mix64(_mix64(base) ^ epoch) ^ index) >> 1


class SeededSamples(Dataset):
    """A training set whose samples draw their random augmentation from their own seed.

    In a loader process the global generators are simply reseeded; in the training process itself
    (``workers: 0``) they are restored afterwards, so that dropout, mixup and the DVS augmentation
    keep one stream per epoch there."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch   # loader processes start at each epoch with a copy of this object

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):   # targets, classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list:
        """One batch (DataLoader fetches through this): the global generators are saved and
        restored once per batch in the training process, reseeded per sample everywhere."""
        saved = None if get_worker_info() is not None else \
            (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
        try:
            out = []
            for index in indices:
                seed = sample_seed(self.seed, self.epoch, index)
                random.seed(seed)
                np.random.seed(seed & 0xFFFFFFFF)
                torch.default_generator.manual_seed(seed)   # torch.manual_seed also visits every device: slow
                out.append(self.dataset[index])
            return out
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.default_generator.set_state(saved[2])


def _outlive_preemption(signals: list[int], worker_id: int) -> None:
    """Loader processes let a preemption signal sent to the whole process group (as SLURM does)
    pass, so that the training process can finish its step with their batches; it stops them
    itself. Should it not, they end a minute later."""
    def later(signum, frame):
        timer = threading.Timer(60.0, os._exit, (0,))
        timer.daemon = True   # a worker that ends normally does not wait for it
        timer.start()
    for sig in signals:
        signal.signal(sig, later)


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


class ResumableSampler(Sampler[int]):
    """An epoch's shuffled order (``DistributedSampler`` or :class:`EpochShuffleSampler`) that can
    start part-way: :meth:`start_at` skips the samples trained on before an interruption, for the
    next epoch only. It also tells the seeded training set which epoch runs."""

    def __init__(self, order: Sampler[int], dataset: SeededSamples):
        self.order, self.dataset, self.skip = order, dataset, 0

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.skip = 0

    def start_at(self, samples: int) -> None:
        self.skip = samples

    def __iter__(self):
        indices = iter(self.order)
        for _ in range(self.skip):
            next(indices)
        return indices

    def __len__(self) -> int:
        return len(self.order) - self.skip


def train_loader(cfg, train_set, info: DistInfo) -> DataLoader:
    """Shuffled (per-epoch seed), full batches only, as the originals (timm: drop_last); each
    sample's augmentation seeded by (seed, epoch, index) (:class:`SeededSamples`)."""
    train_set = SeededSamples(train_set, cfg.seed)
    if info.distributed:
        order = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                   shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        order = EpochShuffleSampler(len(train_set), cfg.seed)
    sampler = ResumableSampler(order, train_set)
    # Its own generator: starting an epoch's iterator draws the loader processes' base seed from
    # it rather than from the global one, whose state a mid-epoch checkpoint records.
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=usable_workers(cfg.workers), pin_memory=cfg.pin_memory and info.device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed + info.rank),
                        worker_init_fn=functools.partial(_outlive_preemption, _signals(cfg)))
    if len(loader) == 0:
        raise DataError(f"the training set has {len(sampler)} samples per process, fewer than one batch "
                        f"of {cfg.batch_size}; lower --batch-size")
    return loader


def _signals(cfg) -> list[int]:
    from .preemption import signal_numbers
    return [int(s) for s in signal_numbers(getattr(cfg, "preempt_signals", []))]


def eval_loader(cfg, val_set, info: DistInfo) -> DataLoader:
    """Every sample once, in order, split across processes."""
    return DataLoader(val_set, batch_size=cfg.val_batch_size,
                      sampler=ShardSampler(len(val_set), info.rank, info.world_size),
                      num_workers=usable_workers(cfg.workers), pin_memory=cfg.pin_memory and info.device.type == "cuda",
                      worker_init_fn=functools.partial(_outlive_preemption, _signals(cfg)))
