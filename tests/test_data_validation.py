"""Bad data is reported by name with a fix that works, never trained on silently.

CIFAR batches (issue 14: bytes keys, a misnamed folder, a truncated batch, too many workers) and
CIFAR10-DVS / DVS128 Gesture raw files in their real formats, broken in the ways downloads and
interrupted runs break them (issue 16).
"""
import pickle
import shutil
import warnings

import pytest

from datasets import write_cifar10
from engine.data import DataError
from engine.data.cifar import build_cifar


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
