"""CIFAR10-DVS and DVS128 Gesture: raw event files -> cached frames -> spikingjelly datasets.

The dataset classes, event parsers and frame integration are spikingjelly's (0.0.0.0.14, the
same computation as the 0.0.0.0.12 the originals use); this module drives them step by step so
that nothing is downloaded silently, every step shows a progress bar, errors are not swallowed
by spikingjelly's thread pools, and an interrupted step is detected instead of reused.

On-disk layout under ``--data-dir`` (spikingjelly's, so old frame caches are reused)::

    download/        the files as published (zips / tar.gz)          <- you put them here
    extract/         unpacked recordings (AEDAT files)               <- made from download/
    events_np/       one .npz of events (t, x, y, p) per sample      <- made from extract/
    frames_number_<T>_split_by_number/   one .npz of [T, 2, 128, 128] frames per sample

Each finished ``events_np``/``frames_*`` folder gets a ``.complete`` file listing its sample
count; a folder without it is a half-written cache and is reported, never silently used.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Subset
from torchvision.datasets.utils import check_integrity, extract_archive
from tqdm import tqdm

from .errors import DataError

MARKER = ".complete"
CIFAR10DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _sj():
    # Imported lazily: spikingjelly.datasets pulls in torchaudio-free but heavy modules.
    from spikingjelly.datasets import cifar10_dvs, dvs128_gesture
    import spikingjelly.datasets as sjds
    cifar10_dvs.load_raw_events = _load_raw_events  # see below
    return sjds, cifar10_dvs, dvs128_gesture


def _load_raw_events(fp, bytes_skip=0, bytes_trim=0, filter_dvs=False, times_first=False):
    """spikingjelly's CIFAR10-DVS reader with ``np.frombuffer`` for the removed ``np.fromstring``.

    numpy >= 2 raises on ``np.fromstring(..., dtype='>u4')``; spikingjelly runs the reader in a
    thread pool that drops exceptions, so without this every recording silently yields nothing.
    Same bytes, same values. (``filter_dvs`` is never used for CIFAR10-DVS.)
    """
    from spikingjelly.datasets.cifar10_dvs import skip_header
    p = skip_header(fp)
    fp.seek(p + bytes_skip)
    data = fp.read()
    if bytes_trim > 0:
        data = data[:-bytes_trim]
    data = np.frombuffer(data, dtype=">u4")
    if len(data) % 2:
        raise ValueError(f"odd number of 32-bit words in {getattr(fp, 'name', 'the file')}")
    raw_addr, timestamp = data[::2], data[1::2]
    if times_first:
        timestamp, raw_addr = raw_addr, timestamp
    if filter_dvs:
        raise NotImplementedError("filter_dvs is not used for CIFAR10-DVS")
    return timestamp, raw_addr


# --- per-dataset facts -------------------------------------------------------------------

SOURCES = {
    "cifar10dvs": ("the 10 class zips (airplane.zip ... truck.zip) of CIFAR10-DVS from "
                   "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"),
    "dvs128gesture": ("DvsGesture.tar.gz (with gesture_mapping.csv, LICENSE.txt, README.txt) from IBM: "
                      "https://research.ibm.com/interactive/dvsgesture/"),
}


def _resources(name: str):
    _, cifar10_dvs, dvs128_gesture = _sj()
    cls = cifar10_dvs.CIFAR10DVS if name == "cifar10dvs" else dvs128_gesture.DVS128Gesture
    return cls, cls.resource_url_md5()


def _write_marker(folder: Path, count: int) -> None:
    (folder / MARKER).write_text(json.dumps({"samples": count}))


def _count_npz(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.npz"))


def _marked_count(folder: Path) -> int | None:
    try:
        return json.loads((folder / MARKER).read_text())["samples"]
    except (OSError, ValueError, KeyError):
        return None


# --- preparation steps -------------------------------------------------------------------

def _extract(name: str, root: Path) -> None:
    _, resources = _resources(name)
    download = root / "download"
    missing = [f for f, _, _ in resources if not (download / f).is_file()]
    if name == "dvs128gesture":
        missing = [f for f in missing if f == "DvsGesture.tar.gz"]  # the other three are documentation
    if missing:
        raise DataError(f"{name}: nothing to prepare in {root}: no events_np/ or extract/ folder, and "
                        f"{download} lacks {', '.join(missing)}. Download {SOURCES[name]} into {download} "
                        f"(nothing is downloaded automatically).")
    changed = [f for f, _, md5 in resources if (download / f).is_file() and not check_integrity(str(download / f), md5)]
    if changed:
        warnings.warn(f"{name}: {', '.join(changed)} differ from the published files (md5); results will not "
                      f"be comparable to published numbers.", stacklevel=3)
    extract = root / "extract"
    tmp = root / "extract.partial"
    tmp.mkdir(exist_ok=True)
    archives = [f for f, _, _ in resources if f.endswith((".zip", ".tar.gz"))]
    for f in tqdm(archives, desc=f"{name}: extracting", unit="archive"):
        extract_archive(str(download / f), str(tmp))
    tmp.rename(extract)


def _convert_events(name: str, root: Path) -> None:
    """extract/ -> events_np/, one progress bar, failures raised."""
    _, cifar10_dvs, dvs128_gesture = _sj()
    extract, out = root / "extract", root / "events_np.partial"
    out.mkdir(exist_ok=True)
    jobs = []
    if name == "cifar10dvs":
        classes = sorted(d.name for d in extract.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"{name}: {extract} has no class folders of .aedat recordings")
        for c in classes:
            (out / c).mkdir(exist_ok=True)
            for f in sorted((extract / c).iterdir()):
                if f.suffix == ".aedat":
                    jobs.append((cifar10_dvs.CIFAR10DVS.read_aedat_save_to_np, str(f), str(out / c / (f.stem + ".npz"))))
    else:
        aedat_dir = extract / "DvsGesture"
        lists = {split: aedat_dir / f"trials_to_{split}.txt" for split in ("train", "test")}
        absent = [str(p) for p in lists.values() if not p.is_file()]
        if absent:
            raise DataError(f"{name}: {', '.join(absent)} not found; re-extract DvsGesture.tar.gz into {extract}")
        for split, listing in lists.items():
            for label in range(11):
                (out / split / str(label)).mkdir(parents=True, exist_ok=True)
            for line in listing.read_text().splitlines():
                fname = line.strip()
                if fname:
                    stem = os.path.splitext(fname)[0]
                    jobs.append((dvs128_gesture.DVS128Gesture.split_aedat_files_to_np, stem, str(aedat_dir / fname),
                                 str(aedat_dir / f"{stem}_labels.csv"), str(out / split)))
    for fn, *args in tqdm(jobs, desc=f"{name}: events -> npz", unit="file"):
        with contextlib.redirect_stdout(io.StringIO()):  # spikingjelly prints a line per file
            fn(*args)
    _write_marker(out, _count_npz(out))
    out.rename(root / "events_np")


def _integrate_frames(root: Path, T: int) -> Path:
    """events_np/ -> frames_number_T_split_by_number/ with spikingjelly's integration."""
    sjds, _, _ = _sj()
    events, frames = root / "events_np", root / f"frames_number_{T}_split_by_number"
    tmp = root / (frames.name + ".partial")
    files = sorted(events.rglob("*.npz"))
    for f in tqdm(files, desc=f"frames (T={T})", unit="sample"):
        out_dir = tmp / f.parent.relative_to(events)
        out_dir.mkdir(parents=True, exist_ok=True)
        sjds.integrate_events_file_to_frames_file_by_fixed_frames_number(
            np.load, str(f), str(out_dir), "number", T, 128, 128, False)
    for d in (p for p in events.rglob("*") if p.is_dir()):   # keep empty class folders too
        (tmp / d.relative_to(events)).mkdir(parents=True, exist_ok=True)
    _write_marker(tmp, len(files))
    tmp.rename(frames)
    return frames


