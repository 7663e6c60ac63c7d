"""CIFAR10-DVS and DVS128 Gesture: raw event files in the real formats -> frames -> training.

The raw files are written by tests/datasets.py in the published formats (CIFAR10-DVS: AEDAT 2.0
recordings in per-class zips; DVS128 Gesture: AEDAT 3.1 recordings with label CSVs and trial
lists in DvsGesture.tar.gz); the frames the real loading path produces are compared with frames
computed here, independently, from the same events.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from conftest import DATA, ROOT
from datasets import write_cifar10dvs, write_dvs128gesture
from engine.config import load_yaml, make_config
from engine.data import DataError
from engine.data import dvs_augment
from engine.data.dvs import CIFAR10DVS_CLASSES, build_dvs, cifar10dvs_split, prepare
from engine.tester import test as run_test
from engine.trainer import train

T = 4


def frames_by_number(t, x, y, p, T):
    """Events -> [T, 2, 128, 128] counts: T slices of equal event count (the last takes the rest),
    channel 0 = polarity 0, channel 1 = polarity 1."""
    n = len(t)
    step = n // T
    out = np.zeros((T, 2, 128, 128), dtype=np.float32)
    for i in range(T):
        hi = n if i == T - 1 else (i + 1) * step
        for k in range(i * step, hi):
            out[i, 1 if p[k] else 0, y[k], x[k]] += 1
    return out


@pytest.fixture(scope="module")
def cifar10dvs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10dvs")
    raw = write_cifar10dvs(root)
    with pytest.warns(UserWarning, match="differ from the published files"):
        prepare("cifar10dvs", root, T)
    return root, raw


@pytest.fixture(scope="module")
def gesture(tmp_path_factory):
    root = tmp_path_factory.mktemp("gesture")
    raw = write_dvs128gesture(root)
    with pytest.warns(UserWarning):
        prepare("dvs128gesture", root, T)
    return root, raw


def test_cifar10dvs_frames_match_independent_integration(cifar10dvs):
    root, raw = cifar10dvs
    test_set = build_dvs("cifar10dvs", str(root), False, T)
    full = test_set.dataset
    for idx in test_set.indices[:3] + [0, 57]:
        path, label = full.samples[idx]
        name = CIFAR10DVS_CLASSES[label]
        k = int(path.rsplit("_", 1)[-1].split(".")[0])
        t, x_raw, y_raw, p_raw = raw[(name, k)]
        # AEDAT 2.0 addresses are sensor (x, y) with x mirrored: stored as x=127-y, y=127-x, p=1-p.
        expected = frames_by_number(t, 127 - y_raw, 127 - x_raw, 1 - p_raw, T)
        frames, got_label = full[idx]
        assert got_label == label and frames.dtype == np.float32 and frames.shape == (T, 2, 128, 128)
        np.testing.assert_array_equal(frames, expected)


def test_cifar10dvs_splits(cifar10dvs):
    root, _ = cifar10dvs
    from spikingjelly.datasets import split_to_train_test_set
    full = build_dvs("cifar10dvs", str(root), True, T).dataset
    # The originals: spikingjelly's own split_to_train_test_set(0.9, ..., random_split=False).
    sj_train, sj_test = split_to_train_test_set(0.9, full, 10, random_split=False)
    files = [p for p, _ in full.samples]
    assert cifar10dvs_split(full.targets, files, "originals", True) == sj_train.indices
    assert cifar10dvs_split(full.targets, files, "originals", False) == sj_test.indices
    # 14 recordings per class sorted as strings: the last ceil(10%) = 1 ("...999") is test.
    assert {files[i].rsplit("_", 1)[-1] for i in sj_test.indices} == {"999.npz"}
    tebn = cifar10dvs_split(full.targets, files, "tebn", False)
    assert {int(files[i].rsplit("_", 1)[-1][:-4]) for i in tebn} == {0, 1, 5, 50, 91, 95, 99}
    assert len(tebn) == 70 and not set(tebn) & set(cifar10dvs_split(full.targets, files, "tebn", True))


def test_dvs128gesture_frames_labels_and_split(gesture):
    root, raw = gesture
    train_set, test_set = (build_dvs("dvs128gesture", str(root), s, T) for s in (True, False))
    assert (len(train_set), len(test_set)) == (22, 11)   # 2 train users and 1 test user x 11 gestures
    # Class folders are named 0..10 (CSV class - 1) and sorted as strings, as upstream: '10' -> label 2.
    assert train_set.classes == ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    t, x, y, p, rows = raw["user24_led"]
    for path, label in test_set.samples:
        csv_class = int(train_set.classes[label]) + 1
        _, start, end = map(int, rows[csv_class - 1].split(","))
        keep = (t >= start) & (t < end)
        frames, _ = test_set[test_set.samples.index((path, label))]
        np.testing.assert_array_equal(frames, frames_by_number(t[keep], x[keep], y[keep], p[keep], T))


def test_augmentation_matches_original_code_draw_for_draw(monkeypatch):
    """Reference: the original SNNAugmentWide + flip on a fixed batch for 24 seeds (see its meta)."""
    ref = torch.load(DATA / "dvs" / "augment_reference.pt", weights_only=True)
    x = ref["input"].float()
    used = []
    real = dvs_augment.apply_op
    monkeypatch.setattr(dvs_augment, "apply_op", lambda img, name, m: used.append(name) or real(img, name, m))
    for seed in ref["meta"]["seeds"]:
        torch.manual_seed(seed)
        assert torch.equal(dvs_augment.augment_batch(x), ref["outputs"][seed].float()), seed
    assert set(used) == set(dvs_augment.OPS)     # every operation was exercised


def test_augmentation_ops_and_determinism():
    x = torch.rand(2, 3, 2, 32, 32)
    torch.manual_seed(5)
    a = dvs_augment.augment_batch(x)
    torch.manual_seed(5)
    assert torch.equal(dvs_augment.augment_batch(x), a)
    frame = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(1, 2, 32, 32) + 1
    moved = dvs_augment.apply_op(frame, "TranslateX", 3.9)      # int(3.9) = 3 px to the right
    assert torch.equal(moved[..., 3:], frame[..., :-3]) and (moved[..., :3] == 0).all()
    moved = dvs_augment.apply_op(frame, "TranslateY", -2.2)     # 2 px up
    assert torch.equal(moved[..., :-2, :], frame[..., 2:, :]) and (moved[..., -2:, :] == 0).all()
    ones = torch.ones(3, 2, 128, 128)
    for seed in range(20):
        torch.manual_seed(seed)
        cut = dvs_augment.cutout(ones)
        zero = (cut == 0)
        assert torch.equal(zero, zero[:1, :1].expand_as(zero))   # same square in every frame and channel
        rows, cols = zero[0, 0].any(1).sum().item(), zero[0, 0].any(0).sum().item()
        assert rows == cols and 4 <= rows <= 42 and zero[0, 0].sum() == rows * cols


def test_prepare_reports_missing_and_half_written_data(tmp_path, cifar10dvs):
    with pytest.raises(DataError, match="data dir .* does not exist"):
        prepare("cifar10dvs", tmp_path / "absent", T)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"lacks airplane\.zip, automobile\.zip.*figshare.*nothing is downloaded"):
        prepare("cifar10dvs", tmp_path / "empty", T)
    (tmp_path / "g").mkdir()
    with pytest.raises(DataError, match=r"lacks DvsGesture\.tar\.gz\. Download DvsGesture\.tar\.gz .* from IBM"):
        prepare("dvs128gesture", tmp_path / "g", T)

    import shutil
    root = tmp_path / "copy"
    shutil.copytree(cifar10dvs[0], root)
    frames = root / f"frames_number_{T}_split_by_number"
    (frames / ".complete").unlink()                   # as a cache built by spikingjelly itself
    with pytest.raises(DataError, match=r"no valid .complete marker .*; it holds 140 of the 140 samples in \S+events_np"
                                        r"\. Run again with --resume-prepare .* or delete"):
        prepare("cifar10dvs", root, T)                # never trusted as it is
    assert prepare("cifar10dvs", root, T, resume=True) == frames   # every file opened and checked, then marked
    (frames / ".complete").unlink()
    next(frames.rglob("*.npz")).unlink()              # an interrupted build
    with pytest.raises(DataError, match=r"half-written frame cache.*; it holds 139 of the 140 samples"):
        prepare("cifar10dvs", root, T)
    (root / "frames_number_8_split_by_number.partial").mkdir()
    with pytest.raises(DataError, match=r"left over from an interrupted run .*; it holds 0 of the 140 samples"):
        prepare("cifar10dvs", root, 8)


def test_prepare_script(tmp_path):
    root = tmp_path / "gesture"
    write_dvs128gesture(root, train_users=(1,), test_users=(24,))
    out = subprocess.run([sys.executable, str(ROOT / "dvs128-gesture" / "prepare.py"), "--data-dir", str(root),
                          "--T", "4", "6"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dvs128gesture T=4: 11 train / 11 test samples" in out.stdout
    assert "dvs128gesture T=6: 11 train / 11 test samples" in out.stdout
    out = subprocess.run([sys.executable, str(ROOT / "cifar10-dvs" / "prepare.py"), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: cifar10dvs: nothing to prepare")


DVS_TINY = dict(embed_dim=32, num_heads=2, T=T, batch_size=8, val_batch_size=8, workers=0, warmup_epochs=0,
                cooldown_epochs=0, progress=False, tensorboard=False)


def test_train_then_test_cifar10dvs(cifar10dvs, tmp_path):
    root, _ = cifar10dvs
    cfg = make_config(load_yaml(ROOT / "cifar10-dvs" / "qkformer.yml"),
                      dict(DVS_TINY, data_dir=str(root), output=str(tmp_path), epochs=2, lr=5e-3))
    assert cfg.dvs_aug and cfg.mixup == 0.5 and not cfg.eval_amp
    summary = train(cfg)
    records = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["val_samples"] == 10
    ckpt = models.safe_load(cfg.run_dir() / "last.pth")
    assert ckpt["config"]["T"] == T and ckpt["model"]["head.weight"].shape == (10, 32)
    [result] = run_test(cfg, str(cfg.run_dir() / "best.pth"))
    assert result["top1"] == pytest.approx(summary["best_top1"]) and result["T"] == T
    assert len(result["firing_rates"]) == 21


def test_train_sglformer_on_gesture(gesture, tmp_path):
    root, _ = gesture
    cfg = make_config(load_yaml(ROOT / "dvs128-gesture" / "sglformer.yml"),
                      dict(DVS_TINY, data_dir=str(root), output=str(tmp_path), epochs=1, embed_dim=24))
    summary = train(cfg)
    head = models.safe_load(cfg.run_dir() / "last.pth")["model"]["full_size_conv.weight"]
    assert head.shape == (24, 1, 64, T)                 # the STB head is built for the data's T
    assert 0 <= summary["best_top1"] <= 100


def test_train_spikformer_on_gesture(gesture, tmp_path):
    """The Spikformer DVS layout (the CIFAR10-DVS file's model, 11 classes): 2 epochs, then test."""
    root, _ = gesture
    cfg = make_config(load_yaml(ROOT / "dvs128-gesture" / "spikformer.yml"),
                      dict(DVS_TINY, data_dir=str(root), output=str(tmp_path), epochs=2))
    summary = train(cfg)
    records = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert models.safe_load(cfg.run_dir() / "last.pth")["model"]["head.weight"].shape == (11, 32)
    [result] = run_test(cfg, str(cfg.run_dir() / "best.pth"))
    assert result["top1"] == pytest.approx(summary["best_top1"]) and result["T"] == T


def test_torchrun_prepares_raw_data_once(tmp_path):
    """Two processes start from raw files: rank 0 builds the frame cache while rank 1 waits
    (otherwise rank 1 finds rank 0's half-built cache and stops, or both write it)."""
    import os
    root = tmp_path / "gesture"
    write_dvs128gesture(root, train_users=(1,), test_users=(24,))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "dvs128-gesture" / "train.py"), "-c", "qkformer.yml", "--data-dir", str(root),
           "--output", str(tmp_path / "out"), "--epochs", "1", "--embed-dim", "16", "--num-heads", "1",
           "--T", "2", "--batch-size", "2", "--val-batch-size", "4", "--workers", "0",
           "--device", "cpu", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--no-progress",
           "--no-tensorboard", "--no-dvs-aug", "--mixup", "0", "--cutmix", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[rank 1/2] joined" in out.stdout + out.stderr
    assert sorted(p.name for p in root.iterdir()) == ["download", "events_np", "extract", "frames_number_2_split_by_number"]
    assert json.loads((root / "frames_number_2_split_by_number" / ".complete").read_text())["samples"] == 22


