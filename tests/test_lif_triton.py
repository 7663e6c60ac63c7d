"""The Triton LIF backend: its kernels (run by Triton's CPU interpreter) against spikingjelly's loop.

Every test here sets TRITON_INTERPRET=1 (read by models.lif_triton at each launch), except the
ones that check what happens without it. The CUDA code path (reciprocal division, libdevice's
exp) cannot run on a CPU; it is checked by compiling it for a GPU target and reading the PTX, and
its reciprocal arithmetic by the interpreter against a CPU emulation of torch's CUDA kernels.
"""
import os
import re
from unittest import mock

import pytest
import torch

triton = pytest.importorskip("triton")

import models  # noqa: E402
from models import lif_triton, neuron  # noqa: E402
from models.neuron import LIF  # noqa: E402
from conftest import requires_cuda  # noqa: E402
from reference import TINY, make_input, run_case  # noqa: E402
from tools.op_census import OpCensus  # noqa: E402

ALPHA = 4.0


@pytest.fixture(autouse=True)
def interpreter(monkeypatch, request):
    if request.node.get_closest_marker("gpu") is None:   # GPU tests run the compiled kernels
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5 + 0.4).to(dtype), torch.randn(shape, generator=g).to(dtype)


# Neuron shapes (after the time dimension): one neuron, an odd 3-D layout, and several blocks of
# 256 neurons (the test's block size), the last one partly masked.
SHAPES = [(1,), (3, 5, 7), (2, 300)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (2.0, 0.5), (1.5, 1.0), (1.5, 0.5)])
def test_kernels_are_bit_identical_to_spikingjelly(dtype, tau, v_th, monkeypatch):
    monkeypatch.setattr(lif_triton, "BLOCK_INTERP", 256)
    for T in (1, 4, 10, 16):
        for shape in SHAPES:
            x, g = _inputs((T, *shape), dtype, seed=T)
            for v0 in (None, (torch.rand(shape, dtype=dtype) * v_th)):
                ref, tri = LIF(tau, v_th, "torch"), LIF(tau, v_th, "triton")
                if v0 is not None:
                    ref.v, tri.v = v0.clone(), v0.clone()
                xr, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
                sr, st = ref(xr), tri(xt)
                (sr * g).sum().backward()
                (st * g).sum().backward()
                case = f"T={T} shape={shape} v0={v0 is not None}"
                assert tri.implementation == "triton", case
                assert st.dtype == dtype and torch.equal(sr, st), case
                assert torch.equal(ref.v, tri.v), case
                assert torch.equal(xr.grad, xt.grad), case
                # the potentials of every step: spikingjelly's v_seq is h after the reset
                _, _, h_seq, _ = lif_triton.forward(x, v0, tau, v_th, ALPHA)
                assert torch.equal(ref.v_seq, torch.where(h_seq >= v_th, 0.0, h_seq)), case
            if T == 16 and len(shape) == 3:
                assert 0.05 < sr.float().mean() < 0.6   # the input makes the neurons fire, but not always


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_is_integrated_in_float32_like_the_fused_backend(dtype):
    x, g = _inputs((4, 3, 700), dtype)
    fused, tri = LIF(backend="fused"), LIF(backend="triton")
    xf, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    sf, st = fused(xf), tri(xt)
    (sf * g).sum().backward()
    (st * g).sum().backward()
    assert st.dtype == dtype and xt.grad.dtype == dtype and tri.v.dtype == torch.float32
    assert torch.equal(sf, st) and torch.equal(fused.v, tri.v) and torch.equal(xf.grad, xt.grad)


