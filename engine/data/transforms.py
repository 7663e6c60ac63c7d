"""Image transforms through timm, with the originals' settings taken from the config."""
from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform


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
    return create_transform(
        input_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=mean, std=std, re_prob=cfg.reprob,
        re_mode=cfg.remode, re_count=cfg.recount)
