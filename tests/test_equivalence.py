"""Numerical equality with the original implementations, bit for bit.

``tests/data/optrace/<config>.json.xz`` holds, for each tiny config of ``reference.TINY`` (one per
original model file, ``reference.ORIGINAL_FILE``), the aten operations that the ORIGINAL model
code issued in ``reference.run_case``: eval and train mode, float32 and float64, forward and
backward (generation: docs/developer.md). Replaying a trace (``optrace.replay``) computes
the original program's logits, parameter gradients and batch-norm buffers with THIS machine's
kernels, so our models must match it exactly on any CPU: the same bits for all of them.

``tests/data/reference/<config>.pt`` holds tensors the original code produced on the CPU that
recorded the traces (an AMD EPYC). They cross-check that a replay is the original program: equal
there, and within rounding elsewhere (logits 1e-5 relative; gradients 1e-5 in float64 and 1e-4
in float32, since other CPUs' conv/matmul kernels round differently; conv biases that feed a
batch norm have a true train-mode gradient of 0 and are compared as noise).
"""
import contextlib
import functools

import pytest
import torch

import models
import optrace
from models.checkpoint import to_original
from conftest import DATA
from reference import ORIGINAL_FILE, TINY, make_input, run_case

TRACES = DATA / "optrace"
REFERENCE = DATA / "reference"
RUNS = ("eval_float32", "eval_float64", "train_float32", "train_float64")
RTOL = 1e-5
RTOL_GRAD32 = 1e-4


@functools.lru_cache(maxsize=None)
def _trace(config: str) -> dict:
    return optrace.load(TRACES / f"{config}.json.xz")


def _ours(model, x, key: str) -> tuple[dict, dict]:
    """Our model through ``run_case``, and the leaves (weights, buffers, input) it started from."""
    mode, dtype_name = key.split("_")
    leaves = {}

    @contextlib.contextmanager
    def capture(m, prepared_x):
        # (the original's state dict: with the LayerNorms it defines and never calls)
        leaves.update({k: v.detach().clone() for k, v in to_original(m).items()})
        leaves["input"] = prepared_x.detach().clone()
        yield

    got = run_case(model, x, mode, getattr(torch, dtype_name), models.reset_net, wrap=capture)
    got["buffers"] = {n: b.detach().clone() for n, b in model.named_buffers()}
    return got, leaves


_REPLAYED: dict[tuple[str, str], dict] = {}


def _run(config: str, model, x, key: str) -> tuple[dict, dict]:
    """Ours, and the original replayed on the same weights and input (the seeded leaves do not
    depend on our model's options, so one replay per config and run serves every test)."""
    got, leaves = _ours(model, x, key)
    if (config, key) not in _REPLAYED:
        _REPLAYED[config, key] = optrace.replay(_trace(config)[key], leaves)
    return got, _REPLAYED[config, key]


def _build(config: str, **overrides):
    cls, kwargs, shape, kind = TINY[config]
    return getattr(models, cls)(**{**kwargs, **overrides}), make_input(shape, kind)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bit pattern (so -0.0 differs from 0.0, unlike ``torch.equal``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        as_int = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                  torch.bfloat16: torch.int16}[a.dtype]
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)


def _differences(got: dict, expected: dict) -> list[str]:
    """Names of the tensors whose bits differ."""
    bad = [] if _same_bits(got["logits"], expected["logits"]) else ["logits"]
    if got["grads"].keys() != expected["grads"].keys():
        return bad + ["the set of parameters with gradients"]
    bad += [f"grad {n}" for n, g in expected["grads"].items() if not _same_bits(got["grads"][n], g)]
    bad += [f"buffer {n}" for n, b in expected["buffers"].items() if not _same_bits(got["buffers"][n], b)]
    return bad


@pytest.mark.parametrize("backend", ["torch", "fused"])
@pytest.mark.parametrize("config", sorted(TINY))
def test_bit_identical_to_replayed_original(config, backend):
    """Logits, every parameter gradient and every buffer, both CPU neuron implementations."""
    model, x = _build(config, backend=backend)
    for key in RUNS:
        got, expected = _run(config, model, x, key)
        assert got["logits"].dtype == getattr(torch, key.split("_")[1])
        assert len(expected["grads"]) > 0 and len(expected["buffers"]) > 0
        bad = _differences(got, expected)
        assert not bad, f"{config} ({ORIGINAL_FILE[config]}) {key}: not bit-identical: {', '.join(bad[:8])}"


