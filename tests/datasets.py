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


# --- neuromorphic datasets -----------------------------------------------------------------

def random_events(rng: np.random.Generator, n: int, t0: int = 0):
    """n events on a 128x128 sensor: (t, x, y, p), timestamps increasing."""
    t = t0 + np.sort(rng.integers(0, 1_000_000, size=n))
    return t, rng.integers(0, 128, size=n), rng.integers(0, 128, size=n), rng.integers(0, 2, size=n)


AEDAT2_HEADER = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
                 b"# Data format is int32 address, int32 timestamp (8 bytes total)\r\n")
AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def aedat2_bytes(x_raw, y_raw, p_raw, t) -> bytes:
    """CIFAR10-DVS recordings: jAER AEDAT 2.0, '#' header lines, big-endian (address, timestamp)
    pairs with x in address bits 1-7, y in bits 8-14 and polarity in bit 0."""
    header = AEDAT2_HEADER
    address = (np.asarray(y_raw) << 8) | (np.asarray(x_raw) << 1) | np.asarray(p_raw)
    return header + np.stack([address, np.asarray(t)], axis=1).astype(">u4").tobytes()


def write_cifar10dvs(root: Path, recordings=(0, 1, 5, 50, 91, 95, 99, 100, 101, 500, 908, 909, 950, 999),
                     events_per_recording: int = 300, seed: int = 0, edit=None) -> dict:
    """``root/download/<class>.zip`` as published, each holding ``<class>/cifar10_<class>_<k>.aedat``.

    Returns the raw events by (class, k) so tests can recompute frames independently.
    ``edit(class, k, data) -> data`` damages recordings the way downloads break them.
    """
    import zipfile
    from engine.data.dvs import CIFAR10DVS_CLASSES
    rng = np.random.default_rng(seed)
    download = Path(root) / "download"
    download.mkdir(parents=True, exist_ok=True)
    raw = {}
    for c, name in enumerate(CIFAR10DVS_CLASSES):
        with zipfile.ZipFile(download / f"{name}.zip", "w") as z:
            for k in recordings:
                t, x, y, p = random_events(rng, events_per_recording + 10 * c)
                x = np.where(p == 1, np.minimum(x + 3 * c, 127), x)   # class-dependent, so it is learnable
                raw[(name, k)] = (t, x, y, p)
                data = aedat2_bytes(x, y, p, t)
                # a fixed timestamp: the same recordings give the same archive bytes (and md5)
                member = zipfile.ZipInfo(f"{name}/cifar10_{name}_{k}.aedat", date_time=(1980, 1, 1, 0, 0, 0))
                z.writestr(member, edit(name, k, data) if edit else data)
    return raw


def aedat31_bytes(t, x, y, p, packet: int = 64) -> bytes:
    """DVS128 Gesture recordings: AEDAT 3.1, header ending in '#!END-HEADER\\r\\n', then packets of
    polarity events (28-byte little-endian header; 8 bytes per event: data word and timestamp)."""
    import struct
    out = [AEDAT31_HEADER]
    for s in range(0, len(t), packet):
        n = len(t[s:s + packet])
        out.append(struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, n, n, n))
        for ti, xi, yi, pi in zip(t[s:s + packet], x[s:s + packet], y[s:s + packet], p[s:s + packet]):
            out.append(struct.pack("<II", (int(xi) << 17) | (int(yi) << 2) | (int(pi) << 1) | 1, int(ti)))
    return b"".join(out)


def write_dvs128gesture(root: Path, train_users=(1, 2), test_users=(24,), seed: int = 0, edit=None) -> dict:
    """``root/download/DvsGesture.tar.gz`` (+ the three small files) as IBM publishes it: per
    recording ``userNN_<lighting>.aedat`` and ``..._labels.csv`` (class,startTime_usec,endTime_usec),
    and the ``trials_to_train.txt``/``trials_to_test.txt`` lists. Each recording shows all 11
    gestures once. Returns the events per recording. ``edit(stem, data) -> data`` damages recordings."""
    import io as _io
    import tarfile
    rng = np.random.default_rng(seed)
    files, raw = {}, {}
    for split, users in (("train", train_users), ("test", test_users)):
        names = []
        for u in users:
            stem = f"user{u:02d}_led"
            names.append(stem + ".aedat")
            rows, ts, xs, ys, ps = [], [], [], [], []
            for cls in range(1, 12):
                start = cls * 2_000_000
                t, x, y, p = random_events(rng, 150, t0=start)
                x = np.where(p == 0, (x + 7 * cls) % 128, x)
                rows.append(f"{cls},{start},{start + 1_000_000}")
                ts.append(t), xs.append(x), ys.append(y), ps.append(p)
            t, x, y, p = (np.concatenate(a) for a in (ts, xs, ys, ps))
            raw[stem] = (t, x, y, p, rows)
            data = aedat31_bytes(t, x, y, p)
            files[f"DvsGesture/{stem}.aedat"] = edit(stem, data) if edit else data
            files[f"DvsGesture/{stem}_labels.csv"] = ("class,startTime_usec,endTime_usec\n" + "\n".join(rows) + "\n").encode()
        files[f"DvsGesture/trials_to_{split}.txt"] = ("\n".join(names) + "\n").encode()
    download = Path(root) / "download"
    download.mkdir(parents=True, exist_ok=True)
    import gzip
    with gzip.GzipFile(download / "DvsGesture.tar.gz", "wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:     # no timestamps: reproducible bytes
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
    for name in ("gesture_mapping.csv", "LICENSE.txt", "README.txt"):
        (download / name).write_text("placeholder\n")
    return raw
