"""Energy, MACs, SOPs and firing rates: hand-computed on tiny models, anchored on the authors' log."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import models
from reference import fill_weights
from conftest import ROOT
from engine.energy import EnergyMeter
from models import memory
from engine.energy import input_kind
from reference import TINY, make_input
from models.neuron import LIF


class TinySNN(nn.Module):
    """Image -> conv (analog input) -> LIF -> conv 1x1 with bias (spiking input) -> LIF -> mean -> linear."""

    def __init__(self, T=2):
        super().__init__()
        self.T = T
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.lif1 = LIF(backend="torch")
        self.conv2 = nn.Conv2d(4, 6, 1, bias=True)
        self.lif2 = LIF(backend="torch")
        self.head = nn.Linear(6, 5)

    @staticmethod
    def merged(conv, x):  # conv over [T, B, ...] with T and B merged
        return conv(x.flatten(0, 1)).reshape(*x.shape[:2], -1, *x.shape[3:])

    def spikes1(self, x):
        models.reset_net(self)
        return self.lif1(self.merged(self.conv1, x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)))

    def forward(self, x):
        s = self.spikes1(x)
        s = self.lif2(self.merged(self.conv2, s))
        return self.head(s.mean((0, 3, 4)))


def test_tiny_model_by_hand():
    torch.manual_seed(0)
    model = TinySNN(T=2).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(6)   # make both LIF layers fire at a visible rate
        model.conv2.weight.mul_(4)
        model.conv2.bias.fill_(0.8)
        x = torch.randn(3, 3, 8, 8)
        rate1 = model.spikes1(x).mean().item()
        with EnergyMeter(model) as meter:
            model(x)
    assert 0.05 < rate1 < 0.95
    T, H, W = 2, 8, 8
    conv1_macs = T * H * W * 4 * 27                 # per sample: output elements x fan-in
    conv2_dense = T * H * W * 6 * 4 + T * H * W * 6  # plus one bias add per output element
    head_macs = 6 * 5 + 5
    layers = {l.name: l for l in meter.layers()}
    assert layers["conv1"].macs == conv1_macs and layers["conv1"].sops == 0 and layers["conv1"].input_rate is None
    assert layers["conv2"].dense == conv2_dense and layers["conv2"].macs == 0
    assert layers["conv2"].input_rate == pytest.approx(rate1)
    assert layers["conv2"].sops == pytest.approx(conv2_dense * rate1)
    assert layers["head"].macs == head_macs                       # mean of spikes is not binary: MACs
    s = meter.summary()
    assert s["samples"] == 3
    assert s["macs"] == conv1_macs + head_macs and s["sops"] == pytest.approx(conv2_dense * rate1)
    assert s["energy_mj"] == pytest.approx((4.6 * (conv1_macs + head_macs) + 0.9 * conv2_dense * rate1) * 1e-9)
    assert list(s["firing_rates"]) == ["lif1", "lif2"] and s["firing_rates"]["lif1"] == pytest.approx(rate1)
    # the other conventions, by hand (per sample; SRAM 12.5 pJ/byte for weights, 2.5 for the rest)
    assert [layers[n].input for n in ("conv1", "conv2", "head")] == ["real", "spikes", "real"]
    c = s["conventions_mj"]
    assert c["papers"] == pytest.approx(s["energy_mj"]) and c["counts_as_macs"] == pytest.approx(s["energy_mj"])
    convs, head = (4 * 27 + 6 * 4 + 6) * 4 * 12.5, (6 * 5 + 5) * 4 * 12.5        # 4-byte weights
    inputs = (T * 3 * H * W * 4 + T * 4 * H * W / 8 + 6 * 4) * 2.5               # image, spikes (1 bit), features
    state = T * H * W * (4 + 6) * 12 * 2.5                                       # 12 bytes per neuron and step
    weights = convs * T + head                         # the convs read theirs every time step, the head once
    assert s["memory_aware_parts_mj"]["weights"] == pytest.approx(weights * 1e-9)
    assert c["memory_aware"] == pytest.approx(s["energy_mj"] + (weights + inputs + state) * 1e-9)
    ann_compute = 4.6 * ((conv1_macs + conv2_dense) / T + head_macs)
    ann_memory = convs + head + (3 * H * W * 4 + 4 * H * W * 4 + 6 * 4) * 2.5 + H * W * (4 + 6) * 4 * 2.5
    assert c["ann"] == pytest.approx((ann_compute + ann_memory) * 1e-9)


def test_an_all_zero_input_is_not_taken_for_spikes():
    """A silent network: the classifier reads averaged features, all zero here, and still does
    MACs; the conv after the silent neuron reads spikes (at rate 0): by construction, not values."""
    model = TinySNN(T=2).eval()
    with torch.no_grad():
        model.conv1.weight.zero_()
        x = torch.randn(3, 3, 8, 8)
        with EnergyMeter(model) as meter:
            model(x)
    layers = {l.name: l for l in meter.layers()}
    assert layers["head"].input == "real" and layers["head"].macs == 6 * 5 + 5
    assert layers["conv2"].input == "spikes" and layers["conv2"].input_rate == 0 and layers["conv2"].sops == 0


# Tokens each attention block sees, from the architecture: Spikingformer CIFAR pools 16 px input
# twice (4x4); QKFormer CIFAR keeps 16x16 in stage 1, then 8x8, 4x4; SGLFormer CIFAR 32 px -> 8x8.
TOKENS = {"spikingformer_cifar_2_384": {"block.0.attn": 16, "block.1.attn": 16},
          "qkformer_cifar_4_384": {"stage1.0.tssa": 256, "stage2.0.tssa": 64, "stage3.0.ssa": 16},
          "sglformer_cifar_4_384": {"blocks.0.ssa1": 64, "blocks.0.ssa2": 64, "blocks.0.ssa3": 64},
          "spikformer_cifar_2_384": {"block.0.attn": 16, "block.1.attn": 16}}


class ResidualSNN(TinySNN):
    """Like TinySNN, but conv2 reads spikes + spikes of the previous time step: counts 0, 1, 2,
    announced as the models announce their residual sums (models/memory.py)."""

    def forward(self, x):
        s = self.spikes1(x)
        s = memory.add(s, memory.note_spikes(torch.cat([torch.zeros_like(s[:1]), s[:-1]])))
        return self.head(self.lif2(self.merged(self.conv2, s)).mean((0, 3, 4)))


@pytest.mark.parametrize("mode", ["ac", "mac"])
def test_spike_counts_from_residual_sums(mode):
    torch.manual_seed(1)
    model = ResidualSNN(T=3).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(6)
        x = torch.randn(2, 3, 8, 8)
        s = model.spikes1(x)
        counts = s + torch.cat([torch.zeros_like(s[:1]), s[:-1]])
        with EnergyMeter(model, integer_inputs=mode) as meter:
            model(x)
    assert counts.max() == 2
    conv2 = {l.name: l for l in meter.layers()}["conv2"]
    dense = 3 * 8 * 8 * (6 * 4 + 6)
    if mode == "ac":
        assert conv2.sops == pytest.approx(dense * counts.mean().item()) and conv2.macs == 0
    else:
        assert conv2.macs == dense and conv2.sops == 0


@pytest.mark.parametrize("name,kw", [
    ("spikingformer_cifar_2_384", dict(embed_dim=32, num_heads=2, T=2)),
    ("qkformer_cifar_4_384", dict(embed_dim=32, depth=3, T=2)),
    ("sglformer_cifar_4_384", dict(embed_dim=24, num_heads=2, T=2)),
    ("spikformer_cifar_2_384", dict(embed_dim=32, num_heads=2, T=2)),
])
def test_attention_operations_by_hand(name, kw):
    """SSA: T x heads x N x d^2 x (min(fr_K, fr_V) + fr_Q); token QK attention: T x C x N x fr_Q."""
    torch.manual_seed(0)
    model = models.build(name, **kw).train()   # train-mode BN: every layer fires
    size = 32 if name.startswith("sgl") else 16
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(2, 3, size, size))
    rates = meter.firing.rates()
    attention = {l.name: l for l in meter.layers() if "attention" in l.kind}
    assert set(attention) == set(TOKENS[name])
    for layer_name, N in TOKENS[name].items():
        layer, module = attention[layer_name], model.get_submodule(layer_name)
        if layer.kind == "qk-attention":
            C = module.q_conv.out_channels
            assert layer.sops == pytest.approx(2 * C * N * rates[f"{layer_name}.q_lif"])
            continue
        if hasattr(module, "q_linear"):       # Spikformer CIFAR: Linear layers on tokens
            C, fq, fk, fv = module.q_linear.out_features, *(rates[f"{layer_name}.{x}_lif"] for x in "qkv")
        elif hasattr(module, "q_lif"):
            C, fq, fk, fv = module.q_conv.out_channels, *(rates[f"{layer_name}.{x}_lif"] for x in "qkv")
        else:
            C, fq, fk, fv = module.q_conv.conv1x1.out_channels, *(rates[f"{layer_name}.{x}_conv.lif"] for x in "qkv")
        h = module.num_heads
        d = C // h
        assert min(fq, fk, fv) > 0
        assert layer.sops == pytest.approx(2 * h * N * d * d * (min(fk, fv) + fq))   # T = 2
        assert layer.dense == 2 * 2 * h * N * d * d


@pytest.mark.parametrize("config", sorted(TINY))
def test_inputs_classified_by_construction_agree_with_their_values(config):
    """Every conv/linear input of every reference configuration, firing at useful rates: layers
    announced as reading spikes get 0/1, counts get non-negative integers (more than 1 somewhere
    in each family that adds spikes), the rest is real-valued. The announcements decide."""
    cls, kwargs, shape, kind = TINY[config]
    model = getattr(models, cls)(**kwargs).eval()
    fill_weights(model)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, (input_kind(inputs[0]), inputs[0].detach()))
        return hook

    hooks = [m.register_forward_hook(record(n))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad(), memory.Announcements():
        model(make_input(shape, kind))
    for h in hooks:
        h.remove()
    for name, (announced, x) in seen.items():
        if announced == "spikes":
            assert bool(((x == 0) | (x == 1)).all()), name
        elif announced == "counts":
            assert bool((x >= 0).all()) and bool((x == x.round()).all()), name
    first, *rest = seen.values()
    assert first[0] == ("counts" if kind == "events" else "real")                # event frames are counts
    kinds = {k for k, _ in rest}
    assert {"real", "spikes"} <= kinds
    assert ("counts" in kinds) == (not config.startswith("spikingformer")), kinds   # its stream is real-valued
    # the other direction: what is binary or integer by its values was announced as such, except
    # where the family computes it as real (Spikingformer's stream; the classifier's time average)
    for name, (announced, x) in seen.items():
        if announced == "real" and name != "head" and not config.startswith("spikingformer"):
            assert not bool(((x == 0) | (x == 1)).all()), f"{name}: binary values, announced as real"
    if "counts" in kinds:
        assert max(x.max().item() for k, x in rest if k == "counts") > 1     # counts above 1 do occur


def test_spikingformer_macs_equal_the_authors_log():
    """Spikingformer's energy log for 8-512 (224 px, T=4): 0.347329512 G MACs = the first conv on
    the image (3x3x3 -> 64, over 4 time steps) + the classifier (512 -> 1000 with bias)."""
    model = models.build("spikingformer_8_512", depth=1).eval()   # blocks do not add MACs
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(1, 3, 224, 224))
    assert meter.summary()["macs"] == 347_329_512


def test_spikformer_residual_counts_are_macs_or_accumulates():
    """Spikformer-8-512, one block, 224 px, T=4. Its residual stream holds spike counts (0, 1, 2),
    which feed each block's Q, K, V convs and its first MLP conv. With k accumulates per count
    (the papers' convention, "ac") the only MACs are the encoding conv and the classifier, the
    same 0.347329512 G as Spikingformer-8-512 (identical stem and head); charged as multi-bit
    inputs ("mac", as the Spikingformer paper reads Spikformer), those four convs are MACs too.
    Each report also gives the energy under the other reading."""
    model = models.build("spikformer_8_512", depth=1).eval()
    fill_weights(model)                  # weights that make every layer fire (a fresh init is silent here)
    x = torch.randn(1, 3, 224, 224)
    stem_and_head = 224 * 224 * 27 * 64 * 4 + 512 * 1000 + 1000
    assert stem_and_head == 347_329_512
    tokens = 4 * 14 * 14                                        # T x N
    qkv = 3 * tokens * 512 * 512                                # 1x1 convs without bias
    fc1 = tokens * (2048 * 512 + 2048)                          # with bias
    fed_counts = ["block.0.attn.q_conv", "block.0.attn.k_conv", "block.0.attn.v_conv", "block.0.mlp.fc1_conv"]
    summaries = {}
    for mode in ("ac", "mac"):
        with torch.no_grad(), EnergyMeter(model, integer_inputs=mode) as meter:
            model(x)
        layers = {l.name: l for l in meter.layers()}
        summaries[mode] = meter.summary()
        assert summaries[mode]["count_input_layers"] == fed_counts
        if mode == "ac":
            assert summaries[mode]["macs"] == stem_and_head
            assert all(layers[n].input_rate > 0 and layers[n].macs == 0 for n in fed_counts)
        else:
            assert summaries[mode]["macs"] == stem_and_head + qkv + fc1
            assert all(layers[n].sops == 0 for n in fed_counts)
        assert layers["block.0.attn.proj_conv"].macs == 0 and layers["block.0.mlp.fc2_conv"].macs == 0  # binary in
    for mode, convention in (("ac", "papers"), ("mac", "counts_as_macs")):   # the headline is one column
        assert summaries[mode]["energy_mj"] == pytest.approx(summaries["ac"]["conventions_mj"][convention])
    assert summaries["mac"]["energy_mj"] > summaries["ac"]["energy_mj"]


def test_energy_cli_and_test_script(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tools.energy", "--model", "qkformer_cifar10dvs_2_256",
                          "--T", "4", "--fake", "--batches", "1", "--batch-size", "2",
                          "--out", str(tmp_path / "e")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "e" / "energy.json").read_text())
    assert report["T"] == 4 and report["samples"] == 2 and len(report["firing_rates"]) == 21
    assert (tmp_path / "e" / "firing_rates.png").stat().st_size > 1000
    assert (tmp_path / "e" / "energy_breakdown.png").stat().st_size > 1000
    assert set(report["conventions_mj"]) == {"papers", "counts_as_macs", "memory_aware", "ann"}
    assert "total per sample" in out.stdout and (tmp_path / "e" / "layers.csv").read_text().startswith("name,kind")


def test_attention_modules_declare_their_counts_and_the_meter_knows_no_model_class():
    source = (ROOT / "engine" / "energy.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("from models", "import models"))]
    assert imports == ["from models.memory import Announcements, bound_of"]   # the announcements, no model class

    class Gate(nn.Module):
        """A made-up attention: one spike product of size T x B x C x N, fed by its neuron 's'."""
        energy_kind, spike_sources = "toy-attention", {"q": "s"}

        def __init__(self):
            super().__init__()
            self.s = LIF(backend="torch")

        def op_counts(self, input_shape):
            return input_shape[0] * input_shape[1] * input_shape[2] * input_shape[3]

        @staticmethod
        def spike_ops(units, rates):
            return units, 3 * units * rates["q"], rates["q"]

        def forward(self, x):
            return self.s(x)

    net = nn.Sequential(Gate())
    x = torch.full((2, 4, 5, 7), 3.0)                 # T=2, B=4: every neuron fires at t=0 and t=1
    with EnergyMeter(net) as meter:
        net(x)
    [row] = [l for l in meter.layers() if l.kind == "toy-attention"]
    assert meter.samples == 2                        # the meter counts dim 0 of the model's input
    assert row.dense == 2 * 4 * 5 * 7 / 2 and row.input_rate == 1.0 and row.sops == 3 * row.dense
    for name in ("qkformer_cifar_4_384", "sglformer_cifar_4_384", "spikingformer_cifar_4_384", "spikformer_cifar_4_384"):
        model = models.build(name, embed_dim=32, num_heads=4, **({"depth": 3} if "sgl" not in name else {}))
        attention = [m for m in model.modules() if hasattr(m, "op_counts")]
        assert attention and all(dict(m.named_modules()).keys() >= set(m.spike_sources.values()) for m in attention)


def test_published_row_arithmetic():
    """A row of `tools.energy --published` (docs/energy.md's table; test_docs.py checks it equals the
    JSON): (a) = our MACs + the paper's ACs, (b) a range, (c) = (a) + traffic."""
    from tools.energy import published_row
    summary = {"macs": 1e9, "layers": [{"input": "counts", "dense": 2e9}, {"input": "spikes", "dense": 5e9}],
               "memory_aware_parts_mj": {"weights": 1.0, "inputs": 0.5, "state": 0.25}, "conventions_mj": {"ann": 9.0}}
    row = published_row("x", summary, {"acs": 3e9})
    assert row["papers_mj"] == pytest.approx(4.6 + 2.7) and row["memory_aware_mj"] == pytest.approx(7.3 + 1.75)
    assert row["counts_as_macs_mj"] == pytest.approx([4.6 * 3, 7.3 + 9.2])
    implied = published_row("x", summary, {"mj": 7.3})
    assert implied["acs"] == pytest.approx(3e9)


def test_inference_mode_is_refused_with_the_fix():
    model = TinySNN(T=2).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"needs torch.no_grad\(\), not torch.inference_mode"):
        with EnergyMeter(model):
            model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("config", ["sglformer_cifar", "sglformer_imagenet_late", "qkformer_dvs"])
def test_each_layer_reads_its_weights_once_per_time_step_or_once(config):
    """(c) reads weights once per time step, or once after the time average; SGLFormer's local
    attention folds its windows into the batch axis, which is not more time steps."""
    cls, kwargs, shape, kind = TINY[config]
    model = getattr(models, cls)(**kwargs).eval()
    fill_weights(model)
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(make_input(shape, kind))
    T = meter.summary()["T"]
    modules = dict(model.named_modules())
    for layer in meter.layers():
        if layer.kind in ("conv", "linear"):
            n = sum(p.numel() for p in modules[layer.name].parameters(recurse=False))
            steps = layer.memory["weights"] / (n * 4 * 12.5e-9)
            assert steps == pytest.approx(T) or steps == pytest.approx(1), (layer.name, steps)