def prepare(name: str, root: str | os.PathLike, T: int) -> Path:
    """Make sure the frames for ``T`` exist and are complete; build whatever step is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: data dir {root} does not exist. Create it and put {SOURCES[name]} into "
                        f"{root / 'download'}, or point --data-dir at an existing dataset folder.")
    for stale in root.glob("*.partial"):
        raise DataError(f"{name}: {stale} is left over from an interrupted preparation; delete it and run again.")
    events = root / "events_np"
    if events.is_dir():
        expected = _marked_count(events)
        if expected is None:
            # A cache made by spikingjelly itself (e.g. by the original repositories): accept it
            # only if it holds samples; we cannot know more about it.
            n = _count_npz(events)
            if n == 0:
                raise DataError(f"{name}: {events} holds no samples (a failed or interrupted conversion); "
                                f"delete it and run again.")
            _write_marker(events, n)
    else:
        if not (root / "extract").is_dir():
            _extract(name, root)
        _convert_events(name, root)
    n_events = _marked_count(events)
    frames = root / f"frames_number_{T}_split_by_number"
    if frames.is_dir():
        have = _marked_count(frames)
        if have is None:
            have = _count_npz(frames)
            if have != n_events:
                raise DataError(f"{name}: {frames} is a half-written frame cache ({have} of {n_events} samples); "
                                f"delete it and run again to rebuild it.")
            _write_marker(frames, have)
        elif have != n_events:
            raise DataError(f"{name}: {frames} has {have} samples but events_np has {n_events}; delete {frames}.")
        return frames
    return _integrate_frames(root, T)


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


def build_dvs(name: str, root: str, train: bool, T: int, split: str = "originals"):
    """The train or test set as frames ``float32 [T, 2, 128, 128]`` (event counts per polarity)."""
    prepare(name, root, T)
    _, cifar10_dvs, dvs128_gesture = _sj()
    with contextlib.redirect_stdout(io.StringIO()):  # spikingjelly reports every folder it finds
        if name == "dvs128gesture":
            return dvs128_gesture.DVS128Gesture(root, train=train, data_type="frame", frames_number=T,
                                                split_by="number")
        full = cifar10_dvs.CIFAR10DVS(root, data_type="frame", frames_number=T, split_by="number")
    indices = cifar10dvs_split(full.targets, [p for p, _ in full.samples], split, train)
    subset = Subset(full, indices)
    subset.targets = [full.targets[i] for i in indices]
    return subset
