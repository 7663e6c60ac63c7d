"""CIFAR10-DVS and DVS128 Gesture as spikingjelly datasets of cached frames.

The dataset classes, event parsers and frame integration are spikingjelly's (0.0.0.0.14, the
same computation as the 0.0.0.0.12 the originals use). ``prepare`` (dvs_prepare.py) builds and
checks the caches stage by stage, so that nothing is downloaded silently, every step shows a
progress bar, bad recordings are named with their byte offset, and an interrupted or partial
cache is detected instead of reused; ``build_dvs`` then reads the frames.
"""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

from torch.utils.data import Subset

from .dvs_cache import MARKER  # noqa: F401  (re-exported)
from .dvs_prepare import SOURCES, prepare  # noqa: F401  (re-exported)
from .dvs_raw import CIFAR10DVS_CLASSES, GESTURE_CLASSES, _sj
from .errors import DataError


# --- datasets ----------------------------------------------------------------------------

def cifar10dvs_split(targets: list[int], files: list[str], split: str, train: bool) -> list[int]:
    """Indices of the train or test part of CIFAR10-DVS, which has no official split.

    ``originals``: per class, the first ceil(90%) samples in dataset order (class folder, then file
    name sorted as strings) are train, the rest test: spikingjelly's ``split_to_train_test_set(0.9,
    ..., random_split=False)`` as all three repositories call it. With the published file names the
    test set is recordings 91-99 and 909-999 of every class.
    ``tebn``: recordings 0-99 of every class are test, 100-999 train (the split of TEBN and of
    spikingjelly 2's ``CIFAR10DVSTEBNSplit``), by the number in the file name.
    """
    if split == "originals":
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(targets):
            by_class.setdefault(y, []).append(i)
        chosen = []
        for y in sorted(by_class):
            cut = math.ceil(len(by_class[y]) * 0.9)
            chosen += by_class[y][:cut] if train else by_class[y][cut:]
        return chosen
    if split == "tebn":
        number = [int(Path(f).stem.rsplit("_", 1)[-1]) for f in files]
        return [i for i, k in enumerate(number) if (k >= 100) == train]
    raise DataError(f"unknown CIFAR10-DVS split {split!r}; choose 'originals' or 'tebn'")


def build_dvs(name: str, root: str, train: bool, T: int, split: str = "originals", allow_empty: bool = False,
              resume: bool = False):
    """The train or test set as frames ``float32 [T, 2, 128, 128]`` (event counts per polarity)."""
    prepare(name, root, T, allow_empty=allow_empty, resume=resume)
    _, cifar10_dvs, dvs128_gesture = _sj()
    with contextlib.redirect_stdout(io.StringIO()):  # spikingjelly reports every folder it finds
        if name == "dvs128gesture":
            data = dvs128_gesture.DVS128Gesture(root, train=train, data_type="frame", frames_number=T,
                                                split_by="number")
        else:
            data = cifar10_dvs.CIFAR10DVS(root, data_type="frame", frames_number=T, split_by="number")
    expected = sorted(CIFAR10DVS_CLASSES if name == "cifar10dvs" else GESTURE_CLASSES)
    if data.classes != expected:   # prepare() checked the folders; this guards the labels themselves
        raise DataError(f"{name}: the frame cache in {root} gives the classes {data.classes}, not the dataset's "
                        f"{expected}; delete it and prepare again.")
    if name == "dvs128gesture":
        return data
    full = data
    indices = cifar10dvs_split(full.targets, [p for p, _ in full.samples], split, train)
    subset = Subset(full, indices)
    subset.targets = [full.targets[i] for i in indices]
    return subset
