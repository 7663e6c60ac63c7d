"""Batch norm -> Triton LIF as one autograd node (models/bn_lif.py), run in Triton's interpreter."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from models import bn_lif, memory  # noqa: E402
from models.neuron import LIF  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def tail(shape, dims=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d)(shape[1]).train()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=g) + 0.5)
        norm.bias.copy_(torch.randn(shape[1], generator=g))
    y = (torch.randn(*shape, generator=g) * 2 + 0.3).requires_grad_()
    return norm, LIF(backend="triton"), y


def run(norm, neuron, y, T, fused: bool):
    """Spikes, input/weight/bias gradients and running statistics of norm -> neuron."""
    y = y.detach().clone().requires_grad_()
    grad = torch.randn(T, y.shape[0] // T, *y.shape[1:], generator=torch.Generator().manual_seed(5))
    with memory.SpikePacker():
        if fused:
            assert bn_lif.applies(y, norm, neuron)
            spikes = neuron(y, norm=norm, lif_shape=(T, y.shape[0] // T, *y.shape[1:]))
        else:
            spikes = neuron(norm(y).reshape(T, -1, *y.shape[1:]))
    spikes.backward(grad)
    out = (spikes.detach(), y.grad, norm.weight.grad.clone(), norm.bias.grad.clone(),
           norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone())
    norm.weight.grad = norm.bias.grad = None
    neuron.reset()
    return out


@pytest.mark.parametrize("shape,dims", [((8, 6, 9, 7), 2), ((4, 16, 33), 1)])
def test_one_node_equals_batch_norm_then_neuron(shape, dims):
    norm, neuron, y = tail(shape, dims)
    reference = run(norm, neuron, y, 2, fused=False)
    norm2, _, _ = tail(shape, dims)          # the same parameters and fresh running statistics
    fused = run(norm2, LIF(backend="triton"), y, 2, fused=True)
    for a, b in zip(reference, fused):
        assert torch.equal(a, b)
    key = (y.device, y.dtype, tuple(shape), 0)
    assert bn_lif._verified[key] == 0          # the CPU formula, checked against batch norm's output


def test_without_an_exact_formula_it_keeps_batch_norms_output(monkeypatch):
    """A device whose batch norm none of the formulas reproduces: still the same bits."""
    monkeypatch.setattr(bn_lif, "_formula", lambda *args: None)
    norm, neuron, y = tail((8, 6, 9, 7))
    reference = run(norm, neuron, y, 4, fused=False)
    norm2, _, _ = tail((8, 6, 9, 7))
    for a, b in zip(reference, run(norm2, LIF(backend="triton"), y, 4, fused=True)):
        assert torch.equal(a, b)


def test_firing_rate_hooks_see_the_spikes():
    norm, neuron, y = tail((8, 6, 9, 7))
    seen = []
    neuron.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    spikes = run(norm, neuron, y, 2, fused=True)[0]
    assert len(seen) == 1 and torch.equal(seen[0], spikes)


def test_only_compact_triton_training_forwards_use_it():
    norm, neuron, y = tail((8, 6, 9, 7))
    assert not bn_lif.applies(y, norm, neuron)                  # no compact forward active
    with memory.SpikePacker():
        assert bn_lif.applies(y, norm, neuron)
        assert not bn_lif.applies(y, norm, LIF(backend="fused"))
        assert not bn_lif.applies(y.detach(), norm, neuron)     # nothing to train
        assert not bn_lif.applies(y, norm.eval(), neuron)
