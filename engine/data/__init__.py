"""Datasets by name. Each entry builds the train or validation split with its transform."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .cifar import build_cifar
from .dvs import build_dvs
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

    def num_classes(self, cfg) -> int:
        return self.classes(cfg) if callable(self.classes) else self.classes


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(10, lambda cfg, train, tf, size, T: build_cifar("cifar10", cfg.data_dir, train, tf,
                                                                          cfg.download)),
    "cifar100": DatasetSpec(100, lambda cfg, train, tf, size, T: build_cifar("cifar100", cfg.data_dir, train, tf,
                                                                            cfg.download)),
    "imagenet": DatasetSpec(lambda cfg: imagenet_classes(cfg.data_dir),
                            lambda cfg, train, tf, size, T: build_imagenet(cfg.data_dir, train, tf)),
    # Event datasets: frames straight from the cache, no image transforms (augmentation runs on
    # whole batches on the device, see dvs_augment).
    "cifar10dvs": DatasetSpec(10, lambda cfg, train, tf, size, T: build_dvs("cifar10dvs", cfg.data_dir, train, T,
                                                                           cfg.dvs_split), events=True),
    "dvs128gesture": DatasetSpec(11, lambda cfg, train, tf, size, T: build_dvs("dvs128gesture", cfg.data_dir, train,
                                                                              T), events=True),
    "fake": DatasetSpec(10, lambda cfg, train, tf, size, T: FakeImages(train, cfg.num_classes or 10, size[-1], tf,
                                                                       cfg.seed)),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(cfg, train: bool, input_size, mean, std, T: int):
    """The train or validation split of ``cfg.dataset`` (images with timm transforms, or frames)."""
    spec = dataset_spec(cfg.dataset)
    transform = None if spec.events else image_transform(cfg, train, input_size, mean, std)
    return spec.build(cfg, train, transform, input_size, T)


__all__ = ["DATASETS", "DataError", "build_dataset", "dataset_spec"]
