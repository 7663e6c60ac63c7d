"""Optimizer and learning-rate schedule, as the original training scripts build them.

Two schedule families: timm's schedulers (the CIFAR/DVS scripts and Spikingformer's ImageNet
script, stepped per epoch) and MAE's half-cycle cosine (QKFormer and SGLFormer ImageNet,
``sched: mae_cosine``), evaluated before every optimizer update at the fractional epoch.
"""
from __future__ import annotations

import math

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .errors import ConfigError

# timm names of torch optimizers with a fused implementation (CUDA and CPU): one kernel for all
# parameters, step counters kept on the device, so an update makes no host sync and can be
# captured in a CUDA graph. The foreach variant (torch's default) keeps the step count on the host
# and launches several kernels per parameter group; the results agree to rounding.
FUSED = ("adam", "adamw", "sgd", "momentum", "nesterov")

# The names create_scheduler_v2 knows; it silently returns no scheduler for any other.
TIMM_SCHEDULES = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant")


def build_optimizer(cfg, model):
    """timm optimizer; biases and norm weights get no weight decay (timm's default, as upstream;
    MAE's ``ndim == 1`` rule selects the same parameters in these models). torch's fused kernels
    for the optimizers that have them (``FUSED``)."""
    extra = {"fused": True} if str(cfg.opt).lower() in FUSED else {}
    if cfg.opt_eps is not None:
        extra["eps"] = cfg.opt_eps
    if cfg.opt_betas is not None:
        extra["betas"] = tuple(cfg.opt_betas)
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, **extra)
    except (ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"optimizer {cfg.opt!r}: {exc} (timm names: adamw, sgd, lamb, ...; "
                          f"timm.optim.list_optimizers() lists all)") from None


class HalfCycleCosine:
    """MAE's ``lr_sched.adjust_learning_rate`` as a scheduler object.

    lr(e) = lr * e / warmup for e < warmup, else min_lr + (lr - min_lr) / 2 * (1 + cos(pi (e - warmup) /
    (epochs - warmup))), where e = epoch + step / steps_per_epoch is taken at the first micro-batch of
    each update (MAE calls it when ``data_iter_step % accum_iter == 0``). Per-group ``lr_scale`` is
    honoured. Interface of timm's schedulers: ``step_update`` after each update, ``step`` per epoch.
    """

    def __init__(self, optimizer, lr: float, min_lr: float, warmup_epochs: float, epochs: int,
                 steps_per_epoch: int, accum_iter: int):
        self.optimizer = optimizer
        self.lr, self.min_lr, self.warmup, self.epochs = lr, min_lr, warmup_epochs, epochs
        self.steps_per_epoch, self.accum = steps_per_epoch, accum_iter
        self.updates_per_epoch = steps_per_epoch // accum_iter
        self._apply(0.0)

    def lr_at(self, epoch: float) -> float:
        if epoch < self.warmup:
            return self.lr * epoch / self.warmup
        # (MAE divides by zero when epochs == warmup; a run that short just ends at min_lr.)
        progress = (epoch - self.warmup) / (self.epochs - self.warmup) if self.epochs > self.warmup else 1.0
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self, epoch: float) -> None:
        value = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)

    def step_update(self, num_updates: int, metric=None) -> None:
        epoch, update = divmod(num_updates, self.updates_per_epoch)
        self._apply(epoch + update * self.accum / self.steps_per_epoch)

    def step(self, epoch: int, metric=None) -> None:
        self._apply(float(epoch))

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def build_scheduler(cfg, optimizer, updates_per_epoch: int, steps_per_epoch: int):
    """The schedule and the total number of epochs to run.

    timm schedules run ``epochs`` plus ``cooldown_epochs`` at ``min_lr`` (the originals'
    "Scheduled epochs: 410" for 400 + 10); MAE's has no cooldown.
    """
    if cfg.sched == "mae_cosine":
        return HalfCycleCosine(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs, steps_per_epoch,
                               cfg.accum_iter), cfg.epochs
    if cfg.sched not in TIMM_SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.sched!r}; choose mae_cosine or one of timm's: "
                          f"{', '.join(TIMM_SCHEDULES)}")
    return create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
        cooldown_epochs=cfg.cooldown_epochs, decay_rate=cfg.decay_rate, warmup_prefix=cfg.warmup_prefix,
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)
