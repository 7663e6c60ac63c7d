"""CIFAR10/100 through torchvision, with the on-disk layout checked first.

torchvision's own check fails with "Dataset not found or corrupted" for any problem; here a
missing folder, a folder one level off, or missing batch files each get a message that names
the path and the fix. Files that exist but differ from the official release (md5) are loaded
with a warning, so small hand-made datasets in the real pickle format work too.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from unittest import mock

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
        raise DataError(_misplaced_advice(name, root, set(expected)))
    missing = sorted(f for f in expected if not (folder / f).is_file())
    if missing:
        raise DataError(f"{name}: {folder} is incomplete, missing {', '.join(missing)}. Re-extract "
                        f"{spec['archive']} or add --download.")
    changed = sorted(f for f, md5 in expected.items() if _md5(folder / f) != md5)
    if changed:
        warnings.warn(f"{name}: {', '.join(changed)} in {folder} differ from the official release "
                      f"(md5); results will not be comparable to published numbers.", stacklevel=2)


def _misplaced_advice(name: str, root: Path, files: set[str]) -> str:
    """Where the batch files are, if not in ``root/<official folder>``: a fix that works."""
    spec = SPECS[name]
    target = root / spec["folder"]
    if all((root / f).is_file() for f in files):
        if root.name == spec["folder"]:
            return (f"{name}: {root} holds the batch files directly; pass its parent folder as --data-dir "
                    f"({root.parent}).")
        return (f"{name}: {root} holds the batch files directly, but torchvision reads them only from a "
                f"folder named {spec['folder']}: move them into {target}/ and keep --data-dir {root}.")
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if all((sub / f).is_file() for f in files):
            return (f"{name}: the batch files are in {sub}, but torchvision reads them only from a folder "
                    f"named {spec['folder']}: rename {sub} to {target} and keep --data-dir {root}.")
    return (f"{name}: {target} not found. Extract {spec['archive']} (from {URL}) into {root}, "
            f"or add --download.")


class _StrKeyPickle:
    """Stands in for the ``pickle`` module inside torchvision's CIFAR loader.

    Batches re-saved after ``pickle.load(..., encoding='bytes')`` (as the official page shows)
    have ``b'data'``/``b'labels'`` keys; torchvision indexes with str keys, so they are decoded
    here. A file that does not unpickle is reported by name instead of as a bare pickle error.
    """

    @staticmethod
    def load(file, **kwargs):
        try:
            entry = pickle.load(file, **kwargs)
        except Exception as exc:
            raise DataError(f"{file.name} is corrupt or truncated ({exc.__class__.__name__}: {exc}); "
                            f"replace it from the official archive (re-extract it or add --download).") from None
        if isinstance(entry, dict):
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        return entry


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
        with mock.patch.object(torchvision.datasets.cifar, "pickle", _StrKeyPickle):
            return _without_md5_check(spec["cls"])(str(root_path), train=train, transform=transform)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None
    except Exception as exc:  # batches that unpickle but hold the wrong arrays
        raise DataError(f"{name}: could not read {root_path / spec['folder']} "
                        f"({exc.__class__.__name__}: {exc}). Re-extract {spec['archive']}.") from None
