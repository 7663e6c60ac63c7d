"""Operations, firing rates and energy of a spiking network, measured with hooks, under three
conventions side by side, each with the same architecture run as a non-spiking network beside it.

**What each layer reads** is known by construction, not guessed from values: the neurons announce
their spikes, the residual sums and spike products announce spike counts (models/memory.py, the
announcements compact activation memory uses), event frames are announced as counts by the model.
Anything not announced is real-valued (the image, batch-norm outputs, averaged features). So a
silent layer's all-zero input is still real-valued where it was computed as such (the classifier).

**Operations.** Each conv/linear layer does ``dense`` operations per sample: output elements x
fan-in, plus one add per output element for the bias, over all T time steps (torch's
``FlopCounterMode`` / 2 plus the bias adds). Spiking self-attention: ``T x heads x N x d^2`` per
product, ``(min(fr_K, fr_V) + fr_Q)`` of them accumulates; QKFormer's token attention: ``T x C x N
x fr_Q`` (each attention module declares its counts, models/op_counts.py; this file imports no
model class). Batch norm, pooling and element-wise ops are not counted as compute.

**Conventions** (per layer and in total; ``integer_inputs`` picks which of (a), (b) is the headline):

(a) *papers*: a layer reading spikes performs ``rate x dense`` accumulates (AC); reading spike
    counts, k ACs per count k (``mean x dense``; QKFormer's appendix, option 1 of Spikformer's
    appendix G); reading real values, ``dense`` MACs. This reproduces the published numbers.
(b) *counts as MACs*: as (a), but a layer reading spike counts performs ``dense`` MACs (option 2 of
    Spikformer's appendix G, the default of Spikingformer's released tool, and the Spikingformer
    paper's reading of Spikformer: an integer times a float weight is a multiplication).
(c) *memory-aware*: (a)'s compute plus the memory traffic it needs under a stated model: every
    weight (32 bit) is read once per time step per sample from a 1 MB SRAM (weight-stationary
    within a time step, nothing kept across steps; once for a layer after the time average, the
    classifier); each layer reads its input once from a 32 kB
    SRAM, 1 bit per spike, 1 byte per count, 4 bytes per real value; each LIF neuron reads its
    input current and reads and writes its membrane potential (4 bytes each) every time step.
ANN: the same architecture as a non-spiking network, one time step, real-valued activations:
    every operation a MAC (attention products included), weights read once per sample, inputs 4
    bytes, each activation written once (4 bytes), no neuron state. Beside (a) and (c).

**Constants**, all from one source, Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm,
0.9 V), which is where the papers' 4.6 / 0.9 pJ come from: 32-bit float multiply 3.7 pJ + add
0.9 pJ = a MAC of 4.6 pJ; an AC is the add, 0.9 pJ; a 64-bit read costs 20 pJ from a 32 kB SRAM
(2.5 pJ per byte) and 100 pJ from a 1 MB SRAM (12.5 pJ per byte). DRAM (1.3-2.6 nJ per 64 bits)
is not assumed: with it, weight traffic grows another 13-26x.
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from models.memory import Announcements, bound_of

from .distributed import all_reduce_sum
from .firing import FiringRates

E_MAC_PJ, E_AC_PJ = 4.6, 0.9                 # 45 nm, 32-bit float (Horowitz 2014)
SRAM_1MB_PJ_PER_BYTE = 100 / 8               # weights
SRAM_32KB_PJ_PER_BYTE = 20 / 8               # activations, neuron state
BYTES_PER_INPUT = {"spikes": 1 / 8, "counts": 1.0, "real": 4.0}
STATE_BYTES_PER_NEURON_STEP = 4 + 4 + 4      # read the input current, read and write the potential
CONVENTIONS = ("papers", "counts_as_macs", "memory_aware", "ann")


@dataclass
class LayerOps:
    """One synapse layer, attention product or neuron layer, per sample. Energies in mJ."""
    name: str
    kind: str                       # conv | linear | attention | qk-attention | neuron
    input: str = "-"                # spikes | counts | real (how the input was made)
    dense: float = 0.0              # operations if every input were non-zero (all T steps)
    macs: float = 0.0               # under the headline convention
    sops: float = 0.0
    input_rate: float | None = None  # spikes: firing rate; counts: mean count per element
    energy: dict = field(default_factory=dict)   # convention -> mJ
    memory: dict = field(default_factory=dict)   # (c)'s traffic in mJ: weights, inputs, state

    @property
    def energy_mj(self) -> float:
        return (E_MAC_PJ * self.macs + E_AC_PJ * self.sops) * 1e-9


def is_attention(module: nn.Module) -> bool:
    """An attention module that declares its spike products' operation counts (models/op_counts.py)."""
    return all(hasattr(module, a) for a in ("op_counts", "spike_ops", "spike_sources", "energy_kind"))


