"""ImageNet layout under torch.distributed on CPU (gloo): torchrun, the legacy launcher, resume."""
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
from datasets import write_image_folder
from reference import fill_weights
from engine.config import load_yaml, make_config
from engine.data import DataError
from engine.trainer import train

TRAIN, TEST = str(ROOT / "imagenet" / "train.py"), str(ROOT / "imagenet" / "test.py")
RUN = "imagenet-qkformer_10_384"
# The default config (QKFormer 10-384 recipe) shrunk: narrow, T=1, 32 px, an effective batch of 16.
TINY = ["--embed-dim", "32", "--depth", "4", "--num-heads", "2", "--T", "1", "--img-size", "32",
        "--batch-size", "4", "--val-batch-size", "8", "--effective-batch", "16", "--lr", "2e-3",
        "--warmup-epochs", "1", "--workers", "0", "--device", "cpu", "--no-tensorboard", "--log-interval", "1"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagenet"))


def torchrun(*args, legacy=False, **popen):
    launcher = ["-m", "torch.distributed.launch"] if legacy else ["-m", "torch.distributed.run", "--standalone"]
    cmd = [sys.executable, *launcher, "--nproc_per_node=2", *args]
    if popen:
        return subprocess.Popen(cmd, **popen)
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def check_run(out, run_dir, epochs):
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "[rank 0/2] joined the process group on cpu" in text and "[rank 1/2] joined" in text
    assert "effective batch 16 = 4 x 2 processes x accum 2" in text
    assert "16 per" not in text and "4 steps per epoch" in text  # 32 images split over 2 ranks, batch 4
    log = (run_dir / "log.txt").read_text()
    assert log.count("epoch 0: train loss") == 1                # written once, by rank 0 only
    assert [json.loads(l)["epoch"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()] == list(range(epochs))
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pth", "config.yaml", "last.pth", "log.txt",
                                                          "metrics.jsonl"]


def test_torchrun_two_processes_then_test(imagenet, tmp_path):
    out = torchrun(TRAIN, "--data-dir", str(imagenet), "--epochs", "2", "--output", str(tmp_path), *TINY)
    check_run(out, tmp_path / RUN, 2)
    assert [p.name for p in tmp_path.iterdir()] == [RUN]
    res = tmp_path / "res.json"
    test = subprocess.run([sys.executable, TEST, "--checkpoint", str(tmp_path / RUN / "best.pth"), "--data-dir",
                           str(imagenet), "--workers", "0", "--device", "cpu", "--resolutions", "32", "40",
                           "--save-json", str(res)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    results = json.loads(res.read_text())
    assert [(r["img_size"], r["samples"]) for r in results] == [(32, 16), (40, 16)]
    assert results[0]["crop_pct"] == 0.875 and results[1]["crop_pct"] == 0.875
    best = models.safe_load(tmp_path / RUN / "best.pth")
    history = [json.loads(l) for l in (tmp_path / RUN / "metrics.jsonl").read_text().splitlines()]
    assert results[0]["top1"] == pytest.approx(history[best["epoch"]]["val_top1"])


def test_legacy_torch_distributed_launch(imagenet, tmp_path):
    out = torchrun(TRAIN, "--data-dir", str(imagenet), "--epochs", "1", "--output", str(tmp_path), *TINY,
                   legacy=True)
    check_run(out, tmp_path / RUN, 1)


@pytest.fixture(scope="module")
def full_run(imagenet, tmp_path_factory):
    """Three epochs, never interrupted: what the interrupted runs must end with."""
    out = tmp_path_factory.mktemp("full")
    full = torchrun(TRAIN, "--data-dir", str(imagenet), "--epochs", "3", *TINY, "--output", str(out))
    assert full.returncode == 0, full.stderr[-2000:]
    return models.safe_load(out / RUN / "last.pth")


def test_killed_distributed_run_resumes_exactly(imagenet, tmp_path, full_run):
    args = [TRAIN, "--data-dir", str(imagenet), "--epochs", "3", *TINY]
    run = tmp_path / "killed" / RUN
    proc = torchrun(*args, "--output", str(tmp_path / "killed"), start_new_session=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)   # the launcher and both workers
    proc.wait()
    done = models.safe_load(run / "last.pth")["epoch"]
    assert done < 2
    resumed = torchrun(*args, "--output", str(tmp_path / "killed"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = full_run, models.safe_load(run / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


FAULTY = str(ROOT / "tests" / "faulty_train.py")


def test_preempted_distributed_run_resumes_exactly(imagenet, tmp_path, full_run):
    """SIGTERM reaches rank 1 alone, inside epoch 1: both ranks finish that optimizer step, rank 0
    checkpoints the position (each rank's random state included) and both exit with status 75."""
    args = ["--data-dir", str(imagenet), "--epochs", "3", *TINY, "--output", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": "signal", "FAULT_RANK": "1", "FAULT_AT": "5"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    stopped = subprocess.run([*cmd, FAULTY, *args], capture_output=True, text=True, env=env)
    assert stopped.returncode != 0 and "exitcode  : 75" in stopped.stderr, stopped.stderr[-3000:]
    assert "preempted: stopped by SIGTERM inside epoch 1 after step 2;" in stopped.stderr
    assert "preempted: stopped by a signal on another rank inside epoch 1 after step 2;" in stopped.stderr
    state = models.safe_load(tmp_path / RUN / "last.pth")
    assert state["position"]["epoch"] == 1 and state["position"]["step"] == 2 and len(state["position"]["rng"]) == 2
    resumed = torchrun(TRAIN, *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    b = models.safe_load(tmp_path / RUN / "last.pth")
    assert b["epoch"] == 2 and all(torch.equal(full_run["model"][k], b["model"][k]) for k in b["model"])


def test_a_hung_rank_is_named_within_the_timeout(imagenet, tmp_path):
    """Rank 1 blocks forever when validation starts; rank 0 waits in the next collective. Within
    dist_timeout + 30 s rank 0 stops with one line naming rank 1 and where it stopped; torchrun
    then stops rank 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": "hang", "FAULT_RANK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", FAULTY,
           "--data-dir", str(imagenet), "--epochs", "2", *TINY, "--output", str(tmp_path), "--dist-timeout", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, named_at, hung_at = [], None, None
    for line in proc.stdout:          # timed as they come
        lines.append(line)
        if "train 0/1 [4/4]" in line:
            hung_at = time.time()     # epoch 0 trained; rank 1 hangs as validation starts
        if named_at is None and line.startswith("error: stopped responding: rank 1 ("):
            named_at = time.time()
    proc.wait(timeout=120)
    text = "".join(lines)
    assert named_at is not None and hung_at is not None, text[-3000:]
    assert named_at - hung_at < 4 + 30
    named = [l for l in lines if l.startswith("error: stopped responding: rank 1 (")]
    assert len(named) == 1     # rank 0, which waits, names it (rank 1 never names itself)
    assert "last at 'the training loss of epoch 0'; rank 0 waits at 'validation" in named[0]
    assert "exitcode  : 69" in text
    assert "stopped responding: rank 1 (" in (tmp_path / RUN / "log.txt").read_text()   # rank 0 logged it


def test_distributed_evaluation_equals_single_process(imagenet, tmp_path):
    """Each val image is seen exactly once across ranks, so metrics match a single process.
    (Spikingformer: no LIF over merged T*B, so outputs do not depend on batch composition.)"""
    model = models.build("spikingformer_8_384", embed_dim=32, depth=1, num_heads=2, T=1, num_classes=4)
    fill_weights(model)  # weights that make every layer fire (default init at T=1 may fire nowhere)
    ckpt = tmp_path / "sf.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    common = ["--checkpoint", str(ckpt), "--model", "spikingformer_8_384", "--embed-dim", "32", "--depth", "1",
              "--num-heads", "2", "--T", "1", "--data-dir", str(imagenet), "--workers", "0", "--device", "cpu",
              "--img-size", "32", "--val-batch-size", "3"]
    single = subprocess.run([sys.executable, TEST, *common, "--save-json", str(tmp_path / "a.json"),
                             "--energy", str(tmp_path / "energy_a")], capture_output=True, text=True)
    multi = torchrun(TEST, *common, "--save-json", str(tmp_path / "b.json"), "--energy", str(tmp_path / "energy_b"))
    assert single.returncode == 0 and multi.returncode == 0, multi.stderr[-2000:]
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a["samples"] == b["samples"] == 16
    for key in ("top1", "top5", "loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    assert a["firing_rates"] == pytest.approx(b["firing_rates"], rel=1e-6)
    # Energy counters are summed over both ranks before rank 0 alone writes the report.
    ea, eb = (json.loads((tmp_path / d / "32px" / "energy.json").read_text()) for d in ("energy_a", "energy_b"))
    assert ea["samples"] == eb["samples"] == 16 and ea["macs"] > 0 and ea["mean_firing_rate"] > 0
    for key in ("macs", "sops", "dense", "energy_mj"):
        assert ea[key] == pytest.approx(eb[key], rel=1e-6), key
    assert ea["conventions_mj"] == pytest.approx(eb["conventions_mj"], rel=1e-6)
    assert a["energy"]["sops"] == pytest.approx(b["energy"]["sops"], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "energy_b" / "32px").iterdir()) == [
        "energy.json", "energy_breakdown.png", "firing_rates.png", "layers.csv", "tensorboard"]


def test_imagenet_layout_errors(tmp_path):
    def run(data_dir):
        cfg = make_config(load_yaml(ROOT / "imagenet" / "qkformer_10_384.yml"),
                          {"data_dir": str(data_dir), "output": str(tmp_path / "out")})
        train(cfg)

    with pytest.raises(DataError, match="train not found; --data-dir must hold train/ and val/"):
        run(tmp_path)
    root = write_image_folder(tmp_path / "flat", classes=2, train_per_class=2, val_per_class=2)
    for f in (root / "val").glob("*/*.JPEG"):
        f.rename(root / "val" / f.name)
    for d in (root / "val").glob("n*"):
        d.rmdir()
    with pytest.raises(DataError, match="has no class folders. It holds images directly: sort them"):
        run(root)
    root = write_image_folder(tmp_path / "mismatch", classes=3, train_per_class=2, val_per_class=2)
    for f in (root / "val" / "n00000002").iterdir():
        f.unlink()
    (root / "val" / "n00000002").rmdir()
    with pytest.raises(DataError, match="different classes"):
        run(root)


def test_spikformer_trains_two_epochs_then_test(imagenet, tmp_path):
    """The Spikformer ImageNet layout (pools after the stem's LIFs, 16x): one process, 2 epochs, test.py."""
    cfg = make_config(load_yaml(ROOT / "imagenet" / "spikformer_8_512.yml"),
                      {"data_dir": str(imagenet), "output": str(tmp_path), "epochs": 2, "embed_dim": 32, "depth": 1,
                       "num_heads": 2, "T": 1, "img_size": 32, "batch_size": 8, "val_batch_size": 8,
                       "effective_batch": 8, "warmup_epochs": 1, "cooldown_epochs": 0, "workers": 0,
                       "tensorboard": False, "progress": False})
    assert cfg.ratio == [0.75, 1.3333333333333333] and cfg.effective_batch == 8
    train(cfg)
    run_dir = cfg.run_dir()
    assert [json.loads(l)["epoch"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    ckpt = models.safe_load(run_dir / "last.pth")
    assert ckpt["model"]["patch_embed.proj_conv3.weight"].shape == (32, 16, 3, 3) and "pos_embed" not in ckpt["model"]
    res = tmp_path / "res.json"
    test = subprocess.run([sys.executable, TEST, "--checkpoint", str(run_dir / "best.pth"), "--data-dir",
                           str(imagenet), "--workers", "0", "--device", "cpu", "--save-json", str(res)],
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stderr[-3000:]
    result = json.loads(res.read_text())
    assert result["model"] == "spikformer_8_512" and result["img_size"] == 32
