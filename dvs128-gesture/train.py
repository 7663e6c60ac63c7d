"""Train on DVS128 Gesture: `python train.py [-c spikingformer.yml] [--T 10] [--key value ...]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main(__file__, "qkformer.yml", "Train a spiking transformer on DVS128 Gesture.")