def test_prepare_dataset_runs_on_the_right_ranks(monkeypatch):
    """Rank 0 first, then the first process of every other node; errors reach every rank."""
    from engine import data
    from engine.distributed import DistInfo
    calls = []
    spec = data.DatasetSpec(10, None, prepare=lambda cfg, T: calls.append(T))
    monkeypatch.setitem(data.DATASETS, "probe", spec)
    cfg = make_config({}, {"dataset": "probe"})
    for rank, local in ((0, 0), (1, 1), (2, 0), (3, 1)):
        calls.clear()
        data.prepare_dataset(cfg, 7, DistInfo(rank=rank, world_size=4, local_rank=local))
        assert calls == ([7] if local == 0 else []), (rank, local)

    def broken(cfg, T):
        raise DataError("no raw files")
    monkeypatch.setitem(data.DATASETS, "probe", data.DatasetSpec(10, None, prepare=broken))
    with pytest.raises(DataError, match="no raw files"):
        data.prepare_dataset(cfg, 7, DistInfo(rank=0, world_size=2))


def test_a_recording_cut_at_an_event_boundary_is_named_by_its_archive(tmp_path, monkeypatch):
    """A download that lost whole events reads as valid AEDAT; only the archive's checksum against
    the published one shows it. Here the generated archives play the published ones."""
    import hashlib
    import warnings
    from engine.data import dvs_prepare
    intact = tmp_path / "intact"
    write_cifar10dvs(intact)
    published = [(f"{c}.zip", hashlib.md5((intact / "download" / f"{c}.zip").read_bytes()).hexdigest())
                 for c in CIFAR10DVS_CLASSES]
    monkeypatch.setattr(dvs_prepare, "_archives", lambda name: published)
    cut = tmp_path / "cut"
    write_cifar10dvs(cut, edit=lambda c, k, data: data[:-8 * 10] if (c, k) == ("cat", 5) else data)  # 10 events
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare("cifar10dvs", intact, T)
        assert not [w for w in caught if "differ from the published" in str(w.message)]
        prepare("cifar10dvs", cut, T)
    [warning] = [str(w.message) for w in caught if "differ from the published" in str(w.message)]
    assert warning.startswith("cifar10dvs: cat.zip differ from the published files (md5)")
