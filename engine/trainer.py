"""The training run: build everything from a :class:`Config`, loop over epochs, checkpoint.

Used by every dataset's ``train.py``. The run directory (``<output>/<experiment>``) receives
``config.yaml``, ``log.txt``, ``metrics.jsonl``, ``tensorboard/``, ``last.pth`` and ``best.pth``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import models

from . import distributed
from .checkpoint import find_resume, load_training_state, save_atomic, set_rng_state, training_state
from .config import Config, ConfigError, dump
from .data import build_dataset, dataset_spec, prepare_dataset
from .data.dvs_augment import augment_batch
from .loader import epoch_seed, eval_loader, seed_everything, train_loader
from .logger import RunLogger
from .run_lock import RunFolderLock
from .telemetry import Telemetry
from .optim import build_optimizer, build_scheduler
from .train_loop import NonFiniteLoss, Precision, evaluate, train_one_epoch


def build_model(cfg: Config, num_classes: int | None) -> nn.Module:
    """The configured variant; ``num_classes`` None keeps the variant's own head."""
    overrides = cfg.model_overrides()
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if cfg.model not in models.VARIANTS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {', '.join(models.VARIANTS)}")
    try:
        return timm.create_model(cfg.model, **overrides)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot build {cfg.model} with {overrides}: {exc}") from None


def data_settings(cfg: Config, model: nn.Module) -> tuple[tuple, tuple, tuple]:
    """Input size, mean and std: the variant's, overridden by ``img_size``/``mean``/``std``."""
    pcfg = model.pretrained_cfg
    size = cfg.img_size or pcfg["input_size"][-1]
    input_size = (pcfg["input_size"][0], size, size)
    return input_size, tuple(cfg.mean or pcfg["mean"]), tuple(cfg.std or pcfg["std"])


def build_criterion(cfg: Config):
    if mixup_active(cfg):
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    if cfg.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def mixup_active(cfg: Config) -> bool:
    return cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None


def build_mixup(cfg: Config, num_classes: int) -> Mixup | None:
    if not mixup_active(cfg):
        return None
    if cfg.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even batch size, got {cfg.batch_size}")
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=cfg.smoothing, num_classes=num_classes)


def has_unused_parameters(model: nn.Module) -> bool:
    return any(getattr(m, "unused_names", ()) for m in model.modules())


def train(cfg: Config, local_rank: int | None = None) -> dict:
    info = distributed.init(cfg.device, local_rank)
    if info.distributed:
        print(f"[rank {info.rank}/{info.world_size}] joined the process group on {info.device}", flush=True)
    run_dir = cfg.run_dir()
    lock = RunFolderLock(run_dir)
    log = None
    try:
        resume_path = _agree_on_resume(cfg, info, lock)
        log = RunLogger(run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, progress=cfg.progress,
                        log_interval=cfg.log_interval)
        if lock.took_over:
            log.info(f"took over the lock of a run that is no longer running ({lock.took_over})")
        return _train(cfg, info, log, resume_path)
    finally:
        if log is not None:
            log.close()
        lock.release()
        distributed.cleanup()


def _agree_on_resume(cfg: Config, info, lock: RunFolderLock) -> Path | None:
    """Rank 0 locks the run folder and decides whether and from where to resume; every rank must
    then read that file, which needs ``output`` on a filesystem shared by all nodes. A failure on
    rank 0 reaches every rank through the broadcast, so none waits forever."""
    decision = None
    if info.is_main:
        try:
            lock.acquire()  # before anything reads or writes the folder
            decision = ("ok", find_resume(cfg))
        except ConfigError as exc:
            decision = ("error", str(exc))
    decision = distributed.broadcast_object(decision)
    if decision[0] == "error":
        raise ConfigError(decision[1])
    path = decision[1]
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"rank {info.rank} cannot read {path}: put --output on a filesystem shared by all nodes")
    return path


