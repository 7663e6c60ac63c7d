"""Bookkeeping of the DVS preparation stages: ``.complete`` markers, input fingerprints, sample
listings and the class-folder check.

A finished stage folder holds ``.complete``, a JSON object with at least ``samples`` (or
``files``) and ``inputs``: the fingerprint of what it was made from. The fingerprint is the
SHA-256 of the sorted ``relative path <TAB> size in bytes`` lines of the input files. Sizes and
names, not modification times: re-extracting or copying the same data (unzip, ``cp`` without
``-p``) changes mtimes and would invalidate good caches, while a file added, removed, truncated
or replaced by a different recording changes a name or a size. Content hashes would mean reading
the whole dataset (GBs) on every run.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .dvs_raw import sample_layout

MARKER = ".complete"
LISTED = 20   # bad files listed one per line; more are counted


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(folder: Path, **info) -> None:
    (folder / MARKER).write_text(json.dumps(info, sort_keys=True))


def fingerprint(files, base: Path) -> str:
    lines = sorted(f"{Path(f).relative_to(base).as_posix()}\t{Path(f).stat().st_size}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def npz_files(folder: Path) -> list[str]:
    """Samples in a stage folder: sorted posix paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.npz"))


def class_problems(name: str, folder: Path) -> list[str]:
    """Missing (absent or empty) and extra class folders of a sample stage, one line each."""
    out = []
    layout = sample_layout(name)
    if "" not in layout:
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in layout)
        if extra:
            out.append(f"{folder} holds {', '.join(extra)}/, which is not one of {', '.join(layout)}/")
    for sub, classes in layout.items():
        base = folder / sub
        found = {p.name for p in base.iterdir() if p.is_dir()} if base.is_dir() else set()
        missing = [c for c in classes if c not in found or not any((base / c).glob("*.npz"))]
        extra = sorted(found - set(classes))
        where = base if sub else folder
        if missing:
            out.append(f"{where} has no samples of class{'es' if len(missing) > 1 else ''} {', '.join(missing)}")
        if extra:
            out.append(f"{where} holds class folder{'s' if len(extra) > 1 else ''} {', '.join(extra)}, not "
                       f"among the dataset's {len(classes)} classes")
    return out


def marker_problems(name: str, folder: Path, marker: dict) -> list[str]:
    """What is wrong with a stage folder that has a ``.complete`` marker: class folders, a marker
    without input fingerprint, a sample count other than the marker's; one line each."""
    problems = class_problems(name, folder)
    if "inputs" not in marker:
        problems.append("its .complete marker has no input fingerprint (written by an older version that "
                        "could mark a partial cache)")
    n = len(npz_files(folder))
    if n != marker.get("samples"):
        problems.append(f"it holds {n} samples while its .complete marker says {marker.get('samples')}")
    return problems


def listed(problems: list[str]) -> str:
    """Print the problems one per line on stderr when there are several; the text for the
    one-line error: the first problem, and how many more."""
    if len(problems) > 1:
        for line in problems[:LISTED]:
            print(f"  {line}", file=sys.stderr)
        if len(problems) > LISTED:
            print(f"  ... and {len(problems) - LISTED} more", file=sys.stderr)
        return f"{problems[0]} (and {len(problems) - 1} more, listed above)"
    return problems[0]
