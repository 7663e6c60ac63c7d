"""Bad data is reported by name with a fix that works, never trained on silently.

CIFAR batches (issue 14: bytes keys, a misnamed folder, a truncated batch, too many workers) and
CIFAR10-DVS / DVS128 Gesture raw files in their real formats, broken in the ways downloads and
interrupted runs break them (issue 16).
"""
import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile

import numpy as np
import pytest

from conftest import ROOT
from datasets import AEDAT2_HEADER, AEDAT31_HEADER, write_cifar10, write_cifar10dvs, write_dvs128gesture
from engine.data import DataError
from engine.data.cifar import build_cifar
from engine.data.dvs import build_dvs, prepare


@pytest.fixture
def cifar(tmp_path):
    return write_cifar10(tmp_path / "data", train_per_batch=4, test=4) / "cifar-10-batches-py"


def _build(root, train=True):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*differ from the official release")
        return build_cifar("cifar10", str(root), train, None, False)


def test_cifar_batches_with_bytes_keys_load(cifar):
    expected = _build(cifar.parent)
    for f in list(cifar.iterdir()):
        with open(f, "rb") as fh:
            entry = pickle.load(fh)
        with open(f, "wb") as fh:                       # as re-saved after pickle.load(encoding='bytes')
            pickle.dump({k.encode(): v for k, v in entry.items()}, fh)
    got = _build(cifar.parent)
    assert (got.data == expected.data).all() and got.targets == expected.targets and got.classes == expected.classes


def test_cifar_misnamed_folder_gets_advice_that_works(cifar, tmp_path):
    renamed = cifar.rename(tmp_path / "data" / "cifar10")
    advice = r"the batch files are in .*cifar10, .* rename \S*cifar10 to \S*data/cifar-10-batches-py and keep --data-dir"
    with pytest.raises(DataError, match=advice):
        _build(tmp_path / "data")
    with pytest.raises(DataError, match=r"holds the batch files directly, .* move them into \S*cifar10/cifar-10-batches-py/"):
        _build(renamed)
    renamed.rename(tmp_path / "data" / "cifar-10-batches-py")   # what the first message says
    assert len(_build(tmp_path / "data")) == 20


def test_cifar_truncated_batch_is_named(cifar):
    batch = cifar / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"^cifar10: .*data_batch_2 is corrupt or truncated .*re-extract"):
        _build(cifar.parent)


def test_workers_capped_at_the_cpu_count(capsys):
    import os
    import torch
    from engine.distributed import DistInfo
    from engine.loader import eval_loader, train_loader
    from types import SimpleNamespace
    cpus = len(os.sched_getaffinity(0))
    cfg = SimpleNamespace(workers=cpus + 3, batch_size=2, val_batch_size=2, seed=0, pin_memory=False)
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # torch's "suggested max number of worker" warning
        loaders = [train_loader(cfg, data, DistInfo()), eval_loader(cfg, data, DistInfo())]
    assert [lo.num_workers for lo in loaders] == [cpus, cpus]
    assert capsys.readouterr().out == f"workers: {cpus + 3} requested, this machine has {cpus} CPUs; using {cpus}\n"


# --- CIFAR10-DVS and DVS128 Gesture (issue 16) ----------------------------------------------------
# Tiny raw datasets in the published formats (tests/datasets.py), damaged as downloads and
# interrupted runs damage them; each case must end in a one-line error that names the file (and
# byte offset) and the fix, leave nothing half-written, and never yield empty, missing-class or
# partial training data.

T = 4
TINY_CIFAR = (0, 1)          # 2 recordings x 10 classes
PACKET = 28                  # AEDAT 3.1 packet header bytes


