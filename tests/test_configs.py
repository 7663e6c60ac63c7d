"""Shipped YAML configs carry the original recipes; the config system rejects mistakes."""
import pytest

from conftest import ROOT
from engine.config import Config, ConfigError, build_parser, load_yaml, make_config, resolve_config_path
from engine.recipe import load_recipe

# The originals' CIFAR recipes: each repository's cifar10.yml / cifar100.yml merged over the
# argparse defaults of its train.py (timm 0.6 script). Values typed in from those files.
CIFAR_COMMON = dict(
    T=4, embed_dim=384, mlp_ratio=4, img_size=32, batch_size=64, val_batch_size=64,
    mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616], interpolation="bicubic",
    train_interpolation="bicubic", crop_pct=1.0, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.5, vflip=0.0,
    color_jitter=0.0, aa="rand-m9-n1-mstd0.4-inc1", reprob=0.25, remode="const", recount=1, mixup=0.5,
    cutmix=0.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch",
    mixup_off_epoch=200, smoothing=0.1, opt="adamw", sched="cosine", epochs=400, warmup_epochs=20,
    warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=10, amp=True, seed=42, accum_iter=None, model_ema=False,
    clip_grad=None, sched_on_updates=False, fix_tb_merge=False,
)
ORIGINAL = {
    # (dataset folder, family): (model, classes, depth, heads, lr, weight decay, workers)
    ("cifar10", "qkformer"): ("qkformer_cifar_4_384", 10, 4, 8, 1e-3, 0.06, 8),
    ("cifar100", "qkformer"): ("qkformer_cifar_4_384", 100, 4, 8, 1e-3, 0.06, 8),
    ("cifar10", "spikingformer"): ("spikingformer_cifar_4_384", 10, 4, 12, 5e-4, 0.06, 8),
    ("cifar100", "spikingformer"): ("spikingformer_cifar_4_384", 100, 4, 8, 5e-4, 0.06, 8),
    ("cifar10", "sglformer"): ("sglformer_cifar_4_384", 10, 1, 16, 1e-3, 0.06, 8),
    ("cifar100", "sglformer"): ("sglformer_cifar_4_384", 100, 1, 16, 1e-3, 0.05, 16),
    ("cifar10", "spikformer"): ("spikformer_cifar_4_384", 10, 4, 12, 5e-4, 0.06, 16),
    ("cifar100", "spikformer"): ("spikformer_cifar_4_384", 100, 4, 12, 5e-4, 0.06, 16),
}
# Spikformer's cifar10.yml: batch 128, 300 epochs; its aa_snn.py RandAugment has five ops.
SPIKFORMER = dict(batch_size=128, val_batch_size=128, epochs=300,
                  aa_ops=["Equalize", "Rotate", "ShearX", "TranslateXRel", "TranslateYRel"])


@pytest.mark.parametrize("folder,family", sorted(ORIGINAL))
def test_shipped_config_equals_original_recipe(folder, family):
    model, classes, depth, heads, lr, wd, workers = ORIGINAL[(folder, family)]
    cfg, _ = load_recipe(ROOT / folder / f"{family}.yml")   # bases, variant table and dataset applied
    expected = dict(CIFAR_COMMON, model=model, dataset=folder, num_classes=classes, depth=depth,
                    num_heads=heads, lr=lr, weight_decay=wd, workers=workers, aa_ops=None)
    expected.update(SPIKFORMER if family == "spikformer" else {})
    got = {k: getattr(cfg, k) for k in expected}
    assert got == expected


def test_every_shipped_config_is_checked():
    shipped = {(p.parent.name, p.stem) for folder in ("cifar10", "cifar100") for p in (ROOT / folder).glob("*.yml")}
    assert shipped == set(ORIGINAL) | {("cifar10", "smoke")}


def test_default_config_of_each_script_is_qkformer():
    for folder in ("cifar10", "cifar100"):
        assert resolve_config_path(None, ROOT / folder, "qkformer.yml") == ROOT / folder / "qkformer.yml"
        assert "qkformer.yml" in (ROOT / folder / "train.py").read_text()


def test_unknown_yaml_key_names_the_valid_ones(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("lrr: 0.1\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' \(did you mean 'lr'\?\)\. Valid keys: .*warmup_lr"):
        load_yaml(bad)


def test_wrong_types_and_values_are_errors(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'many'"):
        make_config(load_yaml(bad), {})
    with pytest.raises(ConfigError, match="accum_iter must be >= 1"):
        make_config({"accum_iter": 0}, {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yml")


def test_command_line_overrides_yaml(tmp_path):
    parser = build_parser("x")
    args = parser.parse_args(["--lr", "0.5", "--no-amp", "--scale", "0.5", "1.0", "--data-dir", "/d", "--aa", "none"])
    cfg = make_config({"lr": 1e-3, "amp": True, "epochs": 7, "aa": "rand-m9"}, vars(args))
    assert (cfg.lr, cfg.amp, cfg.scale, cfg.data_dir, cfg.epochs, cfg.aa) == (0.5, False, [0.5, 1.0], "/d", 7, None)
    assert isinstance(Config().to_dict(), dict)


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads "1e-3" as a string; the originals' files are written that way.
    f = tmp_path / "c.yml"
    f.write_text("lr: 1e-3\nwarmup_lr: 0.00001\n")
    cfg = make_config(load_yaml(f), {})
    assert cfg.lr == 1e-3 and cfg.warmup_lr == 1e-5


def test_spikformer_rand_augment_draws_from_its_five_ops():
    from timm.data.auto_augment import RandAugment
    from engine.data.transforms import image_transform
    cfg, _ = load_recipe(ROOT / "cifar10" / "spikformer.yml")
    steps = image_transform(cfg, True, (3, 32, 32), cfg.mean, cfg.std).transforms
    ra = [t for t in steps if isinstance(t, RandAugment)]
    assert len(ra) == 1 and [op.name for op in ra[0].ops] == cfg.aa_ops
    assert (ra[0].num_layers, ra[0].ops[0].magnitude, ra[0].ops[0].hparams["magnitude_std"]) == (1, 9, 0.4)
    cfg.aa_ops = ["Rotate", "Wobble"]
    with pytest.raises(ConfigError, match="unknown RandAugment op.*Wobble"):
        image_transform(cfg, True, (3, 32, 32), cfg.mean, cfg.std)
