"""Datasets by name. Each entry builds the train or validation split with its transform."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import watchdog
from ..distributed import all_reduce_sum, patient_group

from .cifar import build_cifar
from .dvs import build_dvs, prepare
from .errors import DataError
from .fake import FakeImages
from .imagenet import build_imagenet
from .imagenet import num_classes as imagenet_classes
from .transforms import image_transform


@dataclass(frozen=True)
class DatasetSpec:
    classes: int | Callable  # a number, or (cfg) -> number
    build: Callable  # (cfg, train, transform, input_size, T) -> Dataset
    events: bool = False  # event frames: no image transforms
    prepare: Callable | None = None  # (cfg, T) -> None: writes to data_dir (download, frame cache)

    def num_classes(self, cfg) -> int:
        return self.classes(cfg) if callable(self.classes) else self.classes


def _cifar_download(name: str):
    def download(cfg, T):
        if cfg.download:
            build_cifar(name, cfg.data_dir, True, None, True)  # one archive holds both splits
    return download


def _prepare_dvs(name: str, cfg, T: int):
    return prepare(name, cfg.data_dir, T, allow_empty=cfg.allow_empty, resume=cfg.resume_prepare)


def _dvs(name: str, cfg, train: bool, T: int):
    # prepare_dataset has resumed whatever needed it; here the caches are only checked.
    return build_dvs(name, cfg.data_dir, train, T, cfg.dvs_split, allow_empty=cfg.allow_empty)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(10, lambda cfg, train, tf, size, T: build_cifar("cifar10", cfg.data_dir, train, tf,
                                                                          cfg.download),
                           prepare=_cifar_download("cifar10")),
    "cifar100": DatasetSpec(100, lambda cfg, train, tf, size, T: build_cifar("cifar100", cfg.data_dir, train, tf,
                                                                            cfg.download),
                            prepare=_cifar_download("cifar100")),
    "imagenet": DatasetSpec(lambda cfg: imagenet_classes(cfg.data_dir),
                            lambda cfg, train, tf, size, T: build_imagenet(cfg.data_dir, train, tf)),
    # Event datasets: frames straight from the cache, no image transforms (augmentation runs on
    # whole batches on the device, see dvs_augment).
    "cifar10dvs": DatasetSpec(10, lambda cfg, train, tf, size, T: _dvs("cifar10dvs", cfg, train, T), events=True,
                              prepare=lambda cfg, T: _prepare_dvs("cifar10dvs", cfg, T)),
    "dvs128gesture": DatasetSpec(11, lambda cfg, train, tf, size, T: _dvs("dvs128gesture", cfg, train, T),
                                 events=True, prepare=lambda cfg, T: _prepare_dvs("dvs128gesture", cfg, T)),
    "fake": DatasetSpec(10, lambda cfg, train, tf, size, T: FakeImages(train, cfg.num_classes or 10, size[-1], tf,
                                                                       cfg.seed)),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def prepare_dataset(cfg, T: int, info) -> None:
    """Run the dataset's one-off writing step (download, DVS frame cache) before any process reads it.

    Under torch.distributed, rank 0 does it first while the others wait; then the first process
    of every other node does it (a no-op where ``data_dir`` is shared, the real work where each
    node has its own copy). A failure on any process stops all of them with its message, instead
    of leaving the others waiting at a barrier.
    """
    spec = dataset_spec(cfg.dataset)
    if spec.prepare is None:
        return
    if not info.distributed:
        spec.prepare(cfg, T)
        return
    for selected in (info.is_main, info.local_rank == 0 and not info.is_main):
        error = None
        with watchdog.paused():   # rank 0 may take hours for a DVS frame cache: no timeout here
            if selected:
                try:
                    spec.prepare(cfg, T)
                except DataError as exc:
                    error = str(exc)
            failed = all_reduce_sum(torch.tensor([float(error is not None)]), "dataset preparation",
                                    group=patient_group())
        if failed.item():
            raise DataError(error or "preparing the data failed on another process; see its error above")


def build_dataset(cfg, train: bool, input_size, mean, std, T: int):
    """The train or validation split of ``cfg.dataset`` (images with timm transforms, or frames)."""
    spec = dataset_spec(cfg.dataset)
    transform = None if spec.events else image_transform(cfg, train, input_size, mean, std)
    return spec.build(cfg, train, transform, input_size, T)


__all__ = ["DATASETS", "DataError", "build_dataset", "dataset_spec", "prepare_dataset"]
