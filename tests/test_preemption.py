"""Preemption: a signal stops training after the optimizer step, with a checkpoint inside the
epoch; ``--resume auto`` continues to bit-identical weights. Single process here (in-process,
the signal sent by the run to itself at a chosen micro-batch); two processes in
test_imagenet_distributed.py."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import models
from conftest import ROOT
from datasets import write_cifar10
from engine import trainer
from engine.config import ConfigError
from engine.factories import build_datasets, build_model
from engine.loader import DistInfo, train_loader
from engine.preemption import Preempted, signal_numbers
from engine.recipe import load_recipe

# Mixup (numpy, in the training process), drop path (torch) and flips (in the loader) all draw
# random numbers, so each random stream must continue where it stopped.
TINY = dict(embed_dim=32, depth=3, num_heads=2, T=1, batch_size=8, val_batch_size=20, workers=0, lr=1e-2, accum_iter=2,
            warmup_epochs=0, cooldown_epochs=0, aa=None, reprob=0.0, mixup=0.8, scale=[1.0, 1.0],
            ratio=[1.0, 1.0], progress=False, tensorboard=False, epochs=2)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar10"), train_per_batch=16)   # 80 images: 10 steps


def config(data_dir, out_dir, **overrides):
    values = dict(TINY, data_dir=str(data_dir), output=str(out_dir), **overrides)
    return load_recipe(ROOT / "cifar10" / "qkformer.yml", values)[0]


def signal_at(monkeypatch, forward_call: int, sig=signal.SIGTERM):
    """The run sends itself ``sig`` at the start of its ``forward_call``-th training forward."""
    real = trainer.build_model

    def build(cfg, num_classes):
        model, calls = real(cfg, num_classes), [0]

        def hook(module, args):
            if module.training:
                calls[0] += 1
                if calls[0] == forward_call:
                    os.kill(os.getpid(), sig)
        model.register_forward_pre_hook(hook)
        return model
    monkeypatch.setattr(trainer, "build_model", build)


def test_signal_inside_an_epoch_resumes_bit_identically(cifar10, tmp_path, monkeypatch):
    full = config(cifar10, tmp_path / "full")
    trainer.train(full)
    cfg = config(cifar10, tmp_path / "stopped")
    # forward 13 = epoch 1, micro-batch 3 (the first of an update): the run completes micro-batch
    # 4, steps the optimizer and stops
    signal_at(monkeypatch, 13)
    with pytest.raises(Preempted, match=r"SIGTERM inside epoch 1 after step 4; .*last.pth holds it: continue "
                                        r"with --resume auto"):
        trainer.train(cfg)
    state = models.safe_load(cfg.run_dir() / "last.pth")
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1 and state["position"]["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # the handler is gone with the run
    monkeypatch.undo()
    trainer.train(config(cifar10, tmp_path / "stopped", resume="auto"))
    a, b = (models.safe_load(c.run_dir() / "last.pth") for c in (full, cfg))
    assert a["epoch"] == b["epoch"] == 1 and "position" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                 b["optimizer"]["state"][0].values()))
    ra, rb = ([{k: v for k, v in json.loads(line).items() if k != "epoch_time"}
               for line in (c.run_dir() / "metrics.jsonl").read_text().splitlines()] for c in (full, cfg))
    assert ra == rb   # the interrupted epoch's train loss includes the steps before the stop


def test_signal_during_validation_stops_after_the_epoch(cifar10, tmp_path, monkeypatch):
    cfg = config(cifar10, tmp_path, epochs=3, accum_iter=1, preempt_signals=["SIGUSR1"])
    real = trainer.evaluate

    def evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    with pytest.raises(Preempted, match="SIGUSR1 after epoch 0"):
        trainer.train(cfg)
    state = models.safe_load(cfg.run_dir() / "last.pth")
    assert state["epoch"] == 0 and "position" not in state


def test_signal_names_are_checked():
    assert signal_numbers(["SIGTERM", "usr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    assert signal_numbers(["none"]) == []
    with pytest.raises(ConfigError, match="'SIGKILL' is not a signal a process can catch"):
        signal_numbers(["SIGKILL"])


def test_mid_epoch_resume_needs_the_same_batching(cifar10, tmp_path, monkeypatch):
    cfg = config(cifar10, tmp_path)
    signal_at(monkeypatch, 13)    # inside epoch 1
    with pytest.raises(Preempted):
        trainer.train(cfg)
    monkeypatch.undo()
    epoch_end = cfg.run_dir() / "epoch_end.pth"    # the end of epoch 0, kept when last.pth moved on
    assert models.safe_load(epoch_end)["epoch"] == 0 and "position" not in models.safe_load(epoch_end)
    with pytest.raises(ConfigError, match=r"stopped inside epoch 1 with 1 processes x batch 8 x accum 2; resume it "
                                          r"with the same \(now 1 x 8 x 1\).*; or start epoch 1 again from the end "
                                          r"of the one before: --resume .*epoch_end.pth"):
        trainer.train(config(cifar10, tmp_path, resume="auto", accum_iter=1))
    trainer.train(config(cifar10, tmp_path, resume=str(epoch_end), accum_iter=1))   # epoch 1 again, then done
    assert models.safe_load(cfg.run_dir() / "last.pth")["epoch"] == 1


def test_augmentation_does_not_depend_on_the_loader_processes(cifar10):
    """Each sample draws from its own seed, so 0 or 2 loader processes, and a loader that starts
    part-way through the epoch, give the same augmented batches."""
    cfg = config(cifar10, "unused", scale=[0.08, 1.0], ratio=[0.75, 1.33], color_jitter=0.4)
    train_set = build_datasets(cfg, build_model(cfg, 10))[0]
    batches = {}
    for workers in (0, 2):
        loader = train_loader(config(cifar10, "unused", workers=workers, **{k: getattr(cfg, k) for k in (
            "scale", "ratio", "color_jitter")}), train_set, DistInfo())
        loader.sampler.set_epoch(3)
        batches[workers] = [images for images, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))
    loader.sampler.set_epoch(3)
    loader.sampler.start_at(4 * cfg.batch_size)
    rest = [images for images, _ in loader]
    assert len(rest) == len(batches[0]) - 4 and all(torch.equal(a, b) for a, b in zip(rest, batches[0][4:]))
    loader.sampler.set_epoch(4)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])


def test_signal_to_the_process_group_spares_the_loader_processes(cifar10, tmp_path):
    """SLURM signals every process of the job: the loader processes must keep serving batches
    until the step is done. As a user runs it: train.py's command line, exit status 75."""
    cmd = [sys.executable, str(ROOT / "tests" / "faulty_train.py"), "-c", str(ROOT / "cifar10" / "qkformer.yml"),
           "--data-dir", str(cifar10), "--output", str(tmp_path), "--embed-dim", "32", "--depth", "3",
           "--num-heads", "2", "--T", "1", "--batch-size", "8", "--epochs", "2", "--workers", "2", "--device", "cpu",
           "--no-tensorboard", "--no-progress", "--aa", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": "group-signal", "FAULT_RANK": "0", "FAULT_AT": "3"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, start_new_session=True, timeout=300)
    assert out.returncode == 75, out.stderr[-3000:]
    assert "preempted: stopped by SIGTERM inside epoch 0 after step 3;" in out.stderr
    assert "DataLoader worker" not in out.stderr
    assert models.safe_load(tmp_path / "cifar10-qkformer_cifar_4_384" / "last.pth")["position"]["step"] == 3