def _train(cfg: Config, info, log: RunLogger, resume_path) -> dict:
    accum, lr = cfg.resolve_batching(info.world_size)
    lr_origin = "" if cfg.lr is not None else f" (= blr {cfg.blr:g} x effective batch / 256)"
    # From here on lr is absolute (config.yaml and checkpoints record it, without blr).
    cfg = dataclasses.replace(cfg, accum_iter=accum, lr=lr, blr=None)
    seed_everything(cfg.seed)  # the same initial weights on every rank (and so the same EMA)
    num_classes = cfg.num_classes or dataset_spec(cfg.dataset).num_classes(cfg)
    model = build_model(cfg, num_classes)
    if cfg.initial_checkpoint and resume_path is None:
        models.load_checkpoint(model, cfg.initial_checkpoint)
        log.info(f"initial weights: {cfg.initial_checkpoint}")
    input_size, mean, std = data_settings(cfg, model)
    prepare_dataset(cfg, model.T, info)
    train_set = build_dataset(cfg, True, input_size, mean, std, model.T)
    val_set = build_dataset(cfg, False, input_size, mean, std, model.T)
    loader, val_loader = train_loader(cfg, train_set, info), eval_loader(cfg, val_set, info)

    model.to(info.device)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    model_ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=has_unused_parameters(model))
    if cfg.compile:
        net = torch.compile(net)
    precision = Precision.from_config(cfg, info.device)
    optimizer = build_optimizer(cfg, model)
    updates_per_epoch = len(loader) // cfg.accum_iter
    if updates_per_epoch == 0:
        raise ConfigError(f"accum_iter {cfg.accum_iter} is larger than the {len(loader)} batches of an epoch")
    scheduler, total_epochs = build_scheduler(cfg, optimizer, updates_per_epoch, len(loader))
    scaler = precision.scaler()
    criterion = build_criterion(cfg)
    mixup_fn = build_mixup(cfg, num_classes)

    start_epoch, best = 0, (-1.0, -1)
    if resume_path is not None:
        state = load_training_state(resume_path, cfg)
        model.load_state_dict(state["model"])
        if model_ema is not None:
            if state.get("model_ema") is not None:
                model_ema.module.load_state_dict(state["model_ema"])
            else:  # EMA switched on at resume: average from the resumed weights, not the initial ones
                model_ema.set(model)
                log.info("the checkpoint has no EMA weights: the EMA starts from the resumed model")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _load_scaler(scaler, state, cfg, log)
        set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, (state["best_top1"], state["best_epoch"])
        log.info(f"resumed from {resume_path} (epoch {state['epoch']} done, best top-1 {best[0]:.2f})")
    elif cfg.start_epoch:
        if cfg.start_epoch >= total_epochs:
            raise ConfigError(f"start_epoch {cfg.start_epoch} is past the last epoch ({total_epochs - 1})")
        start_epoch = cfg.start_epoch
        scheduler.step(start_epoch)  # as upstream: the schedule continues where the epoch count says

    if info.is_main:
        cfg.run_dir().mkdir(parents=True, exist_ok=True)
        dump(cfg, cfg.run_dir() / "config.yaml")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(f"{cfg.model}: {n_params:,} parameters, T={model.T}, {num_classes} classes, "
             f"input {input_size}, device {info.device} x{info.world_size}, "
             f"precision {precision.dtype if precision.enabled else torch.float32}")
    log.info(f"data: {cfg.dataset} train {len(train_set)} / val {len(val_set)}; "
             f"{len(loader)} steps per epoch; effective batch "
             f"{cfg.batch_size * cfg.accum_iter * info.world_size} = {cfg.batch_size} x {info.world_size} "
             f"processes x accum {cfg.accum_iter}; lr {cfg.lr:.3g}{lr_origin}; {total_epochs} epochs "
             f"({cfg.epochs} + {cfg.cooldown_epochs} cooldown)")

    last_val = {}
    telemetry = Telemetry(log, net)
    steps_left = len(loader) * (total_epochs - start_epoch)  # for the run's ETA in log lines
    for epoch in range(start_epoch, total_epochs):
        started = time.time()
        seed_everything(epoch_seed(cfg.seed, epoch, info.rank))
        loader.sampler.set_epoch(epoch)
        if mixup_fn is not None and cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        bar = log.progress(loader, len(loader), f"train {epoch}/{total_epochs - 1}", steps_total=steps_left)
        steps_left -= len(loader)
        try:
            train_stats = train_one_epoch(net, loader, optimizer, criterion, scaler, precision, epoch,
                                          cfg, scheduler, model_ema, mixup_fn, bar,
                                          batch_aug=augment_batch if cfg.dvs_aug else None, telemetry=telemetry)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"{exc}; stopped, {_last_good(cfg, epoch, start_epoch, resume_path)}. Resume "
                                f"(--resume auto) with --clip-grad or without float16 (--no-amp or --amp-dtype "
                                f"bfloat16), or start again with a lower --lr.") from None
        val = evaluate(net, val_loader, precision, log.progress(val_loader, len(val_loader), f"val {epoch}"),
                       amp=cfg.eval_amp)
        record = {"epoch": epoch, "train_loss": train_stats["loss"], "lr": train_stats["lr"],
                  **{f"val_{k}": v for k, v in val.items()}}
        metric, scalars = val, {f"val/{k}": val[k] for k in ("loss", "top1", "top5")}
        if model_ema is not None:
            ema_val = evaluate(model_ema.module, val_loader, precision, amp=cfg.eval_amp)
            record.update({f"ema_val_{k}": v for k, v in ema_val.items()})
            scalars.update({f"ema_val/{k}": ema_val[k] for k in ("loss", "top1", "top5")})
            metric = ema_val  # as upstream: the EMA weights decide "best" when EMA is on
        if not torch.isfinite(torch.tensor(metric["loss"])):
            raise NonFiniteLoss(f"validation loss is {metric['loss']} after epoch {epoch}; stopped, "
                                f"{_last_good(cfg, epoch, start_epoch, resume_path)}. Resume (--resume auto) "
                                f"with --clip-grad, or start again with a lower --lr.")
        scheduler.step(epoch + 1, metric["top1"])
        improved = metric["top1"] > best[0]
        if improved:
            best = (metric["top1"], epoch)
        record.update(best_top1=best[0], best_epoch=best[1], epoch_time=time.time() - started)
        if info.is_main:
            state = training_state(model, model_ema, optimizer, scheduler, scaler, epoch, best, cfg.to_dict())
            save_atomic(state, cfg.run_dir() / "last.pth")
            if improved:
                save_atomic(state, cfg.run_dir() / "best.pth")
        distributed.barrier()
        log.scalars({"train/loss": train_stats["loss"], "train/lr": train_stats["lr"], **scalars}, epoch)
        log.epoch_record(record)
        ema_text = "" if model_ema is None else \
            f"; EMA: val loss {metric['loss']:.4f}, top-1 {metric['top1']:.2f}, top-5 {metric['top5']:.2f}"
        log.info(f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val loss {val['loss']:.4f}, "
                 f"top-1 {val['top1']:.2f}, top-5 {val['top5']:.2f}{ema_text} "
                 f"(best{' EMA' if model_ema is not None else ''} {best[0]:.2f} @ {best[1]}), "
                 f"{record['epoch_time']:.0f}s")
        last_val = metric
    log.info(f"done: best{' EMA' if model_ema is not None else ''} top-1 {best[0]:.2f} at epoch {best[1]}; "
             f"checkpoints in {cfg.run_dir()}")
    return {"best_top1": best[0], "best_epoch": best[1], "last": last_val, "run_dir": str(cfg.run_dir())}


def _last_good(cfg: Config, epoch: int, start_epoch: int, resume_path) -> str:
    """Which checkpoint holds the last good state when ``epoch`` fails."""
    if epoch > start_epoch:
        return f"{cfg.run_dir() / 'last.pth'} (epoch {epoch - 1}) is the last good checkpoint"
    if resume_path is not None:
        return f"{resume_path} (epoch {epoch - 1}), which this run resumed from, is the last good checkpoint"
    return "no checkpoint was written in this run"


def _load_scaler(scaler, state: dict, cfg: Config, log: RunLogger) -> None:
    """The fp16 loss scale carries over when both runs use it; switching precision on resume
    (e.g. to bfloat16 or fp32 after a NaN) starts without one, or with a fresh one."""
    saved = state.get("config", {})
    if (saved.get("amp"), saved.get("amp_dtype")) != (cfg.amp, cfg.amp_dtype):
        log.info(f"precision changed on resume: amp {saved.get('amp')}/{saved.get('amp_dtype')} -> "
                 f"{cfg.amp}/{cfg.amp_dtype}")
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
