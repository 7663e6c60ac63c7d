"""ImageNet configs: the originals' recipes, checked against their files and published logs."""
import pytest
import torch

from conftest import ROOT
from engine.recipe import load_recipe
from engine.optim import build_optimizer, build_scheduler

# MAE-style scripts (QKFormer imagenet/train.py, SGLFormer imagenet/main.py): argparse defaults
# plus the values printed in QKFormer's logs/QKFormer_{16M,29M,64M}.txt and SGLFormer's README.
MAE = dict(dataset="imagenet", T=4, img_size=224, blr=6e-4, lr=None, sched="mae_cosine", epochs=200, warmup_epochs=5,
           min_lr=1e-6, weight_decay=0.05, opt="adamw", aa="rand-m9-mstd0.5-inc1", color_jitter=None, reprob=0.25,
           remode="pixel", recount=1, mixup=0.0, cutmix=0.0, smoothing=0.1, train_interpolation="bicubic",
           scale=[0.08, 1.0], ratio=[0.75, 1.3333333333333333], hflip=0.5, crop_pct=None, amp=True, seed=0,
           clip_grad=None, model_ema=False, layer_decay=1.0)
# Spikingformer's timm-style imagenet/train.py + imagenet.yml, batch sizes from its origin logs.
TIMM = dict(dataset="imagenet", T=4, img_size=224, lr=5e-4, blr=None, sched="cosine", epochs=300, warmup_epochs=20,
            warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10, weight_decay=0.05, opt="adamw",
            aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="const", mixup=0.8, cutmix=1.0, mixup_prob=1.0,
            mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=0, smoothing=0.1, scale=[1.0, 1.0],
            ratio=[1.0, 1.0], hflip=0.5, crop_pct=1.0, train_interpolation="bicubic", amp=True, seed=42)
EXPECTED = {
    "qkformer_10_384": dict(MAE, model="qkformer_10_384", batch_size=32, effective_batch=512),
    "qkformer_10_512": dict(MAE, model="qkformer_10_512", batch_size=32, effective_batch=512),
    "qkformer_10_768": dict(MAE, model="qkformer_10_768", batch_size=24, effective_batch=576),
    "qkformer_10_768_384": dict(MAE, model="qkformer_10_768", batch_size=8, effective_batch=512, img_size=384,
                                epochs=210, min_lr=5e-7, start_epoch=201),
    "sglformer_8_384": dict(MAE, model="sglformer_8_384", batch_size=32, effective_batch=512),
    "sglformer_8_512": dict(MAE, model="sglformer_8_512", batch_size=32, effective_batch=512),
    "sglformer_8_512_star": dict(MAE, model="sglformer_8_512_star", batch_size=32, effective_batch=512),
    "sglformer_8_768_star": dict(MAE, model="sglformer_8_768_star", batch_size=32, effective_batch=512),
    "spikingformer_8_384": dict(TIMM, model="spikingformer_8_384", batch_size=36, effective_batch=288),
    "spikingformer_8_512": dict(TIMM, model="spikingformer_8_512", batch_size=36, effective_batch=288),
    "spikingformer_8_768": dict(TIMM, model="spikingformer_8_768", batch_size=24, effective_batch=192),
    # spikformer/imagenet/imagenet.yml (batch 24 on its README's 8 GPUs) and its train.py's default ratio
    **{f"spikformer_{n}": dict(TIMM, model=f"spikformer_{n}", batch_size=24, effective_batch=192,
                               ratio=[0.75, 1.3333333333333333]) for n in ("8_384", "8_512", "8_768")},
}


def load(name):
    return load_recipe(ROOT / "imagenet" / f"{name}.yml")[0]   # bases and variant table applied


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_equals_original_recipe(name):
    cfg = load(name)
    assert {k: getattr(cfg, k) for k in EXPECTED[name]} == EXPECTED[name]


def test_every_imagenet_config_is_checked():
    assert {p.stem for p in (ROOT / "imagenet").glob("*.yml")} == set(EXPECTED)


@pytest.mark.parametrize("name,gpus,accum,lr", [
    ("qkformer_10_384", 8, 2, 1.2e-3), ("qkformer_10_768", 8, 3, 1.35e-3),   # the logged runs
    ("qkformer_10_384", 4, 4, 1.2e-3), ("qkformer_10_384", 16, 1, 1.2e-3),   # other GPU counts keep batch 512
    ("spikingformer_8_512", 8, 1, 5e-4), ("spikingformer_8_512", 2, 4, 5e-4),
])
def test_published_effective_batch_on_any_gpu_count(name, gpus, accum, lr):
    assert load(name).resolve_batching(gpus) == (accum, pytest.approx(lr))


def epoch_mean_lrs(cfg, gpus: int, steps_per_epoch: int, epochs: range) -> list[float]:
    """The per-epoch mean lr MAE's MetricLogger prints as train_lr, replayed with our scheduler."""
    accum, lr = cfg.resolve_batching(gpus)
    cfg.accum_iter, cfg.lr = accum, lr
    opt = build_optimizer(cfg, torch.nn.Linear(1, 1))
    sched, _ = build_scheduler(cfg, opt, steps_per_epoch // accum, steps_per_epoch)
    means = []
    for epoch in epochs:
        sched.step_update(epoch * (steps_per_epoch // accum))
        total, updates = 0.0, epoch * (steps_per_epoch // accum)
        for step in range(steps_per_epoch):
            total += opt.param_groups[0]["lr"]
            if (step + 1) % accum == 0:
                updates += 1
                sched.step_update(updates)
        means.append(total / steps_per_epoch)
    return means


def test_schedule_reproduces_the_logged_learning_rates():
    # QKFormer/imagenet/imagenet_origin_log.txt (HST-10-768, 224 px): train_lr of epochs 0, 49, 198, 199.
    # 1,281,167 images over 8 ranks at batch 24: 6672 steps per epoch.
    got = epoch_mean_lrs(load("qkformer_10_768"), 8, 6672, [0, 49, 198, 199])
    logged = [0.00013493929856115097, 0.001183953160561293, 1.204295980735143e-06, 1.029197686902146e-06]
    assert got == pytest.approx(logged, rel=1e-6)


def test_384px_schedule_reproduces_its_log():
    # QKFormer/imagenet/imagenet_origin_log_384.txt: train_lr of epochs 201-209 (8 ranks x batch 8: 20018 steps).
    got = epoch_mean_lrs(load("qkformer_10_768_384"), 8, 20018, range(201, 210))
    logged = [5.587136744505316e-06, 4.463137359186872e-06, 3.4790562501828263e-06, 2.6351245251947328e-06,
              1.931540378375169e-06, 1.3684690437821597e-06, 9.460427565748913e-07, 6.643607219584795e-07,
              5.234890918863451e-07]
    assert got == pytest.approx(logged, rel=1e-4)
