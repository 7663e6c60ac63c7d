"""A synthetic, learnable image dataset: a first run with nothing to download.

Each class is a fixed coarse random colour pattern (4x4 cells); samples are that pattern plus
pixel noise, as PIL images, so they go through exactly the same transforms as CIFAR.
Deterministic per seed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

TRAIN_SIZE, VAL_SIZE = 512, 128


class FakeImages(Dataset):
    def __init__(self, train: bool, num_classes: int = 10, img_size: int = 32, transform=None,
                 seed: int = 0):
        rng = np.random.default_rng(seed)
        cells = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
        cell = -(-img_size // 4)
        patterns = cells.repeat(cell, axis=1).repeat(cell, axis=2)[:, :img_size, :img_size]
        n = TRAIN_SIZE if train else VAL_SIZE
        rng = np.random.default_rng(seed + (1 if train else 2))
        self.targets = rng.integers(0, num_classes, size=n).tolist()
        noise = rng.normal(0, 40, size=(n, img_size, img_size, 3))
        self.data = np.clip(patterns[self.targets] + noise, 0, 255).astype(np.uint8)
        self.classes = [f"class_{i}" for i in range(num_classes)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        return (self.transform(img) if self.transform else img), self.targets[index]
