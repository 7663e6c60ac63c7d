"""Plot a run's per-update TensorBoard scalars (``step/*``) into one PNG.

    python -m tools.plot_telemetry output/fake-qkformer_cifar_4_384 --out docs/telemetry_smoke.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = ("loss", "lr", "grad_norm", "img_per_s", "data_time_share", "firing_rate", "loss_scale")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (holds tensorboard/)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder = Path(args.run_dir) / "tensorboard"
    if not folder.is_dir():
        sys.exit(f"error: {folder} not found; give a run folder trained with tensorboard on")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    tags = [t for t in PANELS if f"step/{t}" in events.Tags()["scalars"]]
    if not tags:
        sys.exit(f"error: {folder} has no step/* scalars; train with this version of the engine")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 3
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        points = events.Scalars(f"step/{tag}")
        ax.plot([p.step / 1000 for p in points], [p.value for p in points], lw=1,
                marker="o" if len(points) < 20 else None)  # sparse series (firing rate) as points
        ax.set_title(tag.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.suptitle(f"per-update telemetry: {Path(args.run_dir).name}")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
