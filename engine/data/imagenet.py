"""ImageNet (or any dataset in its layout) through torchvision's ImageFolder.

Expected layout, as all three original repositories use::

    <data_dir>/train/<class>/<image>.JPEG
    <data_dir>/val/<class>/<image>.JPEG

The layout is checked before anything is loaded, so a missing split, an unsorted validation
folder (the raw ILSVRC2012 val/ has 50,000 images and no class folders) or train/val class
mismatches are reported with the path and the fix rather than as torchvision exceptions.
"""
from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError

LAYOUT = "<data-dir>/train/<class>/*.JPEG and <data-dir>/val/<class>/*.JPEG"


def _classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_layout(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"imagenet: data dir {root} does not exist. Pass --data-dir with the layout {LAYOUT}.")
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"imagenet: {split_dir} not found; --data-dir must hold train/ and val/ ({LAYOUT}).")
        classes = _classes(split_dir)
        loose = [p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        if not classes:
            hint = (" It holds images directly: sort them into one folder per class (for ILSVRC2012 "
                    "val, e.g. with the commonly used valprep.sh)." if loose else "")
            raise DataError(f"imagenet: {split_dir} has no class folders.{hint} Expected {LAYOUT}.")
        empty = [c for c in classes if not any(f.suffix.lower() in IMG_EXTENSIONS
                                               for f in (split_dir / c).iterdir() if f.is_file())]
        if empty:
            raise DataError(f"imagenet: {len(empty)} class folders in {split_dir} hold no images "
                            f"(e.g. {', '.join(empty[:3])}).")
    train, val = _classes(root / "train"), _classes(root / "val")
    if train != val:
        only = sorted(set(train) ^ set(val))
        raise DataError(f"imagenet: train/ and val/ have different classes ({len(train)} vs {len(val)}; "
                        f"e.g. {', '.join(only[:3])} in only one of them). Labels would not match.")


def num_classes(root: str) -> int:
    path = Path(root).expanduser() / "train"
    return len(_classes(path)) if path.is_dir() else 1000


def build_imagenet(root: str, train: bool, transform) -> ImageFolder:
    root_path = Path(root).expanduser()
    check_layout(root_path)
    return ImageFolder(str(root_path / ("train" if train else "val")), transform=transform)
