"""Optimizer and learning-rate schedule through timm, as the original training scripts do."""
from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2


def build_optimizer(cfg, model):
    """timm optimizer; biases and norm weights get no weight decay (timm's default, as upstream)."""
    extra = {}
    if cfg.opt_eps is not None:
        extra["eps"] = cfg.opt_eps
    if cfg.opt_betas is not None:
        extra["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, **extra)


def build_scheduler(cfg, optimizer, updates_per_epoch: int):
    """timm scheduler stepped per epoch (the CIFAR/DVS scripts) or per update (``sched_on_updates``).

    Returns the scheduler and the total number of epochs to run: ``epochs`` plus
    ``cooldown_epochs`` at ``min_lr`` (the originals' "Scheduled epochs: 410" for 400 + 10).
    """
    return create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
        cooldown_epochs=cfg.cooldown_epochs, decay_rate=cfg.decay_rate, warmup_prefix=cfg.warmup_prefix,
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)
