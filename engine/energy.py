"""Synaptic operations (SOPs), MACs, firing rates and theoretical energy, measured with hooks.

The counting convention is the one the Spikingformer and QKFormer papers state and Spikingformer's
released tool (``energy_consumption_calculation/``) implements:

* Every conv and linear layer does ``dense`` operations per sample: output elements x fan-in (the
  kernel volume per group), plus one addition per output element for the bias, all T time steps
  included. Dense counts come from torch's ``FlopCounterMode`` (FLOPs / 2) plus the bias adds.
* If the layer's input is binary (all values 0 or 1) it is spike driven: it performs
  ``SOPs = firing rate of the input x dense`` accumulate operations (AC). If the input holds
  non-negative integers (spike counts: Spikformer's, QKFormer's and SGLFormer's residual streams
  add spike tensors, so blocks see 0, 1, 2, ...), each count k costs k ACs, i.e. ``SOPs = mean
  input x dense``: QKFormer's appendix counts every conv after the first as ACs (option 1 of
  Spikformer's appendix G). ``integer_inputs="mac"`` counts such layers as MACs instead (option 2,
  the default of Spikingformer's released tool, and how the Spikingformer paper reads Spikformer:
  an integer times a float weight is a multiplication, not a synaptic event); for Spikingformer
  itself, whose conv inputs are all binary, the two agree. Every summary also gives the energy
  under the other option. Any other input (the encoding conv on the image, the classifier on
  averaged features) makes every operation a MAC.
* Spiking self-attention adds ``T x heads x N x d^2 x (min(fr_K, fr_V) + fr_Q)`` ACs: K^T V with
  binary K and V, then Q times that (N tokens, d channels per head, fr the LIF rates of Q, K, V).
  QKFormer's token Q-K attention sums binary Q over each head's channels: ``T x C x N x fr_Q`` ACs
  (the mask-times-K is a binary gate and, like other element-wise ops, is not counted).
  Each attention module declares these counts and the neurons that feed them (``op_counts``,
  ``spike_ops``, ``spike_sources``: models/op_counts.py), so this file knows no model class.
* Batch norm, LIF updates, pooling and residual additions are not counted (as in the papers).
* Energy = 4.6 pJ x MACs + 0.9 pJ x SOPs (45 nm; Horowitz, ISSCC 2014).
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .distributed import all_reduce_sum
from .firing import FiringRates

E_MAC_PJ, E_AC_PJ = 4.6, 0.9


@dataclass
class LayerOps:
    name: str
    kind: str                 # conv | linear | attention | qk-attention
    dense: float = 0.0        # operations per sample if every input were non-zero
    macs: float = 0.0         # per sample, non-spiking input
    sops: float = 0.0         # per sample, spike-driven
    input_rate: float | None = None

    @property
    def energy_mj(self) -> float:
        return (E_MAC_PJ * self.macs + E_AC_PJ * self.sops) * 1e-9


def is_attention(module: nn.Module) -> bool:
    """An attention module that declares its spike products' operation counts (models/op_counts.py)."""
    return all(hasattr(module, a) for a in ("op_counts", "spike_ops", "spike_sources", "energy_kind"))