def test_cuda_arithmetic_path_matches_an_emulation_of_torch_cuda(monkeypatch):
    """On CUDA, torch divides by a Python float as ``x * (1 / tau)``; the kernels' CUDA variant too."""
    monkeypatch.setattr(lif_triton, "divides_by_reciprocal", lambda device: True)
    tau, v_th = 1.5, 0.5
    x, g = _inputs((6, 2, 999), torch.float32)
    inv = torch.tensor(1.0) / torch.tensor(tau)   # rounded in float32, as torch's CUDA kernel does
    v, hs = torch.zeros(x.shape[1:]), []
    for t in range(x.shape[0]):                   # torch's CUDA ops, one by one, on the CPU
        h = v + (x[t] - v) * inv
        v = torch.where(h >= v_th, 0.0, h)
        hs.append(h)
    grad_x, grad_v = torch.empty_like(x), None
    for t in reversed(range(x.shape[0])):
        sg = ((hs[t] - v_th) * ALPHA).sigmoid()
        grad_h = g[t] * (1.0 - sg) * sg * ALPHA
        if grad_v is not None:
            grad_h = grad_h + torch.where(hs[t] >= v_th, 0.0, grad_v)
        grad_x[t] = grad_h * inv
        grad_v = grad_h - grad_x[t]

    spikes, v_last, h_seq, _ = lif_triton.forward(x, None, tau, v_th, ALPHA)
    assert torch.equal(h_seq, torch.stack(hs)) and torch.equal(v_last, v)
    assert torch.equal(spikes, (h_seq >= v_th).float())
    assert torch.equal(lif_triton.backward(g, h_seq, tau, v_th, ALPHA, torch.float32), grad_x)
    # ... and the emulation differs from a true division, so this checks the CUDA variant
    monkeypatch.setattr(lif_triton, "divides_by_reciprocal", lambda device: False)
    _, _, h_div, _ = lif_triton.forward(x, None, tau, v_th, ALPHA)
    assert not torch.equal(h_div, h_seq)


def _ptx(kernel, signature: dict, constants: dict, options: dict) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def test_cuda_kernels_compile_to_ieee_arithmetic_without_contraction():
    """The GPU variant, compiled for sm_90 here (no GPU needed): the instructions that decide the last bit."""
    forward, backward = lif_triton._kernels(interpret=False)
    fwd_sig = {"x_ptr": "*fp16", "v0_ptr": "*fp32", "spike_ptr": "*fp16", "h_ptr": "*fp32", "v_ptr": "*fp32",
               "bits_ptr": "*u8", "scalars_ptr": "*fp32", "T": "i32", "N": "i32",
               "HAS_V0": "constexpr", "RECIPROCAL": "constexpr", "PACK": "constexpr", "BLOCK": "constexpr"}
    fwd_const = {"HAS_V0": True, "RECIPROCAL": True, "PACK": True, "STORE_H": True, "BLOCK": lif_triton.BLOCK_GPU}
    fwd_sig["STORE_H"] = "constexpr"
    options = dict(lif_triton.compile_options())
    # v + (x - v) * inv_tau is a multiply and an add; Triton's default would fuse them into an fma
    assert re.search(r"\bfma\.", _ptx(forward, fwd_sig, fwd_const, {}))
    assert not re.search(r"\bfma\.", _ptx(forward, fwd_sig, fwd_const, options))
    bwd_sig = {"grad_spike_ptr": "*fp16", "h_ptr": "*fp32", "sg_ptr": "*fp32", "grad_x_ptr": "*fp16",
               "x_ptr": "*fp16", "v0_ptr": "*fp32", "scalars_ptr": "*fp32", "T": "i32", "N": "i32",
               "mean_ptr": "*fp32", "invstd_ptr": "*fp32", "gamma_ptr": "*fp32", "beta_ptr": "*fp32", "C": "i32",
               "HW": "i32", "RECIPROCAL": "constexpr", "HOST_SIGMOID": "constexpr", "IS_FP64": "constexpr",
               "FROM_INPUT": "constexpr", "HAS_V0": "constexpr", "ONLY_H": "constexpr", "NORM": "constexpr",
               "FORMULA": "constexpr", "EXACT_FMA": "constexpr", "ONLY_NORM": "constexpr", "BLOCK": "constexpr"}

    def bwd_ptx(from_input, norm=False, formula=0):
        return _ptx(backward, bwd_sig, {"RECIPROCAL": True, "HOST_SIGMOID": False, "IS_FP64": False,
                                        "FROM_INPUT": from_input, "HAS_V0": True, "ONLY_H": False, "NORM": norm,
                                        "FORMULA": formula, "EXACT_FMA": False, "ONLY_NORM": False,
                                        "BLOCK": lif_triton.BLOCK_GPU}, options)
    # FROM_INPUT: the forward recurrence runs first in the same kernel (compact memory's replay)
    ptx, without = bwd_ptx(True), bwd_ptx(False)
    fmas = lambda text: len(re.findall(r"\bfma\.rn\.f32", text))   # noqa: E731
    # the recurrence adds no fma (v + (x - v) * inv_tau stays two roundings): only libdevice's expf has them
    assert fmas(ptx) == fmas(without)
    # NORM (models/bn_lif.py): batch norm's formula, with exactly its fused multiply-adds
    # (per element; each thread holds several elements)
    one, two = fmas(bwd_ptx(True, True, 1)) - fmas(ptx), fmas(bwd_ptx(True, True, 0)) - fmas(ptx)
    assert one > 0 and two == 2 * one and fmas(bwd_ptx(True, True, 2)) - fmas(ptx) == one
    assert "div.rn.f32" in ptx and not re.search(r"div\.(full|approx)", ptx)   # IEEE 1 / (1 + e)
    assert "fma.rm.f32" in ptx    # libdevice's expf (its range reduction), not tl.exp's bare ex2.approx
    assert "ex2.approx.ftz.f32" in ptx and not re.search(r"\b(add|sub|mul|div)\.[a-z.]*ftz", ptx)


