"""Every user mistake gets a one-line error that names the fix, and loses no data."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import models
from conftest import ROOT
from datasets import write_cifar10
from engine import trainer
from engine.config import ConfigError
from engine.data import DataError
from engine.errors import CheckpointWriteError, OutOfMemory
from engine.train_loop import NonFiniteLoss
from test_cifar_training import config

TRAIN = str(ROOT / "cifar10" / "train.py")
TEST = str(ROOT / "cifar10" / "test.py")


def run_cli(*args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return out.returncode, out.stderr.strip()


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    code, err = run_cli(TRAIN, "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path))
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: cifar10: data dir") and "--download" in err

    bad_yaml = tmp_path / "typo.yml"
    bad_yaml.write_text("model: qkformer_cifar_4_384\nwarmup_epoch: 5\n")
    code, err = run_cli(TRAIN, "-c", str(bad_yaml))
    assert code == 2 and err.count("\n") == 0 and "did you mean 'warmup_epochs'" in err

    code, err = run_cli(TRAIN, "--learning-rate", "0.1")   # not a config key: argparse's usage error
    assert code == 2 and "unrecognized arguments: --learning-rate" in err


@pytest.fixture
def data(tmp_path):
    return write_cifar10(tmp_path / "data")


def test_dataset_layout_errors(data, tmp_path):
    def build(data_dir):
        trainer.train(config("cifar10", data_dir, tmp_path / "out", epochs=1))

    with pytest.raises(DataError, match="holds the batch files directly; pass its parent folder"):
        build(data / "cifar-10-batches-py")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"cifar-10-batches-py not found\. Extract cifar-10-python\.tar\.gz"):
        build(empty)
    (data / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="is incomplete, missing data_batch_3"):
        build(data)


def test_modified_files_load_with_a_warning(data, tmp_path):
    with pytest.warns(UserWarning, match="differ from the official release"):
        trainer.train(config("cifar10", data, tmp_path / "out", epochs=1))


def test_checkpoint_of_another_variant_lists_mismatched_keys(data, tmp_path):
    other = models.build("spikingformer_cifar_4_384", embed_dim=32, num_heads=2, depth=2)
    path = tmp_path / "spikingformer.pth"
    torch.save({"state_dict": other.state_dict()}, path)  # upstream timm layout, no config inside
    code, err = run_cli(TEST, "--checkpoint", str(path), "--data-dir", str(data), "--embed-dim", "32",
                        "--depth", "3", "--workers", "0")
    assert code == 2 and err.count("\n") == 0
    assert "checkpoint does not fit QKFormer" in err and "keys missing from the checkpoint: patch_embed1" in err


def test_existing_run_is_not_overwritten_and_resume_checks_the_model(data, tmp_path):
    cfg = config("cifar10", data, tmp_path / "out", epochs=1)
    trainer.train(cfg)
    before = (cfg.run_dir() / "last.pth").read_bytes()
    with pytest.raises(ConfigError, match="already holds a checkpoint .* --resume auto"):
        trainer.train(cfg)
    assert (cfg.run_dir() / "last.pth").read_bytes() == before
    with pytest.raises(models.CheckpointError, match=r"different model or dataset \(embed_dim: 32 -> 64\)"):
        trainer.train(config("cifar10", data, tmp_path / "out", epochs=2, embed_dim=64, resume="auto"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    real = trainer.build_criterion

    def criterion_failing_in_epoch_1(cfg):
        base, calls = real(cfg), {"n": 0}

        def loss(output, target):
            calls["n"] += 1
            value = base(output, target)
            return value * float("nan") if calls["n"] > 10 else value  # epoch 0 has 10 steps
        return loss

    monkeypatch.setattr(trainer, "build_criterion", criterion_failing_in_epoch_1)
    cfg = config("cifar10", data, tmp_path / "out", epochs=3)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at epoch 1, step 0; stopped, .*last\.pth \(epoch 0\) "
                                            r"is the last good checkpoint\. Resume \(--resume auto\) with --clip-grad"):
        trainer.train(cfg)
    kept = models.safe_load(cfg.run_dir() / "last.pth")
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_atomic_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    from engine.checkpoint import save_atomic
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, path)

    def explode(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(CheckpointWriteError) as info:
        save_atomic({"epoch": 2, "model": {"w": torch.zeros(2**19)}}, path)    # 2 MB of weights
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and f"could not write the checkpoint {path} (disk full): it needs about 2 MB" in message
    assert f"{path} from before is intact" in message and "--resume auto" in message
    assert models.safe_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_failing_checkpoint_write_stops_training(data, tmp_path, monkeypatch):
    import errno
    real, calls = torch.save, {"n": 0}

    def disk_full_at_the_second_checkpoint(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                   # epoch 0 writes last.pth and best.pth; epoch 1's last.pth fails
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_the_second_checkpoint)
    cfg = config("cifar10", data, tmp_path / "out", epochs=3)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        trainer.train(cfg)
    monkeypatch.undo()
    run = cfg.run_dir()
    assert models.safe_load(run / "last.pth")["epoch"] == 0 and not list(run.glob(".*tmp*"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] <= 1


def test_null_and_out_of_range_config_values(tmp_path):
    from engine.config import load_yaml, make_config
    empty = tmp_path / "empty.yml"
    empty.write_text("model: qkformer_cifar_4_384\nepochs:\n")     # a key left without a value
    with pytest.raises(ConfigError, match=r"config key 'epochs' has no value \(null\).*default 300"):
        load_yaml(empty)
    for key in ("T", "effective_batch", "epochs", "depth"):
        with pytest.raises(ConfigError, match=f"{key} must be >= 1, got 0"):
            make_config({}, {key: "0"})


def test_unknown_device_optimizer_and_schedule(tmp_path):
    from engine.config import make_config
    from engine.distributed import pick_device
    from engine.optim import build_optimizer, build_scheduler
    with pytest.raises(ConfigError, match="unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"):
        pick_device("gpu0", 0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU; use --device cpu"):
            pick_device("cuda", 0)
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="optimizer 'adamx'.*list_optimizers"):
        build_optimizer(make_config({}, {"opt": "adamx"}), net)
    # An enumerated key is checked when the config is made, before anything is built.
    with pytest.raises(ConfigError, match="'sched' must be one of cosine, mae_cosine, .*did you mean 'cosine'"):
        make_config({}, {"sched": "cosin"})
    cfg = dataclasses.replace(make_config({}, {}), sched="cosin")   # bypassing the config's check
    with pytest.raises(ConfigError, match="unknown schedule 'cosin'; choose mae_cosine or one of timm's: cosine"):
        build_scheduler(cfg, build_optimizer(cfg, net), 10, 10)


def test_device_and_model_errors_on_the_command_line(tmp_path):
    if not torch.cuda.is_available():
        code, err = run_cli(TRAIN, "--device", "cuda", "--output", str(tmp_path))
        assert code == 2 and err.count("\n") == 0 and "no CUDA GPU; use --device cpu" in err
    code, err = run_cli(str(ROOT / "tools" / "energy.py"), "--model", "qkformer_11_384", "--fake", "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: unknown model 'qkformer_11_384'")


def test_resume_refuses_a_changed_schedule(data, tmp_path):
    cfg = config("cifar10", data, tmp_path / "out", epochs=2)
    trainer.train(cfg)
    with pytest.raises(models.CheckpointError, match=r"changed optimizer or schedule \(lr: 0\.01 -> 0\.02; "
                                                     r"epochs: 2 -> 4\).*--initial-checkpoint .*last\.pth "
                                                     r"--start-epoch 2"):
        trainer.train(config("cifar10", data, tmp_path / "out", epochs=4, lr=2e-2, resume="auto"))


def test_resume_across_precision_changes_keeps_or_resets_the_loss_scale():
    from engine.trainer import _load_scaler

    class Log:
        lines = []

        def info(self, line):
            self.lines.append(line)

    from engine.config import make_config
    fp16 = torch.amp.GradScaler("cpu", init_scale=1024.0)
    saved_fp16 = {"scaler": fp16.state_dict(), "config": {"amp": True, "amp_dtype": "float16"}}
    saved_fp32 = {"scaler": {}, "config": {"amp": False, "amp_dtype": "float16"}}
    cfg16 = make_config({}, {"amp": True, "amp_dtype": "float16"})
    fresh = torch.amp.GradScaler("cpu", init_scale=8.0)
    _load_scaler(fresh, saved_fp16, cfg16, Log())                 # same precision: the scale carries over
    assert fresh.get_scale() == 1024.0
    fresh = torch.amp.GradScaler("cpu", init_scale=8.0)
    log = Log()
    _load_scaler(fresh, saved_fp32, cfg16, log)                    # fp32 -> fp16: a fresh scaler, no crash
    assert fresh.get_scale() == 8.0 and "precision changed on resume" in log.lines[-1]
    off = torch.amp.GradScaler("cpu", enabled=False)
    _load_scaler(off, saved_fp16, make_config({}, {"amp": False}), Log())   # fp16 -> fp32: scale dropped
    assert not off.is_enabled()


def test_nan_validation_loss_in_the_first_epoch_names_no_checkpoint(data, tmp_path, monkeypatch):
    real = trainer.evaluate

    def nan_loss(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(trainer, "evaluate", nan_loss)
    cfg = config("cifar10", data, tmp_path / "out", epochs=2)
    with pytest.raises(NonFiniteLoss, match=r"validation loss is nan after epoch 0; stopped, no checkpoint was "
                                            r"written in this run\. Resume \(--resume auto\) with --clip-grad"):
        trainer.train(cfg)
    assert not (cfg.run_dir() / "last.pth").exists()


def test_failed_setup_leaves_no_run_folder(data, tmp_path):
    cfg = config("cifar10", data, tmp_path / "out", epochs=1, num_heads=5, tensorboard=True)  # 32 % 5 != 0
    with pytest.raises(ConfigError, match="cannot build qkformer_cifar_4_384"):
        trainer.train(cfg)
    assert not (tmp_path / "out").exists()


def test_ema_switched_on_at_resume_starts_from_the_resumed_weights(data, tmp_path):
    cfg = config("cifar10", data, tmp_path / "out", epochs=2)
    trainer.train(cfg)
    last = cfg.run_dir() / "last.pth"
    state = models.safe_load(last)
    state["epoch"] = 0                      # as if killed after epoch 0
    torch.save(state, last)
    # decay 1: the EMA never moves from where it starts, so it must equal the resumed weights
    trainer.train(config("cifar10", data, tmp_path / "out", epochs=2, resume="auto", model_ema=True,
                         model_ema_decay=1.0))
    ema = models.safe_load(last)["model_ema"]
    assert all(torch.equal(ema[k], state["model"][k]) for k in ema if ema[k].is_floating_point())
    log = (cfg.run_dir() / "log.txt").read_text()
    assert "the EMA starts from the resumed model" in log
    assert "; EMA: val loss" in log and "(best EMA " in log


def test_scalar_for_a_list_key_and_yaml_syntax_errors_are_one_line(tmp_path):
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("model: qkformer_cifar_4_384\nscale: 1.0\n")
    code, err = run_cli(TRAIN, "-c", str(scalar), "--data-dir", str(tmp_path), "--output", str(tmp_path))
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: config key 'scale' expects a list of 2 numbers, e.g. scale: [0.08, 1.0]")

    broken = tmp_path / "broken.yml"
    broken.write_text("epochs: 3\nmodel: [unclosed\n")
    code, err = run_cli(TRAIN, "-c", str(broken))
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: {broken}, line ") and "not valid YAML" in err


def test_out_of_memory_is_one_line_naming_the_fixes_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    real, calls = trainer.train_one_epoch, {"n": 0}

    def out_of_memory_in_epoch_1(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", out_of_memory_in_epoch_1)
    cfg = config("cifar10", data, tmp_path / "out", epochs=3, activation_memory="standard")
    with pytest.raises(OutOfMemory) as info:
        trainer.train(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith("out of memory in training epoch 1 on cpu")
    fixes = message.split("cheapest first: ")[1].split("; ")
    assert fixes[0].startswith("--activation-memory compact")
    assert fixes[1].startswith(f"--batch-size {cfg.batch_size // 2} --accum-iter 2 (the same effective batch")
    assert fixes[2].startswith("--grad-checkpointing") and fixes[3] == "--amp --amp-dtype bfloat16"
    run = cfg.run_dir()
    assert models.safe_load(run / "last.pth")["epoch"] == 0                 # untouched, loadable
    assert not [p for p in run.iterdir() if p.suffix == ".tmp" or p.name.endswith(".tmp")]
    # evaluation: a smaller validation batch first
    text = trainer.out_of_memory_message(cfg, torch.device("cpu"), "validation after epoch 0", evaluation=True)
    assert f"--val-batch-size {cfg.val_batch_size // 2}" in text
