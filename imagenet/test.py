"""Evaluate on ImageNet val: `python test.py -c qkformer_10_768.yml --checkpoint X.pth [--img-size 384]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import test_main  # noqa: E402

if __name__ == "__main__":
    test_main(__file__, "qkformer_10_384.yml", "Evaluate a checkpoint on ImageNet-1k val at any resolution (224, 288, 384).")