def test_bit_kernels_compile_for_the_gpu():
    """models/bits_triton.py for sm_90 (no GPU needed): what compact memory runs on a GPU."""
    from models import bits_triton
    pack, unpack, _ = bits_triton._kernels(interpret=False)
    block = {"BLOCK": bits_triton.BYTES_PER_PROGRAM}
    for dtype in ("fp32", "fp16", "bf16", "u8"):
        assert ".entry" in _ptx(pack, {"values_ptr": f"*{dtype}", "packed_ptr": "*u8", "N": "i32", "NBYTES": "i32",
                                       "BLOCK": "constexpr"}, block, {})
        assert ".entry" in _ptx(unpack, {"packed_ptr": "*u8", "out_ptr": f"*{dtype}", "N": "i32",
                                         "BLOCK": "constexpr"}, {"BLOCK": 8 * bits_triton.BYTES_PER_PROGRAM}, {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.bool])
@pytest.mark.parametrize("n", [1, 8, 13, 4096, 20003])
def test_bit_kernels_match_the_torch_packing(dtype, n):
    from models import bits_triton, memory
    values = (torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4).to(dtype)
    packed = bits_triton.pack(values)
    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "0"}):   # memory.py's torch operators
        assert torch.equal(packed, memory.pack_bits(values.to(torch.uint8)))
    unpacked = bits_triton.unpack(packed, n, dtype)
    assert unpacked.dtype == dtype and torch.equal(unpacked, values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_encode_is_torchs_add_plus_its_codes(dtype):
    from models import bits_triton
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randint(0, 5, (3, 4097), generator=g).to(dtype).requires_grad_() for _ in range(2))
    out, codes = bits_triton.add_encode(a, b)
    assert out.dtype == dtype and torch.equal(out, a + b) and torch.equal(codes, (a + b).to(torch.uint8).view(-1))
    out.backward(torch.ones_like(out))
    assert torch.equal(a.grad, torch.ones_like(a)) and torch.equal(b.grad, torch.ones_like(b))
    assert not bits_triton.can_add_encode(a.to(torch.bfloat16), b.to(torch.bfloat16))   # interpreter: no bf16
    assert not bits_triton.can_add_encode(a, b[:, :100])
    add = bits_triton._kernels(interpret=False)[2]
    for t in ("fp32", "fp16", "bf16"):
        assert ".entry" in _ptx(add, {"a_ptr": f"*{t}", "b_ptr": f"*{t}", "out_ptr": f"*{t}", "codes_ptr": "*u8",
                                      "N": "i32", "BLOCK": "constexpr"}, {"BLOCK": 1024}, {})


@pytest.mark.parametrize("n", [64, 1000 * 8, 12])
def test_forward_kernel_writes_the_bits_with_the_spikes(n):
    from models import memory
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(0)) * 2
    spikes, _, _, bits = lif_triton.forward(x, None, 2.0, 1.0, ALPHA, pack=True)
    if n % 8:
        assert bits.numel() == 0          # left to the packer
    else:
        assert torch.equal(bits, memory.pack_bits(spikes))


@pytest.mark.parametrize("config", ["qkformer_cifar", "spikingformer_cifar", "sglformer_cifar", "spikformer_cifar",
                                    "spikformer_imagenet"])
