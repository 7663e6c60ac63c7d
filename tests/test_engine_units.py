"""Engine pieces in isolation: schedule, samplers, precision, firing rates, augmentation shim."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import models
from conftest import ROOT
from engine.config import load_yaml, make_config
from engine.data.transforms import _posterize
from engine.distributed import DistInfo
from engine.firing import FiringRates
from engine.loader import EpochShuffleSampler, ShardSampler
from engine.optim import build_optimizer, build_scheduler
from engine.train_loop import Precision


def test_cifar_schedule_is_the_originals():
    """timm 0.6 create_scheduler as the originals used it: per-epoch cosine over 400 epochs, linear
    warmup from 1e-5 for 20 epochs (not a prefix), then 10 cooldown epochs at min_lr."""
    cfg = make_config(load_yaml(ROOT / "cifar10" / "qkformer.yml"), {})
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched, total = build_scheduler(cfg, opt, updates_per_epoch=781, steps_per_epoch=781)
    assert total == 410
    for epoch in range(total):
        if epoch < 20:
            expected = 1e-5 + epoch * (1e-3 - 1e-5) / 20
        elif epoch < 400:
            expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * epoch / 400))
        else:
            expected = 1e-5
        assert opt.param_groups[0]["lr"] == pytest_approx(expected), epoch
        sched.step(epoch + 1)


def test_mae_schedule_matches_mae_adjust_learning_rate():
    """MAE's loop: lr set from (epoch + step / len(loader)) at every step % accum == 0."""
    cfg = make_config({"sched": "mae_cosine", "lr": None, "blr": 6e-4, "batch_size": 4, "effective_batch": 16,
                       "epochs": 6, "warmup_epochs": 2, "min_lr": 1e-6}, {})
    accum, lr = cfg.resolve_batching(world_size=2)
    assert (accum, lr) == (2, 6e-4 * 16 / 256)
    cfg.accum_iter, cfg.lr = accum, lr
    steps = 11  # an odd loader length: the last micro-batch never completes an update
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    sched, total = build_scheduler(cfg, opt, updates_per_epoch=steps // accum, steps_per_epoch=steps)
    assert total == 6
    updates = 0
    for epoch in range(6):
        for step in range(steps):
            if step % accum == 0 and step // accum < steps // accum:
                e = step / steps + epoch
                expected = lr * e / 2 if e < 2 else 1e-6 + (lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * (e - 2) / 4))
                assert opt.param_groups[0]["lr"] == pytest_approx(expected), (epoch, step)
            if (step + 1) % accum == 0 and step < (steps // accum) * accum:
                updates += 1
                sched.step_update(updates)
        sched.step(epoch + 1)


def pytest_approx(x):
    import pytest
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_no_weight_decay_on_biases_and_norms():
    cfg = make_config({"weight_decay": 0.06}, {})
    model = models.build("qkformer_cifar_4_384", embed_dim=32, depth=3)
    groups = build_optimizer(cfg, model).param_groups
    decay = {id(p) for g in groups if g["weight_decay"] == 0.06 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1 and not name.endswith(".bias")), name


def test_samplers():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    s = EpochShuffleSampler(50, seed=1)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(4)
    assert list(s) != first and sorted(list(s)) == list(range(50))
    s.set_epoch(3)
    assert list(s) == first


def test_precision_is_float32_on_cpu_even_if_amp_requested():
    p = Precision.from_config(make_config({"amp": True}, {}), torch.device("cpu"))
    assert not p.enabled and not p.scaler().is_enabled()
    with p.autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_firing_rates_count_spikes_per_layer():
    model = models.build("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, T=2).eval()
    x = torch.randn(3, 3, 16, 16)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o.mean().item()))
             for n, m in model.named_modules() if isinstance(m, models.LIF)]
    with FiringRates(model) as fr:
        model(x)
    for h in hooks:
        h.remove()
    rates = fr.rates()
    assert list(rates) == list(outputs) and len(rates) == 4 + 2 * 7  # tokenizer, 2 blocks
    assert all(abs(rates[n] - outputs[n]) < 1e-6 for n in rates)
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, models.LIF))


def test_posterize_zero_bits_is_black_like_old_pillow():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.asarray(_posterize(img, 0)).max() == 0
    assert np.array_equal(np.asarray(_posterize(img, 2)), np.asarray(img) & 0b11000000)
    assert _posterize(img, 8) is img


def test_dist_info_defaults():
    info = DistInfo()
    assert info.is_main and not info.distributed and info.device.type == "cpu"


def test_lr_and_blr_are_one_setting():
    from engine.config import ConfigError
    mae = {"lr": None, "blr": 6e-4, "batch_size": 32, "effective_batch": 512}
    assert make_config({"blr": 6e-4, "batch_size": 32}, {}).resolve_batching(8) == (1, pytest.approx(6e-4))
    assert make_config(mae, {}).resolve_batching(8) == (2, pytest.approx(1.2e-3))
    assert make_config(mae, {"lr": "1e-3"}).resolve_batching(8)[1] == 1e-3          # --lr replaces blr
    cfg = make_config({"lr": 5e-4, "batch_size": 128}, {"blr": "1e-3"})                # --blr replaces lr
    assert cfg.lr is None and cfg.resolve_batching(2)[1] == pytest.approx(1e-3 * 256 / 256)
    cfg = make_config({"lr": 5e-4}, {"lr": "none", "blr": "6e-4"})                    # --lr none --blr 6e-4
    assert cfg.lr is None and cfg.blr == 6e-4
    assert make_config({"aa": "rand-m9-n1"}, {"aa": "None"}).aa is None
    with pytest.raises(ConfigError, match="sets both lr .* and blr"):
        make_config({"lr": 5e-4, "blr": 6e-4}, {})
    with pytest.raises(ConfigError, match="the command line sets both lr"):
        make_config({}, {"lr": "1e-3", "blr": "1e-3"})


def test_test_refuses_a_checkpoint_of_another_dataset():
    from engine.config import ConfigError
    from engine.tester import check_dataset
    checkpoint = {"model": {}, "config": {"dataset": "cifar100", "model": "qkformer_cifar_4_384"}}
    with pytest.raises(ConfigError, match="trained on cifar100 but this config evaluates cifar10.*--dataset cifar10"):
        check_dataset(make_config({}, {"dataset": "cifar10"}), checkpoint)
    check_dataset(make_config({}, {"dataset": "cifar10"}), checkpoint, explicit={"dataset"})
    check_dataset(make_config({}, {"dataset": "cifar100"}), checkpoint)
    check_dataset(make_config({}, {}), {"state_dict": {}})                           # an original checkpoint
