"""The training run: build everything from a :class:`Config`, loop over epochs, checkpoint.

:class:`Training` holds the four steps (build, resume, epoch, report); the factories it builds
with are shared with evaluation and the tools (engine/factories.py). Used by every dataset's
``train.py``. The run directory (``<output>/<experiment>``) receives
``config.yaml``, ``log.txt``, ``metrics.jsonl``, ``tensorboard/``, ``last.pth`` and ``best.pth``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch
from timm.utils import dispatch_clip_grad

import models

from . import cuda_graph, distributed, watchdog
from .checkpoint import (find_resume, load_training_state, rng_state, save_atomic, set_rng_state, training_state,
                         without_unused_layernorms)
from .config import Config, ConfigError, dump
from .errors import CheckpointWriteError, OutOfMemory
from .data import prepare_dataset
from .data.dvs_augment import augment_batch
from .factories import (build_criterion, build_datasets, build_ema, build_loaders, build_mixup, build_model,
                        build_optimizer, build_scheduler, data_settings, num_classes, wrap_model)
from .loader import epoch_seed, seed_everything
from .logger import RunLogger
from .preemption import Preempted, Preemption
from .recipe import resolve, resolve_values
from .run_lock import RunFolderLock
from .telemetry import Telemetry
from .train_loop import NonFiniteLoss, Precision, evaluate, train_one_epoch


@contextlib.contextmanager
def out_of_memory_guide(cfg: Config, device: torch.device, where: str, evaluation: bool = False):
    """Turn the device running out of memory into one line: how much it has, how much was in use,
    and what to change, cheapest first. No checkpoint is written by the failing epoch."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemory(out_of_memory_message(cfg, device, where, evaluation)) from None


def out_of_memory_message(cfg: Config, device: torch.device, where: str, evaluation: bool = False) -> str:
    stats = ""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        stats = f" ({total:.1f} GiB, {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak allocated)"
    if evaluation:
        fixes = [f"--val-batch-size {max(cfg.val_batch_size // 2, 1)}"]
        if not cfg.amp:
            fixes.append("--amp (evaluation under autocast)")
        return f"out of memory in {where} on {device}{stats}; try, cheapest first: {'; '.join(fixes)}"
    fixes = []
    if cfg.activation_memory != "compact":
        fixes.append("--activation-memory compact (same numbers, about 0.3x the activation memory)")
    accum = cfg.accum_iter or 1
    if cfg.batch_size > 1:
        fixes.append(f"--batch-size {cfg.batch_size // 2} --accum-iter {2 * accum} (the same effective batch, "
                     "the recipe's learning rate unchanged)")
    if not cfg.grad_checkpointing:
        fixes.append("--grad-checkpointing (same numbers, about 1.2x the time)")
    if not (cfg.amp and cfg.amp_dtype == "bfloat16"):
        fixes.append("--amp --amp-dtype bfloat16")
    return (f"out of memory in {where} on {device}{stats} at batch {cfg.batch_size}; the last checkpoint is "
            f"untouched; try, cheapest first: {'; '.join(fixes) or 'a smaller model or a larger GPU'}")


def train(cfg: Config, local_rank: int | None = None) -> dict:
    info = distributed.init(cfg.device, local_rank, cfg.dist_timeout)
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
        if watchdog._active is not None:
            watchdog._active.report = log.info   # a stopped process is named in log.txt too
        with Preemption(cfg.preempt_signals) as preemption:
            return _train(cfg, info, log, resume_path, preemption)
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
    decision = distributed.broadcast_object(decision, what="agreeing on the checkpoint to resume from")
    if decision[0] == "error":
        raise ConfigError(decision[1])
    path = decision[1]
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"rank {info.rank} cannot read {path}: put --output on a filesystem shared by all nodes")
    return path


def _train(cfg: Config, info, log: RunLogger, resume_path, preemption: Preemption | None = None) -> dict:
    run = Training(cfg, info, log, resume_path, preemption)   # build
    run.resume()
    run.report_start()
    for epoch in range(run.start_epoch, run.total_epochs):
        run.epoch(epoch)
    return run.report_end()