def test_every_family_is_bit_identical_end_to_end(config):
    cls, kwargs, shape, kind = TINY[config]
    # one sample (the interpreter is slow); SGLFormer's batch norm of pooled features needs two
    x = make_input((2 if config.startswith("sgl") else 1, *shape[1:]), kind)
    # the reference: spikingjelly's loop, autograd's usual storage; Triton with the default
    # compact activation memory (bits and recomputed tails, models/memory.py)
    outs = {b: run_case(getattr(models, cls)(**kwargs, backend=b, activation_memory=m), x, "train", torch.float32,
                        models.reset_net)
            for b, m in (("torch", "standard"), ("triton", "compact"))}
    ref, tri = outs["torch"], outs["triton"]
    assert torch.equal(ref["logits"], tri["logits"])
    assert ref["grads"].keys() == tri["grads"].keys() and len(ref["grads"]) > 30
    assert all(torch.equal(ref["grads"][k], tri["grads"][k]) for k in ref["grads"])


def test_timm_create_model_and_compile_take_the_triton_backend():
    import timm
    model = timm.create_model("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, num_classes=3, T=2,
                              backend="triton")
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert {m.requested_backend for m in lifs} == {"triton"}
    model.eval()(torch.randn(1, 3, 16, 16))
    assert {m.implementation for m in lifs} == {"triton"}
    # torch.compile sees the kernels as two opaque operators: one graph, no break at each neuron
    node, ref = LIF(1.5, 0.5, "triton"), LIF(1.5, 0.5, "torch")
    x, g = _inputs((4, 2, 300), torch.float32)
    xc, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    sc = torch.compile(node, backend="aot_eager", fullgraph=True)(xc)
    sr = ref(xr)
    (sc * g).sum().backward()
    (sr * g).sum().backward()
    assert torch.equal(sc, sr) and torch.equal(xc.grad, xr.grad)


def test_saves_only_the_potentials_for_backward():
    x = _inputs((3, 50), torch.float16)[0].requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.shape, t.dtype)) or t, lambda t: t):
        LIF(backend="triton")(x)
    assert saved == [(torch.Size([3, 50]), torch.float32)]


def test_probe_accepts_the_kernels_here():
    assert neuron.triton_unavailable_reason(torch.device("cpu")) is None


def test_auto_on_cuda_steps_down_cupy_triton_fused_warning_once_each(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(neuron, "_warned", set())
    monkeypatch.setattr(neuron, "cupy_unavailable_reason", lambda: "no cupy here")
    monkeypatch.setattr(neuron, "triton_unavailable_reason", lambda device: None)
    with pytest.warns(UserWarning, match="without spikingjelly's cupy kernel: no cupy here"):
        assert neuron.resolve_backend("auto", cuda) == "triton"
    monkeypatch.setattr(neuron, "triton_unavailable_reason", lambda device: "no triton here")
    with pytest.warns(UserWarning, match="without the Triton kernels either .*: no triton here") as caught:
        assert neuron.resolve_backend("auto", cuda) == "fused"
    assert len(caught) == 1                  # the cupy warning was already given
    monkeypatch.setattr(neuron, "cupy_unavailable_reason", lambda: None)
    assert neuron.resolve_backend("auto", cuda) == "cupy"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors raised without a GPU")
def test_triton_without_gpu_or_triton_is_a_one_line_error_naming_fused(monkeypatch):
    from engine.config import make_config
    from engine.errors import ConfigError
    from engine.factories import build_model
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="'triton' needs a CUDA GPU.*use backend 'fused'"):
        models.build("qkformer_cifar10dvs_2_256", backend="triton")
    with pytest.raises(ConfigError, match="'triton' needs a CUDA GPU.*use backend 'fused'") as info:
        build_model(make_config({}, {"backend": "triton"}), 10)
    assert "\n" not in str(info.value)
    node = neuron.lif()
    node.requested_backend = "triton"      # e.g. set under the interpreter, then run without it
    with pytest.raises(RuntimeError, match="got a tensor on cpu; .*use backend 'fused'"):
        node(torch.rand(2, 3))
    monkeypatch.setattr(lif_triton, "_IMPORT_ERROR", ImportError("No module named 'triton'"))
    with pytest.raises(RuntimeError, match="'triton' is not usable: Triton cannot be imported .*use backend 'fused'"):
        LIF(backend="triton")


