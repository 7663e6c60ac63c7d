"""Train on ImageNet: `torchrun --nproc_per_node=8 train.py -c qkformer_10_384.yml --data-dir /data/imagenet`.

The older `python -m torch.distributed.launch --nproc_per_node=8 train.py ...` works too, and a
plain `python train.py` runs a single process. See the README for every published recipe.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main(__file__, "qkformer_10_384.yml", "Train a spiking transformer on ImageNet-1k (single process, torchrun or torch.distributed.launch).")
