"""CIFAR10/100 through torchvision, with the on-disk layout checked first.

torchvision's own check fails with "Dataset not found or corrupted" for any problem; here a
missing folder, a folder one level off, or missing batch files each get a message that names
the path and the fix. Files that exist but differ from the official release (md5) are loaded
with a warning, so small hand-made datasets in the real pickle format work too.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torchvision

from .errors import DataError

SPECS = {
    "cifar10": dict(cls=torchvision.datasets.CIFAR10, folder="cifar-10-batches-py", classes=10,
                    archive="cifar-10-python.tar.gz"),
    "cifar100": dict(cls=torchvision.datasets.CIFAR100, folder="cifar-100-python", classes=100,
                     archive="cifar-100-python.tar.gz"),
}
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def check_layout(name: str, root: Path) -> None:
    """Raise DataError naming exactly what is missing; warn if files are not the official ones."""
    spec, cls = SPECS[name], SPECS[name]["cls"]
    folder = root / spec["folder"]
    expected = {fname: md5 for fname, md5 in cls.train_list + cls.test_list}
    expected[cls.meta["filename"]] = cls.meta["md5"]
    if not root.is_dir():
        raise DataError(f"{name}: data dir {root} does not exist. Pass --data-dir pointing at the folder "
                        f"that contains {spec['folder']}/, or add --download to fetch it from {URL}.")
    if not folder.is_dir():
        if all((root / f).is_file() for f in expected):
            raise DataError(f"{name}: {root} holds the batch files directly; pass its parent folder "
                            f"as --data-dir ({root.parent}).")
        raise DataError(f"{name}: {folder} not found. Extract {spec['archive']} (from {URL}) into {root}, "
                        f"or add --download.")
    missing = sorted(f for f in expected if not (folder / f).is_file())
    if missing:
        raise DataError(f"{name}: {folder} is incomplete, missing {', '.join(missing)}. Re-extract "
                        f"{spec['archive']} or add --download.")
    changed = sorted(f for f, md5 in expected.items() if _md5(folder / f) != md5)
    if changed:
        warnings.warn(f"{name}: {', '.join(changed)} in {folder} differ from the official release "
                      f"(md5); results will not be comparable to published numbers.", stacklevel=2)


def _without_md5_check(cls):
    """torchvision's dataset class with the md5 sums removed from its file lists, so it only
    checks that files exist; :func:`check_layout` has already compared them (and warned)."""
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None}})


def build_cifar(name: str, root: str, train: bool, transform, download: bool):
    spec = SPECS[name]
    root_path = Path(root).expanduser()
    if download:
        root_path.mkdir(parents=True, exist_ok=True)
        return spec["cls"](str(root_path), train=train, transform=transform, download=True)
    check_layout(name, root_path)
    try:
        return _without_md5_check(spec["cls"])(str(root_path), train=train, transform=transform)
    except Exception as exc:  # unpicklable or truncated batch files
        raise DataError(f"{name}: could not read {root_path / spec['folder']} "
                        f"({exc.__class__.__name__}: {exc}). Re-extract {spec['archive']}.") from None