# --- on a GPU (tools/gpu_check.py runs these with `pytest -m gpu`) -----------------------------------

@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_kernels_are_bit_identical_to_spikingjelly(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for spread in (1.5, 15.0):     # 15: far sigmoid tails (exp's last bits, denormal results)
        x, g = (t.cuda() for t in _inputs((6, 64, 5000), dtype))
        x = (x - 0.4) / 1.5 * spread + 0.4
        for tau, v_th in ((2.0, 1.0), (2.0, 0.5), (1.5, 1.0), (1.5, 0.5)):
            ref, tri = LIF(tau, v_th, "torch"), LIF(tau, v_th, "triton")
            xr, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
            sr, st = ref(xr), tri(xt)
            (sr * g).sum().backward()
            (st * g).sum().backward()
            assert tri.implementation == "triton"
            assert torch.equal(sr, st) and torch.equal(ref.v, tri.v), (spread, tau, v_th)
            assert torch.equal(xr.grad, xt.grad), (spread, tau, v_th, (xr.grad - xt.grad).abs().max().item())


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision_matches_fused(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, g = (t.cuda() for t in _inputs((4, 64, 5000), dtype))
    fused, tri = LIF(backend="fused"), LIF(backend="triton")
    xf, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    sf, st = fused(xf), tri(xt)
    (sf * g).sum().backward()
    (st * g).sum().backward()
    assert torch.equal(sf, st) and torch.equal(fused.v, tri.v) and torch.equal(xf.grad, xt.grad)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qkformer_cifar_4_384", "spikingformer_cifar_4_384", "sglformer_cifar_4_384"])
def test_gpu_models_are_bit_identical_with_triton(name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    model = models.build(name, T=2).cuda().train()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    outs = {}
    setups = [("torch", "standard", None), ("triton", "compact", None), ("triton", "standard", None),
              ("fused", "compact", None), ("triton", "standard", torch.float16), ("triton", "compact", torch.float16)]
    if neuron.cupy_unavailable_reason() is None:
        setups += [("cupy", "standard", torch.float16), ("cupy", "compact", torch.float16)]
    for backend, mode, dtype in setups:
        model.load_state_dict(state)       # batch-norm running statistics as before each run
        models.set_backend(model, backend)
        model.set_activation_memory(mode)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            y = model(x)
        y.float().square().sum().backward()
        outs[backend, mode, dtype] = (y.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None],
                                      {k: v.clone() for k, v in model.state_dict().items()})

    def same(a, b):
        return (torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
                and all(torch.equal(a[2][k], b[2][k]) for k in a[2]))
    ref = outs["torch", "standard", None]
    assert same(outs["triton", "compact", None], ref) and same(outs["triton", "standard", None], ref)
    assert same(outs["fused", "compact", None], ref)
    # float16: compact storage changes nothing against the same backend's standard storage
    assert same(outs["triton", "compact", torch.float16], outs["triton", "standard", torch.float16])
    if ("cupy", "compact", torch.float16) in outs:
        assert same(outs["cupy", "compact", torch.float16], outs["cupy", "standard", torch.float16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("with_v0", [False, True])
def test_backward_from_the_input_equals_the_saved_potentials(dtype, with_v0):
    """Compact memory's tail neuron saves its input, and the backward launch recomputes h_seq:
    the same input gradient bits as from the saved h_seq; the replay launches nothing."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 3001, generator=g) * 1.5 + 0.4).to(dtype)
    v0 = torch.rand(3001, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32) \
        if with_v0 else None
    grad = torch.randn(4, 3001, generator=g).to(dtype)
    results = []
    for tail in (None, "first"):
        xi = x.clone().requires_grad_()
        spikes, _, _ = lif_triton.TritonLIF.apply(xi, v0, 2.0, 1.0, ALPHA, False, tail)
        spikes.backward(grad)
        results.append((spikes, xi.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    xi = x.clone().requires_grad_()
    with OpCensus() as census:
        spikes, _, _ = lif_triton.TritonLIF.apply(xi, v0, 2.0, 1.0, ALPHA, False, "replay")
    assert census.launches == 0
    spikes.backward(grad)
    assert torch.equal(xi.grad, results[0][1])