def _prepare(name, root, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*differ from the published files")
        return prepare(name, root, T, **kw)


def _cifar(root, edit=None):
    write_cifar10dvs(root, recordings=TINY_CIFAR, edit=edit)
    return root


def _gesture(root, edit=None):
    write_dvs128gesture(root, train_users=(1,), test_users=(24,), edit=edit)
    return root


def _folders(root):
    return sorted(p.name for p in root.iterdir())


def _frames(folder):
    return {p.relative_to(folder).as_posix(): np.load(p)["frames"] for p in sorted(folder.rglob("*.npz"))}


def _script(folder, root, *args):
    return subprocess.run([sys.executable, str(ROOT / folder / "prepare.py"), "--data-dir", str(root), "--T", str(T),
                           *args], capture_output=True, text=True)


def _one_line_error(out):
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_cifar10dvs_recording_cut_to_its_header_is_refused(tmp_path):
    """Case 1: a recording cut to its header became an all-zero training sample."""
    root = _cifar(tmp_path / "d", edit=lambda c, k, data: data[:len(AEDAT2_HEADER)] if (c, k) == ("deer", 1) else data)
    with pytest.raises(DataError, match=r"cifar10_deer_1\.aedat: no events after its header .*Nothing was written"
                                        r".*It came from deer\.zip in download/.*--allow-empty"):
        _prepare("cifar10dvs", root)
    assert _folders(root) == ["download", "extract"]          # no events_np, frames or .partial
    with pytest.warns(UserWarning) as record:
        frames = _prepare("cifar10dvs", root, allow_empty=True)
    assert [str(w.message).split(";")[0] for w in record] == [
        "cifar10dvs: 1 of 20 samples have no events", "cifar10dvs: 1 of 20 samples have fewer than T=4 events"]
    assert len(_frames(frames)) == 20
    with pytest.raises(DataError, match=r"holds 1 sample with fewer than 4 events \(it was made with --allow-empty"):
        _prepare("cifar10dvs", root)                            # the choice is not silently carried over


def test_gesture_recording_cut_short_is_refused(tmp_path):
    """Case 2: a Gesture recording cut short put its labelled gestures into training with no events."""
    cut = {"within": len(AEDAT31_HEADER) + PACKET + 8 * 10,      # 10 of the first packet's 64 events
           "header": len(AEDAT31_HEADER)}                        # every packet gone
    root = _gesture(tmp_path / "a", edit=lambda stem, data: data[:cut["within"]] if stem == "user01_led" else data)
    with pytest.raises(DataError, match=rf"user01_led\.aedat: byte {len(AEDAT31_HEADER)}: the packet there declares "
                                        rf"64 events of 8 bytes, but the file ends 80 bytes into them"):
        _prepare("dvs128gesture", root)
    assert _folders(root) == ["download", "extract"]
    root = _gesture(tmp_path / "b", edit=lambda stem, data: data[:cut["header"]] if stem == "user01_led" else data)
    with pytest.raises(DataError, match=r"user01_led\.aedat: 11 of its 11 labelled gestures have no events "
                                        r"\(rows 2, 3, 4, 5, 6, \.\.\. of user01_led_labels\.csv\)"):
        _prepare("dvs128gesture", root)
    assert _folders(root) == ["download", "extract"]


def test_a_missing_class_is_refused_at_every_stage(tmp_path):
    """Case 3: extract/ without a class trained on 9 classes with shifted labels."""
    root = _cifar(tmp_path / "d")
    for z in (root / "download").glob("*.zip"):
        with zipfile.ZipFile(z) as f:
            f.extractall(root / "extract")
    shutil.rmtree(root / "download")
    shutil.rmtree(root / "extract" / "deer")
    with pytest.raises(DataError, match=r"extract lacks recordings of class deer .*Nothing was written\. "
                                        r"Make \S+extract hold"):
        _prepare("cifar10dvs", root)
    (root / "extract" / "deer").mkdir()
    (root / "extract" / "__MACOSX").mkdir()
    (root / "extract" / "__MACOSX" / "x.aedat").write_bytes(AEDAT2_HEADER)
    with pytest.raises(DataError, match=r"lacks recordings of class deer \(no deer/\*\.aedat\) \(and 1 more, "
                                        r"listed above\)"):
        _prepare("cifar10dvs", root)
    assert _folders(root) == ["extract"]

    root = _cifar(tmp_path / "ok")
    frames = _prepare("cifar10dvs", root)
    shutil.rmtree(frames / "deer")                             # marked complete, then a class lost
    with pytest.raises(DataError, match=r"frames_number_4_split_by_number is not usable: .* has no samples of "
                                        r"class deer"):
        build_dvs("cifar10dvs", str(root), True, T)
    shutil.rmtree(frames)
    shutil.rmtree(root / "events_np" / "frog")
    with pytest.raises(DataError, match=r"events_np is not usable: \S+events_np has no samples of class frog \(and 1 "
                                        r"more, listed above\)"):
        _prepare("cifar10dvs", root)

    root = _gesture(tmp_path / "g")
    frames = _prepare("dvs128gesture", root)
    shutil.rmtree(frames / "test" / "7")
    with pytest.raises(DataError, match=r"test has no samples of class 7"):
        build_dvs("dvs128gesture", str(root), False, T)


def _interrupt(folder, partial_name=None, remove=6):
    """What a killed conversion leaves: no marker, files missing, the last one half-written."""
    (folder / ".complete").unlink()
    files = sorted(folder.rglob("*.npz"))
    for f in files[-remove:]:
        f.unlink()
    half = files[3]
    half.write_bytes(half.read_bytes()[:100])
    if partial_name:
        folder = folder.rename(folder.with_name(partial_name))
    return folder


def test_markerless_events_np_is_not_trusted_and_resumes(tmp_path):
    """Case 4: a marker-less events_np/ (interrupted run) was stamped complete with its partial count."""
    reference = _frames(_prepare("cifar10dvs", _cifar(tmp_path / "ref")))
    root = _cifar(tmp_path / "d")
    frames = _prepare("cifar10dvs", root)
    shutil.rmtree(frames)
    _interrupt(root / "events_np")
    with pytest.raises(DataError, match=r"events_np has no valid .complete marker \(an interrupted conversion.*\); it "
                                        r"holds 14 of the 20 samples that \S+extract gives\. Run again with "
                                        r"--resume-prepare to keep the files that verify"):
        _prepare("cifar10dvs", root)
    assert not (root / "events_np" / ".complete").exists()     # nothing stamped
    frames = _prepare("cifar10dvs", root, resume=True)
    assert json.loads((root / "events_np" / ".complete").read_text())["samples"] == 20
    got = _frames(frames)
    assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got)
    shutil.rmtree(root / "extract")
    shutil.rmtree(root / "download")
    (root / "events_np" / ".complete").unlink()                # nothing left to count it against
    with pytest.raises(DataError, match=r"events_np has no .complete marker and holds 20 samples, and there is no "
                                        r"extract/ or download/ to check it against \(the published dataset has "
                                        r"10000\)"):
        _prepare("cifar10dvs", root)


