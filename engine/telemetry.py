"""Per-update training figures: TensorBoard scalars, the progress line, firing rates now and then.

Nothing here changes the numbers of training: the gradient norm is read (not clipped), and the
firing-rate hooks only count spikes, so a run with telemetry is bit-identical to one without.

TensorBoard x-axis: the ``step/*`` scalars use a fractional epoch in thousandths (TensorBoard
steps are integers), so ``1500`` is the middle of epoch 1 for every batch size and dataset.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .firing import FiringRates

FIRING_EVERY = 50  # updates between firing-rate measurements (one forward each)
STEP_UNITS = 1000  # TensorBoard steps per epoch for the per-update scalars


def grad_norm(parameters, scaler) -> torch.Tensor:
    """L2 norm of the true (unscaled) gradients, leaving them untouched: a 0-dim float32 tensor
    on the gradients' device (reading it is left to the caller, with the loss: one host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g.float() for g in grads])))
    if scaler.is_enabled() and not _unscaled(scaler):
        norm = norm / scaler._get_scale_async()
    return norm


def _unscaled(scaler) -> bool:
    """True once ``scaler.unscale_`` ran for this step (gradient clipping does that)."""
    states = getattr(scaler, "_per_optimizer_states", {})
    return any(s.get("stage") is not None and s["stage"].name == "UNSCALED" for s in states.values())


class Telemetry:
    def __init__(self, log, model: torch.nn.Module, firing_every: int = FIRING_EVERY):
        self.log, self.model, self.firing_every = log, model, firing_every
        self.epoch, self.steps = 0, 1
        self._data_time = self._compute_start = 0.0
        self._window_start = time.perf_counter()
        self._window_samples = 0
        self._window_data = 0.0
        self.last: dict[str, float] = {}

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, max(1, steps)
        self._window_start = time.perf_counter()
        self._window_samples, self._window_data = 0, 0.0

    def batch_ready(self, waited: float) -> None:
        """Called when a batch arrives, with the time spent waiting for it."""
        self._window_data += waited

    def firing_meter(self, num_updates: int):
        """A spike counter for the coming forward pass, every ``firing_every`` updates."""
        if self.firing_every and num_updates % self.firing_every == 0:
            return FiringRates(self.model)
        return contextlib.nullcontext()

    def update(self, step: int, loss: float, lr: float, norm: float, loss_scale: float | None, samples: int,
               meter=None) -> None:
        """One optimizer update done (``step``: micro-batch index in the epoch; ``loss_scale``: the
        fp16 loss scaler's scale, None without one)."""
        self._window_samples += samples
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        figures = {"loss": loss, "lr": lr, "grad_norm": norm, "img_per_s": self._window_samples / elapsed,
                   "data_time_share": min(self._window_data / elapsed, 1.0)}
        if loss_scale is not None:
            figures["loss_scale"] = loss_scale
        if isinstance(meter, FiringRates):
            rates = meter.rates()
            figures["firing_rate"] = sum(rates.values()) / max(len(rates), 1)
        elif "firing_rate" in self.last:
            self.last.pop("firing_rate")
        self._window_start, self._window_samples, self._window_data = now, 0, 0.0
        self.last = figures
        x = round(STEP_UNITS * (self.epoch + (step + 1) / self.steps))
        self.log.scalars({f"step/{k}": v for k, v in figures.items()}, x)

    def summary(self) -> str:
        f = self.last
        if not f:
            return ""
        text = (f"loss {f['loss']:.4f} lr {f['lr']:.3e} grad-norm {f['grad_norm']:.3g} "
                f"{f['img_per_s']:.1f} img/s data {100 * f['data_time_share']:.0f}%")
        if "loss_scale" in f:
            text += f" scale {f['loss_scale']:.0f}"
        if "firing_rate" in f:
            text += f" firing {f['firing_rate']:.3f}"
        return text
