"""Tiny datasets written in the REAL on-disk formats, for end-to-end tests."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _images(labels: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Learnable images: a class colour (a point on the hue circle) plus noise, CHW-flattened."""
    hue = labels[:, None] * (2 * np.pi / num_classes) + np.array([0, 2.1, 4.2])[None, :]
    colour = 128 + 100 * np.cos(hue)                                   # [N, 3]
    img = colour[:, :, None] + rng.normal(0, 25, size=(len(labels), 3, 1024))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(root: Path, train_per_batch: int = 32, test: int = 40, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in CIFAR10_FILES:
        n = test if name == "test_batch" else train_per_batch
        labels = rng.integers(0, 10, size=n)
        batch = {"batch_label": f"{name} of 6", "labels": labels.tolist(), "data": _images(labels, rng, 10),
                 "filenames": [f"img_{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": train_per_batch, "num_vis": 3072},
                    f, protocol=2)
    return Path(root)


def write_cifar100(root: Path, train: int = 64, test: int = 40, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse labels)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, size=n)
        batch = {"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": name,
                 "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": _images(fine, rng, 100)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine_{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse_{i}" for i in range(20)]}, f, protocol=2)
    return Path(root)


def write_image_folder(root: Path, classes: int = 4, train_per_class: int = 8, val_per_class: int = 4,
                       size: int = 40, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG``: real JPEG files, one colour per class plus noise."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = _images(np.array([c]), rng, classes).reshape(3, 32, 32)[:, 0, 0]
                pixels = np.clip(colour[None, None, :] + rng.normal(0, 20, (size, size + 8, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return Path(root)
