"""One training run per output folder.

Two ``train.py`` writing into the same folder would interleave ``log.txt``, write every epoch to
``metrics.jsonl`` twice and overwrite each other's checkpoints. The main process therefore holds
an exclusive ``flock`` on ``<run dir>/.lock`` for the whole run. The kernel drops the lock when its
process dies, however it dies, so a lock left by a killed run is never an obstacle: the file that
remains only names who held it last, and the next run takes it over and says so.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from .errors import ConfigError

LOCK_NAME = ".lock"


class RunFolderLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None
        self._created: Path | None = None  # the highest folder this lock created, if any
        self.took_over: str | None = None  # who held it last, when a dead run's lock was taken over

    def acquire(self) -> "RunFolderLock":
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self._created = missing[-1] if missing else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"{self.run_dir} is in use by a running train.py ({holder}); wait for it to end, "
                              f"or give this run another --output/--experiment") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            self.took_over = previous
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        self._file.close()  # closing drops the flock
        self._file = None
        self.path.unlink(missing_ok=True)
        # A run that failed during set-up leaves none of the empty folders it made behind.
        if self._created is not None:
            folder = self.run_dir
            while not any(folder.iterdir()):
                folder.rmdir()
                if folder == self._created:
                    break
                folder = folder.parent

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
