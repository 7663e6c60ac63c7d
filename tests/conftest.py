"""Shared test setup: the repository root on sys.path, and the neuron backend pinned to torch."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT / "tests" / "data"

requires_cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # Tests choose backends explicitly; a developer's SNN_LIF_BACKEND must not leak in.
    monkeypatch.delenv("SNN_LIF_BACKEND", raising=False)
