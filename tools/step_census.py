"""What one training update of the real engine costs on a device: host syncs, kernel launches,
time and peak memory, per setup (the GPU-first step's figures; tools.gpu_check runs it).

A setup is ``backend+precision[+standard][+graph]``: ``cupy+fp16+standard`` is what the original
repositories ran; ``triton+fp16`` the default on a GPU without cupy; ``triton+bf16+graph`` the
default with ``--cuda-graph`` (float16 loss scaling cannot be captured, bfloat16 needs none).
Every update goes through engine.train_loop.train_one_epoch with the engine's optimizer (fused
AdamW), so the counts are those of a real run:

* ``syncs_per_step``: on CUDA, synchronising calls reported by ``torch.cuda.set_sync_debug_mode``;
  ``aten_syncs_per_step``: sync operators seen by tools/op_census.py (any device);
* ``launches_per_step``: on CUDA, kernel launches and graph launches seen by torch.profiler;
  ``launch_ops_per_step``: kernel-launching operators seen by op_census (any device; a graph replay
  is not an operator, so it counts only the copies into the static buffers);
* ``step_ms`` (median of timed updates) and ``peak_mb`` (CUDA peak allocated during one update).
"""
from __future__ import annotations

import statistics
import time
import types
import warnings

import torch

import models
from engine import cuda_graph
from models import neuron
from engine.optim import build_optimizer
from engine.train_loop import Precision, train_one_epoch
from tools.op_census import OpCensus

SETUPS = ("cupy+fp16+standard", "triton+fp16", "triton+bf16", "triton+bf16+graph", "triton+fp16+standard")
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                 "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


def parse(setup: str) -> dict:
    parts = setup.split("+")
    known = {"cupy", "triton", "fused", "torch", "fp32", "fp16", "bf16", "standard", "graph"}
    if parts[0] not in {"cupy", "triton", "fused", "torch"} or set(parts) - known:
        raise ValueError(f"unknown setup {setup!r}: backend+precision[+standard][+graph]")
    precision = next((p for p in parts if p in ("fp16", "bf16")), "fp32")
    return {"backend": parts[0], "precision": precision, "memory": "standard" if "standard" in parts else "compact",
            "graph": "graph" in parts}


def skip_reason(setup: str, device: torch.device) -> str | None:
    s = parse(setup)
    if device.type != "cuda" and (s["backend"] == "cupy" or s["graph"] or s["precision"] == "fp16"):
        return "needs CUDA (cupy, CUDA graphs, float16 autocast)"
    if s["backend"] == "cupy":
        reason = neuron.cupy_unavailable_reason()
        if reason:
            return reason
    return None


def _cfg(precision: str):
    return types.SimpleNamespace(accum_iter=1, clip_grad=None, clip_mode="norm", opt="adamw", lr=1e-4,
                                 weight_decay=0.05, momentum=0.9, opt_eps=None, opt_betas=None,
                                 amp=precision != "fp32", amp_dtype="bfloat16" if precision == "bf16" else "float16",
                                 cuda_graph=False, compile=False)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, setup: str, device: torch.device, batch: int, steps: int = 5, **model_kwargs) -> dict:
    """Build `name` for `setup` and train `steps` timed updates (after a warm-up, capture included)."""
    s = parse(setup)
    torch.manual_seed(0)
    model = models.build(name, backend=s["backend"], activation_memory=s["memory"], **model_kwargs).to(device).train()
    size = model_kwargs.get("img_size", 224)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g).to(device)
    cfg = _cfg(s["precision"])
    optimizer = build_optimizer(cfg, model)
    precision = Precision.from_config(cfg, device)
    scaler = precision.scaler()
    criterion = torch.nn.CrossEntropyLoss()
    graph_step = None
    if s["graph"]:
        reason = cuda_graph.eager_reason(cfg, model, model, precision, scaler)
        if reason:
            return {"status": "skipped", "reason": reason}
        graph_step = cuda_graph.GraphedTrainStep(model, criterion, optimizer, precision, cfg, lambda: None)

    def epoch(n: int):
        return train_one_epoch(model, [(x, y)] * n, optimizer, criterion, scaler, precision, 0, cfg,
                               graph_step=graph_step)

    epoch(cuda_graph.WARMUP + 1 if s["graph"] else 2)             # warm-up (and capture)
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        epoch(1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    row = {"status": "ok", "step_ms": 1000 * statistics.median(times), "img_s": batch / statistics.median(times)}
    # one update = one epoch of one batch, which adds the epoch's own read of its mean loss
    with OpCensus() as census:
        epoch(2)
    row["aten_syncs_per_step"] = (census.syncs - 1) / 2
    row["launch_ops_per_step"] = census.launches / 2
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                epoch(2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        row["syncs_per_step"] = (sum("synchroniz" in str(w.message) for w in caught) - 1) / 2
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            epoch(2)
            _sync(device)
        row["launches_per_step"] = sum(e.count for e in prof.key_averages() if e.key in LAUNCH_EVENTS) / 2
        torch.cuda.reset_peak_memory_stats(device)
        epoch(1)
        _sync(device)
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row
