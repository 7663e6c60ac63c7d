"""One training epoch and one evaluation pass (the ``engine_finetune`` of MAE/DeiT, for SNNs).

Spiking specifics: neuron state is reset after every micro-batch (as all three originals do,
freeing the autograd graph the membrane potentials hold), and a non-finite loss stops the run
at once with a message instead of training on NaNs.

Host syncs: forward, backward and reset make none (tests/test_step_syncs.py). Each optimizer
update reads its loss (and, with telemetry, the gradient norm and loss scale) from the device in
one transfer, after the optimizer step has been queued: ``SYNCS_PER_UPDATE``. The fp16 loss
scaler adds its own overflow check (``scaler.step``), and the firing-rate meter one read every
``firing_every`` updates. A non-finite loss is therefore seen after its update has been applied in
memory; the run stops before anything is saved, so the last checkpoint stays the last good one.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.utils import dispatch_clip_grad

from models import reset_net

from . import watchdog
from .distributed import all_reduce_sum
from .errors import NonFiniteLoss  # noqa: F401  (re-exported)
from .firing import FiringRates
from .telemetry import grad_norm

SYNCS_PER_UPDATE = 1   # the loss (with the gradient norm and loss scale): one device-to-host read

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model




@dataclass
class Precision:
    """Autocast settings: fp16 with loss scaling or bf16 on CUDA, float32 elsewhere."""
    device: torch.device
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Precision":
        # float16 autocast is a CUDA feature here; bfloat16 autocast also runs on CPUs (fast
        # on ones with AVX512-BF16/AMX), but only when asked for explicitly.
        bf16 = cfg.amp_dtype == "bfloat16"
        enabled = bool(cfg.amp) and (device.type == "cuda" or bf16)
        return cls(device, enabled, torch.bfloat16 if bf16 else torch.float16)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # Loss scaling is needed for float16 only; a disabled scaler is a pass-through.
        return torch.amp.GradScaler(self.device.type, enabled=self.enabled and self.dtype == torch.float16)


def train_one_epoch(model, loader, optimizer, criterion, scaler, precision: Precision, epoch: int, cfg,
                    scheduler=None, model_ema=None, mixup_fn=None, progress=None,
                    update_offset: int = 0, batch_aug=None, telemetry=None, graph_step=None,
                    start_step: int = 0, partial: tuple[float, int] = (0.0, 0), preemption=None) -> dict:
    """Train one epoch with ``cfg.accum_iter`` micro-batches per optimizer step.

    ``batch_aug`` transforms a whole batch on the device before mixup (the DVS augmentation).
    ``telemetry`` (engine/telemetry.py) receives per-update figures; it does not change them.
    ``graph_step`` (engine/cuda_graph.py): updates replayed as a CUDA graph where it takes them.
    ``start_step``: micro-batches of this epoch trained before an interruption (the loader skips
    them), with ``partial`` = (their loss sum, their samples). ``preemption``
    (engine/preemption.py): when it has been signalled, the epoch ends after the current
    optimizer step and the result says where (``stopped_at``, the partial sums).
    """
    model.train()
    device = precision.device
    accum = cfg.accum_iter
    updates_per_epoch = (start_step + len(loader)) // accum
    num_updates = update_offset + epoch * updates_per_epoch + start_step // accum
    loss_sum, seen = torch.full((), partial[0], device=device, dtype=torch.float64), partial[1]
    update_loss, first_step = torch.zeros((), device=device, dtype=torch.float32), 0   # this update's, on the device
    optimizer.zero_grad(set_to_none=True)
    batches = progress if progress is not None else loader
    if telemetry is not None:
        telemetry.start_epoch(epoch, start_step + len(loader))
    samples_in_update, meter = 0, None
    waited_since = time.perf_counter()
    # As MAE's engine: micro-batches after the last complete update still run (and update BN
    # statistics) but their gradients are dropped at the next epoch's zero_grad.
    for step, (images, targets) in enumerate(batches, start=start_step):
        if telemetry is not None:
            telemetry.batch_ready(time.perf_counter() - waited_since)
            if meter is None:
                meter = telemetry.firing_meter(num_updates)
                meter.__enter__()
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if batch_aug is not None:
            images = batch_aug(images)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        update = (step + 1) % accum == 0
        graphed = graph_step is not None and update and graph_step.wants(metering=isinstance(meter, FiringRates))
        if graphed:        # forward, backward, clipping and optimizer step: one replay
            watchdog.arrive(f"epoch {epoch}, step {step}: replayed step")
            loss = graph_step.run(images, targets)
        else:
            # DDP: synchronise gradients only on the micro-batch that completes an update.
            sync = model.no_sync() if (hasattr(model, "no_sync") and not update) else contextlib.nullcontext()
            with sync:
                watchdog.arrive(f"epoch {epoch}, step {step}: forward")   # under DDP: buffers broadcast
                with precision.autocast():
                    output = model(images)
                    loss = criterion(output, targets)
                watchdog.arrive(f"epoch {epoch}, step {step}: backward")  # gradients all-reduced
                scaler.scale(loss / accum).backward()
            reset_net(model)
        loss = loss.detach()
        update_loss += loss                    # stays on the device: no host sync per micro-batch
        loss_sum += loss.double() * images.shape[0]
        seen += images.shape[0]
        samples_in_update += images.shape[0]
        if not update:
            waited_since = time.perf_counter()
            continue
        if cfg.clip_grad is not None and not graphed:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(model.parameters(), value=cfg.clip_grad, mode=cfg.clip_mode)
        norm = grad_norm(model.parameters(), scaler) if telemetry is not None else None
        if not graphed:
            scaler.step(optimizer)
            scaler.update()
        # a captured graph writes its gradients into the same tensors at every replay: keep them
        optimizer.zero_grad(set_to_none=graph_step is None or graph_step.graph is None)
        num_updates += 1
        if model_ema is not None:
            model_ema.update(unwrap(model), step=num_updates)
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)
        stop_flag = preemption.flag(device) if preemption is not None else None
        loss_value, norm, loss_scale, stop = _read_update(update_loss / accum, norm, scaler, stop_flag)  # one sync
        if not math.isfinite(loss_value):
            micro = f"step {step}" if accum == 1 else f"steps {first_step}-{step}"
            raise NonFiniteLoss(f"loss is {loss_value} at epoch {epoch}, {micro}")
        update_loss.zero_()
        first_step = step + 1
        if telemetry is not None:
            meter.__exit__(None, None, None)
            telemetry.update(step, loss_value, optimizer.param_groups[-1]["lr"], norm, loss_scale,
                             samples_in_update, meter)
            samples_in_update, meter = 0, None
        if progress is not None and hasattr(progress, "set_postfix_str"):
            progress.set_postfix_str(telemetry.summary() if telemetry is not None and telemetry.last else
                                     f"loss {loss_value:.4f} lr {optimizer.param_groups[-1]['lr']:.3e}")
        if stop or (stop_flag is None and preemption is not None and preemption.requested):
            return {"stopped_at": step + 1, "loss_sum": loss_sum.item(), "seen": seen, "updates": num_updates}
        waited_since = time.perf_counter()
    if meter is not None:
        meter.__exit__(None, None, None)  # micro-batches after the last complete update
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)]),
                            f"the training loss of epoch {epoch}")
    epoch_loss = (totals[0] / totals[1]).item()
    if not math.isfinite(epoch_loss):     # only the micro-batches after the last update can get here
        raise NonFiniteLoss(f"loss is {epoch_loss} at epoch {epoch}, in the micro-batches after the last update")
    return {"loss": epoch_loss, "lr": optimizer.param_groups[-1]["lr"], "updates": num_updates}


def _read_update(loss: torch.Tensor, norm: torch.Tensor | None, scaler, stop: torch.Tensor | None = None) -> tuple:
    """The update's loss, gradient norm, loss scale and (distributed) agreed preemption flag as
    Python values, in one device-to-host read."""
    values = [loss.float()]
    if norm is not None:
        values.append(norm.float().to(loss.device))
        if scaler.is_enabled():
            values.append(scaler._get_scale_async().float().reshape(()))
    if stop is not None:
        values.append(stop.float().to(loss.device))
    read = torch.stack(values).tolist()
    stopped = bool(read.pop()) if stop is not None else False
    return read[0], (read[1] if norm is not None else None), (read[2] if len(read) > 2 else None), stopped


@torch.no_grad()
def evaluate(model, loader, precision: Precision, progress=None, amp: bool = True, forward=None) -> dict:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) over the whole split, all processes.

    ``amp=False`` evaluates in float32 even when training uses mixed precision. ``forward``: what
    computes the logits instead of ``model`` (engine/cuda_graph.py's GraphedForward).
    """
    model.eval()
    watchdog.arrive("validation: its first forward")   # under DDP: buffers broadcast once
    device = precision.device
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, count
    for images, targets in (progress if progress is not None else loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if forward is not None:
            output = forward(images)
        else:
            with precision.autocast() if amp else contextlib.nullcontext():
                output = model(images)
        reset_net(model)
        output = output.float()
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        correct = top.eq(targets[:, None])
        sums += torch.stack([F.cross_entropy(output, targets, reduction="sum").double(),
                             correct[:, :1].sum().double(), correct.sum().double(),
                             torch.tensor(float(len(targets)), device=device, dtype=torch.float64)])
    sums = all_reduce_sum(sums, "the validation totals")
    n = max(sums[3].item(), 1.0)
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
            "samples": int(sums[3].item())}
