"""Energy, synaptic operations and firing rates of a spiking transformer.

    python -m tools.energy --model spikingformer_8_512 --fake                 # architecture + random input
    python -m tools.energy --model qkformer_10_384 --checkpoint X.pth --data-dir /data/imagenet
    python -m tools.energy -c cifar10/qkformer.yml --checkpoint best.pth --data-dir /data --batches 20
    python -m tools.energy --published docs/benchmarks/energy_published.json   # docs/energy.md's table

Prints a per-layer table (dense operations, MACs, SOPs, energy under each convention: (a) the
papers', (b) spike counts as MACs, (c) memory-aware, and the same network as an ANN) and writes
``energy.json``, ``layers.csv``, ``firing_rates.png`` and ``energy_breakdown.png`` to ``--out``.
The conventions and their constants are stated in engine/energy.py and docs/energy.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from engine.config import Config, ConfigError, load_yaml, make_config  # noqa: E402
from engine.energy import E_AC_PJ, E_MAC_PJ, EnergyMeter, format_report, write_report  # noqa: E402
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


# Published ImageNet energy (224 px, T=4): the papers' mJ and, where printed, their accumulates.
PUBLISHED = {
    "qkformer_10_384": dict(mj=15.13), "qkformer_10_512": dict(mj=21.99), "qkformer_10_768": dict(mj=38.91),
    "spikingformer_8_384": dict(mj=4.69, acs=3.88e9), "spikingformer_8_512": dict(mj=7.46, acs=6.52e9),
    "spikingformer_8_768": dict(mj=13.68, acs=12.54e9),
    "sglformer_8_384": {}, "sglformer_8_512": {}, "sglformer_8_768_star": {},
    "spikformer_8_384": dict(ops=6.82e9), "spikformer_8_512": dict(ops=11.09e9), "spikformer_8_768": dict(ops=22.09e9),
}


def published_row(name: str, summary: dict, published: dict) -> dict:
    """One published model beside the conventions. What the architecture fixes comes from
    `summary` (one 224 px sample; it does not depend on firing rates): the MACs of (a), the dense
    MACs that (b) adds for layers reading spike counts, (c)'s memory traffic and the ANN. What
    depends on the trained weights' firing rates comes from the paper: its accumulates, printed
    (Spikingformer) or implied by its mJ (QKFormer). (b) is a range: the count-fed layers' own
    accumulates, which (b) replaces, are some part of the paper's."""
    layers = summary["layers"]
    macs = summary["macs"]
    count_macs = sum(l["dense"] for l in layers if l["input"] == "counts")
    traffic = sum(summary["memory_aware_parts_mj"][k] for k in ("weights", "inputs", "state"))
    row = {"model": name, "published_mj": published.get("mj"), "published_acs": published.get("acs"),
           "published_ops": published.get("ops"), "macs": macs, "count_input_macs": count_macs,
           "memory_traffic_mj": traffic, "ann_mj": summary["conventions_mj"]["ann"],
           "weights_mj": summary["memory_aware_parts_mj"]["weights"]}
    acs = published.get("acs")
    if acs is None and published.get("mj") is not None:
        acs = (published["mj"] * 1e9 - E_MAC_PJ * macs) / E_AC_PJ      # implied by the paper's mJ
    if acs is not None:
        a = (E_MAC_PJ * macs + E_AC_PJ * acs) * 1e-9
        row.update(acs=acs, papers_mj=a, memory_aware_mj=a + traffic,
                   counts_as_macs_mj=[E_MAC_PJ * (macs + count_macs) * 1e-9, a + E_MAC_PJ * count_macs * 1e-9])
    else:
        row.update(acs=None, papers_mj=None, memory_aware_mj=None,
                   counts_as_macs_mj=[E_MAC_PJ * (macs + count_macs) * 1e-9, None])
    return row


def published_table(out: str | None) -> list[dict]:
    """Every row of PUBLISHED; written to `out` (JSON) and printed as docs/energy.md's table."""
    rows = []
    for name, published in PUBLISHED.items():
        model = models.build(name).eval()
        with torch.no_grad(), EnergyMeter(model) as meter:
            model(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
        rows.append(published_row(name, meter.summary(), published))
        print(f"{name}: done", file=sys.stderr)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"note": "tools.energy --published (224 px, T=4); engine/energy.py "
                                                 "states the conventions and constants", "rows": rows}, indent=2))
    print(markdown_table(rows))
    return rows


def _mj(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model (224 px, T=4) | published | (a) papers: our MACs + its ACs | (b) counts as MACs | "
             "(c) memory-aware | same network as an ANN |", "|---|---|---|---|---|---|"]
    for r in rows:
        published = (f"{r['published_mj']:.2f} mJ" if r["published_mj"] is not None else
                     f"{r['published_ops'] / 1e9:.2f} G OPs" if r["published_ops"] else "–")
        low, high = r["counts_as_macs_mj"]
        b = _mj(r["papers_mj"]) if not r["count_input_macs"] else (
            f"{low:.1f} – {high:.1f}" if high is not None else f"≥ {low:.1f}")
        c = _mj(r["memory_aware_mj"]) if r["memory_aware_mj"] is not None else f"+ {r['memory_traffic_mj']:.1f}"
        lines.append(f"| {r['model']} | {published} | {_mj(r['papers_mj'])} | {b} | {c} | {r['ann_mj']:.1f} |")
    return "\n".join(lines)


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
                   help="the headline for layers fed spike counts (residual sums): k ACs per count k "
                        "(convention (a), the papers') or MACs (convention (b)); the report gives every "
                        "convention either way (engine/energy.py)")
    p.add_argument("--out", default="energy_report", help="folder for energy.json, layers.csv, firing_rates.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--published", nargs="?", const="", metavar="JSON",
                   help="the published ImageNet models beside every convention (docs/energy.md's table); "
                        "optionally written to JSON")
    args = p.parse_args(argv)
    try:
        if args.published is not None:
            return {"rows": published_table(args.published or None)}
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
