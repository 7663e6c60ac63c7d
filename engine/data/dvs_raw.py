"""The raw side of CIFAR10-DVS and DVS128 Gesture: which recordings ``extract/`` holds, which
samples each gives, checking each one completely, and converting it with spikingjelly.

A ``Job`` is one recording and the event samples (``events_np/`` paths) it yields: one per
CIFAR10-DVS recording, one per labelled gesture (CSV row) of a Gesture recording.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .aedat import BadRecording, aedat2_raw_events, load_aedat31

CIFAR10DVS_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GESTURE_CLASSES = [str(k) for k in range(11)]   # spikingjelly's folders: CSV class 1..11 -> 0..10
GESTURE_SPLITS = ("train", "test")


def sample_layout(name: str) -> dict[str, list[str]]:
    """Class folders every sample stage must hold, by sub-folder ('' for none)."""
    if name == "cifar10dvs":
        return {"": CIFAR10DVS_CLASSES}
    return {split: GESTURE_CLASSES for split in GESTURE_SPLITS}


def _sj():
    # Imported lazily (heavy); the CIFAR10-DVS reader is swapped for the strict one (see aedat.py).
    from spikingjelly.datasets import cifar10_dvs, dvs128_gesture
    import spikingjelly.datasets as sjds
    cifar10_dvs.load_raw_events = aedat2_raw_events
    return sjds, cifar10_dvs, dvs128_gesture


@dataclass
class Job:
    source: Path                     # the recording
    outputs: list[str]               # events_np paths (posix, relative) of its samples, in row order
    labels: Path | None = None       # Gesture: the recording's label CSV
    split: str = ""                  # Gesture: train | test
    rows: np.ndarray | None = field(default=None, repr=False)   # Gesture: CSV rows (class, start, end)


# --- what extract/ holds ---------------------------------------------------------------------

def extract_inputs(name: str, extract: Path) -> list[Path]:
    """The files of ``extract/`` that the events are made from (for fingerprints); cheap."""
    if name == "cifar10dvs":
        return sorted(f for d in extract.iterdir() if d.is_dir() for f in d.iterdir() if f.suffix == ".aedat")
    folder = extract / "DvsGesture"
    out = [folder / f"trials_to_{s}.txt" for s in GESTURE_SPLITS]
    for listing in out[:2]:
        if listing.is_file():
            for stem in _trials(listing):
                out += [folder / f"{stem}.aedat", folder / f"{stem}_labels.csv"]
    return [p for p in out if p.is_file()]


def _trials(listing: Path) -> list[str]:
    """Recording stems in a Gesture trial list (spikingjelly's reading: stripped, non-empty lines)."""
    return [os.path.splitext(line.strip())[0] for line in listing.read_text().splitlines() if line.strip()]


def _read_labels(csv: Path) -> np.ndarray:
    """A Gesture label CSV as spikingjelly reads it (uint32, header skipped), checked."""
    try:
        rows = np.loadtxt(csv, dtype=np.uint32, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as exc:
        raise BadRecording(f"not a label table of class,startTime_usec,endTime_usec rows ({exc})") from None
    if rows.shape[0] < 2 or rows.shape[1] != 3:
        raise BadRecording(f"{rows.shape[0]} rows of {rows.shape[1]} columns; expected class,startTime_usec,"
                           f"endTime_usec rows for each gesture")
    bad = [i for i, c in enumerate(rows[:, 0]) if not 1 <= c <= 11]
    if bad:
        raise BadRecording(f"row {bad[0] + 2}: class {rows[bad[0], 0]} is not one of the gestures 1-11")
    return rows


def plan(name: str, extract: Path) -> tuple[list[Job], list[str]]:
    """The jobs for ``extract/`` and one line per problem that stops them (missing or extra class
    folders, missing or unreadable files). The class set is checked here, before any work."""
    jobs, problems = [], []
    if name == "cifar10dvs":
        found = {d.name: sorted(f for f in d.iterdir() if f.suffix == ".aedat") for d in extract.iterdir()
                 if d.is_dir()}
        missing = [c for c in CIFAR10DVS_CLASSES if not found.get(c)]
        extra = sorted(set(found) - set(CIFAR10DVS_CLASSES))
        if missing:
            problems.append(f"{extract} lacks recordings of class{'es' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (no {missing[0]}/*.aedat)")
        if extra:
            problems.append(f"{extract} holds folder{'s' if len(extra) > 1 else ''} {', '.join(extra)}, which "
                            f"{'are' if len(extra) > 1 else 'is'} not among the 10 classes; remove "
                            f"{'them' if len(extra) > 1 else 'it'}")
        for c in CIFAR10DVS_CLASSES:
            jobs += [Job(f, [f"{c}/{f.stem}.npz"]) for f in found.get(c, [])]
        return jobs, problems
    folder = extract / "DvsGesture"
    for split in GESTURE_SPLITS:
        listing = folder / f"trials_to_{split}.txt"
        if not listing.is_file():
            problems.append(f"{listing} not found")
            continue
        classes, before = set(), len(problems)
        for stem in _trials(listing):
            aedat, csv = folder / f"{stem}.aedat", folder / f"{stem}_labels.csv"
            absent = [str(p) for p in (aedat, csv) if not p.is_file()]
            if absent:
                problems.append(f"{' and '.join(absent)} (listed in {listing.name}) not found")
                continue
            try:
                rows = _read_labels(csv)
            except BadRecording as exc:
                problems.append(f"{csv}: {exc}")
                continue
            seen = [0] * 11
            outputs = []
            for c in rows[:, 0] - 1:   # spikingjelly's file names: <stem>_<k-th row of this class>.npz
                outputs.append(f"{split}/{c}/{stem}_{seen[c]}.npz")
                seen[c] += 1
                classes.add(str(c))
            jobs.append(Job(aedat, outputs, csv, split, rows))
        missing = [c for c in GESTURE_CLASSES if c not in classes]
        if missing and len(problems) == before:
            problems.append(f"the {split} recordings in {listing} have no gesture of class "
                            f"{', '.join(str(int(c) + 1) for c in missing)} (CSV numbering 1-11)")
    return jobs, problems


# --- reading and converting one recording ------------------------------------------------------

def events_per_sample(name: str, job: Job) -> list[int]:
    """Parse the recording completely; the number of events of each of its samples."""
    if name == "cifar10dvs":
        _, cifar10_dvs, _ = _sj()
        return [len(cifar10_dvs.CIFAR10DVS.load_origin_data(str(job.source))["t"])]
    t = load_aedat31(job.source)["t"]
    return [int(np.count_nonzero((t >= start) & (t < end))) for _, start, end in job.rows]


def convert(name: str, job: Job, out: Path) -> None:
    """Write the job's samples under ``out`` (events_np layout) with spikingjelly's own code."""
    sjds, cifar10_dvs, dvs128_gesture = _sj()
    for rel in job.outputs:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):   # spikingjelly prints a line per file
        if name == "cifar10dvs":
            cifar10_dvs.CIFAR10DVS.read_aedat_save_to_np(str(job.source), str(out / job.outputs[0]))
            return
        # spikingjelly's splitter (label rows -> samples, its file names), reading the recording
        # with the vectorised strict reader instead of its per-event Python loop.
        cls = dvs128_gesture.DVS128Gesture
        original = cls.__dict__["load_origin_data"]
        cls.load_origin_data = staticmethod(load_aedat31)
        try:
            cls.split_aedat_files_to_np(job.source.stem, str(job.source), str(job.labels), str(out / job.split))
        finally:
            cls.load_origin_data = original


def read_events_npz(path) -> dict:
    """An events_np sample, opened completely and checked (raises ValueError if unusable)."""
    try:
        with np.load(path) as z:
            events = {k: z[k] for k in ("t", "x", "y", "p")}
    except KeyError as exc:
        raise ValueError(f"no array {exc} (not an events file)") from None
    except Exception as exc:   # BadZipFile, EOFError, OSError, zlib.error, ...: a half-written file
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    n = len(events["t"])
    if any(a.ndim != 1 or len(a) != n for a in events.values()):
        raise ValueError("arrays t, x, y, p of different lengths")
    x, y = events["x"], events["y"]
    if n and (x.min() < 0 or x.max() > 127 or y.min() < 0 or y.max() > 127):
        raise ValueError("x or y outside the 128x128 sensor")
    return events


def check_events_npz(path) -> int:
    """The number of events of a checked events_np sample."""
    return len(read_events_npz(path)["t"])
