"""End to end on CPU: tiny CIFAR datasets in the real pickle format, the real scripts and engine."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import models
from conftest import ROOT
from datasets import write_cifar10, write_cifar100
from engine.recipe import load_recipe
from engine.tester import test as run_test
from engine.trainer import train

# A narrow QKFormer, two time steps, no augmentation: trains in seconds and learns the toy split.
TINY = dict(embed_dim=32, depth=3, T=2, batch_size=16, val_batch_size=20, workers=0, lr=1e-2,
            warmup_epochs=0, cooldown_epochs=0, aa=None, reprob=0.0, mixup=0.0, scale=[1.0, 1.0],
            ratio=[1.0, 1.0], progress=False, tensorboard=False)


def config(folder: str, data_dir, out_dir, family: str = "qkformer", **overrides):
    values = dict(TINY, data_dir=str(data_dir), output=str(out_dir), **overrides)
    return load_recipe(ROOT / folder / f"{family}.yml", values)[0]


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_two_epochs_then_test(cifar10, tmp_path):
    cfg = config("cifar10", cifar10, tmp_path, epochs=2, tensorboard=True)
    summary = train(cfg)
    run = cfg.run_dir()
    recs = records(run)
    assert [r["epoch"] for r in recs] == [0, 1]
    assert recs[1]["train_loss"] < recs[0]["train_loss"] - 0.05   # it learns the toy split
    assert recs[1]["val_loss"] < recs[0]["val_loss"]
    assert {"last.pth", "best.pth", "config.yaml", "log.txt"} <= {p.name for p in run.iterdir()}
    assert any((run / "tensorboard").iterdir())
    ckpt = models.safe_load(run / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"] == "qkformer_cifar_4_384"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best_top1"} <= set(ckpt)

    [result] = run_test(cfg, str(run / "best.pth"), save_json=str(tmp_path / "res.json"))
    assert result["top1"] == pytest.approx(summary["best_top1"])
    assert result["samples"] == 40
    rates = json.loads((tmp_path / "res.json").read_text())["firing_rates"]
    n_lif = sum(isinstance(m, models.LIF) for m in models.build("qkformer_cifar_4_384", embed_dim=32, depth=3).modules())
    assert len(rates) == n_lif and all(0 <= r <= 1 for r in rates.values()) and max(rates.values()) > 0


def test_resume_after_kill_equals_uninterrupted_run(cifar10, tmp_path):
    """SIGKILL a training process right after its first checkpoint, resume, and compare."""
    common = ["--data-dir", str(cifar10), "--embed-dim", "32", "--depth", "3", "--T", "2", "--batch-size", "16",
              "--workers", "0", "--lr", "5e-3", "--warmup-epochs", "1", "--cooldown-epochs", "0", "--epochs", "3",
              "--no-tensorboard", "--log-interval", "1", "--mixup", "0.5", "--reprob", "0.25"]
    script = str(ROOT / "cifar10" / "train.py")
    full = subprocess.run([sys.executable, script, *common, "--output", str(tmp_path / "full")],
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr

    killed_dir = tmp_path / "killed" / "cifar10-qkformer_cifar_4_384"
    proc = subprocess.Popen([sys.executable, script, *common, "--output", str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = models.safe_load(killed_dir / "last.pth")["epoch"]
    assert done < 2, "the run finished before it could be interrupted"

    resumed = subprocess.run([sys.executable, script, *common, "--output", str(tmp_path / "killed"),
                              "--resume", "auto"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed_dir / 'last.pth'} (epoch {done} done" in resumed.stdout
    a = models.safe_load(tmp_path / "full" / "cifar10-qkformer_cifar_4_384" / "last.pth")
    b = models.safe_load(killed_dir / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert records(killed_dir)[-1]["val_top1"] == records(tmp_path / "full" / "cifar10-qkformer_cifar_4_384")[-1]["val_top1"]


def test_cifar100_and_other_families(tmp_path):
    data = write_cifar100(tmp_path / "data")
    for family in ("spikingformer", "sglformer", "spikformer"):
        kw = dict(embed_dim=24, num_heads=2) if family == "sglformer" else dict(num_heads=2)
        cfg = config("cifar100", data, tmp_path / "out", family, epochs=2 if family == "spikformer" else 1, **kw)
        summary = train(cfg)
        assert cfg.num_classes == 100 and 0 <= summary["best_top1"] <= 100
        assert models.safe_load(cfg.run_dir() / "last.pth")["model"]["head.weight"].shape[0] == 100


def test_test_script_reads_original_checkpoint_layout(cifar10, tmp_path):
    """An upstream-style checkpoint ({'model': ..., 'args': Namespace}) evaluated by test.py."""
    model = models.build("qkformer_cifar_4_384", embed_dim=32, depth=3, T=2)
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": model.state_dict(), "epoch": 399, "args": argparse.Namespace(model="QKFormer")}, path)
    out = subprocess.run([sys.executable, str(ROOT / "cifar10" / "test.py"), "--checkpoint", str(path),
                          "--data-dir", str(cifar10), "--embed-dim", "32", "--depth", "3", "--T", "2",
                          "--workers", "0", "--val-batch-size", "20"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "qkformer_cifar_4_384 on cifar10 at 32px (40 images): top-1" in out.stdout
    assert "stage3.0.ssa.proj_lif" in out.stdout and "mean over layers" in out.stdout
