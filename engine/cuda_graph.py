"""Whole-step CUDA graphs (``cuda_graph: true``, ``--cuda-graph``).

A CIFAR-size training step of these models is a few hundred small kernels; launching them from
Python costs more than running them. With ``cuda_graph`` the forward, loss, backward, gradient
clipping and optimizer step of one update are recorded once into a CUDA graph and replayed for
every later batch: one launch per step, no Python in between. What the step needs for that (no
host syncs, a capturable optimizer) is what the engine does anyway: tests/test_step_syncs.py.

* The first ``WARMUP`` updates run eagerly (libraries pick their algorithms, the allocator
  settles); the next one is captured and replayed, so every batch is trained on exactly once.
* The loader copies each batch into static input buffers. Training batches are always full (the
  loaders drop the last partial batch, as the originals' do); an evaluation batch of another
  size runs eagerly.
* The learning rate lives in a device tensor that the graph reads; the schedule's value is
  copied into it before each replay (the optimizer is torch's fused AdamW/SGD, capturable).
* Where capture cannot work the step runs eagerly and says why once: the cupy LIF backend
  (spikingjelly launches through cupy, outside torch's stream capture), float16 loss scaling (its
  overflow check reads a flag on the host), gradient accumulation, DistributedDataParallel (its
  gradient buckets are not captured here), and the update where the firing-rate meter counts
  spikes. On a machine without CUDA the key is an error.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from models import LIF, reset_net

from .errors import ConfigError

LOGGER = logging.getLogger(__name__)
WARMUP = 3   # eager updates before capture


def check_available(cfg, device: torch.device) -> None:
    """One-line error for ``cuda_graph`` on a machine or device where it cannot exist."""
    if cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(f"cuda_graph needs a CUDA device and this run uses {device}; drop --cuda-graph "
                          "(or set device: cuda on a GPU machine)")


def eager_reason(cfg, model: torch.nn.Module, net: torch.nn.Module, precision, scaler) -> str | None:
    """Why the training step of this run cannot be captured (it then runs eagerly), or None."""
    backends = {m.implementation or m.requested_backend for m in model.modules() if isinstance(m, LIF)}
    if "cupy" in backends or ("auto" in backends and _auto_is_cupy()):
        return "the cupy LIF backend launches outside torch's stream capture (use --backend triton)"
    if scaler.is_enabled():
        return "float16 loss scaling checks for overflow on the host every step (use --amp-dtype bfloat16)"
    if cfg.accum_iter > 1:
        return "gradient accumulation (accum_iter > 1) is not captured"
    if isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel's gradient buckets are not captured here"
    if cfg.compile:
        return "torch.compile manages its own CUDA graphs (mode='reduce-overhead')"
    return None


def _auto_is_cupy() -> bool:
    from models.neuron import cupy_unavailable_reason
    return cupy_unavailable_reason() is None


class GraphedTrainStep:
    """One update (forward, loss, backward, clipping, optimizer step) as a replayed CUDA graph.

    ``run(images, targets)`` returns the loss tensor (on the device) once the update is queued,
    or None when this batch must run eagerly (warm-up, a firing-rate update); the caller then
    runs its eager step.
    """

    def __init__(self, model, criterion, optimizer, precision, cfg, clip_fn):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.precision, self.cfg, self.clip_fn = precision, cfg, clip_fn
        self.graph = None
        self.eager_updates = 0

    def wants(self, metering: bool) -> bool:
        """Whether this update goes through the graph (else the caller steps eagerly)."""
        if metering:
            return False        # firing-rate hooks add operations the graph does not have
        if self.graph is None and self.eager_updates < WARMUP:
            self.eager_updates += 1
            return False
        return True

    def run(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self._capture(images, targets)
        self.static_images.copy_(images, non_blocking=True)
        self.static_targets.copy_(targets, non_blocking=True)
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            lr.fill_(group["lr"])
        self.graph.replay()
        reset_net(self.model)
        return self.static_loss

    def _capture(self, images, targets) -> None:
        self.static_images, self.static_targets = images.clone(), targets.clone()
        self.lrs = [torch.tensor(float(g["lr"]), device=images.device) for g in self.optimizer.param_groups]
        floats = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            group["lr"], group["capturable"] = lr, True
        self.optimizer.zero_grad(set_to_none=True)   # gradients are allocated inside the graph
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                with self.precision.autocast():
                    output = self.model(self.static_images)
                    loss = self.criterion(output, self.static_targets)
                loss.backward()
                self.clip_fn()
                self.optimizer.step()
        finally:
            for group, value in zip(self.optimizer.param_groups, floats):
                group["lr"] = value   # the schedule keeps writing floats; run() copies them in
        self.graph, self.static_loss = graph, loss.detach()
        reset_net(self.model)


class GraphedForward:
    """Evaluation forward as a CUDA graph for batches of the captured size (others run eagerly)."""

    def __init__(self, model, precision, amp: bool):
        self.model, self.precision, self.amp = model, precision, amp
        self.graph, self.seen = None, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        autocast = self.precision.autocast() if self.amp else contextlib.nullcontext()
        if self.graph is not None and images.shape != self.static_images.shape:
            with autocast:
                return self.model(images)      # e.g. the last, partial batch
        if self.graph is None:
            self.seen += 1
            if self.seen <= WARMUP:
                with autocast:
                    return self.model(images)
            self.static_images = images.clone()
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast:
                self.static_output = self.model(self.static_images)
            reset_net(self.model)
        self.static_images.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.static_output.clone()
