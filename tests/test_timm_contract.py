"""timm's own model tests, run over the variants registered here.

The test functions come from ``tests/test_models.py`` of the source distribution of the timm
version installed (the pinned one), fetched from the package index on first use into
``.cache/`` (no copy of timm's code in this repository). Each is called as timm's suite calls
it. What is left out, and why, is listed once in :data:`EXCLUDED`; the slow tests (real forward
and backward passes on the CPU) run on the smallest variant of each family and layout, as timm's
own size limits do, the cheap ones (on the meta device) on every variant.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import timm

import models
from conftest import ROOT

CACHE = ROOT / ".cache" / f"timm-{timm.__version__}-tests"

# Event-frame variants take [B, T, 2, H, W]: timm's tests build [B, C, H, W] from input_size
# and offer no hook for a time axis, so every test that runs a forward pass leaves them out.
EVENT_VARIANTS = sorted(n for n in models.VARIANTS if "dvs" in n or "gesture" in n)
SMALLEST = ["qkformer_10_384", "qkformer_cifar_4_384", "spikingformer_8_384", "spikingformer_cifar_4_256",
            "sglformer_8_384", "sglformer_8_512_star", "sglformer_cifar_4_384", "spikformer_8_384",
            "spikformer_cifar_4_256"]
IMAGE_VARIANTS = sorted(n for n in models.VARIANTS if n not in EVENT_VARIANTS)

#: timm test -> the variants it runs on
CONTRACT = {
    "test_model_default_cfgs": IMAGE_VARIANTS,     # meta device: structure, cfg keys, head and pool resets
    "test_model_forward": SMALLEST,
    "test_model_backward": SMALLEST,
    "test_model_forward_features": SMALLEST,
    "test_model_forward_intermediates_features": SMALLEST,
    "test_model_forward_intermediates": SMALLEST,
}

#: (timm test pattern, variant pattern) -> why it is not run
EXCLUDED = {
    ("test_*", "*dvs*|*gesture*"): "event input is [B, T, 2, H, W]; timm's tests build [B, C, H, W] from "
                                   "input_size and have no hook for a time axis",
    ("test_model_forward_torchscript", "*"): "TorchScript (deprecated in torch 2.14) cannot compile "
                                              "spikingjelly's surrogate gradient, a Python autograd Function",
    ("test_model_forward_fx_torchscript", "*"): "as TorchScript above",
    ("test_model_forward_fx", "*"): "torch.fx traces shapes symbolically; the spiking blocks unpack "
                                    "[T, B, C, H, W] and branch on the input's rank (image or events) at run time",
    ("test_model_backward_fx", "*"): "as test_model_forward_fx",
}


def _fetch() -> Path | None:
    """tests/test_models.py of timm's source distribution for the installed version (cached)."""
    target = CACHE / "test_models.py"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                              ":all:", "--disable-pip-version-check", f"timm=={timm.__version__}", "-d", tmp],
                             capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("timm-*.tar.gz"))
        if got.returncode or not sdists:
            return None
        with tarfile.open(sdists[0]) as tar:
            member = tar.extractfile(f"{sdists[0].name[:-len('.tar.gz')]}/tests/test_models.py")
            CACHE.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())
    return target


@pytest.fixture(scope="module")
def timm_tests():
    path = _fetch()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"could not download timm=={timm.__version__}'s source distribution from the package index")
        pytest.skip(f"timm=={timm.__version__}'s source distribution is not reachable (offline)")
    spec = importlib.util.spec_from_file_location("timm_test_models", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():   # its pytest marks are registered in timm's own configuration
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        spec.loader.exec_module(module)
    return module


def excluded(test: str, variant: str) -> str | None:
    for (test_pattern, variant_patterns), reason in EXCLUDED.items():
        if fnmatch.fnmatch(test, test_pattern) and any(fnmatch.fnmatch(variant, p) for p in variant_patterns.split("|")):
            return reason
    return None


CASES = [(test, name) for test, names in CONTRACT.items() for name in names]
ARGUMENTS = {"test_model_default_cfgs": dict(batch_size=1, cfg_device="meta"), "test_model_backward": dict(batch_size=2)}


@pytest.mark.parametrize("test,variant", CASES, ids=[f"{t[5:]}-{v}" for t, v in CASES])
def test_timm(timm_tests, test, variant):
    assert excluded(test, variant) is None
    getattr(timm_tests, test)(variant, **ARGUMENTS.get(test, dict(batch_size=1)))


def _code_path(name: str) -> tuple:
    cls, defaults, _ = models.VARIANTS[name]
    return cls, defaults["layout"], defaults.get("stem_pool")


def test_every_variant_is_covered_or_excluded_with_a_reason():
    """Each variant runs every test, or shares its family, layout and stem with a variant that
    does (the slow tests run the smallest of each), or is excluded with a reason."""
    covered = {test: {_code_path(n) for n in names} for test, names in CONTRACT.items()}
    for name in models.VARIANTS:
        for test in CONTRACT:
            assert name in CONTRACT[test] or _code_path(name) in covered[test] or excluded(test, name), (test, name)
    assert set(CONTRACT["test_model_default_cfgs"]) == set(IMAGE_VARIANTS)
    assert set(EVENT_VARIANTS) == {n for n in models.VARIANTS if excluded("test_model_forward", n)}
