"""One run per output folder (issue 14, defect 6) and test.py's evaluation settings (defect 7)."""
import os
import subprocess
import sys
import textwrap

import pytest

import models
from conftest import ROOT
from datasets import write_cifar10
from engine import trainer
from engine.config import ConfigError
from engine.run_lock import LOCK_NAME, RunFolderLock
from engine.tester import config_for_checkpoint, describe_eval_settings
from test_cifar_training import config


def test_second_holder_gets_an_error_naming_the_first(tmp_path):
    # The first holder is another process, as with two train.py started at once.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {str(ROOT)!r})
        from engine.run_lock import RunFolderLock
        lock = RunFolderLock({str(tmp_path / 'run')!r}).acquire()
        print('locked', flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by a running train.py \(pid {holder.pid} on "):
            RunFolderLock(tmp_path / "run").acquire()
    finally:
        holder.kill()
        holder.wait()
    # Killed: the kernel dropped its lock; the file left behind is taken over and named.
    lock = RunFolderLock(tmp_path / "run").acquire()
    assert lock.took_over.startswith(f"pid {holder.pid} ")
    assert (tmp_path / "run" / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    fresh = RunFolderLock(tmp_path / "new" / "run").acquire()
    fresh.release()
    assert not (tmp_path / "new").exists()  # a run that wrote nothing leaves no empty folders


def test_training_into_a_locked_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    data = write_cifar10(tmp_path / "data", train_per_batch=4, test=8)
    cfg = config("cifar10", data, tmp_path / "out", epochs=1)
    with RunFolderLock(cfg.run_dir()):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} on .*another --output/--experiment"):
            trainer.train(cfg)
        assert not (cfg.run_dir() / "log.txt").exists()  # the refused run wrote nothing
    cfg.run_dir().mkdir(parents=True)
    (cfg.run_dir() / LOCK_NAME).write_text("pid 999999 on a-dead-host\n")  # as a kill -9 leaves it
    trainer.train(cfg)
    log = (cfg.run_dir() / "log.txt").read_text()
    assert "took over the lock of a run that is no longer running (pid 999999 on a-dead-host)" in log
    assert not (cfg.run_dir() / LOCK_NAME).exists()


def test_evaluation_settings_come_from_the_checkpoint_unless_chosen(tmp_path):
    trained = config("cifar10", tmp_path, tmp_path, val_batch_size=7, workers=0, crop_pct=0.9)
    checkpoint = {"config": trained.to_dict()}
    folder_default = config("cifar10", tmp_path, tmp_path)       # what test.py reads without -c
    assert folder_default.val_batch_size != 7
    cfg = config_for_checkpoint(folder_default, checkpoint)
    assert (cfg.val_batch_size, cfg.workers, cfg.crop_pct) == (7, 0, 0.9)
    line = describe_eval_settings(cfg, checkpoint)
    assert "val_batch_size=7 (checkpoint)" in line
    # The command line, and the keys of a file named with -c, are the user's choice.
    cli = config_for_checkpoint(config("cifar10", tmp_path, tmp_path, val_batch_size=3), checkpoint,
                                explicit={"val_batch_size"}, from_file={"crop_pct"})
    assert (cli.val_batch_size, cli.crop_pct, cli.workers) == (3, folder_default.crop_pct, 0)
    assert folder_default.crop_pct != 0.9
    assert "val_batch_size=3 (command line)" in describe_eval_settings(cli, checkpoint, {"val_batch_size"},
                                                                        {"crop_pct"})
    # The original repositories' checkpoints carry no config: the YAML/CLI settings stay.
    assert config_for_checkpoint(folder_default, {"model": {}}) == folder_default
