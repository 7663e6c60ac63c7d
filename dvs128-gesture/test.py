"""Evaluate a checkpoint on DVS128 Gesture: `python test.py --checkpoint best.pth [-c CONFIG.yml]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import test_main  # noqa: E402

if __name__ == "__main__":
    test_main(__file__, "qkformer.yml", "Evaluate a checkpoint on DVS128 Gesture: accuracy and firing rates.")
