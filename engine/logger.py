"""Where a run reports: console, ``log.txt``, ``metrics.jsonl``, TensorBoard, progress bars.

Only the main process (rank 0) writes anything; other ranks get a silent logger.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

# Library users silence or redirect the engine with the standard logging module, e.g.
# logging.getLogger("spiking_transformers").setLevel(logging.WARNING).
LOGGER = logging.getLogger("spiking_transformers")


class _Stdout(logging.Handler):
    """Writes to whatever sys.stdout is at the time (so redirection and capturing work)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


if not LOGGER.handlers:
    LOGGER.addHandler(_Stdout())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False

# Without a terminal, a log line at least this often (seconds), however slow the steps.
LOG_EVERY_S = 30.0


class RunLogger:
    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = True,
                 progress: bool = True, log_interval: int = 50):
        self.enabled = enabled
        self.run_dir = run_dir
        self.log_interval = max(1, log_interval)
        # Progress bars only on an interactive terminal; in logs, periodic lines instead.
        self.use_bar = enabled and progress and sys.stderr.isatty()
        self.tensorboard = tensorboard
        self.writer = None
        self._opened = False

    def _open(self) -> bool:
        """Create the run folder (and TensorBoard writer) on first use, so a run that fails while
        it is being set up (bad model, missing data) leaves no empty folder behind."""
        if not self.enabled or self.run_dir is None:
            return False
        if not self._opened:
            self._opened = True
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return True

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        LOGGER.info(line)
        if self._open():
            with open(self.run_dir / "log.txt", "a") as f:
                f.write(line + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._open() and self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def epoch_record(self, record: dict) -> None:
        if self._open():
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self.writer.flush()

    def progress(self, iterable, total: int, desc: str, steps_total: int | None = None):
        """Iterate with a tqdm bar (terminal) or with a log line every ``log_interval`` steps and
        at least every ``LOG_EVERY_S`` seconds; ``steps_total``: steps left in the run, for its ETA."""
        if self.use_bar:
            return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)
        return _Periodic(iterable, total, desc, self if self.enabled else None, self.log_interval, steps_total)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Periodic:
    """Stand-in for tqdm in non-interactive runs: a line with rate and ETA now and then."""

    def __init__(self, iterable, total: int, desc: str, logger: RunLogger | None, every: int,
                 steps_total: int | None = None):
        self.iterable, self.total, self.desc, self.logger, self.every = iterable, total, desc, logger, every
        self.steps_total = steps_total
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def __iter__(self):
        start = last = time.time()
        for i, item in enumerate(self.iterable):
            yield item
            done, now = i + 1, time.time()
            if self.logger is not None and (done % self.every == 0 or done == self.total
                                            or now - last >= LOG_EVERY_S):
                last = now
                elapsed = now - start
                eta = elapsed / done * (self.total - done)
                run_eta = "" if self.steps_total is None else \
                    f", run ETA {elapsed / done * (self.steps_total - done) / 60:.1f} min"
                self.logger.info(f"{self.desc} [{done}/{self.total}] {self.postfix} "
                                 f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s{run_eta}")
