"""The LIF neuron: dynamics, surrogate gradient, backend selection, state handling."""
import pytest
import torch

import models
from models import neuron
from conftest import requires_cuda


class _Spike(torch.autograd.Function):
    """Heaviside forward, sigmoid(alpha=4) surrogate backward, written out independently."""

    @staticmethod
    def forward(ctx, h_minus_threshold):
        ctx.save_for_backward(h_minus_threshold)
        return (h_minus_threshold >= 0).to(h_minus_threshold.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(4.0 * x)
        return grad * 4.0 * s * (1 - s)


def reference_lif(x, tau, v_th):
    """H_t = V_{t-1} + (X_t - V_{t-1}) / tau; S_t = [H_t >= v_th]; V_t = H_t (1 - S_t), reset detached."""
    v = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = _Spike.apply(h - v_th)
        v = h * (1 - s.detach())
        spikes.append(s)
    return torch.stack(spikes)


@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (2.0, 0.5), (1.5, 1.0)])
def test_lif_matches_independent_reference(tau, v_th):
    torch.manual_seed(0)
    x = (torch.randn(6, 3, 17, dtype=torch.float64) * 1.5 + 0.4)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    node = neuron.LIF(tau=tau, v_threshold=v_th, backend="torch")
    s1, s2 = node(x1), reference_lif(x2, tau, v_th)
    assert torch.equal(s1, s2)
    assert 0.05 < s1.mean() < 0.6  # the input actually makes the neuron fire
    g = torch.randn_like(s1)
    (s1 * g).sum().backward()
    (s2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_lif_is_spikingjelly_multistep_node_with_original_settings():
    from spikingjelly.clock_driven.neuron import MultiStepLIFNode
    from spikingjelly.clock_driven.surrogate import Sigmoid
    node = neuron.lif(v_threshold=0.5)
    assert isinstance(node, MultiStepLIFNode)
    assert (node.tau, node.v_threshold, node.v_reset, node.detach_reset) == (2.0, 0.5, 0.0, True)
    assert isinstance(node.surrogate_function, Sigmoid) and node.surrogate_function.alpha == 4.0


def test_state_is_not_in_state_dict_and_reset_clears_it():
    model = models.build("qkformer_cifar_4_384", embed_dim=32, depth=3, num_classes=3, T=2)
    keys = list(model.state_dict())
    model.eval()
    model(torch.randn(2, 3, 16, 16))
    lifs = [m for m in model.modules() if isinstance(m, neuron.LIF)]
    assert all(isinstance(m.v, torch.Tensor) for m in lifs)  # state exists after a forward ...
    assert list(model.state_dict()) == keys                  # ... but is never saved
    models.reset_net(model)
    assert all(m.v == 0.0 and not isinstance(m.v, torch.Tensor) for m in lifs)


def test_forward_resets_state_so_repeated_calls_agree():
    model = models.build("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, num_classes=3, T=3).eval()
    x = torch.randn(2, 3, 16, 16)
    first = model(x)
    assert torch.equal(model(x), first)  # no membrane potential carried over from the first call


def test_default_backend_is_auto_and_resolves_to_fused_on_cpu():
    node = neuron.lif()
    assert node.requested_backend == "auto"
    node(torch.rand(2, 4))
    assert node.implementation == "fused"
    reference = neuron.LIF(backend="torch")
    reference(torch.rand(2, 4))
    assert reference.implementation == "torch"


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("SNN_LIF_BACKEND", "torch")
    model = models.build("qkformer_cifar10dvs_2_256")
    assert {m.requested_backend for m in model.modules() if isinstance(m, neuron.LIF)} == {"torch"}
    monkeypatch.setenv("SNN_LIF_BACKEND", "gpu")
    with pytest.raises(ValueError, match="unknown LIF backend 'gpu'"):
        neuron.lif()


def test_set_backend_and_model_argument():
    model = models.build("qkformer_cifar10dvs_2_256", backend="torch")
    lifs = [m for m in model.modules() if isinstance(m, neuron.LIF)]
    assert len(lifs) == 21 and {m.requested_backend for m in lifs} == {"torch"}
    models.set_backend(model, "auto")
    assert {m.requested_backend for m in lifs} == {"auto"}
    with pytest.raises(ValueError, match="backend must be one of auto, torch, fused, cupy"):
        models.set_backend(model, "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_forcing_cupy_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="'cupy' needs a CUDA GPU"):
        models.build("qkformer_cifar10dvs_2_256", backend="cupy")
    node = neuron.lif()
    node.requested_backend = "cupy"  # e.g. set on a GPU machine, then run on CPU tensors
    with pytest.raises(RuntimeError, match="got a tensor on cpu"):
        node(torch.rand(2, 3))


def test_cupy_unavailable_reason_names_the_fix():
    reason = neuron.cupy_unavailable_reason()
    if reason is not None:
        assert "requirements-gpu.txt" in reason or "spikingjelly" in reason


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qkformer_cifar_4_384", "spikingformer_cifar_4_384", "sglformer_cifar_4_384"])
def test_gpu_backends_match_torch_backend(name):
    """On CUDA: the fused node equals spikingjelly's loop exactly; cupy (if installed) closely."""
    torch.manual_seed(0)
    model = models.build(name, T=2).cuda().train()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    backends = ["torch", "fused"] + ([] if neuron.cupy_unavailable_reason() else ["cupy"])
    outs = {}
    for backend in backends:
        models.set_backend(model, backend)
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        outs[backend] = (y.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.equal(outs["fused"][0], outs["torch"][0])
    for backend in backends[1:]:
        torch.testing.assert_close(outs[backend][0], outs["torch"][0], rtol=1e-5, atol=1e-5)
        for a, b in zip(outs[backend][1], outs["torch"][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_explicit_backend_beats_the_environment(monkeypatch):
    monkeypatch.setenv("SNN_LIF_BACKEND", "cupy")
    model = models.build("qkformer_cifar_4_384", embed_dim=32, depth=3, T=1, backend="torch")
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {"torch"}
    monkeypatch.setenv("SNN_LIF_BACKEND", "fused")
    model = models.build("qkformer_cifar_4_384", embed_dim=32, depth=3, T=1)
    assert {m.requested_backend for m in model.modules() if isinstance(m, models.LIF)} == {"fused"}
