"""Average firing rate of every LIF layer, measured with forward hooks."""
from __future__ import annotations

from collections import OrderedDict

import torch

from models import LIF
from models.memory import recomputing

from .distributed import all_reduce_sum


class FiringRates:
    """Context manager: while active, counts the spikes every LIF layer of `model` emits.

    ``rates()`` gives, per layer (in forward order of definition), the fraction of its outputs
    that were spikes, averaged over all time steps, samples and neurons seen.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layers = OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, LIF))
        # spike totals stay on the device until rates() reads them all at once (no host sync per layer)
        self.spikes: dict[str, torch.Tensor | float] = {n: 0.0 for n in self.layers}
        self.counts: dict[str, float] = {n: 0.0 for n in self.layers}
        self.handles = []

    def _hook(self, name: str):
        def record(module, inputs, output):
            if recomputing():      # a compact forward's backward runs some neurons again: count once
                return
            self.spikes[name] = self.spikes[name] + output.detach().sum(dtype=torch.float64)
            self.counts[name] += output.numel()
        return record

    def __enter__(self) -> "FiringRates":
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def rates(self, device: torch.device | None = None) -> "OrderedDict[str, float]":
        names = list(self.layers)
        totals = torch.tensor([[0.0, self.counts[n]] for n in names], dtype=torch.float64, device=device)
        for i, n in enumerate(names):
            totals[i, 0] += self.spikes[n] if isinstance(self.spikes[n], float) else self.spikes[n].to(totals.device)
        totals = all_reduce_sum(totals)
        return OrderedDict((n, (s / c) if c else 0.0) for n, (s, c) in zip(names, totals.tolist()))
