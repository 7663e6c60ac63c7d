"""Check the raw DVS128 Gesture files and build the frame cache: `python prepare.py --data-dir D --T 16 10`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import prepare_main  # noqa: E402

if __name__ == "__main__":
    prepare_main("dvs128gesture")
