"""Everything a run builds from a :class:`Config`: model, data, loaders, loss, mixup, EMA, wrappers.

One home for these factories, shared by training (engine/trainer.py), evaluation (engine/tester.py)
and the tools (tools/energy.py, tools/benchmark.py, tools/convert_checkpoint.py), so that
evaluating never imports the training module and every entry point builds the same objects.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import models  # noqa: F401  (registers every variant with timm)

from .config import Config
from .logger import LOGGER
from .data import build_dataset, dataset_spec
from .distributed import DistInfo
from .errors import ConfigError
from .loader import eval_loader, train_loader
from .recipe import check_model
from .optim import build_optimizer, build_scheduler  # noqa: F401  (re-exported: one place to look)


def model_arguments(cfg: Config, num_classes: int | None = None) -> dict:
    """Keyword arguments for the variant's constructor that the config sets (``backend`` included)."""
    overrides = cfg.model_overrides()
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return overrides


def build_model(cfg: Config, num_classes: int | None) -> nn.Module:
    """The configured variant; ``num_classes`` None keeps the variant's own head."""
    overrides = model_arguments(cfg, num_classes)
    check_model(cfg.model)
    try:
        return timm.create_model(cfg.model, **overrides)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot build {cfg.model} with {overrides}: {exc}") from None


def num_classes(cfg: Config) -> int:
    """The config's class count, else the dataset's (ImageNet: counted in ``data_dir``)."""
    return cfg.num_classes or dataset_spec(cfg.dataset).num_classes(cfg)


def data_settings(cfg: Config, model: nn.Module) -> tuple[tuple, tuple, tuple]:
    """Input size, mean and std: the variant's, overridden by ``img_size``/``mean``/``std``."""
    pcfg = model.pretrained_cfg
    size = cfg.img_size or pcfg["input_size"][-1]
    input_size = (pcfg["input_size"][0], size, size)
    return input_size, tuple(cfg.mean or pcfg["mean"]), tuple(cfg.std or pcfg["std"])


def build_datasets(cfg: Config, model: nn.Module, train: bool = True) -> tuple:
    """(train set or None, validation set) for ``model``'s input size, normalisation and T."""
    input_size, mean, std = data_settings(cfg, model)
    train_set = build_dataset(cfg, True, input_size, mean, std, model.T) if train else None
    return train_set, build_dataset(cfg, False, input_size, mean, std, model.T)


def build_loaders(cfg: Config, train_set, val_set, info: DistInfo) -> tuple:
    """(shuffled training loader or None, in-order validation loader)."""
    loader = train_loader(cfg, train_set, info) if train_set is not None else None
    return loader, eval_loader(cfg, val_set, info)


def validation_loader(cfg: Config, model: nn.Module, info: DistInfo | None = None):
    """The validation split's loader alone (evaluation, tools)."""
    return build_loaders(cfg, None, build_datasets(cfg, model, train=False)[1], info or DistInfo())[1]


def mixup_active(cfg: Config) -> bool:
    return cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None


def build_criterion(cfg: Config):
    if mixup_active(cfg):
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    if cfg.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(cfg: Config, num_classes: int) -> Mixup | None:
    if not mixup_active(cfg):
        return None
    if cfg.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even batch size, got {cfg.batch_size}")
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=cfg.smoothing, num_classes=num_classes)


def build_ema(cfg: Config, model: nn.Module) -> ModelEmaV3 | None:
    return ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None


def wrap_model(cfg: Config, model: nn.Module, info: DistInfo) -> nn.Module:
    """The module the training step calls: DDP across processes, ``torch.compile`` if asked."""
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        # (every parameter gets a gradient: no unused-parameter search, see models/checkpoint.py)
    if cfg.compile:
        if cfg.grad_checkpointing or cfg.activation_memory == "compact":
            LOGGER.warning("torch.compile: gradient checkpointing and compact activation memory are off "
                           "(dynamo cannot trace them); activations are stored as activation_memory=standard")
        net = torch.compile(net)
    return net
