"""Image transforms through timm, with the originals' settings taken from the config."""
from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform

from ..errors import ConfigError


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize op as the originals ran it on Pillow < 11.

    RandAugment with "inc1" maps magnitude 10 to 0 bits kept. Pillow used to turn that into a
    black image; Pillow >= 11 raises ValueError instead, which crashes a data-loader worker in the
    middle of training (about 0.6% of op draws with rand-m9-mstd0.4). Zero bits -> black again.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = _posterize


def image_transform(cfg, train: bool, input_size, mean, std):
    """timm's train (crop/flip/RandAugment/erasing) or eval (resize + center crop) transform."""
    if not train:
        return create_transform(input_size, is_training=False, interpolation=cfg.interpolation,
                                mean=mean, std=std, crop_pct=cfg.eval_crop_pct(input_size[-1]))
    transform = create_transform(
        input_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=mean, std=std, re_prob=cfg.reprob,
        re_mode=cfg.remode, re_count=cfg.recount)
    if cfg.aa_ops:
        _restrict_rand_augment(transform, cfg.aa, cfg.aa_ops)
    return transform


def _restrict_rand_augment(transform, aa: str | None, ops: list[str]) -> None:
    """Rebuild the RandAugment inside timm's train `transform` to draw only from `ops` (Spikformer's
    CIFAR script ships such a copy of timm's RandAugment), with the hyper-parameters timm chose."""
    unknown = [op for op in ops if op not in auto_augment.NAME_TO_OP]
    if unknown:
        raise ConfigError(f"aa_ops: unknown RandAugment op(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(sorted(auto_augment.NAME_TO_OP))}")
    steps = transform.transforms
    found = [i for i, t in enumerate(steps) if isinstance(t, auto_augment.RandAugment)]
    if not aa or not aa.startswith("rand") or not found:
        raise ConfigError(f"aa_ops needs a RandAugment string in aa (e.g. rand-m9-n1-mstd0.4-inc1), not {aa!r}")
    hparams = dict(steps[found[0]].ops[0].hparams)
    steps[found[0]] = auto_augment.rand_augment_transform(aa, hparams, transforms=list(ops))
