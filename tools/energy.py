"""Energy, synaptic operations and firing rates of a spiking transformer.

    python -m tools.energy --model spikingformer_8_512 --fake                 # architecture + random input
    python -m tools.energy --model qkformer_10_384 --checkpoint X.pth --data-dir /data/imagenet
    python -m tools.energy -c cifar10/qkformer.yml --checkpoint best.pth --data-dir /data --batches 20

Prints a per-layer table (dense operations, MACs, SOPs, energy) and writes ``energy.json``,
``layers.csv`` and ``firing_rates.png`` to ``--out``. The counting convention is described in
engine/energy.py and the README ("Energy and firing rates").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from engine.config import Config, ConfigError, load_yaml, make_config  # noqa: E402
from engine.energy import EnergyMeter, format_report, write_report  # noqa: E402
from engine.errors import user_errors  # noqa: E402
from engine.factories import build_model, num_classes, validation_loader  # noqa: E402
from engine.recipe import resolve  # noqa: E402


def fake_batches(model, batch_size: int, batches: int, seed: int, event_rate: float):
    """Random inputs: N(0, 1) images (normalised pixel space) or Bernoulli event frames."""
    g = torch.Generator().manual_seed(seed)
    size = model.img_size or model.pretrained_cfg["input_size"][-1]
    for _ in range(batches):
        if model.input_kind == "events":
            yield (torch.rand(batch_size, model.T, 2, size, size, generator=g) < event_rate).float()
        else:
            yield torch.randn(batch_size, 3, size, size, generator=g)


def data_batches(cfg: Config, model, batch_size: int, batches: int):
    cfg.val_batch_size = batch_size
    for i, (images, _) in enumerate(validation_loader(cfg, model)):
        if i >= batches:
            break
        yield images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", help="a training YAML (model and dataset come from it)")
    p.add_argument("--model", help="a registered variant (overrides the config's)")
    p.add_argument("--checkpoint", help="weights to measure (ours or the originals'); random init if absent")
    p.add_argument("--data-dir", help="measure on the validation split of this dataset")
    p.add_argument("--dataset", help="dataset name (with --data-dir and no config)")
    p.add_argument("--fake", action="store_true", help="random input instead of data (see --event-rate)")
    p.add_argument("--event-rate", type=float, default=0.1, help="fraction of active pixels in fake event frames")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--T", type=int, help="time steps (default: the variant's)")
    p.add_argument("--img-size", type=int, help="input size (default: the variant's)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--integer-inputs", choices=("ac", "mac"), default="ac",
                   help="layers fed spike counts > 1 (residual sums): k ACs per count k (QKFormer's "
                        "appendix; Spikformer's appendix G option 1) or MACs (option 2, the Spikingformer "
                        "paper's reading of Spikformer); the report gives the other too")
    p.add_argument("--out", default="energy_report", help="folder for energy.json, layers.csv, firing_rates.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        return run(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(args) -> dict:
    values = load_yaml(args.config) if args.config else {}
    overrides = {k: v for k, v in dict(model=args.model, data_dir=args.data_dir, dataset=args.dataset, T=args.T,
                                        img_size=args.img_size, num_classes=args.num_classes).items() if v is not None}
    cfg = make_config(values, overrides)
    if args.checkpoint:
        from engine.tester import config_for_checkpoint
        cfg = config_for_checkpoint(cfg, models.safe_load(args.checkpoint), set(overrides))
    if not args.fake and not args.data_dir:
        raise ConfigError("give --data-dir (measured firing rates) or --fake (random input)")
    cfg, sources = resolve(cfg)
    if sources.get("num_classes", "").startswith("dataset") and not (args.config or args.dataset or args.data_dir):
        cfg.num_classes = None  # --model alone names no dataset: the variant's own head
    model = build_model(cfg, num_classes(cfg) if cfg.num_classes or args.data_dir else None)
    if args.checkpoint:
        models.load_checkpoint(model, args.checkpoint)
    model.eval()
    torch.manual_seed(args.seed)
    batches = (fake_batches(model, args.batch_size, args.batches, args.seed, args.event_rate) if args.fake
               else data_batches(cfg, model, args.batch_size, args.batches))
    with torch.no_grad(), EnergyMeter(model, args.integer_inputs) as meter:
        for x in batches:
            model(x)
    summary = meter.summary()
    summary.update(model=cfg.model, T=model.T, input="fake" if args.fake else cfg.dataset,
                   checkpoint=args.checkpoint, integer_inputs=args.integer_inputs)
    print(format_report(summary))
    paths = write_report(summary, args.out, f"{cfg.model}, T={model.T}, {summary['input']} input")
    print(f"written: {', '.join(str(p) for p in paths)}")
    return summary


if __name__ == "__main__":
    main()
