"""Compact activation memory (models/memory.py): the same bits as autograd's usual storage, less of it."""
from __future__ import annotations

import pytest
import torch

import models
from engine.firing import FiringRates
from models import memory
from reference import TINY, fill_weights


def tiny_model(name: str, **kwargs):
    cls, kw, _, _ = TINY[name]
    model = getattr(models, cls)(**kw, **kwargs)
    fill_weights(model)
    return model.train()


def tiny_input(name: str) -> torch.Tensor:
    _, _, shape, kind = TINY[name]
    g = torch.Generator().manual_seed(1)
    if kind == "image":
        return torch.randn(*shape, generator=g)
    return (torch.rand(*shape, generator=g) < 0.3).float()


def step(model, x, autocast=None):
    """Logits, every parameter gradient, every buffer after one forward/backward."""
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        out = model(x)
    out.float().square().sum().backward()
    return (out.detach(), [p.grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_same_bits(a, b):
    (out_a, grads_a, state_a), (out_b, grads_b, state_b) = a, b
    assert torch.equal(out_a, out_b)
    assert len(grads_a) == len(grads_b)
    for i, (ga, gb) in enumerate(zip(grads_a, grads_b)):
        assert (ga is None) == (gb is None), i
        assert ga is None or torch.equal(ga, gb), f"gradient {i} differs"
    assert state_a.keys() == state_b.keys()
    for k in state_a:   # BN running statistics: updated once, by the first forward only
        assert torch.equal(state_a[k], state_b[k]), k


@pytest.mark.parametrize("name", list(TINY))
def test_compact_is_bit_identical_to_standard(name):
    x = tiny_input(name)
    standard = step(tiny_model(name, backend="fused", activation_memory="standard"), x)
    assert_same_bits(standard, step(tiny_model(name, backend="fused"), x))
    ckpt = tiny_model(name, backend="fused")
    ckpt.set_grad_checkpointing(True)
    assert_same_bits(standard, step(ckpt, x))


@pytest.mark.parametrize("name", ["qkformer_cifar", "spikingformer_cifar100", "sglformer_imagenet_late",
                                  "spikformer_dvs"])
def test_compact_with_spikingjellys_loop_and_autocast(name):
    x = tiny_input(name)
    assert_same_bits(step(tiny_model(name, backend="torch", activation_memory="standard"), x),
                     step(tiny_model(name, backend="torch"), x))
    for dtype in (torch.bfloat16, torch.float16):
        assert_same_bits(step(tiny_model(name, backend="fused", activation_memory="standard"), x, dtype),
                         step(tiny_model(name, backend="fused"), x, dtype))


@pytest.mark.parametrize("name", ["qkformer_cifar", "spikingformer_cifar", "sglformer_cifar", "spikformer_imagenet"])
def test_compact_forward_packs_spikes_as_bits_and_counts_as_integers(name):
    x = tiny_input(name)
    model = tiny_model(name, backend="fused", activation_memory="standard")
    with memory.SpikePacker() as packer:      # what a compact forward installs, with its stats visible
        result = step(model, x)
    assert_same_bits(step(tiny_model(name, backend="fused", activation_memory="standard"), x), result)
    count, bytes_in, bytes_out = packer.stats["bits"]
    assert count > 0 and bytes_out <= bytes_in / 8 + count      # 1 bit per element (8 or 32 before)
    if name != "spikingformer_cifar":        # its residual stream is real-valued: no counts there
        assert packer.stats["int"][0] > 0


def test_standard_mode_eval_and_no_grad_install_nothing(monkeypatch):
    made = []
    monkeypatch.setattr(memory, "SpikePacker", lambda: made.append(1) or memory.contextlib.nullcontext())
    x = tiny_input("qkformer_cifar")
    tiny_model("qkformer_cifar", activation_memory="standard")(x)
    tiny_model("qkformer_cifar").eval()(x)
    with torch.no_grad():
        tiny_model("qkformer_cifar")(x)
    assert made == []
    tiny_model("qkformer_cifar")(x)
    assert made == [1]


def test_activation_memory_is_checked_and_switchable():
    with pytest.raises(ValueError, match="activation_memory must be one of compact, standard"):
        tiny_model("qkformer_cifar", activation_memory="bits")
    model = tiny_model("qkformer_cifar")
    assert model.activation_memory == "compact"
    models.set_activation_memory(model, "standard")
    assert model.activation_memory == "standard"


def roundtrip(t: torch.Tensor, bound: int | None = None):
    packer = memory.SpikePacker()
    with packer:
        if bound is not None:
            memory.note_counts(t, bound)
        packed = packer.pack(t)
    out = packer.unpack(packed)
    return packed, out


def assert_same_tensor(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_pack_forms_round_trip_exactly(dtype):
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(3, 5, 16, 37, generator=g) < 0.3).to(dtype)
    counts = torch.randint(0, 5, (4, 8, 300), generator=g).to(dtype)           # spike counts 0..4
    wide = torch.randint(0, 3000, (4, 8, 300), generator=g).to(dtype)          # rounded in 16-bit floats
    for t, bound, kind, code in ((spikes, 1, "bits", torch.uint8), (counts, 4, "int", torch.uint8),
                                 (wide, 3000, "int", torch.int16)):
        packed, out = roundtrip(t, bound)
        assert isinstance(packed, memory._Packed) and packed.kind == kind and packed.data.dtype == code
        assert_same_tensor(out, t)
    packed, out = roundtrip(spikes, 1)
    assert packed.kind == "bits" and packed.nbytes() * 8 < spikes.numel() + 64


def test_integer_code_leaves_room_for_rounding():
    assert memory.integer_code(1, torch.float32) == torch.uint8
    assert memory.integer_code(255, torch.bfloat16) == torch.uint8
    assert memory.integer_code(256, torch.bfloat16) == torch.int16     # 256 itself needs 9 bits
    assert memory.integer_code(32600, torch.float16) is None           # may round past int16
    # an integer count in bfloat16 may round up past its bound: 259 -> 260
    assert torch.tensor(259.0).to(torch.bfloat16).item() == 260.0


def test_layouts_round_trip_with_their_strides():
    g = torch.Generator().manual_seed(0)
    base = (torch.rand(4, 6, 20, 20, generator=g) < 0.5).float()
    for t in (base.contiguous(memory_format=torch.channels_last), base.permute(1, 0, 3, 2), base[:, :, 3]):
        t = t if t.numel() >= memory.MIN_NUMEL else t.repeat(1, 1, 16)
        packed, out = roundtrip(t, 1)
        assert isinstance(packed, memory._Packed)
        assert_same_tensor(out, t)
    expanded = base[:1].expand(16, -1, -1, -1)             # overlapping memory: kept as it is
    packed, out = roundtrip(expanded, 1)
    assert packed is expanded


def test_only_announced_tensors_get_a_compact_form():
    """Packing never looks at values (on a GPU that would stall the host): an unannounced
    tensor is kept even when its values happen to be integers."""
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(128, 128, generator=g) < 0.5).float()
    for t in (spikes, spikes * 3, torch.randn(128, 128, generator=g)):
        packed, out = roundtrip(t)
        assert packed is t
    # an announced spike tensor changed in place afterwards is no longer trusted
    packer = memory.SpikePacker()
    with packer:
        memory.note_spikes(spikes)
        spikes.mul_(0.5)
        packed = packer.pack(spikes)
    assert packed is spikes
    # bool masks (the fused neuron's saved spikes) are bits
    mask = torch.rand(64, 128, generator=g) < 0.5
    packed, out = roundtrip(mask)
    assert packed.kind == "bits" and out.dtype == torch.bool and torch.equal(out, mask)


def test_bounds_follow_sums_products_and_copies():
    g = torch.Generator().manual_seed(0)
    s1, s2 = ((torch.rand(2, 4, 8, 16, generator=g) < 0.5).float() for _ in range(2))
    real = torch.randn(2, 4, 8, 16, generator=g)
    with memory.SpikePacker():
        memory.note_spikes(s1), memory.note_spikes(s2)
        counts = memory.add(memory.add(s1, s2), s1)
        assert memory.bound_of(counts) == 3
        assert memory.bound_of(memory.mul(s1, s2)) == 1
        assert memory.bound_of(memory.matmul(s1, s2.transpose(-1, -2))) == 16
        assert memory.bound_of(memory.reshape(counts.transpose(1, 2), 2, -1)) == 3   # a copy
        assert memory.bound_of(memory.add(s1, real)) is None
    assert memory.bound_of(s1) is None     # outside a compact forward nothing is recorded


def test_firing_rates_count_each_forward_once():
    x = tiny_input("sglformer_cifar")
    counts = []
    for mode in ("standard", "compact"):
        model = tiny_model("sglformer_cifar", backend="fused", activation_memory=mode)
        with FiringRates(model) as meter:
            model(x).square().sum().backward()
        counts.append(dict(meter.counts))
    assert counts[0] == counts[1]


def test_config_key_reaches_the_model():
    from engine import config as C
    from engine.factories import build_model
    assert C.Config().model_overrides()["activation_memory"] == "compact"
    args = C.build_parser("x").parse_args(["--activation-memory", "standard"])
    cfg = C.make_config({"model": "qkformer_cifar_4_384", "embed_dim": 32, "depth": 3}, vars(args))
    assert build_model(cfg, 10).activation_memory == "standard"
    with pytest.raises(C.ConfigError, match="'activation_memory' must be one of compact, standard; got 'bits'"):
        C.make_config({"activation_memory": "bits"}, {})


@pytest.mark.parametrize("ckpt", [False, True])
def test_torch_compile_runs_a_compact_model_with_standard_storage(ckpt):
    x = tiny_input("qkformer_cifar")
    eager = tiny_model("qkformer_cifar", backend="fused", activation_memory="standard")
    compact = tiny_model("qkformer_cifar", backend="fused")
    compact.set_grad_checkpointing(ckpt)
    out = torch.compile(compact, backend="aot_eager")(x)   # dynamo traces no hooks/context_fn: skipped
    out.square().sum().backward()
    ref = eager(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(compact.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
