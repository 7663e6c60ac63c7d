"""A training step makes no host syncs, and on the Triton path few kernel launches (issue: GPU-first step).

Counted with tools/op_census.py, a TorchDispatchMode that sees every aten operator: on the CPU
it finds the same operators a GPU step would run, so these tests prove on the CPU what the step
asks of a GPU. A sync operator (``item``, ``equal``, ``nonzero``...) in forward, backward or the
neuron reset would stall the host once per call on a GPU and make the step impossible to capture
in a CUDA graph.
"""
from __future__ import annotations

import types

import pytest
import torch

import models
from engine.optim import build_optimizer
from engine.telemetry import Telemetry
from engine.train_loop import SYNCS_PER_UPDATE, Precision, train_one_epoch
from models import reset_net
from reference import TINY, fill_weights
from tools.op_census import OpCensus

FAMILY_CONFIGS = ["qkformer_cifar", "spikingformer_cifar", "sglformer_cifar", "spikformer_cifar"]


def build(name, **kwargs):
    cls, kw, shape, kind = TINY[name]
    model = getattr(models, cls)(**kw, **kwargs)
    fill_weights(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) if kind == "image" else (torch.rand(*shape, generator=g) < 0.3).float()
    return model.train(), x


def census_of_step(model, x, autocast=None) -> OpCensus:
    """Forward, loss, backward and neuron reset of one micro-batch, counted."""
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with OpCensus() as census:
        with ctx:
            out = model(x)
        out.float().square().sum().backward()
        reset_net(model)
    return census


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("mode", ["compact", "standard"])
def test_forward_backward_reset_make_no_host_sync(name, mode):
    census = census_of_step(*build(name, backend="fused", activation_memory=mode))
    assert census.syncs == 0, dict(census.sync_ops)
    assert census.launches > 100                 # the counter does see the step


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_no_host_sync_under_autocast_and_with_spikingjellys_loop(name, dtype):
    census = census_of_step(*build(name, backend="fused"), autocast=dtype)
    assert census.syncs == 0, dict(census.sync_ops)
    census = census_of_step(*build(name, backend="torch"))
    assert census.syncs == 0, dict(census.sync_ops)


def test_census_sees_syncs_and_leaves_out_views():
    x = torch.randn(64, 64)
    with OpCensus() as census:
        x.view(-1).t()
        (x > 0).nonzero()
        x.sum().item()
        torch.equal(x, x)
        x[0].tolist()                # bypasses the dispatcher: seen as a tensor method
    assert dict(census.sync_ops) == {"nonzero": 1, "_local_scalar_dense": 1, "equal": 1, "tolist": 1}
    assert "view" not in census.launch_ops and "t" not in census.launch_ops and census.launch_ops["gt"] == 1


# Kernel launches per training step (forward + backward + reset) on the Triton path, default
# compact memory over standard storage, after a first step (which checks each batch norm's
# formula once, models/bn_lif.py). Measured on the tiny configs through Triton's interpreter
# (each Triton kernel is one custom operator, i.e. one launch): QKFormer 1.11x, Spikingformer
# 1.08x, SGLFormer 1.19x, Spikformer 1.06x (CIFAR) and 1.12x (ImageNet); 4 of QKFormer's and
# SGLFormer's extra operators are CPU-only (the max-pool's channels_last copies in the two replayed
# BN -> pool -> LIF tails). The target is 1.10x; what is left is one unpack per saved spike or count
# tensor (README Performance). Spikformer's CIFAR blocks normalise tokens [T*B, N, C] over the last
# axis, a layout the fused BN -> LIF node does not take: their tails replay the batch norm instead.
LAUNCH_RATIO_CEILING = {"qkformer_cifar": 1.11, "spikingformer_cifar": 1.08, "sglformer_cifar": 1.19,
                        "spikformer_cifar": 1.07, "spikformer_imagenet": 1.13}
REPLAYED_BATCH_NORMS = {"spikformer_cifar": 12}     # else: at most the two BN -> pool -> LIF tails


@pytest.mark.parametrize("name", FAMILY_CONFIGS + ["spikformer_imagenet"])
def test_triton_path_launch_budget(name, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    counts = {}
    for mode in ("standard", "compact"):
        model, x = build(name, backend="triton", activation_memory=mode)
        first = census_of_step(model, x)
        assert first.syncs == (0 if mode == "standard" else first.sync_ops["equal"]), dict(first.sync_ops)
        census = census_of_step(model, x)
        assert census.syncs == 0, dict(census.sync_ops)
        counts[mode], norms = census.launches, census.launch_ops["native_batch_norm"]
        counts[mode + " batch norms"] = norms
    ratio = counts["compact"] / counts["standard"]
    assert ratio <= LAUNCH_RATIO_CEILING[name], counts
    # spikes packed by the neuron kernel itself, batch norm not replayed where a formula matched
    assert not {"__rshift__", "index_select"} & set(census.launch_ops), census.top()
    # only the tails with a max-pool between batch norm and neuron (two per model here) replay it
    assert counts["compact batch norms"] - counts["standard batch norms"] <= REPLAYED_BATCH_NORMS.get(name, 2)


def run_epoch(name, steps: int, accum: int, telemetry: bool, clip: float | None):
    model, x = build(name, backend="fused")
    targets = torch.arange(x.shape[1] if TINY[name][3] == "events" else x.shape[0]) % 5
    loader = [(x, targets)] * steps
    cfg = types.SimpleNamespace(accum_iter=accum, clip_grad=clip, clip_mode="norm", opt="adamw", lr=1e-3,
                                weight_decay=0.05, momentum=0.9, opt_eps=None, opt_betas=None, amp=False,
                                amp_dtype="float16")
    optimizer = build_optimizer(cfg, model)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    log = types.SimpleNamespace(scalars=lambda *a, **k: None)
    tele = Telemetry(log, model, firing_every=1000) if telemetry else None
    with OpCensus() as census:
        train_one_epoch(model, loader, optimizer, torch.nn.CrossEntropyLoss(), precision.scaler(), precision,
                        epoch=0, cfg=cfg, telemetry=tele)
    return census


@pytest.mark.parametrize("accum,telemetry,clip", [(1, False, None), (2, True, 1.0)])
def test_training_epoch_syncs_once_per_update(accum, telemetry, clip):
    """The whole loop: micro-batches, clipping, the fused optimizer, telemetry. Per update one
    read of the loss (with gradient norm and loss scale); per epoch one read of the mean loss; the
    firing-rate meter (telemetry) one read when it measures (update 0 here)."""
    steps = 4
    census = run_epoch("qkformer_cifar", steps, accum, telemetry, clip)
    updates = steps // accum
    expected = updates * SYNCS_PER_UPDATE + 1 + (1 if telemetry else 0)
    assert census.syncs == expected, dict(census.sync_ops)
