"""CIFAR10-DVS and DVS128 Gesture preparation: download/ -> extract/ -> events_np/ -> frames, checked
at every stage.

The stage folders are spikingjelly's (so old caches are found)::

    download/        the files as published (zips / tar.gz)          <- you put them here
    extract/         unpacked recordings (AEDAT files)               <- made from download/
    events_np/       one .npz of events (t, x, y, p) per sample      <- made from extract/
    frames_number_<T>_split_by_number/   one .npz of [T, 2, 128, 128] frames per sample

Rules (docs/datasets.md states them for users):
- A stage is built in ``<stage>.partial`` and renamed when complete, with a ``.complete`` marker
  (sample count, fingerprint of its inputs; see dvs_cache.py). A folder without a valid marker,
  or whose marker disagrees with what it holds or with its inputs, is never used: its count is
  reported against what the stage above gives, and ``resume`` continues it from the files that
  verify (each opened and checked).
- Every recording is parsed completely before anything is written; bad ones are listed with the
  byte offset and the run stops with nothing written. So a leftover ``.partial`` always means an
  interrupted run.
- Every stage holds exactly the dataset's classes. A sample needs at least one event per frame
  (T events for T frames); one with none is refused when events_np/ is built, one with fewer than
  T when the T-frame cache is built, unless ``allow_empty`` (then they are counted in a warning).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .aedat import BadRecording
from .dvs_cache import (class_problems, fingerprint, listed, marker_problems, npz_files, read_marker,
                        write_marker)
from .dvs_raw import (CIFAR10DVS_CLASSES, _sj, check_events_npz, convert, events_per_sample, extract_inputs,
                      plan, read_events_npz, sample_layout)
from .errors import DataError

SOURCES = {
    "cifar10dvs": ("the 10 class zips (airplane.zip ... truck.zip) of CIFAR10-DVS from "
                   "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"),
    "dvs128gesture": ("DvsGesture.tar.gz (with gesture_mapping.csv, LICENSE.txt, README.txt) from IBM: "
                      "https://research.ibm.com/interactive/dvsgesture/"),
}
PUBLISHED = {"cifar10dvs": 10000, "dvs128gesture": 1464}   # samples (Gesture: 1176 train + 288 test)
RESUME = "--resume-prepare"
# What a damaged or incomplete archive raises while it is read.
BAD_ARCHIVE = (zipfile.BadZipFile, tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error)
ALLOW = "--allow-empty"


def _archives(name: str) -> list[tuple[str, str]]:
    """(file, md5) of the published archives that hold the recordings."""
    _, cifar10_dvs, dvs128_gesture = _sj()
    cls = cifar10_dvs.CIFAR10DVS if name == "cifar10dvs" else dvs128_gesture.DVS128Gesture
    return [(f, md5) for f, _, md5 in cls.resource_url_md5() if f.endswith((".zip", ".tar.gz"))]


def _both(name: str, folder: Path, partial: Path) -> None:
    if folder.exists() and partial.exists():
        raise DataError(f"{name}: both {folder} and {partial} exist; keep one (delete {partial} to keep the "
                        f"finished one) and run again.")


def _partial_note(partial: Path) -> str:
    return (f"{partial} is left over from an interrupted run (killed or crashed; a run stopped by bad input "
            f"leaves nothing behind)")


# --- download/ -> extract/ -----------------------------------------------------------------

def _missing_download(name: str, root: Path, missing: list[str]) -> DataError:
    download, extract = root / "download", root / "extract"
    if name == "cifar10dvs":
        unpacked = [c for c in CIFAR10DVS_CLASSES if (download / c).is_dir() and any((download / c).glob("*.aedat"))]
        if unpacked:
            more = "" if len(unpacked) == len(missing) else \
                (f", unzip the remaining zips there too (for f in {download}/*.zip; do unzip -q \"$f\" -d "
                 f"{extract}; done)")
            return DataError(f"{name}: {download} holds unpacked class folders ({', '.join(unpacked)}) instead of "
                             f"their zips: move them into {extract}/ (mkdir -p {extract} && mv "
                             f"{' '.join(str(download / c) for c in unpacked)} {extract}/){more}, and run again; "
                             f"no need to download the zips again.")
    elif (download / "DvsGesture").is_dir():
        return DataError(f"{name}: {download} holds the unpacked DvsGesture/ folder instead of DvsGesture.tar.gz: "
                         f"move it into {extract}/ (mkdir -p {extract} && mv {download / 'DvsGesture'} {extract}/) "
                         f"and run again; no need to download the archive again.")
    return DataError(f"{name}: nothing to prepare in {root}: no events_np/ or extract/ folder, and {download} "
                     f"lacks {', '.join(missing)}. Download {SOURCES[name]} into {download} (nothing is "
                     f"downloaded automatically).")


def _archive_members(path: Path) -> dict[str, int]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            return {i.filename: i.file_size for i in z.infolist() if not i.is_dir()}
    with tarfile.open(path) as t:
        return {m.name: m.size for m in t.getmembers() if m.isfile()}


def _compare_with_archives(extract: Path, paths: list[Path]) -> str | None:
    """None if ``extract`` holds every file of the archives with its size, else what differs."""
    missing, total = [], 0
    for path in paths:
        try:
            members = _archive_members(path)
        except BAD_ARCHIVE as exc:
            raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}): it is damaged or incomplete; "
                            f"download it again.") from None
        total += len(members)
        for member, size in members.items():
            f = extract / member
            if not f.is_file() or f.stat().st_size != size:
                missing.append(member)
    if not missing:
        return None
    return (f"holds {total - len(missing)} of the {total} files in the archives in download/ complete "
            f"(e.g. {missing[0]} is missing or of another size)")


def _unpack(name: str, root: Path, partial: Path, paths: list[Path], fp: str) -> Path:
    from torchvision.datasets.utils import extract_archive
    partial.mkdir(exist_ok=True)
    for path in tqdm(paths, desc=f"{name}: extracting", unit="archive"):
        try:
            extract_archive(str(path), str(partial))
        except BAD_ARCHIVE as exc:
            shutil.rmtree(partial)
            raise DataError(f"{name}: {path} cannot be unpacked ({type(exc).__name__}: {exc}): it is damaged or "
                            f"incomplete; download it again (nothing was kept).") from None
    jobs, problems = plan(name, partial)
    if problems:
        shutil.rmtree(partial)
        raise DataError(f"{name}: the archives in {root / 'download'} do not hold the dataset: "
                        f"{listed(problems)}. Download them again (nothing was kept).")
    write_marker(partial, files=len(extract_inputs(name, partial)), inputs=fp)
    extract = root / "extract"
    partial.rename(extract)
    return extract


def extract_stage(name: str, root: Path, resume: bool, required: bool = True) -> Path | None:
    """``extract/``, unpacked from ``download/`` if needed and checked against it where possible.
    None if there is neither (only when not ``required``)."""
    from torchvision.datasets.utils import check_integrity
    extract, partial, download = root / "extract", root / "extract.partial", root / "download"
    _both(name, extract, partial)
    archives = _archives(name)
    paths = [download / f for f, _ in archives]
    missing = [f for f, _ in archives if not (download / f).is_file()]
    fp = None if missing else fingerprint(paths, download)
    if extract.is_dir():
        if missing:
            return extract   # no complete download/: extract/ is the input (every recording is parsed later)
        marker = read_marker(extract)
        if marker is not None and marker.get("inputs") == fp:
            return extract
        if marker is not None:
            problem = "was unpacked from other files than those now in download/ (their names or sizes differ)"
        else:
            problem = _compare_with_archives(extract, paths)
            if problem is None:
                write_marker(extract, files=len(extract_inputs(name, extract)), inputs=fp)
                return extract
            problem = "has no .complete marker and " + problem + ": an interrupted extraction"
        if not resume:
            raise DataError(f"{name}: {extract} {problem}. Run again with {RESUME} to unpack download/ again over "
                            f"it, or delete {extract}.")
        extract.rename(partial)
    elif partial.is_dir():
        if not resume:
            n = sum(1 for p in partial.rglob("*") if p.is_file())
            raise DataError(f"{name}: {_partial_note(partial)}; it holds {n} unpacked files. Run again with "
                            f"{RESUME} to unpack download/ into it again, or delete it.")
    if missing:
        if not required and not partial.exists():
            return None
        raise _missing_download(name, root, missing)
    changed = [f for f, md5 in archives if not check_integrity(str(download / f), md5)]
    if changed:
        warnings.warn(f"{name}: {', '.join(changed)} differ from the published files (md5); results will not "
                      f"be comparable to published numbers.", stacklevel=3)
    return _unpack(name, root, partial, paths, fp)


# --- extract/ -> events_np/ ----------------------------------------------------------------

def _bad_input_advice(name: str, extract: Path, bad: list[Path]) -> str:
    if read_marker(extract) is not None:   # unpacked here from download/, so the archive is bad
        archives = sorted({f"{p.parent.name}.zip" for p in bad}) if name == "cifar10dvs" else ["DvsGesture.tar.gz"]
        return (f"{'It' if len(bad) == 1 else 'They'} came from {', '.join(archives)} in download/: download "
                f"{'that' if len(archives) == 1 else 'those'} again, delete {extract} and run again.")
    return f"Replace {'it' if len(bad) == 1 else 'them'} in {extract} with the published recordings and run again."


def _check_recordings(name: str, jobs, allow_empty: bool) -> tuple[dict[str, int], list[str], list[Path]]:
    """Parse every recording completely: events per sample, one problem line per bad recording,
    and the bad recordings."""
    counts, problems, bad = {}, [], []
    for job in tqdm(jobs, desc=f"{name}: checking recordings", unit="file"):
        try:
            n = events_per_sample(name, job)
        except BadRecording as exc:
            problems.append(f"{job.source}: {exc}")
            bad.append(job.source)
            continue
        zero = [i for i, k in enumerate(n) if k == 0]
        if zero and not allow_empty:
            bad.append(job.source)
            if job.labels is None:
                problems.append(f"{job.source}: no events after its header (a recording cut to its header)")
            else:
                rows = ", ".join(str(i + 2) for i in zero[:5]) + (", ..." if len(zero) > 5 else "")
                problems.append(f"{job.source}: {len(zero)} of its {len(n)} labelled gestures have no events "
                                f"(rows {rows} of {job.labels.name}): the recording is cut short or the labels "
                                f"do not belong to it")
        counts.update(zip(job.outputs, n))
    return counts, problems, bad


def _verified(path: Path, expected: int) -> bool:
    try:
        return path.is_file() and check_events_npz(path) == expected
    except ValueError:
        return False


def _adopt_without_inputs(name: str, existing: Path, resume: bool, allow_empty: bool) -> dict:
    """A marker-less events_np/ with no extract/ or download/ to check it against."""
    have = npz_files(existing)
    if len(have) != PUBLISHED[name]:
        raise DataError(f"{name}: {existing} has no .complete marker and holds {len(have)} samples, and there is "
                        f"no extract/ or download/ to check it against (the published dataset has "
                        f"{PUBLISHED[name]}): an interrupted conversion. Put {SOURCES[name]} into "
                        f"{existing.parent / 'download'} and run again with {RESUME}.")
    if not resume:
        raise DataError(f"{name}: {existing} has no .complete marker; it holds all {len(have)} samples of the "
                        f"published dataset. Run again with {RESUME} to open and check every file and use it.")
    problems, counts = class_problems(name, existing), {}
    for rel in tqdm(have, desc=f"{name}: checking events_np", unit="file"):
        try:
            counts[rel] = check_events_npz(existing / rel)
        except ValueError as exc:
            problems.append(f"{existing / rel}: {exc}")
    empty = [rel for rel, n in counts.items() if n == 0]
    if empty and not allow_empty:
        problems += [f"{existing / rel}: no events" for rel in empty]
    if problems:
        raise DataError(f"{name}: {listed(problems)}. Without extract/ these cannot be converted again: put "
                        f"{SOURCES[name]} into {existing.parent / 'download'} and run again with {RESUME}.")
    return counts


def events_stage(name: str, root: Path, resume: bool, allow_empty: bool) -> dict:
    """``events_np/`` complete and checked; returns its marker."""
    events, partial, extract = root / "events_np", root / "events_np.partial", root / "extract"
    _both(name, events, partial)
    marker = read_marker(events) if events.is_dir() else None
    if marker is not None:
        problems = marker_problems(name, events, marker)
        if extract.is_dir() and not problems and marker["inputs"] is not None and \
                fingerprint(extract_inputs(name, extract), extract) != marker["inputs"]:
            problems.append(f"{extract} has changed since it was made (recordings added, removed or of other sizes)")
        if not problems:
            return marker
        if not resume:
            raise DataError(f"{name}: {events} is not usable: {listed(problems)}. Run again with {RESUME} to check "
                            f"every file and convert again what differs, or delete {events}.")
    existing = partial if partial.is_dir() else events if events.is_dir() else None
    why = _partial_note(partial) if existing == partial else \
        f"{events} has no valid .complete marker (an interrupted conversion by this code, spikingjelly or the " \
        f"original repositories)"
    ext = extract_stage(name, root, resume, required=existing is None)
    if ext is None:
        counts = _adopt_without_inputs(name, existing, resume, allow_empty)
        return _finish_events(name, root, existing, counts, None)
    jobs, problems = plan(name, ext)
    if problems:
        raise DataError(f"{name}: {listed(problems)}. Nothing was written. Make {ext} hold the published "
                        f"recordings, no more and no less (unpack {SOURCES[name]} into it, or delete it to unpack "
                        f"download/ again), and run again.")
    expected = {rel for job in jobs for rel in job.outputs}
    if existing is not None:
        have = set(npz_files(existing))
        extra = sorted(have - expected)
        if not resume:
            raise DataError(f"{name}: {why}; it holds {len(have & expected)} of the {len(expected)} samples that "
                            f"{ext} gives" + (f", and {len(extra)} it does not give" if extra else "") +
                            f". Run again with {RESUME} to keep the files that verify (each is opened and checked) "
                            f"and convert the rest, or delete {existing}.")
        if extra:
            raise DataError(f"{name}: {existing} holds {len(extra)} samples that {ext} does not give (e.g. "
                            f"{extra[0]}): it was made from other recordings; delete {existing} and run again.")
    counts, problems, bad = _check_recordings(name, jobs, allow_empty)
    if problems:
        raise DataError(f"{name}: {listed(problems)}. Nothing was written. {_bad_input_advice(name, ext, bad)}" +
                        (f" Or run with {ALLOW} to keep samples without events (all-zero frames)."
                         if any("no events" in p for p in problems) else ""))
    if existing is events:
        events.rename(partial)
    partial.mkdir(exist_ok=True)
    todo = jobs if existing is None else \
        [job for job in tqdm(jobs, desc=f"{name}: verifying events_np", unit="file")
         if not all(_verified(partial / rel, counts[rel]) for rel in job.outputs)]
    for job in tqdm(todo, desc=f"{name}: events -> npz", unit="file"):
        convert(name, job, partial)
    return _finish_events(name, root, partial, counts, fingerprint(extract_inputs(name, ext), ext))


def _finish_events(name: str, root: Path, folder: Path, counts: dict[str, int], inputs) -> dict:
    for sub, classes in sample_layout(name).items():   # spikingjelly's folders even where a class is empty
        for c in classes:
            (folder / sub / c).mkdir(parents=True, exist_ok=True)
    empty = sum(1 for n in counts.values() if n == 0)
    if empty:
        warnings.warn(f"{name}: {empty} of {len(counts)} samples have no events; kept because of {ALLOW} "
                      f"(their frames are all zero).", stacklevel=3)
    marker = dict(samples=len(counts), inputs=inputs, min_events=min(counts.values()), empty=empty)
    write_marker(folder, **marker)
    events = root / "events_np"
    if folder != events:
        folder.rename(events)
    return marker


# --- events_np/ -> frames_number_<T>_split_by_number/ ----------------------------------------

def _short_samples(events: Path, files: list[str], marker: dict, T: int) -> dict[str, int]:
    """Samples with fewer than T events (read only where the marker says some may exist)."""
    if marker.get("min_events", 0) >= T:
        return {}
    short = {}
    for rel in files:
        with np.load(events / rel) as z:
            n = len(z["t"])
        if n < T:
            short[rel] = n
    return short


def _frames_ok(path: Path, T: int, events: int) -> bool:
    """A frame file that opens, has the shape [T, 2, 128, 128] and holds every event of its sample."""
    try:
        with np.load(path) as z:
            frames = z["frames"]
        return frames.shape == (T, 2, 128, 128) and int(frames.sum()) == events
    except Exception:   # half-written or not a frames file
        return False


def frames_stage(name: str, root: Path, T: int, events_marker: dict, resume: bool, allow_empty: bool) -> Path:
    events = root / "events_np"
    frames = root / f"frames_number_{T}_split_by_number"
    partial = root / (frames.name + ".partial")
    _both(name, frames, partial)
    files = npz_files(events)
    fp = fingerprint([events / f for f in files], events)
    marker = read_marker(frames) if frames.is_dir() else None
    if marker is not None:
        problems = marker_problems(name, frames, marker)
        if not problems and marker["inputs"] != fp:
            problems.append(f"{events} has changed since it was made (samples added, removed or of other sizes)")
        if not problems and marker.get("short") and not allow_empty:
            raise DataError(f"{name}: {frames} holds {marker['short']} sample{'s' * (marker['short'] > 1)} with fewer than {T} events (it was "
                            f"made with {ALLOW}): run with {ALLOW} to use it, or delete it and prepare again.")
        if not problems:
            return frames
        if not resume:
            raise DataError(f"{name}: {frames} is not usable: {listed(problems)}. Run again with {RESUME} to check "
                            f"every file and rebuild what differs, or delete {frames}.")
    existing = partial if partial.is_dir() else frames if frames.is_dir() else None
    if existing is not None:
        have = set(npz_files(existing))
        extra = sorted(have - set(files))
        why = _partial_note(partial) if existing == partial else \
            f"{frames} has no valid .complete marker (a half-written frame cache, or one made by spikingjelly or " \
            f"the original repositories, which mark nothing)"
        if not resume:
            raise DataError(f"{name}: {why}; it holds {len(have & set(files))} of the {len(files)} samples in "
                            f"{events}" + (f", and {len(extra)} others" if extra else "") + f". Run again with "
                            f"{RESUME} to keep the files that verify (each is opened and checked) and build the "
                            f"rest, or delete {existing}.")
        if extra:
            raise DataError(f"{name}: {existing} holds {len(extra)} samples that {events} does not have (e.g. "
                            f"{extra[0]}): it was made from other events; delete {existing} and run again.")
    short = _short_samples(events, files, events_marker, T)
    if short and not allow_empty:
        lines = [f"{events / rel}: {n} events, fewer than T={T} (one per frame)" for rel, n in short.items()]
        raise DataError(f"{name}: {listed(lines)}. Nothing was written. Such samples give frames without events; "
                        f"run with {ALLOW} to keep them anyway, or remove their recordings and prepare again.")
    if short:
        warnings.warn(f"{name}: {len(short)} of {len(files)} samples have fewer than T={T} events; kept because of "
                      f"{ALLOW} (some of their frames are empty).", stacklevel=3)
    fresh = existing is None
    if existing is frames:
        frames.rename(partial)
    for sub, classes in sample_layout(name).items():
        for c in classes:
            (partial / sub / c).mkdir(parents=True, exist_ok=True)
    sjds, _, _ = _sj()
    problems = []

    def load(path):
        try:
            return read_events_npz(path)
        except ValueError as exc:
            raise BadRecording(str(exc)) from None

    for rel in tqdm(files, desc=f"{name}: frames (T={T})", unit="sample"):
        if not fresh:
            with contextlib.suppress(Exception):
                with np.load(events / rel) as z:
                    if _frames_ok(partial / rel, T, len(z["t"])):
                        continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                sjds.integrate_events_file_to_frames_file_by_fixed_frames_number(
                    load, str(events / rel), str((partial / rel).parent), "number", T, 128, 128, False)
        except BadRecording as exc:
            problems.append(f"{events / rel}: {exc}")
    if problems:
        if fresh:
            shutil.rmtree(partial)
        raise DataError(f"{name}: {listed(problems)}. {events} is marked complete, so these files were damaged "
                        f"after it was made: delete {events} and run again to convert extract/ again.")
    write_marker(partial, samples=len(files), inputs=fp, T=T, short=len(short))
    partial.rename(frames)
    return frames


def prepare(name: str, root, T: int, allow_empty: bool = False, resume: bool = False) -> Path:
    """Make sure the frames for ``T`` exist, complete and checked; build whatever stage is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: data dir {root} does not exist. Create it and put {SOURCES[name]} into "
                        f"{root / 'download'}, or point --data-dir at an existing dataset folder.")
    marker = events_stage(name, root, resume, allow_empty)
    return frames_stage(name, root, T, marker, resume, allow_empty)
