"""Convert a checkpoint (the authors' or ours) into a folder timm and the hub understand.

    python -m tools.convert_checkpoint SRC.pth --variant NAME [--config YAML] --out DIR [--verify --data-dir D]

writes DIR/model.safetensors (weights only), DIR/config.json (timm's pretrained_cfg layout plus
the model arguments the weights need) and DIR/README.md (model card). The source is read with
``weights_only=True`` and must fit the variant exactly. ``--verify`` evaluates DIR with the
engine's tester and records the measured top-1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from engine.config import Config, ConfigError, load_yaml, make_config  # noqa: E402
from engine.errors import user_errors  # noqa: E402
from engine.factories import build_model  # noqa: E402
from engine.recipe import resolve  # noqa: E402
from models import pretrained  # noqa: E402
from models.checkpoint import extract_state_dict, fit_state_dict, safe_load  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Convert a checkpoint to model.safetensors + config.json + model card.")
    p.add_argument("source", help="checkpoint file (.pth / .pth.tar, any of the original layouts)")
    p.add_argument("--variant", required=True, help="model name from models.VARIANTS, e.g. spikingformer_8_768")
    p.add_argument("--config", default=None, help="YAML the weights were trained with (T, num_classes, fix_tb_merge ...); "
                   "default: the recipe listed for released weights")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--use-ema", action="store_true", help="convert the EMA weights of the checkpoint")
    p.add_argument("--sha256", default=None, help="expected sha256 of the source file (checked before reading)")
    p.add_argument("--verify", action="store_true", help="evaluate the converted weights and record the top-1")
    p.add_argument("--data-dir", default=None, help="dataset folder for --verify")
    return p.parse_args(argv)


def training_config(args) -> Config:
    """The Config describing the weights: the YAML's, with the variant from the command line, its
    architecture from the variant table where the YAML leaves it open."""
    values = load_yaml(args.config) if args.config else {}
    entry = pretrained.RELEASED.get(args.variant, {})
    if "dataset" not in values and entry:
        values["dataset"] = entry["dataset"]
    cli = {"model": args.variant, "data_dir": args.data_dir}
    return resolve(make_config(values, cli))[0]


def build_for(cfg: Config, sd: dict) -> torch.nn.Module:
    num_classes = cfg.num_classes
    if num_classes is None and "head.weight" in sd:
        num_classes = sd["head.weight"].shape[0]  # the head says how many classes it was trained on
    return build_model(cfg, num_classes)


def write_folder(out: Path, model, sd: dict, cfg: Config, source: Path, source_sha: str) -> dict:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    weights = out / pretrained.WEIGHTS_NAME
    save_file({k: v.contiguous() for k, v in sd.items()}, str(weights), metadata={"format": "pt"})
    entry = pretrained.RELEASED.get(cfg.model, {})
    pcfg = model.pretrained_cfg
    model_args = dict(T=model.T, num_classes=model.num_classes, fix_tb_merge=cfg.fix_tb_merge,
                      **{k: getattr(cfg, k) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "img_size")
                         if getattr(cfg, k) is not None})
    config = {
        "architecture": cfg.model,
        "num_classes": model.num_classes,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": list(pcfg["input_size"][:1]) + [cfg.img_size or pcfg["input_size"][-1]] * 2,
            "mean": list(pcfg["mean"]), "std": list(pcfg["std"]), "interpolation": pcfg["interpolation"],
            "crop_pct": cfg.eval_crop_pct(cfg.img_size or pcfg["input_size"][-1]), "classifier": "head",
            "num_classes": model.num_classes, "T": model.T, "fix_tb_merge": cfg.fix_tb_merge,
            "dataset": cfg.dataset, "source_file": source.name, "source_sha256": source_sha,
            "sha256": pretrained.sha256_of(weights), "expected_top1": entry.get("top1"),
            "paper": entry.get("paper"),
        },
        # read by test.py, like the config our own checkpoints carry
        "train_config": {"model": cfg.model, "dataset": cfg.dataset, **model_args},
    }
    (out / pretrained.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return config


def model_card(config: dict, args) -> str:
    p = config["pretrained_cfg"]
    family = config["architecture"].split("_")[0]
    folder = {"imagenet": "imagenet", "cifar10": "cifar10", "cifar100": "cifar100"}.get(p["dataset"], p["dataset"])
    cfg_arg = f" -c {Path(args.config).name}" if args.config else ""
    measured = p.get("measured_top1")
    lines = [
        f"# {config['architecture']} ({p['dataset']})", "",
        f"Spiking vision transformer, {family} family" + (f": {p['paper']}." if p.get("paper") else "."), "",
        "| | |", "|---|---|",
        f"| source file | `{p['source_file']}` |",
        f"| source sha256 | `{p['source_sha256']}` |",
        f"| model.safetensors sha256 | `{p['sha256']}` |",
        f"| T, input, classes | {p['T']}, {p['input_size'][-1]}px, {p['num_classes']} |",
        f"| fix_tb_merge (as trained) | {p['fix_tb_merge']} |",
        f"| expected top-1 | {p['expected_top1'] if p['expected_top1'] is not None else 'not published'} |",
        f"| measured top-1 | {f'{measured:.2f}' if measured is not None else 'not measured (convert with --verify)'} |",
        "", "Reproduce:", "", "```",
        f"cd {folder} && python test.py{cfg_arg} --checkpoint {Path(args.out).resolve()} --data-dir DATA", "```", "",
        "Load with timm: `timm.create_model('" + config["architecture"] + "', pretrained=True, "
        "pretrained_cfg_overlay=dict(file='THIS_FOLDER'))` after `import models`.", "",
    ]
    return "\n".join(lines)


def convert(args) -> dict:
    source = Path(args.source)
    if args.variant not in models.VARIANTS:
        raise ConfigError(f"unknown variant {args.variant!r}; choose one of {', '.join(models.VARIANTS)}")
    if not args.config and args.variant in pretrained.RELEASED:
        args.config = str(ROOT / pretrained.RELEASED[args.variant]["config"])  # the recipe the weights come from
    source_sha = pretrained.check_sha256(source, args.sha256) if source.is_file() else None
    checkpoint = safe_load(source)
    sd = extract_state_dict(checkpoint, use_ema=args.use_ema)
    cfg = training_config(args)
    model = build_for(cfg, sd)
    model.load_state_dict(fit_state_dict(model, sd), strict=True)
    out = Path(args.out)
    config = write_folder(out, model, model.state_dict(), cfg, source, source_sha)
    if args.verify:
        if not args.data_dir:
            raise ConfigError("--verify needs --data-dir (the dataset folder to evaluate on)")
        from engine.tester import test
        result = test(cfg, str(out))[0]
        config["pretrained_cfg"]["measured_top1"] = result["top1"]
        (out / pretrained.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (out / "README.md").write_text(model_card(config, args))
    print(f"wrote {out}/{{{pretrained.WEIGHTS_NAME}, {pretrained.CONFIG_NAME}, README.md}}")
    return config


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert(args)
    except user_errors() as exc:  # CheckpointError, ConfigError, DataError (--verify) ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