def _input_kind(x: torch.Tensor) -> str:
    """binary (spikes), integer (non-negative spike counts) or analog (anything else)."""
    if bool(((x == 0) | (x == 1)).all()):
        return "binary"
    if bool((x >= 0).all()) and bool((x == x.round()).all()):
        return "integer"
    return "analog"


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
        self._bias = {n: 0.0 for n in self.synapses}          # bias additions (FlopCounterMode omits them)
        self._inputs = {n: [0.0, 0.0] for n in self.synapses}  # spikes, elements seen in spike inputs
        self._analog_calls = {n: 0 for n in self.synapses}    # calls whose input was real-valued
        self._integer_calls = {n: 0 for n in self.synapses}   # calls whose input held spike counts > 1
        self._attn = {n: 0.0 for n in self.attention}        # product sizes, from each module's op_counts
        self._handles = []
        self._flops = None

    # --- hooks -----------------------------------------------------------------------------
    def _synapse_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            if module.bias is not None:
                self._bias[name] += output.numel()
            kind = _input_kind(x)
            if kind == "analog":
                self._analog_calls[name] += 1
                return
            self._integer_calls[name] += kind == "integer"
            self._inputs[name][0] += x.float().sum().item()
            self._inputs[name][1] += x.numel()
        return hook

    def _attention_hook(self, name):
        def hook(module, inputs, output):
            self._attn[name] += module.op_counts(inputs[0].shape)
        return hook

    def _count_samples(self, module, inputs):
        self.samples += inputs[0].shape[0]

    def __enter__(self) -> "EnergyMeter":
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

    # --- results ---------------------------------------------------------------------------
    def _totals(self, device=None) -> tuple[float, dict, dict]:
        """Samples, per-synapse counters and attention counts, summed over all processes."""
        counts = self._flops.get_flop_counts()
        root = type(self.model).__name__
        rows = [[sum(counts.get(f"{root}.{n}", {}).values()), self._bias[n], *self._inputs[n],
                 self._analog_calls[n], self._integer_calls[n]] for n in self.synapses]
        flat = [float(self.samples)] + [v for row in rows for v in row] + [self._attn[n] for n in self.attention]
        flat = all_reduce_sum(torch.tensor(flat, dtype=torch.float64, device=device)).tolist()
        width = 6
        synapses = {n: flat[1 + i * width:1 + (i + 1) * width] for i, n in enumerate(self.synapses)}
        offset = 1 + width * len(self.synapses)
        attention = {n: flat[offset + i] for i, n in enumerate(self.attention)}
        return flat[0], synapses, attention

    def layers(self, device=None) -> list[LayerOps]:
        """Per-layer counts per sample. Under torch.distributed every process must call this
        (the counters are summed across processes), with ``device`` the process's device."""
        return self._layer_ops(self._totals(device), self.firing.rates(device))

    def _layer_ops(self, totals: tuple[float, dict, dict], rates: dict[str, float]) -> list[LayerOps]:
        samples, synapses, attention = totals
        if not samples:
            raise RuntimeError("no forward pass was measured")
        out = []
        for name, module in self.synapses.items():
            flops, bias, ones, elements, analog_calls, integer_calls = synapses[name]
            dense = (flops / 2 + bias) / samples
            spiking = elements > 0 and analog_calls == 0 and not (integer_calls and self.integer_inputs == "mac")
            rate = ones / elements if spiking else None
            out.append(LayerOps(name, "linear" if isinstance(module, nn.Linear) else "conv", dense,
                                macs=0.0 if spiking else dense, sops=dense * rate if spiking else 0.0,
                                input_rate=rate))
        for name, module in self.attention.items():
            sources = {key: rates[f"{name}.{neuron}"] for key, neuron in module.spike_sources.items()}
            dense, sops, rate = module.spike_ops(attention[name] / samples, sources)
            out.append(LayerOps(name, module.energy_kind, dense, sops=sops, input_rate=rate))
        return out

    def summary(self, device=None) -> dict:
        """Totals and per-layer rows; collective under torch.distributed (see :meth:`layers`)."""
        rates = self.firing.rates(device)
        totals = self._totals(device)
        layers = self._layer_ops(totals, rates)
        macs, sops = sum(l.macs for l in layers), sum(l.sops for l in layers)
        # the same run under the other reading of spike-count inputs (both are published conventions)
        other = "mac" if self.integer_inputs == "ac" else "ac"
        self.integer_inputs, mine = other, self.integer_inputs
        try:
            alternative = sum(l.energy_mj for l in self._layer_ops(totals, rates))
        finally:
            self.integer_inputs = mine
        integer_layers = [n for n, row in totals[1].items() if row[5] and not row[4]]
        return {"samples": int(totals[0]), "macs": macs, "sops": sops, "dense": sum(l.dense for l in layers),
                "energy_mj": (E_MAC_PJ * macs + E_AC_PJ * sops) * 1e-9,
                "energy_mac_mj": E_MAC_PJ * macs * 1e-9, "energy_ac_mj": E_AC_PJ * sops * 1e-9,
                "integer_input_layers": integer_layers, f"energy_mj_integer_inputs_{other}": alternative,
                "mean_firing_rate": sum(rates.values()) / max(len(rates), 1),
                "layers": [asdict(l) | {"energy_mj": l.energy_mj} for l in layers], "firing_rates": dict(rates)}


def format_report(summary: dict) -> str:
    rows = [f"{'layer':<42} {'kind':<12} {'in rate':>8} {'dense G':>9} {'MAC G':>9} {'SOP G':>9} {'mJ':>9}"]
    for l in summary["layers"]:
        rate = "-" if l["input_rate"] is None else f"{l['input_rate']:.4f}"
        rows.append(f"{l['name']:<42} {l['kind']:<12} {rate:>8} {l['dense'] / 1e9:9.4f} {l['macs'] / 1e9:9.4f} "
                    f"{l['sops'] / 1e9:9.4f} {l['energy_mj']:9.4f}")
    rows.append(f"{'total per sample':<42} {'':<12} {'':>8} {summary['dense'] / 1e9:9.4f} "
                f"{summary['macs'] / 1e9:9.4f} {summary['sops'] / 1e9:9.4f} {summary['energy_mj']:9.4f}")
    rows.append(f"energy per sample: {summary['energy_mj']:.4f} mJ = {summary['energy_mac_mj']:.4f} (MAC, 4.6 pJ) + "
                f"{summary['energy_ac_mj']:.4f} (AC, 0.9 pJ); mean LIF firing rate {summary['mean_firing_rate']:.4f} "
                f"over {len(summary['firing_rates'])} layers, {summary['samples']} samples")
    if summary.get("integer_input_layers"):
        [(key, other)] = [(k, v) for k, v in summary.items() if k.startswith("energy_mj_integer_inputs_")]
        as_macs = key.endswith("_mac")
        rows.append(f"{len(summary['integer_input_layers'])} layers read spike counts > 1 (residual sums), counted "
                    f"{'as k ACs per count k' if as_macs else 'as MACs'}; counted "
                    f"{'as MACs (--integer-inputs mac)' if as_macs else 'as k ACs per count k (--integer-inputs ac)'}: "
                    f"{other:.4f} mJ")
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


def write_report(summary: dict, out, title: str) -> list[Path]:
    """``energy.json`` (everything), ``layers.csv`` (one row per layer) and ``firing_rates.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "energy.json", out / "layers.csv", out / "firing_rates.png"]
    paths[0].write_text(json.dumps(summary, indent=2))
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary["layers"][0]))
        writer.writeheader()
        writer.writerows(summary["layers"])
    plot_firing_rates(summary["firing_rates"], paths[2], title)
    return paths