def test_cut_recordings_give_one_line_errors_with_offsets(tmp_path):
    """Case 5: a length that is not a multiple of 4 (AEDAT 2.0) or a cut mid-event (AEDAT 3.1) raised
    a raw traceback naming no file."""
    size = len(AEDAT2_HEADER) + 8 * 320                      # bird (class 2) recordings: 300 + 2 x 10 events
    root = _cifar(tmp_path / "d", edit=lambda c, k, data: data[:-3] if (c, k) == ("bird", 0) else data)
    line = _one_line_error(_script("cifar10-dvs", root))
    assert re.search(rf"cifar10_bird_0\.aedat: byte {size - 8}: the last event is cut \(5 of its 8 bytes present; the "
                     rf"file ends at byte {size - 3}\)", line), line
    assert _folders(root) == ["download", "extract"]
    cut = len(AEDAT31_HEADER) + 2 * (PACKET + 64 * 8) + PACKET + 8 * 5 + 3
    root = _gesture(tmp_path / "g", edit=lambda stem, data: data[:cut] if stem == "user24_led" else data)
    with pytest.raises(DataError, match=rf"user24_led\.aedat: byte {len(AEDAT31_HEADER) + 2 * (PACKET + 64 * 8)}: the "
                                        rf"packet there declares 64 events of 8 bytes, but the file ends 43 bytes "
                                        rf"into them \(at byte {cut}\): the file is truncated"):
        _prepare("dvs128gesture", root)


def test_rerun_after_a_bad_file_reports_the_file_again_and_the_fix_works(tmp_path):
    """Case 6: after a bad-file failure the rerun blamed an 'interrupted preparation'."""
    root = _cifar(tmp_path / "d", edit=lambda c, k, data: data[:-3] if (c, k) == ("cat", 1) else data)
    for _ in range(2):
        with pytest.raises(DataError, match=r"cifar10_cat_1\.aedat: byte \d+: the last event is cut.*Nothing was "
                                            r"written\. It came from cat\.zip in download/: download that again, "
                                            r"delete \S+extract and run again"):
            _prepare("cifar10dvs", root)
        assert not list(root.glob("*.partial"))
    _cifar(root)                                               # the zips downloaded again, as the message says
    shutil.rmtree(root / "extract")
    assert len(_frames(_prepare("cifar10dvs", root))) == 20


def test_partial_stage_gives_counts_and_resumes(tmp_path):
    """Case 7: the .partial refusal gave no count and left the clean-up to the user."""
    reference = _frames(_prepare("cifar10dvs", _cifar(tmp_path / "ref")))
    root = _cifar(tmp_path / "d")
    frames = _prepare("cifar10dvs", root)
    shutil.rmtree(frames)
    _interrupt(root / "events_np", "events_np.partial")
    with pytest.raises(DataError, match=r"events_np\.partial is left over from an interrupted run \(killed or crashed; "
                                        r"a run stopped by bad input leaves nothing behind\); it holds 14 of the 20 "
                                        r"samples .*--resume-prepare"):
        _prepare("cifar10dvs", root)
    frames = _prepare("cifar10dvs", root, resume=True)
    _interrupt(frames, frames.name + ".partial", remove=3)
    with pytest.raises(DataError, match=r"frames_number_4_split_by_number\.partial is left over from an interrupted "
                                        r"run .*; it holds 17 of the 20 samples in \S+events_np\. Run again with "
                                        r"--resume-prepare"):
        _prepare("cifar10dvs", root)
    out = _script("cifar10-dvs", root, "--resume-prepare")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cifar10dvs T=4: 20 train / 0 test samples" in out.stdout   # 2 per class: ceil(90%) = 2
    got = _frames(frames)
    assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got)


