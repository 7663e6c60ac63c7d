"""Per-update telemetry: TensorBoard scalars on a fractional-epoch axis, log lines, stdlib logging."""
import logging

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import models
from datasets import write_cifar10
from engine import logger as engine_logger
from engine import telemetry
from engine.trainer import train
from test_cifar_training import config


def test_per_update_scalars_and_log_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(telemetry, "FIRING_EVERY", 1)
    data = write_cifar10(tmp_path / "data", train_per_batch=16, test=8)   # 80 train images: 5 updates/epoch
    cfg = config("cifar10", data, tmp_path / "out", epochs=2, tensorboard=True, log_interval=2)
    train(cfg)
    events = EventAccumulator(str(cfg.run_dir() / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "step/grad_norm", "step/img_per_s", "step/data_time_share",
            "step/firing_rate"} <= tags
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == [200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000]
    assert all(e.value > 0 for e in events.Scalars("step/grad_norm"))
    assert all(0 < e.value < 1 for e in events.Scalars("step/firing_rate"))
    assert all(0 <= e.value <= 1 for e in events.Scalars("step/data_time_share"))
    out = capsys.readouterr().out
    assert "train 0/1 [2/5] loss " in out and "grad-norm" in out and "img/s" in out and "run ETA" in out


def test_telemetry_leaves_training_bit_identical(tmp_path, monkeypatch):
    data = write_cifar10(tmp_path / "data", train_per_batch=16, test=8)
    monkeypatch.setattr(telemetry, "FIRING_EVERY", 1)
    with_tel = config("cifar10", data, tmp_path / "a", epochs=1)
    train(with_tel)
    monkeypatch.setattr("engine.trainer.Telemetry", lambda *a, **k: None)
    without = config("cifar10", data, tmp_path / "b", epochs=1)
    train(without)
    a, b = (models.safe_load(c.run_dir() / "last.pth")["model"] for c in (with_tel, without))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_engine_logs_through_stdlib_logging(tmp_path, capsys):
    log = engine_logger.RunLogger(tmp_path / "run", tensorboard=False)
    log.info("hello")
    assert "hello" in capsys.readouterr().out
    engine_logger.LOGGER.setLevel(logging.WARNING)
    try:
        log.info("quiet")
        assert "quiet" not in capsys.readouterr().out
    finally:
        engine_logger.LOGGER.setLevel(logging.INFO)
    assert "quiet" in (tmp_path / "run" / "log.txt").read_text()  # the run's own log keeps everything
