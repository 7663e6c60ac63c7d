"""Stopping cleanly when the cluster asks: finish the optimizer step, checkpoint the position, exit.

Schedulers send a signal some time before they kill a job: SLURM sends SIGTERM on preemption and
``scancel`` (and, with ``--signal=USR1@120``, SIGUSR1 two minutes before the time limit); torchrun
forwards SIGTERM to its workers and kills them 30 s later. While :class:`Preemption` is active, the
signals in ``preempt_signals`` only raise a flag. The training loop looks at it after each
optimizer step; every rank agrees on it in that step's one device-to-host read, so all stop after
the same step. Rank 0 then writes ``last.pth`` with the position inside the epoch (micro-batches
done, every rank's random state and partial loss), and each process exits with
:data:`EXIT_PREEMPTED`. ``--resume auto`` continues from that step, with the same results as a run
that was never interrupted. A signal during validation or checkpointing stops the run after that
epoch's checkpoint.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from .distributed import all_reduce_sum
from .errors import ConfigError

# sysexits.h EX_TEMPFAIL, "a temporary failure; try again later": requeue and --resume auto.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Training stopped on a preemption signal after writing a checkpoint to resume from."""


def signal_numbers(names) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` -> signals; an unknown name is a config error naming the valid ones."""
    found = []
    for name in [] if [n.lower() for n in names] == ["none"] else names:
        full = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
        if full in ("SIGKILL", "SIGSTOP") or not hasattr(signal, full):
            raise ConfigError(f"preempt_signals: {name!r} is not a signal a process can catch; "
                              f"use e.g. SIGTERM, SIGUSR1, SIGUSR2 (or none)")
        found.append(signal.Signals[full])
    return found


class Preemption:
    """Context manager: while active, the given signals set :attr:`received` instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, names=("SIGTERM", "SIGUSR1")):
        self.signals = signal_numbers(names)
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"{self.received} received: stopping after this optimizer step, with a checkpoint to "
                  f"resume from", flush=True)

    @property
    def requested(self) -> bool:
        return self.received is not None

    def flag(self, device: torch.device) -> torch.Tensor | None:
        """Under torch.distributed: a device scalar, > 0 if any rank was signalled (summed over all
        ranks; the caller reads it with the step's other figures, so it adds no host sync). None
        for a single process, which reads :attr:`requested` directly."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return all_reduce_sum(torch.full((), float(self.requested), device=device), "the update's stop flag")