def test_unpacked_archives_in_download_get_advice_that_works(tmp_path):
    """Case 8: class folders unpacked into download/ got 'download the zips again'."""
    root = _cifar(tmp_path / "d")
    for z in sorted((root / "download").glob("*.zip")):
        with zipfile.ZipFile(z) as f:
            f.extractall(root / "download")
        z.unlink()
    with pytest.raises(DataError, match=r"download holds unpacked class folders \(airplane, .*, truck\) instead "
                                        r"of their zips: move them into \S+/extract/ .*no need to download the zips "
                                        r"again"):
        _prepare("cifar10dvs", root)
    (root / "extract").mkdir()
    for c in (root / "download").iterdir():
        if c.is_dir():
            c.rename(root / "extract" / c.name)
    assert len(_frames(_prepare("cifar10dvs", root))) == 20

    root = _gesture(tmp_path / "g")
    with tarfile.open(root / "download" / "DvsGesture.tar.gz") as t:
        t.extractall(root / "download", filter="data")
    (root / "download" / "DvsGesture.tar.gz").unlink()
    with pytest.raises(DataError, match=r"holds the unpacked DvsGesture/ folder instead of DvsGesture\.tar\.gz: "
                                        r"move it into \S+/extract/"):
        _prepare("dvs128gesture", root)
    (root / "extract").mkdir()
    (root / "download" / "DvsGesture").rename(root / "extract" / "DvsGesture")
    assert len(_frames(_prepare("dvs128gesture", root))) == 22


def test_changed_inputs_are_reported_not_used(tmp_path):
    """A cache whose marker fingerprint no longer matches its inputs is reported; --resume-prepare
    redoes exactly what differs."""
    root = _cifar(tmp_path / "d")
    _prepare("cifar10dvs", root)
    other = _cifar(tmp_path / "other")                            # the same names, other recordings
    write_cifar10dvs(other, recordings=TINY_CIFAR, events_per_recording=200, seed=1)
    replaced = root / "extract" / "dog" / "cifar10_dog_0.aedat"
    with zipfile.ZipFile(other / "download" / "dog.zip") as z:
        replaced.write_bytes(z.read("dog/cifar10_dog_0.aedat"))
    with pytest.raises(DataError, match=r"events_np is not usable: \S+extract has changed since it was made"):
        _prepare("cifar10dvs", root)
    frames = _prepare("cifar10dvs", root, resume=True)
    # the same as a clean preparation of the changed extract/
    clean = tmp_path / "clean"
    shutil.copytree(root / "extract", clean / "extract")
    (clean / "extract" / ".complete").unlink()
    got, expected = _frames(frames), _frames(_prepare("cifar10dvs", clean))
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    assert got["dog/cifar10_dog_0.npz"].sum() == 200 + 10 * 5


def test_aedat31_reader_equals_spikingjelly(tmp_path):
    """The vectorised reader gives spikingjelly's load_aedat_v3 arrays exactly: several polarity
    packets, a timestamp overflow, and a packet of another type that is skipped."""
    from datasets import aedat31_bytes, random_events
    from engine.data.aedat import BadRecording, load_aedat31
    from spikingjelly.datasets import load_aedat_v3
    rng = np.random.default_rng(3)
    t, x, y, p = random_events(rng, 150)
    data = aedat31_bytes(t, x, y, p, packet=50)
    special = struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 2, 2, 2) + bytes(range(16))
    late = struct.pack("<HHIIIIII", 1, 1, 8, 4, 3, 1, 1, 1) + struct.pack("<II", (5 << 17) | (9 << 2) | 2 | 1, 77)
    path = tmp_path / "r.aedat"
    path.write_bytes(data + special + late)
    ours, theirs = load_aedat31(path), load_aedat_v3(str(path))
    for k in "txyp":
        assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), k
    assert len(ours["t"]) == 151 and ours["t"][-1] == (3 << 31) | 77
    path.write_bytes(data[:len(AEDAT31_HEADER) + 10])
    with pytest.raises(BadRecording, match=rf"byte {len(AEDAT31_HEADER)}: the file ends 10 bytes into a 28-byte "
                                           rf"packet header"):
        load_aedat31(path)


def test_new_options_are_on_the_command_lines():
    # prepare.py takes them too (used above); train.py and test.py answer --help without torch.
    for script in ("dvs128-gesture/train.py", "cifar10-dvs/test.py"):
        out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--allow-empty" in out.stdout and "--resume-prepare" in out.stdout, script