def input_kind(x: torch.Tensor) -> str:
    """How `x` was made, from the announcements (never from its values): spikes, counts or real."""
    bound = bound_of(x)
    return "real" if bound is None else "spikes" if bound == 1 else "counts"


_KINDS = ("spikes", "counts", "real")
_WIDTH = 8     # per synapse: flops, bias adds, input sum, input elements, calls by kind (3), steps


class EnergyMeter:
    """Context manager that counts operations over every forward pass run inside it."""

    def __init__(self, model: nn.Module, integer_inputs: str = "ac"):
        if integer_inputs not in ("ac", "mac"):
            raise ValueError(f"integer_inputs must be 'ac' or 'mac', not {integer_inputs!r}")
        self.model = model
        self.integer_inputs = integer_inputs
        self.synapses = OrderedDict((n, m) for n, m in model.named_modules()
                                    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
        self.attention = OrderedDict((n, m) for n, m in model.named_modules() if is_attention(m))
        self.firing = FiringRates(model)
        self.samples = 0
        self.time_steps = 0.0      # sum over samples of the time steps each was run for
        # per synapse: [bias adds, input sum, input elements, spikes calls, counts calls, real calls,
        # time steps per call summed over calls]; sums stay on the device until the totals are read
        self._rows = {n: [0.0] * 7 for n in self.synapses}
        self._batch, self._T = 1, 1
        self._attn = {n: 0.0 for n in self.attention}        # product sizes, from each module's op_counts
        self._handles = []
        self._flops = None
        self._announcements = None

    # --- hooks -----------------------------------------------------------------------------
    def _synapse_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            row = self._rows[name]
            if module.bias is not None:
                row[0] += output.numel()
            kind = input_kind(x)
            row[3 + _KINDS.index(kind)] += 1
            row[2] += x.numel()
            # T steps in one call when T and B are merged into the leading axis (also with windows
            # folded in, SGLFormer's local attention); after the time average ([B, C]) one
            row[6] += self._T if x.shape[0] % (self._T * self._batch) == 0 else 1
            if kind != "real":
                row[1] = row[1] + x.sum(dtype=torch.float64)
        return hook

    def _attention_hook(self, name):
        def hook(module, inputs, output):
            self._attn[name] += module.op_counts(inputs[0].shape)
        return hook

    def _count_samples(self, module, inputs):
        x = inputs[0]
        self.samples += x.shape[0]
        self._batch = x.shape[0]
        self._T = x.shape[1] if x.dim() == 5 else getattr(module, "T", 1)
        self.time_steps += x.shape[0] * self._T

    def __enter__(self) -> "EnergyMeter":
        if torch.is_inference_mode_enabled():
            raise RuntimeError("EnergyMeter needs torch.no_grad(), not torch.inference_mode(): inference tensors "
                               "keep no version counter, so how each layer's input was made cannot be recorded")
        self._announcements = Announcements().__enter__()
        self._handles = [m.register_forward_hook(self._synapse_hook(n)) for n, m in self.synapses.items()]
        self._handles += [m.register_forward_hook(self._attention_hook(n)) for n, m in self.attention.items()]
        self._handles.append(self.model.register_forward_pre_hook(self._count_samples))
        self.firing.__enter__()
        self._flops = FlopCounterMode(display=False)
        self._flops.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._flops.__exit__(*exc)
        self.firing.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._announcements.__exit__(*exc)

    # --- results ---------------------------------------------------------------------------
    def _totals(self, device=None) -> tuple[float, float, dict, dict, dict]:
        """Samples, time steps, per-synapse counters, attention counts and neuron-steps, summed
        over all processes."""
        counts = self._flops.get_flop_counts()
        root = type(self.model).__name__
        flat = torch.zeros(2 + _WIDTH * len(self.synapses) + len(self.attention) + len(self.firing.layers),
                           dtype=torch.float64, device=device)
        flat[0], flat[1] = float(self.samples), self.time_steps
        for i, n in enumerate(self.synapses):
            row = self._rows[n]
            values = [sum(counts.get(f"{root}.{n}", {}).values()), row[0], row[1], row[2], *row[3:7]]
            for j, v in enumerate(values):
                flat[2 + _WIDTH * i + j] += v if isinstance(v, float | int) else v.to(flat.device)
        offset = 2 + _WIDTH * len(self.synapses)
        for i, n in enumerate(self.attention):
            flat[offset + i] = self._attn[n]
        offset += len(self.attention)
        for i, n in enumerate(self.firing.layers):
            flat[offset + i] = self.firing.counts[n]
        flat = all_reduce_sum(flat).tolist()
        synapses = {n: flat[2 + i * _WIDTH:2 + (i + 1) * _WIDTH] for i, n in enumerate(self.synapses)}
        offset = 2 + _WIDTH * len(self.synapses)
        attention = {n: flat[offset + i] for i, n in enumerate(self.attention)}
        offset += len(self.attention)
        neurons = {n: flat[offset + i] for i, n in enumerate(self.firing.layers)}
        return flat[0], flat[1], synapses, attention, neurons

    def layers(self, device=None) -> list[LayerOps]:
        """Per-layer counts and energies per sample. Under torch.distributed every process must
        call this (the counters are summed across processes), with ``device`` its device."""
        return self._layer_ops(self._totals(device), self.firing.rates(device))

    def _layer_ops(self, totals, rates: dict[str, float]) -> list[LayerOps]:
        samples, steps, synapses, attention, neurons = totals
        if not samples:
            raise RuntimeError("no forward pass was measured")
        T = steps / samples
        out = []
        for name, module in self.synapses.items():
            flops, bias, value_sum, elements, *calls, steps_sum = synapses[name]
            n_weights = sum(p.numel() for p in module.parameters(recurse=False))   # the same on every process
            dense = (flops / 2 + bias) / samples
            steps = steps_sum / max(sum(calls), 1)     # time steps one call covers (1: after pooling over T)
            # the least binary reading seen over all calls (a layer is fed the same way every time)
            kind = "real" if calls[2] else "counts" if calls[1] else "spikes" if calls[0] else "real"
            rate = value_sum / elements if kind != "real" and elements else None
            as_macs = {"papers": kind == "real", "counts_as_macs": kind != "spikes"}
            energy = {c: (E_MAC_PJ * dense if m else E_AC_PJ * dense * rate) * 1e-9 for c, m in as_macs.items()}
            in_elements = elements / samples
            traffic = {"weights": n_weights * 4 * steps * SRAM_1MB_PJ_PER_BYTE * 1e-9,
                       "inputs": in_elements * BYTES_PER_INPUT[kind] * SRAM_32KB_PJ_PER_BYTE * 1e-9}
            energy["memory_aware"] = energy["papers"] + sum(traffic.values())
            ann_traffic = (n_weights * 4 * SRAM_1MB_PJ_PER_BYTE + in_elements / steps * 4 * SRAM_32KB_PJ_PER_BYTE)
            energy["ann"] = (E_MAC_PJ * dense / steps + ann_traffic) * 1e-9
            headline = as_macs["papers" if self.integer_inputs == "ac" else "counts_as_macs"]
            out.append(LayerOps(name, "linear" if isinstance(module, nn.Linear) else "conv", kind, dense,
                                macs=dense if headline else 0.0, sops=0.0 if headline else dense * rate,
                                input_rate=rate, energy=energy, memory=traffic))
        for name, module in self.attention.items():
            sources = {key: rates[f"{name}.{neuron}"] for key, neuron in module.spike_sources.items()}
            dense, sops, rate = module.spike_ops(attention[name] / samples, sources)
            mj = E_AC_PJ * sops * 1e-9
            energy = {"papers": mj, "counts_as_macs": mj, "memory_aware": mj, "ann": E_MAC_PJ * dense / T * 1e-9}
            out.append(LayerOps(name, module.energy_kind, "spikes", dense, sops=sops, input_rate=rate,
                                energy=energy))
        for name in self.firing.layers:
            steps_per_sample = neurons[name] / samples
            state = steps_per_sample * STATE_BYTES_PER_NEURON_STEP * SRAM_32KB_PJ_PER_BYTE * 1e-9
            ann = steps_per_sample / T * 4 * SRAM_32KB_PJ_PER_BYTE * 1e-9    # one activation write
            out.append(LayerOps(name, "neuron", "real", input_rate=rates[name], memory={"state": state},
                                energy={"papers": 0.0, "counts_as_macs": 0.0, "memory_aware": state, "ann": ann}))
        return out

    def summary(self, device=None) -> dict:
        """Totals and per-layer rows; collective under torch.distributed (see :meth:`layers`)."""
        rates = self.firing.rates(device)
        totals = self._totals(device)
        layers = self._layer_ops(totals, rates)
        macs, sops = sum(l.macs for l in layers), sum(l.sops for l in layers)
        conventions = {c: sum(l.energy.get(c, 0.0) for l in layers) for c in CONVENTIONS}
        traffic = {k: sum(l.memory.get(k, 0.0) for l in layers) for k in ("weights", "inputs", "state")}
        return {"samples": int(totals[0]), "T": totals[1] / totals[0], "macs": macs, "sops": sops,
                "dense": sum(l.dense for l in layers if l.kind != "neuron"),
                "energy_mj": (E_MAC_PJ * macs + E_AC_PJ * sops) * 1e-9,
                "energy_mac_mj": E_MAC_PJ * macs * 1e-9, "energy_ac_mj": E_AC_PJ * sops * 1e-9,
                "integer_inputs": self.integer_inputs,
                "conventions_mj": conventions, "memory_aware_parts_mj": {"compute": conventions["papers"], **traffic},
                "count_input_layers": [l.name for l in layers if l.input == "counts"],
                "mean_firing_rate": sum(rates.values()) / max(len(rates), 1),
                "layers": [asdict(l) | {"energy_mj": l.energy_mj} for l in layers], "firing_rates": dict(rates)}


def format_report(summary: dict) -> str:
    rows = [f"{'layer':<38} {'kind':<12} {'input':<6} {'in rate':>8} {'dense G':>8} {'MAC G':>8} {'SOP G':>8} "
            f"{'(a) mJ':>8} {'(b) mJ':>8} {'(c) mJ':>8} {'ANN mJ':>8}"]
    for l in summary["layers"]:
        if l["kind"] == "neuron":
            continue
        rate = "-" if l["input_rate"] is None else f"{l['input_rate']:.4f}"
        e = l["energy"]
        rows.append(f"{l['name']:<38} {l['kind']:<12} {l['input']:<6} {rate:>8} {l['dense'] / 1e9:8.4f} "
                    f"{l['macs'] / 1e9:8.4f} {l['sops'] / 1e9:8.4f} {e['papers']:8.4f} {e['counts_as_macs']:8.4f} "
                    f"{e['memory_aware']:8.4f} {e['ann']:8.4f}")
    c, parts = summary["conventions_mj"], summary["memory_aware_parts_mj"]
    neurons = [l for l in summary["layers"] if l["kind"] == "neuron"]
    rows.append(f"{f'{len(neurons)} LIF layers (membrane state)':<38} {'neuron':<12} {'':<6} {'':>8} {'':>8} {'':>8} "
                f"{'':>8} {0:8.4f} {0:8.4f} {parts['state']:8.4f} {sum(l['energy']['ann'] for l in neurons):8.4f}")
    rows.append(f"{'total per sample':<38} {'':<12} {'':<6} {'':>8} {summary['dense'] / 1e9:8.4f} "
                f"{summary['macs'] / 1e9:8.4f} {summary['sops'] / 1e9:8.4f} {c['papers']:8.4f} "
                f"{c['counts_as_macs']:8.4f} {c['memory_aware']:8.4f} {c['ann']:8.4f}")
    rows.append(f"energy per sample: {summary['energy_mj']:.4f} mJ = {summary['energy_mac_mj']:.4f} (MAC, 4.6 pJ) + "
                f"{summary['energy_ac_mj']:.4f} (AC, 0.9 pJ), counts read as "
                f"{'k ACs per count' if summary['integer_inputs'] == 'ac' else 'MACs'}; mean LIF firing rate "
                f"{summary['mean_firing_rate']:.4f} over {len(summary['firing_rates'])} layers, "
                f"{summary['samples']} samples")
    rows.append(f"(a) papers {c['papers']:.4f} mJ | (b) counts as MACs {c['counts_as_macs']:.4f} mJ "
                f"({len(summary['count_input_layers'])} layers read spike counts) | (c) memory-aware "
                f"{c['memory_aware']:.4f} mJ = compute {parts['compute']:.4f} + weights {parts['weights']:.4f} + "
                f"inputs {parts['inputs']:.4f} + neuron state {parts['state']:.4f} | same network as an ANN "
                f"{c['ann']:.4f} mJ (engine/energy.py states the model and its constants)")
    return "\n".join(rows)


def plot_firing_rates(rates: dict[str, float], path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, values = list(rates), list(rates.values())
    fig, ax = plt.subplots(figsize=(8, 0.18 * len(names) + 1.2))
    ax.barh(range(len(names)), values, color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("firing rate (spikes per neuron per time step)")
    ax.set_title(title or "LIF firing rate per layer", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _group(name: str) -> str:
    """The block a layer belongs to: ``block.3.attn.q_conv`` -> ``block.3``, ``head`` -> ``head``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def plot_breakdown(summary: dict, path, title: str = "") -> None:
    """Energy per block under each convention, (c) split into compute and memory traffic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups: "OrderedDict[str, dict]" = OrderedDict()
    for l in summary["layers"]:
        g = groups.setdefault(_group(l["name"]), {c: 0.0 for c in CONVENTIONS} | {"traffic": 0.0})
        for c in CONVENTIONS:
            g[c] += l["energy"][c]
        g["traffic"] += sum(l["memory"].values())
    names = list(groups)
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(names) + 1.5))
    y = range(len(names))
    h = 0.2
    ax.barh([i - 1.5 * h for i in y], [groups[n]["papers"] for n in names], h, label="(a) papers", color="#3b7dd8")
    ax.barh([i - 0.5 * h for i in y], [groups[n]["counts_as_macs"] for n in names], h, label="(b) counts as MACs",
            color="#f28e2b")
    compute = [groups[n]["memory_aware"] - groups[n]["traffic"] for n in names]
    ax.barh([i + 0.5 * h for i in y], compute, h, label="(c) compute", color="#59a14f")
    ax.barh([i + 0.5 * h for i in y], [groups[n]["traffic"] for n in names], h, left=compute,
            label="(c) memory traffic", color="#a0cf8f")
    ax.barh([i + 1.5 * h for i in y], [groups[n]["ann"] for n in names], h, label="same network as an ANN",
            color="#9c9c9c")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("energy per sample (mJ, 45 nm; engine/energy.py)")
    ax.set_title(title or "energy per block", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(summary: dict, out, title: str) -> list[Path]:
    """``energy.json`` (everything), ``layers.csv`` (one row per layer), ``firing_rates.png`` and
    ``energy_breakdown.png`` (per block, every convention) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "energy.json", out / "layers.csv", out / "firing_rates.png", out / "energy_breakdown.png"]
    paths[0].write_text(json.dumps(summary, indent=2))
    with open(paths[1], "w", newline="") as f:
        columns = ["name", "kind", "input", "input_rate", "dense", "macs", "sops", *CONVENTIONS,
                   "weights", "inputs", "state"]
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for l in summary["layers"]:
            writer.writerow({k: l[k] for k in columns[:7]} | l["energy"] | l["memory"])
    plot_firing_rates(summary["firing_rates"], paths[2], title)
    plot_breakdown(summary, paths[3], title)
    return paths