class Training:
    """One training run in four steps: build everything (``__init__``), :meth:`resume` (or start
    at ``start_epoch``), :meth:`epoch` (train, validate, checkpoint, report) and the reports.

    The order of construction is part of the results: building the model, the datasets and the
    loaders draws from the seeded generators, so it stays as it is for bit-identical runs."""

    def __init__(self, cfg: Config, info, log: RunLogger, resume_path, preemption: Preemption | None = None):
        cfg, _ = resolve(cfg)
        accum, lr = cfg.resolve_batching(info.world_size)
        self.lr_origin = "" if cfg.lr is not None else f" (= blr {cfg.blr:g} x effective batch / 256)"
        # From here on lr is absolute (config.yaml and checkpoints record it, without blr).
        self.cfg = cfg = dataclasses.replace(cfg, accum_iter=accum, lr=lr, blr=None)
        cuda_graph.check_available(cfg, info.device)     # before any data is touched
        self.info, self.log, self.resume_path, self.preemption = info, log, resume_path, preemption
        seed_everything(cfg.seed)  # the same initial weights on every rank (and so the same EMA)
        self.num_classes = num_classes(cfg)
        self.model = model = build_model(cfg, self.num_classes)
        if cfg.initial_checkpoint and resume_path is None:
            models.load_checkpoint(model, cfg.initial_checkpoint)
            log.info(f"initial weights: {cfg.initial_checkpoint}")
        self.input_size = data_settings(cfg, model)[0]
        prepare_dataset(cfg, model.T, info)
        self.train_set, self.val_set = build_datasets(cfg, model)
        self.loader, self.val_loader = build_loaders(cfg, self.train_set, self.val_set, info)

        model.to(info.device)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.model_ema = build_ema(cfg, model)
        self.net = wrap_model(cfg, model, info)
        self.precision = Precision.from_config(cfg, info.device)
        self.optimizer = build_optimizer(cfg, model)
        updates_per_epoch = len(self.loader) // cfg.accum_iter
        if updates_per_epoch == 0:
            raise ConfigError(f"accum_iter {cfg.accum_iter} is larger than the {len(self.loader)} batches of an epoch")
        self.scheduler, self.total_epochs = build_scheduler(cfg, self.optimizer, updates_per_epoch, len(self.loader))
        self.scaler = self.precision.scaler()
        self.criterion = build_criterion(cfg)
        self.mixup_fn = build_mixup(cfg, self.num_classes)
        self.start_epoch, self.best, self.last_val = 0, (-1.0, -1), {}
        self.start_step, self.partial = 0, (0.0, 0)   # inside start_epoch, after a preemption
        self.last_is_epoch_end = False   # whether last.pth holds the end of an epoch (kept on preemption)
        self.telemetry = Telemetry(log, self.net)
        self.graph_step, self.graph_eval = self._cuda_graphs()
        self.steps_left = 0  # training steps until the end, for the run's ETA in log lines

    def _cuda_graphs(self):
        """engine/cuda_graph.py's replayed training step and evaluation forward, if asked for and possible."""
        cfg = self.cfg
        if not cfg.cuda_graph:
            return None, None
        reason = cuda_graph.eager_reason(cfg, self.model, self.net, self.precision, self.scaler)
        graph_eval = None if cfg.compile else cuda_graph.GraphedForward(self.net, self.precision, cfg.eval_amp)
        if reason:
            self.log.info(f"cuda_graph: the training step runs eagerly: {reason}")
            return None, graph_eval

        def clip():
            if cfg.clip_grad is not None:
                dispatch_clip_grad(self.model.parameters(), value=cfg.clip_grad, mode=cfg.clip_mode)
        return (cuda_graph.GraphedTrainStep(self.net, self.criterion, self.optimizer, self.precision, cfg, clip),
                graph_eval)

    # --- resume ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the resume checkpoint (weights, EMA, optimizer, schedule, loss scale, RNG),
        or begin the schedule at ``start_epoch``."""
        cfg, log = self.cfg, self.log
        if self.resume_path is not None:
            state = load_training_state(self.resume_path, cfg, normalise=resolve_values)
            state = without_unused_layernorms(state, self.model, self.optimizer)
            self.model.load_state_dict(state["model"])
            if self.model_ema is not None:
                if state.get("model_ema") is not None:
                    self.model_ema.module.load_state_dict(state["model_ema"])
                else:  # EMA switched on at resume: average from the resumed weights, not the initial ones
                    self.model_ema.set(self.model)
                    log.info("the checkpoint has no EMA weights: the EMA starts from the resumed model")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            _load_scaler(self.scaler, state, cfg, log)
            self.start_epoch, self.best = state["epoch"] + 1, (state["best_top1"], state["best_epoch"])
            position = state.get("position")
            self.last_is_epoch_end = position is None and Path(self.resume_path).name == "last.pth"
            if position is None:
                set_rng_state(state["rng"])
                log.info(f"resumed from {self.resume_path} (epoch {state['epoch']} done, best top-1 "
                         f"{self.best[0]:.2f})")
            else:
                self._resume_inside_epoch(position)
        elif cfg.start_epoch:
            if cfg.start_epoch >= self.total_epochs:
                raise ConfigError(f"start_epoch {cfg.start_epoch} is past the last epoch ({self.total_epochs - 1})")
            self.start_epoch = cfg.start_epoch
            self.scheduler.step(self.start_epoch)  # as upstream: the schedule continues where the epoch count says
        self.steps_left = len(self.loader) * (self.total_epochs - self.start_epoch) - self.start_step

    def _resume_inside_epoch(self, position: dict) -> None:
        """Continue a preempted epoch after its last optimizer step: the loader skips the samples
        already trained on and every rank gets back its random state and partial loss."""
        cfg, info = self.cfg, self.info
        saved = (position["world_size"], position["batch_size"], position["accum_iter"])
        if saved != (info.world_size, cfg.batch_size, cfg.accum_iter):
            epoch_end = cfg.run_dir() / EPOCH_END
            again = (f"; or start epoch {position['epoch']} again from the end of the one before: --resume "
                     f"{epoch_end}") if epoch_end.is_file() else ""
            raise ConfigError(
                f"{self.resume_path} stopped inside epoch {position['epoch']} with {saved[0]} processes x batch "
                f"{saved[1]} x accum {saved[2]}; resume it with the same (now {info.world_size} x {cfg.batch_size} "
                f"x {cfg.accum_iter}), so that the rest of the epoch is the same samples{again}")
        self.start_epoch, self.start_step = position["epoch"], position["step"]
        self.partial = (position["loss_sum"][info.rank], position["seen"][info.rank])
        set_rng_state(position["rng"][info.rank])
        self.log.info(f"resumed from {self.resume_path} inside epoch {self.start_epoch}, after step "
                      f"{self.start_step} of {len(self.loader)} "
                      f"(stopped by {position.get('signal', 'a signal')}); best top-1 {self.best[0]:.2f}")

    # --- reports ---------------------------------------------------------------------------
    def report_start(self) -> None:
        """Write config.yaml and say what runs: model, precision, data, batching, schedule."""
        cfg, info, log = self.cfg, self.info, self.log
        if info.is_main:
            cfg.run_dir().mkdir(parents=True, exist_ok=True)
            dump(cfg, cfg.run_dir() / "config.yaml")
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        precision = self.precision
        log.info(f"{cfg.model}: {n_params:,} parameters, T={self.model.T}, {self.num_classes} classes, "
                 f"input {self.input_size}, device {info.device} x{info.world_size}, "
                 f"precision {precision.dtype if precision.enabled else torch.float32}")
        log.info(f"data: {cfg.dataset} train {len(self.train_set)} / val {len(self.val_set)}; "
                 f"{len(self.loader)} steps per epoch; effective batch "
                 f"{cfg.batch_size * cfg.accum_iter * info.world_size} = {cfg.batch_size} x {info.world_size} "
                 f"processes x accum {cfg.accum_iter}; lr {cfg.lr:.3g}{self.lr_origin}; {self.total_epochs} epochs "
                 f"({cfg.epochs} + {cfg.cooldown_epochs} cooldown)")

    def report_epoch(self, epoch: int, record: dict, val: dict, metric: dict, scalars: dict) -> None:
        """TensorBoard scalars, metrics.jsonl and the epoch's log line (``metric``: what decides
        "best", the EMA's validation when EMA is on)."""
        best, ema = self.best, self.model_ema is not None
        self.log.scalars({"train/loss": record["train_loss"], "train/lr": record["lr"], **scalars}, epoch)
        self.log.epoch_record(record)
        ema_text = "" if not ema else \
            f"; EMA: val loss {metric['loss']:.4f}, top-1 {metric['top1']:.2f}, top-5 {metric['top5']:.2f}"
        self.log.info(f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {val['loss']:.4f}, "
                      f"top-1 {val['top1']:.2f}, top-5 {val['top5']:.2f}{ema_text} "
                      f"(best{' EMA' if ema else ''} {best[0]:.2f} @ {best[1]}), {record['epoch_time']:.0f}s")

    def report_end(self) -> dict:
        best, cfg = self.best, self.cfg
        self.log.info(f"done: best{' EMA' if self.model_ema is not None else ''} top-1 {best[0]:.2f} at epoch "
                      f"{best[1]}; checkpoints in {cfg.run_dir()}")
        return {"best_top1": best[0], "best_epoch": best[1], "last": self.last_val, "run_dir": str(cfg.run_dir())}

    # --- one epoch -------------------------------------------------------------------------
    def epoch(self, epoch: int) -> None:
        """Train one epoch, validate (the EMA too), step the schedule, checkpoint, report."""
        cfg, info, log = self.cfg, self.info, self.log
        started = time.time()
        start_step, partial = (self.start_step, self.partial) if epoch == self.start_epoch else (0, (0.0, 0))
        if not start_step:   # inside the epoch, the random state is the checkpoint's
            seed_everything(epoch_seed(cfg.seed, epoch, info.rank))
        self.loader.sampler.set_epoch(epoch)
        self.loader.sampler.start_at(start_step * cfg.batch_size)
        if self.mixup_fn is not None and cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        bar = log.progress(self.loader, len(self.loader), f"train {epoch}/{self.total_epochs - 1}",
                           steps_total=self.steps_left)
        self.steps_left -= len(self.loader)
        try:
            with out_of_memory_guide(cfg, info.device, f"training epoch {epoch}"):
                train_stats = train_one_epoch(self.net, self.loader, self.optimizer, self.criterion, self.scaler,
                                              self.precision, epoch, cfg, self.scheduler, self.model_ema,
                                              self.mixup_fn, bar, batch_aug=augment_batch if cfg.dvs_aug else None,
                                              telemetry=self.telemetry, graph_step=self.graph_step,
                                              start_step=start_step, partial=partial, preemption=self.preemption)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"{exc}; stopped, {self._last_good(epoch)}. Resume (--resume auto) with "
                                f"--clip-grad or without float16 (--no-amp or --amp-dtype bfloat16), or start "
                                f"again with a lower --lr.") from None
        if "stopped_at" in train_stats:
            self.save_position(epoch, train_stats)
        with out_of_memory_guide(cfg, info.device, f"validation after epoch {epoch}", evaluation=True):
            val = evaluate(self.net, self.val_loader, self.precision,
                           log.progress(self.val_loader, len(self.val_loader), f"val {epoch}"), amp=cfg.eval_amp,
                           forward=self.graph_eval)
        record = {"epoch": epoch, "train_loss": train_stats["loss"], "lr": train_stats["lr"],
                  **{f"val_{k}": v for k, v in val.items()}}
        metric, scalars = val, {f"val/{k}": val[k] for k in ("loss", "top1", "top5")}
        if self.model_ema is not None:
            with out_of_memory_guide(cfg, info.device, f"EMA validation after epoch {epoch}", evaluation=True):
                ema_val = evaluate(self.model_ema.module, self.val_loader, self.precision, amp=cfg.eval_amp)
            record.update({f"ema_val_{k}": v for k, v in ema_val.items()})
            scalars.update({f"ema_val/{k}": ema_val[k] for k in ("loss", "top1", "top5")})
            metric = ema_val  # as upstream: the EMA weights decide "best" when EMA is on
        if not torch.isfinite(torch.tensor(metric["loss"])):
            raise NonFiniteLoss(f"validation loss is {metric['loss']} after epoch {epoch}; stopped, "
                                f"{self._last_good(epoch)}. Resume (--resume auto) with --clip-grad, or start "
                                f"again with a lower --lr.")
        self.scheduler.step(epoch + 1, metric["top1"])
        improved = metric["top1"] > self.best[0]
        if improved:
            self.best = (metric["top1"], epoch)
        record.update(best_top1=self.best[0], best_epoch=self.best[1], epoch_time=time.time() - started)
        stop = self.save(epoch, improved)
        self.report_epoch(epoch, record, val, metric, scalars)
        self.last_val = metric
        if stop and epoch + 1 < self.total_epochs:
            raise Preempted(f"stopped by {self.preemption.received or 'a signal on another rank'} after epoch "
                            f"{epoch}; {self.cfg.run_dir() / 'last.pth'} holds it: continue with --resume auto")

    def save(self, epoch: int, improved: bool, position: dict | None = None) -> bool:
        """last.pth every epoch, best.pth when validation top-1 improved, last.pth with the
        ``position`` inside an epoch on preemption; rank 0 writes. Every rank then learns whether
        the write failed (and stops with it) and whether any rank was asked to stop (returned)."""
        failed = None
        if self.info.is_main:
            state = training_state(self.model, self.model_ema, self.optimizer, self.scheduler, self.scaler, epoch,
                                   self.best, self.cfg.to_dict())
            if position is not None:
                state["position"] = position
                if self.last_is_epoch_end:
                    _keep_epoch_end(self.cfg.run_dir())
            watchdog.note(f"writing {self.cfg.run_dir() / 'last.pth'}")
            try:
                save_atomic(state, self.cfg.run_dir() / "last.pth")
                if improved:
                    save_atomic(state, self.cfg.run_dir() / "best.pth")
            except CheckpointWriteError as exc:
                failed = exc
        requested = self.preemption is not None and self.preemption.requested
        agreed = distributed.all_reduce_sum(torch.tensor([float(failed is not None), float(requested)],
                                                         device=self.info.device),
                                            f"the checkpoint after epoch {epoch}").tolist()
        if failed is not None:
            raise failed
        if agreed[0]:
            raise CheckpointWriteError("rank 0 could not write the checkpoint (its error says why); stopped")
        self.last_is_epoch_end = position is None
        return bool(agreed[1])

    def save_position(self, epoch: int, stats: dict) -> None:
        """On preemption: last.pth with where this epoch stopped, then stop every rank."""
        cfg, info = self.cfg, self.info
        per_rank = distributed.gather_objects((rng_state(), stats["loss_sum"], stats["seen"]),
                                              f"the position inside epoch {epoch}")
        position = {"epoch": epoch, "step": stats["stopped_at"], "world_size": info.world_size,
                    "batch_size": cfg.batch_size, "accum_iter": cfg.accum_iter,
                    "rng": [r[0] for r in per_rank], "loss_sum": [r[1] for r in per_rank],
                    "seen": [r[2] for r in per_rank], "signal": self.preemption.received}
        self.save(epoch - 1, False, position)
        raise Preempted(f"stopped by {self.preemption.received or 'a signal on another rank'} inside epoch {epoch} "
                        f"after step {stats['stopped_at']}; {cfg.run_dir() / 'last.pth'} holds it: continue with "
                        f"--resume auto")

    def _last_good(self, epoch: int) -> str:
        return _last_good(self.cfg, epoch, self.start_epoch, self.resume_path)


EPOCH_END = "epoch_end.pth"


def _keep_epoch_end(run_dir: Path) -> None:
    """Before last.pth becomes a checkpoint inside an epoch: keep the end of the previous epoch as
    epoch_end.pth, to start the epoch again from should the position not be resumable (another
    number of processes). A hard link where the file system has them: no copy."""
    last, kept = run_dir / "last.pth", run_dir / EPOCH_END
    tmp = run_dir / f".{EPOCH_END}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        shutil.copy2(last, tmp)
    os.replace(tmp, kept)


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
