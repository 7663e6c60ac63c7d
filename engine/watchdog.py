"""Naming the process that stopped responding, when the others wait for it in a collective.

Under torch.distributed a process that hangs (a stuck GPU, a dead file system, a deadlocked data
loader) leaves every other one waiting in its next collective. The backend's own timeout then
ends the job with a message about an operation, not about the process at fault. Here each
process counts the points where all processes must meet (every training forward and backward,
every collective of the engine) in :func:`arrive`, and a thread publishes the count to the
rendezvous store. When this process is ahead (it reached the furthest point, so it is the one
waiting) and has made no progress for ``dist_timeout`` seconds while some process is behind, it
prints one line naming that process, its host and pid and where it last was, and ends with
:data:`EXIT_PEER_LOST`; torchrun then stops the others. A process that is behind never stops
itself (it may only be slow), processes that are all at the same point (a long first compilation
everywhere, say) are never stopped, and waits without a time limit (rank 0 preparing a dataset)
pause it. The backend's own timeout, ``dist_timeout`` plus :data:`BACKEND_GRACE_S`, is the backstop.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from datetime import timedelta

# sysexits.h EX_UNAVAILABLE: a process this one depends on is unavailable.
EXIT_PEER_LOST = 69
BACKEND_GRACE_S = 60.0    # the backend's own timeout comes this much later, so the named report wins

_active: "Watchdog | None" = None


def arrive(what: str) -> None:
    """This process reached a point every process passes in the same order (no-op alone)."""
    if _active is not None:
        _active.count += 1
        _active.where = what
        _active.last = time.monotonic()


def note(what: str) -> None:
    """Where this process is, for a step only some processes take (rank 0 writing a checkpoint);
    not counted, so that the counts stay comparable."""
    if _active is not None:
        _active.where = what
        _active.last = time.monotonic()


@contextlib.contextmanager
def paused():
    """A wait with no time limit (rank 0 preparing a dataset while the others wait)."""
    if _active is None:
        yield
        return
    _active.paused += 1
    try:
        yield
    finally:
        _active.paused -= 1
        _active.last = time.monotonic()


class Watchdog:
    def __init__(self, store, rank: int, world_size: int, timeout_s: float, report=None):
        self.store, self.rank, self.world_size, self.timeout_s = store, rank, world_size, timeout_s
        self.report = report or (lambda line: None)
        self.count, self.where, self.last, self.paused = 0, "the start", time.monotonic(), 0
        self.identity = f"{socket.gethostname()} pid {os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dist-watchdog", daemon=True)

    @classmethod
    def connect(cls, rank: int, world_size: int, timeout_s: float) -> "Watchdog | None":
        """A watchdog with its own client of the rendezvous store (MASTER_ADDR/MASTER_PORT, as
        torchrun and torch.distributed.launch set them); None where there is none."""
        import torch.distributed as dist
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port:
            return None
        try:
            store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=30))
        except (RuntimeError, ValueError, OSError):   # unreachable: the backend's timeout still applies
            return None
        return cls(dist.PrefixStore("spiking_transformers/watchdog/", store), rank, world_size, timeout_s)

    def start(self) -> "Watchdog":
        global _active
        _active = self
        self._thread.start()
        return self

    def stop(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._stop.set()

    def _run(self) -> None:
        period = min(max(self.timeout_s / 10, 0.2), 10.0)
        published = None
        while not self._stop.wait(period):
            try:
                state = (self.count, self.where)
                if state != published:
                    self.store.set(f"rank{self.rank}", f"{state[0]}\t{state[1]}\t{self.identity}")
                    published = state
                if not self.paused and time.monotonic() - self.last > self.timeout_s:
                    line = self.diagnose()
                    if line:
                        self._give_up(line)
            except Exception:   # noqa: BLE001  the store went away with its host: the backend reports it
                continue

    def diagnose(self) -> str | None:
        """One line naming the processes behind this one, or None if none is (or this one is
        behind itself, or some process has published nothing: its watchdog may not run)."""
        states = {}
        for r in range(self.world_size):
            if not self.store.check([f"rank{r}"]):
                return None
            count, where, identity = self.store.get(f"rank{r}").decode().split("\t")
            states[r] = (int(count), where, identity)
        ahead = max(c for c, _, _ in states.values())
        behind = [r for r, (c, _, _) in states.items() if c < ahead]
        if not behind or states[self.rank][0] < ahead:
            return None
        waiting = next(r for r, (c, _, _) in states.items() if c == ahead)
        names = "; ".join(f"rank {r} ({states[r][2]}), last at '{states[r][1]}'" for r in behind)
        pid = states[behind[0]][2].rsplit(" ", 1)[-1]
        return (f"stopped responding: {names}; rank {waiting} waits at '{states[waiting][1]}'; "
                f"{self._advice(pid)}")

    def _advice(self, pid: str = "PID") -> str:
        return (f"no progress for {self.timeout_s:g} s (dist_timeout). Look at that process (py-spy dump --pid "
                f"{pid}), its GPU and file systems; raise --dist-timeout if it was only slow; the run stopped, "
                f"continue it with --resume auto")

    def _give_up(self, line: str) -> None:
        with contextlib.suppress(Exception):
            self.report(line)
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)   # the main thread is blocked inside the backend: nothing else ends it
