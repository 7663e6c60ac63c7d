"""DVS configs carry the originals' recipes (all their DVS train.py files share one template)."""
import pytest
import torch

from conftest import ROOT
from engine.recipe import load_recipe
from engine.optim import build_optimizer, build_scheduler

# Defaults of {QKFormer,Spikingformer,SGLFormer}/{cifar10-dvs,dvs128-gesture}/train.py, the
# SGLFormer README's `--T=10 --lr=5e-3`, and the hard-coded `if epoch >= 75: mixup off`.
COMMON = dict(batch_size=16, val_batch_size=16, opt="adamw", opt_eps=1e-8, weight_decay=0.06, sched="cosine",
              warmup_epochs=10, warmup_lr=1e-5, cooldown_epochs=10, mixup=0.5, cutmix=0.0, mixup_prob=0.5,
              mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=75, smoothing=0.1, amp=True,
              eval_amp=False, dvs_aug=True, seed=2021, fix_tb_merge=False, model_ema=False, clip_grad=None)
ORIGINAL = {
    # (folder, family): (model, classes, T, lr, min_lr, epochs, workers)
    ("cifar10-dvs", "qkformer"): ("qkformer_cifar10dvs_2_256", 10, 16, 5e-3, 1e-5, 96, 4),
    ("dvs128-gesture", "qkformer"): ("qkformer_gesture_2_256", 11, 16, 1e-3, 2e-5, 192, 4),
    ("cifar10-dvs", "spikingformer"): ("spikingformer_cifar10dvs_2_256", 10, 16, 1e-3, 1e-5, 96, 4),
    ("dvs128-gesture", "spikingformer"): ("spikingformer_gesture_2_256", 11, 16, 1e-3, 1e-5, 192, 4),
    ("cifar10-dvs", "sglformer"): ("sglformer_cifar10dvs_3_256", 10, 10, 5e-3, 1e-5, 96, 8),
    ("dvs128-gesture", "sglformer"): ("sglformer_gesture_3_256", 11, 10, 5e-3, 1e-5, 192, 4),
    ("cifar10-dvs", "spikformer"): ("spikformer_cifar10dvs_2_256", 10, 16, 1e-3, 1e-5, 96, 4),
    ("dvs128-gesture", "spikformer"): ("spikformer_gesture_2_256", 11, 16, 1e-3, 1e-5, 192, 4),
}


@pytest.mark.parametrize("folder,family", sorted(ORIGINAL))
def test_dvs_config_equals_original_recipe(folder, family):
    model, classes, T, lr, min_lr, epochs, workers = ORIGINAL[(folder, family)]
    cfg, _ = load_recipe(ROOT / folder / f"{family}.yml")   # bases, variant table and dataset applied
    dataset = "cifar10dvs" if folder == "cifar10-dvs" else "dvs128gesture"
    expected = dict(COMMON, model=model, num_classes=classes, T=T, lr=lr, min_lr=min_lr, epochs=epochs,
                    workers=workers, dataset=dataset)
    assert {k: getattr(cfg, k) for k in expected} == expected
    if folder == "cifar10-dvs":
        assert cfg.dvs_split == "originals"


def test_every_dvs_config_is_checked():
    shipped = {(p.parent.name, p.stem) for f in ("cifar10-dvs", "dvs128-gesture") for p in (ROOT / f).glob("*.yml")}
    assert shipped == set(ORIGINAL)


def test_schedule_reproduces_qkformer_cifar10dvs_log():
    """lr at the first step of epochs 0, 1, 9, 10, 32, 48, 95, 96, 105 in cifar10-dvs_origin_log.txt."""
    cfg, _ = load_recipe(ROOT / "cifar10-dvs" / "qkformer.yml")
    cfg.accum_iter = 1
    opt = build_optimizer(cfg, torch.nn.Linear(1, 1))
    sched, total = build_scheduler(cfg, opt, 562, 562)
    assert total == 106
    lrs = []
    for epoch in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1)
    logged = {0: 1e-05, 1: 0.0005090000000000001, 9: 0.004501000000000001, 10: 0.004867590673090289,
              32: 0.0037525, 48: 0.0025050000000000003, 95: 1.1335854246467618e-05, 96: 1e-05, 105: 1e-05}
    for epoch, value in logged.items():
        assert lrs[epoch] == pytest.approx(value, rel=1e-9), epoch
