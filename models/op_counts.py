"""Operation counts of the attention modules' matmul-free spike products, for energy estimates.

Each attention module declares, for engine/energy.py (which imports no model class):

* ``energy_kind``: its row label in energy reports;
* ``spike_sources``: which of its LIF neurons (names inside the module) produce the spikes of its
  products, e.g. ``{"q": "q_lif", "k": "k_lif", "v": "v_lif"}``;
* ``op_counts(input_shape)``: the size of its products for one forward of an input of that shape
  (summed by the energy meter over every call);
* ``spike_ops(units, rates)``: from that size per sample and the firing rates of ``spike_sources``,
  ``(dense operations, accumulates (ACs), input firing rate)``. The products need no MACs.

The conventions are the papers' (see engine/energy.py): spiking self-attention costs
``T x heads x N x d^2 x (min(fr_K, fr_V) + fr_Q)`` ACs (K^T V with binary K and V, then Q times
that); QKFormer's token Q-K attention sums binary Q over each head's channels, ``T x C x N x fr_Q``.
"""
from __future__ import annotations

import math


def ssa_op_counts(input_shape, num_heads: int) -> int:
    """``T x B x heads x N x d^2``: the size of K^T V and of Q (K^T V) for ``[T, B, C, ...]`` input."""
    T, B, C = input_shape[:3]
    N = math.prod(input_shape[3:])
    d = C // num_heads
    return T * B * num_heads * N * d * d


def ssa_spike_ops(units: float, rates: dict[str, float]) -> tuple[float, float, float]:
    """Dense ops of both products, their ACs (K^T V scaled by the sparser of K and V, then Q), fr_Q."""
    return 2 * units, units * (min(rates["k"], rates["v"]) + rates["q"]), rates["q"]


def token_qk_op_counts(input_shape) -> int:
    """``T x B x C x N``: the channel sum of binary Q in QKFormer's token attention."""
    T, B, C = input_shape[:3]
    return T * B * C * math.prod(input_shape[3:])


def token_qk_spike_ops(units: float, rates: dict[str, float]) -> tuple[float, float, float]:
    return units, units * rates["q"], rates["q"]