@pytest.mark.parametrize("config", ["qkformer_imagenet", "spikingformer_cifar100", "sglformer_cifar100",
                                    "spikformer_cifar", "spikformer_dvs"])
def test_fast_attention_order_keeps_the_forward_exact(config):
    """``attention_order="fast"``: the same logits and gradients within rounding, but not the same
    gradient bits, which the test above would catch (so it does check the association order)."""
    model, x = _build(config, attention_order="fast", backend="fused")
    changed = []
    for key in RUNS:
        got, expected = _run(config, model, x, key)
        assert _same_bits(got["logits"], expected["logits"]), key
        scale = max(v.abs().max().item() for v in expected["grads"].values())
        for n, g in expected["grads"].items():
            assert (got["grads"][n] - g).abs().max().item() <= 1e-5 * scale, f"{key} grad {n}"
        if _differences(got, expected):
            changed.append(key.split("_")[1])
    assert {"float32", "float64"} <= set(changed), changed


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    return ((a - b).abs().max() / max(b.abs().max().item(), floor, 1e-30)).item()


@pytest.mark.parametrize("config", sorted(p.stem for p in REFERENCE.glob("*.pt")))
def test_replay_agrees_with_tensors_stored_from_the_original(config):
    """The cross-check: a replay reproduces what the original code computed where it ran."""
    stored = torch.load(REFERENCE / f"{config}.pt", weights_only=True)
    model, x = _build(config)
    checked = []
    for key, ref in stored.items():
        if key == "meta":
            continue
        dtype = getattr(torch, key.split("_")[1])
        _, replayed = _run(config, model, x, key)
        assert _rel(replayed["logits"], ref["logits"]) <= RTOL, f"{key} logits"
        if "grads" not in ref:
            continue
        assert replayed["grads"].keys() == ref["grads"].keys(), key
        largest = max(g.abs().max().item() for g in ref["grads"].values())
        for name, g in ref["grads"].items():
            if key.startswith("train") and name.endswith("conv.bias"):
                noise = max(g.abs().max().item(), replayed["grads"][name].abs().max().item())
                assert noise <= (1e-4 if dtype == torch.float32 else 1e-10) * largest, f"{key} {name} should be ~0"
                continue
            floor = largest * (1e-4 if dtype == torch.float32 else 1e-8)
            assert _rel(replayed["grads"][name], g, floor) <= (RTOL_GRAD32 if dtype == torch.float32 else RTOL), \
                f"{key} grad {name}"
        checked.append(key)
    assert sorted(checked) == ["eval_float64", "train_float32", "train_float64"]


def test_every_config_has_a_trace_of_its_original_file():
    assert sorted(p.name.removesuffix(".json.xz") for p in TRACES.glob("*.json.xz")) == sorted(TINY)
    assert sorted(ORIGINAL_FILE) == sorted(TINY) and len(set(ORIGINAL_FILE.values())) == len(TINY)
    for config in TINY:
        trace = _trace(config)
        assert trace["meta"]["original"] == ORIGINAL_FILE[config]
        assert sorted(k for k in trace if k != "meta") == sorted(RUNS)
        # only the loss projection's random draw is stored by value; everything else is replayed
        assert all(trace[k]["by_value"] == ["aten.randn.generator"] for k in RUNS), config


def test_replayed_originals_are_not_degenerate():
    """The cases must exercise the network: logits that differ between samples, most gradients non-zero."""
    for config in TINY:
        model, x = _build(config)
        _, replayed = _run(config, model, x, "train_float32")
        logits = replayed["logits"]
        assert logits.abs().max() > 0.1 and not torch.allclose(logits[0], logits[1]), config
        zero = [n for n, g in replayed["grads"].items() if not g.any()]
        assert len(zero) <= len(replayed["grads"]) // 4, (config, zero)
