"""Speed features keep the numerics: fused neurons, gradient checkpointing, the benchmark tool."""
import json

import pytest
import torch

import models
from models.neuron import LIF
from tools import benchmark


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (2.0, 0.5), (1.5, 1.0)])
def test_fused_lif_is_bit_identical_to_spikingjelly(dtype, tau, v_th):
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 37) * 1.5 + 0.4).to(dtype)
    ref, fused = LIF(tau, v_th, "torch"), LIF(tau, v_th, "fused")
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    sr, sf = ref(xr), fused(xf)
    g = torch.randn_like(sr)
    (sr * g).sum().backward()
    (sf * g).sum().backward()
    assert torch.equal(sr, sf) and torch.equal(ref.v, fused.v) and torch.equal(xr.grad, xf.grad)
    assert 0.05 < sr.float().mean() < 0.6
    # a second call continues from the membrane potential left by the first
    assert torch.equal(ref(x.detach() * 0.7), fused(x.detach() * 0.7))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_lif_integrates_low_precision_input_in_float32(dtype):
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 37) * 1.5 + 0.4).to(dtype)
    ref, fused = LIF(backend="torch"), LIF(backend="fused")
    xr, xf = x.float().requires_grad_(), x.clone().requires_grad_()
    sr, sf = ref(xr), fused(xf)
    assert sf.dtype == dtype and torch.equal(sr.to(dtype), sf)
    g = torch.randn_like(sr)
    (sr * g).sum().backward()
    (sf * g.to(dtype)).sum().backward()
    assert xf.grad.dtype == dtype
    torch.testing.assert_close(xr.grad.to(dtype), xf.grad, rtol=1e-2, atol=1e-2)


def small(name):
    kw = dict(embed_dim=24, num_heads=2, T=2) if name.startswith("sgl") else dict(embed_dim=32, T=2)
    if name.startswith("qk"):
        kw.update(depth=3, num_heads=8)
    if name.startswith("spiking"):
        kw.update(num_heads=2)
    return kw


@pytest.mark.parametrize("name", ["qkformer_cifar_4_384", "spikingformer_cifar_2_384", "sglformer_cifar_4_384"])
def test_gradient_checkpointing_changes_nothing_but_memory(name):
    size = 32 if name.startswith("sgl") else 16
    x = torch.randn(2, 3, size, size)
    runs = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        # standard storage: the hooks below count what autograd saves (compact mode packs it itself)
        model = models.build(name, activation_memory="standard", **small(name)).train()
        model.set_grad_checkpointing(ckpt)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = model(x)
        out.square().sum().backward()
        runs.append((out, [p.grad for p in model.parameters() if p.grad is not None],
                     {k: v.clone() for k, v in model.state_dict().items()}, sum(saved)))
    (out_a, grads_a, state_a, saved_a), (out_b, grads_b, state_b, saved_b) = runs
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)   # BN running stats updated once
    assert saved_b < 0.6 * saved_a


def test_benchmark_tool(tmp_path):
    report = benchmark.main(["--model", "qkformer_cifar_4_384", "--embed-dim", "64", "--depth", "3", "--T", "2",
                             "--img-size", "32", "--batch-size", "4", "--repeats", "2", "--warmup", "1",
                             "--setups", "reference", "default", "default+bf16", "default+ckpt", "fused+standard",
                             "--json", str(tmp_path / "b.json")])
    rows = {r["setup"]: r for r in report["results"]}
    assert list(rows) == ["reference", "default", "default+bf16", "default+ckpt", "fused+standard"]
    assert rows["reference"]["settings"]["activation_memory"] == "standard"
    assert rows["default"]["settings"]["activation_memory"] == "compact"
    for name in ("default", "default+ckpt", "fused+standard"):
        assert rows[name]["deviation"] == {"logits": 0.0, "grads": 0.0}, name
    assert rows["default+bf16"]["deviation"]["grads"] > 0
    # what the forward leaves for backward: bits and recomputed tails, then block checkpointing
    assert rows["default"]["saved_mb"] < 0.5 * rows["reference"]["saved_mb"]
    assert rows["default+ckpt"]["saved_mb"] < rows["default"]["saved_mb"]
    assert rows["default"]["peak_mb"] < rows["reference"]["peak_mb"]
    assert all(r["train_img_s"] > 0 and len(r["train_s"]) == 2 for r in rows.values())
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["train_time_vs_reference"] == 1.0


def test_benchmark_setup_names():
    assert benchmark.parse_setup("reference") == \
        dict(benchmark.parse_setup("torch+fp32+standard+nchwpool"), name="reference")
    default = benchmark.parse_setup("default+ckpt")
    assert (default["backend"], default["precision"], default["activation_memory"], default["ckpt"]) == \
        ("auto", "fp32", "compact", True)
    assert benchmark.parse_setup("cupy+fp16+standard")["activation_memory"] == "standard"


def test_benchmark_rejects_unknown_setup():
    with pytest.raises(ValueError, match="unknown setup part 'fp8'"):
        benchmark.parse_setup("fused+fp8")


@pytest.mark.parametrize("kind", ["float", "spikes", "counts"])
@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (4, 8, 15, 17)])
def test_channels_last_cpu_max_pool_gives_the_nchw_results(kind, shape):
    from models.layers import max_pool
    g = torch.Generator().manual_seed(0)
    x = {"float": lambda: torch.randn(*shape, generator=g),
         "spikes": lambda: (torch.rand(*shape, generator=g) < 0.5).float(),       # ties everywhere
         "counts": lambda: torch.randint(0, 3, shape, generator=g).float()}[kind]()
    grad = torch.randn(shape[0], shape[1], (shape[2] + 1) // 2, (shape[3] + 1) // 2, generator=g)
    pool, runs = max_pool(), []
    for channels_last in (False, True):
        pool.channels_last_cpu = channels_last
        xi = x.clone().requires_grad_()
        y = pool(xi)
        y.backward(grad)      # overlapping 3x3/2 windows: gradients accumulate in the same order
        runs.append((y, xi.grad))
    assert runs[1][0].is_contiguous()
    # NCHW, as the plain kernel's: a batch norm before the pool reduces over this gradient
    assert runs[1][1].is_contiguous()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
