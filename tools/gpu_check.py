"""One prepared GPU check: versions, neuron backends vs spikingjelly's loop, speed, memory, GPU tests.

    python -m tools.gpu_check --out gpu_check                   # one GPU, under 8 minutes
    python -m tools.gpu_check --out /tmp/dry --device cpu --tiny  # dry run of every part, tiny sizes

Parts, in this order (the most important first; each runs only if the time budget has room):

1. ``versions``: torch, CUDA, cuDNN, GPU, driver, Triton, cupy, spikingjelly, timm, TF32 flags.
1b. ``step_census``: one real training update (engine loop, fused AdamW) of QKFormer-10-384 at 224 px
   (batch 32) and the three CIFAR 4-384 models (batch 64): host syncs, kernel launches, step time
   and peak memory for the originals' setup (cupy + fp16), the default (triton + fp16, compact
   memory), bf16, bf16 + ``--cuda-graph`` and standard storage (tools/step_census.py).
2. ``backends``: each LIF backend (fused, triton, cupy) against spikingjelly's torch loop on the
   device: spikes, potentials and input gradients equal, and the largest difference; float16 and
   bfloat16 input (Triton vs fused); and each family end to end (logits, all gradients).
3. ``lif_speed``: LIF alone, N=64 x C=65536 neurons, T=4/16/32, float16 input, forward+backward,
   next to spikingjelly 2.0's published Triton figures (RTX 4090: 0.77 / 1.70 / 3.37 ms).
4. ``train_<family>``: QKFormer-10-384, Spikingformer-8-384, SGLFormer-8-384 at 224 px, T=4, batch
   32: train-step time (forward, backward, AdamW, reset) and peak CUDA memory for the torch loop
   in float32 (reference), cupy + fp16 (the originals' setup), triton (fp32), triton + fp16,
   triton + bf16; logits and gradients compared with the reference (tools/benchmark.py's Runner).
5. ``best``: candidate setups on QKFormer (channels_last, torch.compile, CUDA graphs, gradient
   checkpointing), then the fastest setup that is bit-identical in float32 and the fastest mixed-
   precision one, against the issue's targets. It leaves 150 s of the budget to the next two.
6. ``pytest_gpu``: the repository's GPU tests (``pytest -m gpu``).
7. ``train_runs``: 21 fp16 training steps of each family's recipe through ``imagenet/train.py`` on
   fake data (512 images in batches of 24), then one evaluation.

Every part runs under a time limit and a try/except: a failure, a timeout or an out-of-memory is
recorded and the next part runs. ``report.json`` is rewritten after every measurement, so a crash
loses nothing gathered before it; ``report.md`` holds the tables.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models import neuron  # noqa: E402
from tools import step_census  # noqa: E402
from tools.benchmark import Runner, deviation, parse_setup  # noqa: E402

FAMILIES = ("qkformer_10_384", "spikingformer_8_384", "sglformer_8_384")
# reference: spikingjelly's loop, float32, autograd's usual storage; cupy+fp16+standard: what the
# originals ran; the others use the models' default compact activation memory (models/memory.py).
CUPY_FP16 = "cupy+fp16+standard"
MAIN_SETUPS = ("reference", CUPY_FP16, "triton+standard", "triton", "triton+fp16", "triton+bf16")
# triton+fp16+standard: what compact activation memory costs or gains in time on a GPU
CANDIDATES = ("triton+cl", "triton+fp16+standard", "triton+fp16+ckpt", "triton+fp16+cl", "triton+fp16+compile",
              "triton+compile", "triton+fp16+cudagraphs")
SJ2_RTX4090_MS = {4: 0.77, 16: 1.70, 32: 3.37}   # spikingjelly 2.0's published Triton LIF figures
# --tiny: the same code paths on sizes a CPU runs in seconds
TINY_MODEL = {"qkformer": dict(embed_dim=16, depth=4, num_heads=2, mlp_ratio=1, num_classes=10),
              "spikingformer": dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1, num_classes=10),
              "sglformer": dict(embed_dim=24, depth=3, num_heads=2, mlp_ratio=1, num_classes=10)}


class PartTimeout(BaseException):
    """Not an Exception: libraries that catch Exception (torch.compile's fallbacks) must not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in this (main) thread after `seconds`; nests (an outer limit still holds)."""
    def expire(signum, frame):
        raise PartTimeout(f"over its limit of {seconds:.0f} s")
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer_left > 0:
        seconds = min(seconds, outer_left)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.01))


def error_text(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(exc).split("\n")[0][:300]
    return f"{exc.__class__.__name__}: {str(exc).strip()[:500]}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Report:
    """The JSON report, rewritten (atomically) whenever something is added."""

    def __init__(self, out: Path, header: dict):
        self.out = out
        self.data = dict(header, parts={})
        self.write()

    def write(self) -> None:
        tmp = self.out / "report.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.out / "report.json")
        (self.out / "report.md").write_text(markdown(self.data))

    def part(self, name: str) -> dict:
        return self.data["parts"].setdefault(name, {"status": "running"})


# --------------------------------------------------------------------------------------------------
# the parts

def part_versions(ctx) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "platform": platform.platform(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
    for name in ("triton", "cupy", "spikingjelly", "timm", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "installed")
        except Exception as exc:
            info[name] = f"not importable ({exc.__class__.__name__})"
    device = ctx["device"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    else:
        info["cpu"] = platform.processor() or platform.machine()
    info["cupy_backend"] = neuron.cupy_unavailable_reason() or "usable"
    with contextlib.suppress(Exception):
        from models import lif_triton
        info["triton_launch_options"] = lif_triton.compile_options() if lif_triton.import_error() is None else None
        info["triton_interpreter"] = lif_triton.interpreting()
    return info


def _lif_run(backend: str, x: torch.Tensor, grad: torch.Tensor, tau: float, v_th: float):
    node = neuron.LIF(tau, v_th, backend)
    x = x.clone().requires_grad_()
    spikes = node(x)
    (spikes * grad).sum().backward()
    v = node.v if isinstance(node.v, torch.Tensor) else torch.zeros(())
    return spikes.detach(), v.detach(), x.grad.detach()


def _compare(a, b) -> dict:
    (sa, va, ga), (sb, vb, gb) = a, b
    return {"spikes_equal": torch.equal(sa, sb), "v_equal": torch.equal(va, vb), "grads_equal": torch.equal(ga, gb),
            "spikes_differ": int((sa != sb).sum()), "max_abs_grad_diff": (ga.float() - gb.float()).abs().max().item()}


def available_backends(device) -> tuple[list, dict]:
    """Backends that can run on `device`, and why the others cannot."""
    from models import lif_triton
    reasons = {"fused": None, "triton": lif_triton.import_error(),
               "cupy": "needs CUDA" if device.type != "cuda" else neuron.cupy_unavailable_reason()}
    if reasons["triton"] is None and device.type != "cuda" and not lif_triton.interpreting():
        reasons["triton"] = "needs CUDA (or TRITON_INTERPRET=1)"
    return [b for b, r in reasons.items() if r is None], {b: r for b, r in reasons.items() if r is not None}


def part_backends(ctx) -> dict:
    device, tiny = ctx["device"], ctx["tiny"]
    backends, skipped = available_backends(device)
    shape = (4, 2, 300) if tiny else (4, 64, 16384)
    g = torch.Generator().manual_seed(0)
    result = {"shape": list(shape), "skipped": skipped, "lif": [], "low_precision": [], "models": []}
    def compare(row: dict, backend: str, x, grad, tau, v_th, reference) -> dict:
        try:
            row.update(_compare(_lif_run(backend, x, grad, tau, v_th), reference))
        except Exception as exc:   # e.g. a kernel that fails on this GPU: record it, check the others
            row["error"] = error_text(exc)
        return row

    # float32 with inputs of two spreads (15: far sigmoid tails, where exp's last bits and
    # denormals matter), then float64
    for dtype, spread in ((torch.float32, 1.5), (torch.float32, 15.0), (torch.float64, 1.5)):
        x = (torch.randn(shape, generator=g) * spread + 0.4).to(device, dtype)
        grad = torch.randn(shape, generator=g).to(device, dtype)
        for tau, v_th in ((2.0, 1.0), (2.0, 0.5), (1.5, 1.0), (1.5, 0.5)):
            reference = _lif_run("torch", x, grad, tau, v_th)
            for backend in backends:
                row = dict(backend=backend, tau=tau, v_th=v_th, input_std=spread, dtype=str(dtype).split(".")[-1])
                result["lif"].append(compare(row, backend, x, grad, tau, v_th, reference))
    for dtype in (torch.float16, torch.bfloat16):
        x = (torch.randn(shape, generator=g) * 1.5 + 0.4).to(device, dtype)
        grad = torch.randn(shape, generator=g).to(device, dtype)
        fused = _lif_run("fused", x, grad, 2.0, 1.0)
        for backend in [b for b in backends if b != "fused"]:
            row = dict(backend=backend, against="fused", dtype=str(dtype).split(".")[-1])
            result["low_precision"].append(compare(row, backend, x, grad, 2.0, 1.0, fused))
    size = 32
    tiny_kwargs = {"qkformer": dict(embed_dim=32, depth=3, mlp_ratio=1), "sglformer": dict(embed_dim=24, num_heads=2,
                   mlp_ratio=1, depth=1), "spikingformer": dict(embed_dim=16, num_heads=2, mlp_ratio=1, depth=1)}
    for family in [f.split("_")[0] for f in ctx["args"].families]:
        name = f"{family}_cifar_4_384"
        kw = dict(tiny_kwargs[family], T=1, num_classes=10) if tiny else dict(T=2)
        model = models.build(name, backend="torch", **kw).to(device).train()
        x = torch.randn(2 if tiny else 4, 3, size, size, generator=g).to(device)
        outs = {}
        for backend in ["torch"] + backends:
            try:
                models.set_backend(model, backend)
                model.zero_grad(set_to_none=True)
                y = model(x)
                y.square().sum().backward()
                outs[backend] = (y.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
            except Exception as exc:
                result["models"].append({"model": name, "backend": backend, "error": error_text(exc)})
        for backend in [b for b in backends if b in outs and "torch" in outs]:
            (ya, ga), (yb, gb) = outs[backend], outs["torch"]
            result["models"].append({"model": name, "backend": backend, "logits_equal": torch.equal(ya, yb),
                                     "grads_equal": all(torch.equal(a, b) for a, b in zip(ga, gb)),
                                     "max_abs_logit_diff": (ya - yb).abs().max().item(),
                                     "max_abs_grad_diff": max((a - b).abs().max().item() for a, b in zip(ga, gb))})
        del model, outs
    result["triton_probe"] = neuron.triton_unavailable_reason(device) if "triton" in backends else None
    return result


def _time_ms(fn, device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def part_lif_speed(ctx) -> dict:
    device, tiny = ctx["device"], ctx["tiny"]
    backends, skipped = available_backends(device)
    n, c = (2, 1024) if tiny else (64, 65536)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    rows = []
    result = {"N": n, "C": c, "dtype": str(dtype).split(".")[-1], "skipped": skipped, "rows": rows,
              "spikingjelly2_rtx4090_ms": SJ2_RTX4090_MS}
    for T in ((2, 4) if tiny else (4, 16, 32)):
        x = torch.randn(T, n, c, device=device, dtype=dtype).requires_grad_()
        grad = torch.randn(T, n, c, device=device, dtype=dtype)
        for backend in ["torch"] + backends:
            node = neuron.LIF(backend=backend)

            def step():
                x.grad = None
                node(x).backward(grad)
                node.reset()
            try:
                free_memory(device)
                ms = _time_ms(step, device, repeats=3 if tiny else 10, warmup=1 if tiny else 3)
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                rows.append({"T": T, "backend": backend, "ms": ms, "peak_mb": peak})
            except (Exception, PartTimeout) as exc:
                if isinstance(exc, PartTimeout):
                    raise
                rows.append({"T": T, "backend": backend, "error": error_text(exc)})
            ctx["report"].write()
        del x, grad
    by = {(r["T"], r["backend"]): r.get("ms") for r in rows}
    result["speedup_vs_torch"] = {f"{b}@T={T}": by[(T, "torch")] / by[(T, b)] for (T, b) in by
                                  if by[(T, b)] and by.get((T, "torch"))}
    T = 16 if (16, "triton") in by else max(t for t, _ in by)
    if by.get((T, "triton")) and by.get((T, "torch")):   # the issue's targets at T=16
        result[f"target_triton_T{T}_ge_5x_torch"] = by[(T, "torch")] / by[(T, "triton")] >= 5
    if by.get((T, "triton")) and by.get((T, "cupy")):
        result[f"target_triton_T{T}_at_least_as_fast_as_cupy"] = by[(T, "triton")] <= by[(T, "cupy")]
    return result


# the two targets first (a CIFAR model with CUDA graphs; QKFormer-10-384's time and memory), then the rest
CENSUS_MODELS = (("qkformer_cifar_4_384", 32, 64), ("qkformer_10_384", 224, 32),
                 ("spikingformer_cifar_4_384", 32, 64), ("sglformer_cifar_4_384", 32, 64))


def part_step_census(ctx) -> dict:
    device, tiny = ctx["device"], ctx["tiny"]
    result = {"setups": list(step_census.SETUPS), "models": {}}
    ctx["report"].part("step_census")["result"] = result
    todo = [("qkformer_cifar_4_384", 32, 2)] if tiny else CENSUS_MODELS
    for name, size, batch in todo:
        kwargs = dict(TINY_MODEL["qkformer"], T=1, img_size=size) if tiny else dict(T=4, img_size=size)
        rows = result["models"].setdefault(f"{name}@{size}px/b{batch}", {})
        for setup in step_census.SETUPS:
            reason = step_census.skip_reason(setup, device)
            limit = min(ctx["args"].setup_limit, ctx["remaining"]() - ctx["reserve"] - 5)
            if reason or limit < 10:
                rows[setup] = {"status": "skipped", "reason": reason or "time budget used up"}
                continue
            start = time.perf_counter()
            try:
                free_memory(device)
                with time_limit(limit):
                    rows[setup] = step_census.measure(name, setup, device, batch, steps=2 if tiny else 3, **kwargs)
            except (Exception, PartTimeout) as exc:
                rows[setup] = {"status": "timeout" if isinstance(exc, PartTimeout) else "failed", "error": error_text(exc)}
            rows[setup]["seconds"] = round(time.perf_counter() - start, 1)
            free_memory(device)
            ctx["report"].write()
        base = rows.get(CUPY_FP16, {})
        for row in rows.values():
            if row.get("status") == "ok" and base.get("status") == "ok":
                row["time_vs_cupy_fp16"] = row["step_ms"] / base["step_ms"]
                if row.get("peak_mb") and base.get("peak_mb"):
                    row["memory_vs_cupy_fp16"] = row["peak_mb"] / base["peak_mb"]
        targets = result.setdefault("targets", {})
        if name == "qkformer_10_384" and rows.get("triton+fp16", {}).get("time_vs_cupy_fp16"):
            targets["qkformer_10_384 default time <= 0.6x cupy+fp16"] = rows["triton+fp16"]["time_vs_cupy_fp16"] <= 0.6
            if rows["triton+fp16"].get("memory_vs_cupy_fp16"):
                targets["qkformer_10_384 default peak <= 0.4x cupy+fp16"] = \
                    rows["triton+fp16"]["memory_vs_cupy_fp16"] <= 0.4
        if "cifar" in name and rows.get("triton+bf16+graph", {}).get("time_vs_cupy_fp16"):
            targets[f"{name} default+graph time <= 0.4x cupy+fp16"] = \
                rows["triton+bf16+graph"]["time_vs_cupy_fp16"] <= 0.4
    return result


def family_kwargs(name: str, tiny: bool) -> dict:
    if not tiny:
        return dict(T=4, img_size=224)
    return dict(TINY_MODEL[name.split("_")[0]], T=1, img_size=32)


def measure_setups(ctx, name: str, setups, out: dict) -> None:
    """Run each setup of `name` (one model at a time), filling `out[setup]` as results come in."""
    device, tiny = ctx["device"], ctx["tiny"]
    kwargs = family_kwargs(name, tiny)
    batch = 2 if tiny else 32

    def build(backend, attention_order="original", activation_memory="compact"):
        return models.build(name, backend=backend, attention_order=attention_order,
                            activation_memory=activation_memory, **kwargs)

    template = build("torch")
    state = {k: v.clone() for k, v in template.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, kwargs["img_size"], kwargs["img_size"], generator=g).to(device)
    y = torch.randint(0, template.num_classes, (batch,), generator=g).to(device)
    del template
    reference = ctx["references"].get(name)
    backends, skipped = available_backends(device)
    for spec in setups:
        setup = parse_setup(spec)
        row = out.setdefault(spec, {})
        reason = (skipped.get(setup["backend"]) if setup["backend"] not in backends + ["torch"] else None)
        if device.type != "cuda" and (setup["precision"] == "fp16" or setup["cudagraphs"] or setup["compile"]):
            reason = reason or "needs CUDA in this check (fp16 autocast, compile, CUDA graphs)"
        if reason:
            row.update(status="skipped", reason=reason)
            ctx["report"].write()
            continue
        limit = ctx["remaining"]() - ctx["reserve"] - 5
        if setup["compile"] or setup["cudagraphs"]:
            limit = min(limit, ctx["args"].compile_limit)
        else:
            limit = min(limit, ctx["args"].setup_limit)
        if limit < 10:
            row.update(status="skipped", reason="time budget used up")
            ctx["report"].write()
            continue
        runner = None
        start = time.perf_counter()
        try:
            free_memory(device)
            with time_limit(limit):
                runner = Runner(setup, build, state, device)
                outputs = runner.outputs_and_grads(x, y)
                if spec == "reference":
                    reference = ctx["references"][name] = (outputs[0].cpu(), [t.cpu() for t in outputs[1]])
                if reference is not None:
                    ref_dev = (reference[0].to(device), [t.to(device) for t in reference[1]])
                    row["bit_equal"] = (torch.equal(outputs[0], ref_dev[0]) and len(outputs[1]) == len(ref_dev[1])
                                        and all(torch.equal(a, b) for a, b in zip(outputs[1], ref_dev[1])))
                    row["deviation"] = deviation(outputs, ref_dev)
                    del ref_dev
                del outputs
                for _ in range(ctx["args"].warmup):
                    runner.train_step(x, y)
                times = [runner.train_step(x, y) for _ in range(ctx["args"].repeats)]
                if device.type == "cuda":
                    sync(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    runner.train_step(x, y)
                    row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                if not tiny:
                    row["saved_mb"] = runner.saved_bytes(x, y) / 2**20
                row.update(status="ok", step_ms=1000 * statistics.median(times), steps_ms=[1000 * t for t in times],
                           img_s=batch / statistics.median(times))
        except (Exception, PartTimeout) as exc:   # out of memory, compile errors, time: record, go on
            row.update(status="timeout" if isinstance(exc, PartTimeout) else "failed", error=error_text(exc))
        finally:
            row["seconds"] = round(time.perf_counter() - start, 1)
            del runner
            free_memory(device)
            ctx["report"].write()


def part_train(ctx, name: str) -> dict:
    result = {"model": name, "batch": 2 if ctx["tiny"] else 32, **family_kwargs(name, ctx["tiny"]), "setups": {}}
    ctx["report"].part(f"train_{name}")["result"] = result
    measure_setups(ctx, name, MAIN_SETUPS, result["setups"])
    add_ratios(result["setups"])
    return result


def add_ratios(setups: dict) -> None:
    ref = setups.get("reference", {})
    cupy = setups.get(CUPY_FP16, {})
    for row in setups.values():
        if row.get("status") != "ok":
            continue
        for base, key in ((ref, "vs_reference"), (cupy, "vs_cupy_fp16")):
            if base.get("status") == "ok":
                row[f"time_{key}"] = row["step_ms"] / base["step_ms"]
                if "peak_mb" in row and "peak_mb" in base:
                    row[f"memory_{key}"] = row["peak_mb"] / base["peak_mb"]


def part_pytest_gpu(ctx) -> dict:
    tests = ["tests/test_lif_triton.py"] if ctx["tiny"] else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *tests]
    return _subprocess(ctx, cmd, limit=ctx["args"].pytest_limit)


def _subprocess(ctx, cmd, limit: float, env=None) -> dict:
    limit = min(limit, ctx["remaining"]() - ctx["reserve"] - 5)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit, 1), env=env)
        out = (proc.stdout + proc.stderr).strip().splitlines()
        return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
                "tail": out[-15:]}
    except subprocess.TimeoutExpired as exc:
        tail = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        return {"command": " ".join(cmd), "returncode": None, "error": f"over its limit of {limit:.0f} s",
                "tail": tail.strip().splitlines()[-15:]}


def part_train_runs(ctx) -> dict:
    tiny, out = ctx["tiny"], ctx["out"]
    families = ctx["args"].families[:1] if tiny else ctx["args"].families
    runs = {}
    ctx["report"].part("train_runs")["result"] = runs
    # checkpoints (hundreds of MB) go to a scratch folder; the logs are copied next to the report
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_runs_"))
    for name in families:
        run_dir = scratch / "train_runs"
        # the recipe on 512 fake images in batches of 24 (even, for mixup): 21 steps, then one evaluation
        cmd = [sys.executable, "imagenet/train.py", "-c", f"{name}.yml", "--dataset", "fake",
               "--data-dir", str(scratch / "data"), "--output", str(run_dir), "--experiment", name,
               "--batch-size", "24", "--val-batch-size", "32", "--effective-batch", "none", "--epochs", "1",
               "--warmup-epochs", "0", "--cooldown-epochs", "0", "--workers", "4",
               "--lif-backend", ctx["args"].train_backend,
               "--amp", "--amp-dtype", "float16", "--device", ctx["args"].device, "--no-tensorboard"]
        if tiny:   # 2 steps of 256, on the CPU: fused neurons, no autocast
            cmd += ["--T", "1", "--img-size", "32", "--batch-size", "256", "--val-batch-size", "128", "--no-amp",
                    "--workers", "0", "--lif-backend", "fused",
                    *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY_MODEL[name.split("_")[0]].items()), [])]
        env = dict(os.environ)
        result = _subprocess(ctx, cmd, limit=ctx["args"].train_limit, env=env)
        metrics = run_dir / name / "metrics.jsonl"
        if metrics.exists():
            result["metrics"] = [json.loads(line) for line in metrics.read_text().splitlines()[-3:]]
        for log in ("log.txt", "metrics.jsonl", "config.yaml"):
            if (run_dir / name / log).exists():
                (out / "train_runs" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy(run_dir / name / log, out / "train_runs" / name / log)
        runs[name] = result
        ctx["report"].write()
    shutil.rmtree(scratch, ignore_errors=True)
    return runs


def part_best(ctx) -> dict:
    name = ctx["args"].families[0]
    result = {"model": name, "setups": {}}
    ctx["report"].part("best")["result"] = result
    main = ctx["report"].data["parts"].get(f"train_{name}", {}).get("result", {}).get("setups", {})
    result["setups"].update(main)
    # the baselines, if the family's part did not run (e.g. --parts best)
    missing = [s for s in ("reference", CUPY_FP16) if s not in main]
    measure_setups(ctx, name, missing + list(CANDIDATES), result["setups"])
    setups = result["setups"]
    add_ratios(setups)
    ok = {k: v for k, v in setups.items() if v.get("status") == "ok" and k != "reference"}
    exact = {k: v for k, v in ok.items() if v.get("bit_equal") and parse_setup(k)["precision"] == "fp32"}
    mixed = {k: v for k, v in ok.items() if parse_setup(k)["precision"] != "fp32" and not k.startswith("cupy")}
    ref, cupy = setups.get("reference", {}), setups.get(CUPY_FP16, {})
    summary = {}
    if exact:
        best = min(exact, key=lambda k: exact[k]["step_ms"])
        summary["best_bit_equal_fp32"] = best
        if ref.get("status") == "ok":
            summary["best_bit_equal_time_vs_reference"] = exact[best]["step_ms"] / ref["step_ms"]
            summary["target_bit_equal_time_le_0.5"] = summary["best_bit_equal_time_vs_reference"] <= 0.5
    if mixed:
        best = min(mixed, key=lambda k: mixed[k]["step_ms"])
        summary["best_mixed_precision"] = best
        if cupy.get("status") == "ok":
            summary["best_mixed_time_vs_cupy_fp16"] = mixed[best]["step_ms"] / cupy["step_ms"]
            summary["target_mixed_time_le_0.6"] = summary["best_mixed_time_vs_cupy_fp16"] <= 0.6
            if "peak_mb" in mixed[best] and "peak_mb" in cupy:
                summary["best_mixed_memory_vs_cupy_fp16"] = mixed[best]["peak_mb"] / cupy["peak_mb"]
                summary["target_mixed_memory_le_0.6"] = summary["best_mixed_memory_vs_cupy_fp16"] <= 0.6
            lean = {k: v for k, v in mixed.items() if v.get("peak_mb", 1e18) <= 0.6 * cupy.get("peak_mb", 0)}
            if lean:
                summary["fastest_mixed_within_0.6_memory"] = min(lean, key=lambda k: lean[k]["step_ms"])
    result["summary"] = summary
    return result


# --------------------------------------------------------------------------------------------------
# the report as markdown tables

def _fmt(v, spec=".1f"):
    return "" if v is None else (format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))


def markdown(data: dict) -> str:
    parts = data.get("parts", {})
    v = parts.get("versions", {}).get("result", {})
    lines = [f"# GPU check, {data.get('started', '')}", "",
             f"device: {v.get('gpu') or v.get('cpu', '?')}; torch {v.get('torch')}, CUDA {v.get('cuda')}, "
             f"Triton {v.get('triton')}, cupy {v.get('cupy')}, spikingjelly {v.get('spikingjelly')}, "
             f"timm {v.get('timm')}; tiny: {data.get('tiny')}", ""]
    lines += ["| part | status | seconds | note |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p.get('status')} | {_fmt(p.get('seconds'))} | {p.get('error', '')[:120]} |")
    b = parts.get("backends", {}).get("result")
    if b:
        lines += ["", "LIF backends vs spikingjelly's torch loop (cases: tau 2/1.5 x threshold 1/0.5 x input spread):", "",
                  "| backend | cases | spikes equal | v equal | grads equal | max abs grad diff |", "|---|---|---|---|---|---|"]
        groups = {}
        for r in b["lif"]:
            groups.setdefault((r["backend"], r["dtype"]), []).append(r)
        for r in b["low_precision"]:
            groups.setdefault((r["backend"], f"{r['dtype']} input, vs fused"), []).append(r)
        for (backend, dtype), rows in groups.items():
            ok = [r for r in rows if "error" not in r]
            errors = "; ".join(sorted({r["error"][:100] for r in rows if "error" in r}))
            lines.append(f"| {backend} ({dtype}) | {len(rows)} | {sum(r['spikes_equal'] for r in ok)} | "
                         f"{sum(r['v_equal'] for r in ok)} | {sum(r['grads_equal'] for r in ok)} | "
                         f"{_fmt(max((r['max_abs_grad_diff'] for r in ok), default=None), '.2e')} {errors} |")
        lines += ["", "| model | backend | logits equal | grads equal | max abs grad diff |", "|---|---|---|---|---|"]
        for r in b["models"]:
            lines.append(f"| {r['model']} | {r['backend']} | {r.get('logits_equal')} | {r.get('grads_equal')} | "
                         f"{_fmt(r.get('max_abs_grad_diff'), '.2e')} {r.get('error', '')} |")
    s = parts.get("lif_speed", {}).get("result")
    if s:
        lines += ["", f"LIF alone, N={s['N']} x C={s['C']}, {s['dtype']}, forward+backward, ms "
                      f"(spikingjelly 2.0 Triton on an RTX 4090: {s['spikingjelly2_rtx4090_ms']}):", "",
                  "| T | backend | ms | peak MB |", "|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(f"| {r['T']} | {r['backend']} | {_fmt(r.get('ms'), '.3f')} | {_fmt(r.get('peak_mb'), '.0f')} "
                         f"{r.get('error', '')} |")
        targets = {k: v for k, v in s.items() if k.startswith("target_")}
        if targets:
            lines += ["", "targets: " + json.dumps(targets)]
    c = parts.get("step_census", {}).get("result")
    if c:
        lines += ["", "One training update (engine loop, fused AdamW): host syncs, kernel launches, time, peak memory:", "",
                  "| model | setup | status | syncs | aten syncs | launches | launch ops | step ms | x cupy+fp16 | "
                  "peak MB | mem x cupy+fp16 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for model, rows in c["models"].items():
            for setup, row in rows.items():
                lines.append(f"| {model} | {setup} | {row.get('status')} {row.get('reason', row.get('error', ''))[:60]} | "
                             f"{_fmt(row.get('syncs_per_step'))} | {_fmt(row.get('aten_syncs_per_step'))} | "
                             f"{_fmt(row.get('launches_per_step'), '.0f')} | {_fmt(row.get('launch_ops_per_step'), '.0f')} | "
                             f"{_fmt(row.get('step_ms'))} | {_fmt(row.get('time_vs_cupy_fp16'), '.2f')} | "
                             f"{_fmt(row.get('peak_mb'), '.0f')} | {_fmt(row.get('memory_vs_cupy_fp16'), '.2f')} |")
        if c.get("targets"):
            lines += ["", "targets: " + json.dumps(c["targets"])]
    for name in [n for n in parts if n.startswith("train_") and n != "train_runs"] + ["best"]:
        r = parts.get(name, {}).get("result")
        if not r:
            continue
        lines += ["", f"{name}: {r.get('model')}", "",
                  "| setup | status | step ms | img/s | peak MB | bit-equal | x reference | x cupy+fp16 | mem x cupy+fp16 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for spec, row in r.get("setups", {}).items():
            lines.append(f"| {spec} | {row.get('status')} {row.get('reason', row.get('error', ''))[:80]} | "
                         f"{_fmt(row.get('step_ms'))} | {_fmt(row.get('img_s'))} | {_fmt(row.get('peak_mb'), '.0f')} | "
                         f"{_fmt(row.get('bit_equal'))} | {_fmt(row.get('time_vs_reference'), '.2f')} | "
                         f"{_fmt(row.get('time_vs_cupy_fp16'), '.2f')} | {_fmt(row.get('memory_vs_cupy_fp16'), '.2f')} |")
        if r.get("summary"):
            lines += ["", "summary: " + json.dumps(r["summary"])]
    for name in ("pytest_gpu",):
        r = parts.get(name, {}).get("result")
        if r:
            lines += ["", f"{name}: return code {r.get('returncode')}, {(r.get('tail') or [''])[-1]}"]
    runs = parts.get("train_runs", {}).get("result") or {}
    for name, r in runs.items():
        lines += ["", f"train.py {name}: return code {r.get('returncode')}, {r.get('seconds')} s"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the runs")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (dry run)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: check every code path in seconds")
    p.add_argument("--budget", type=float, default=450, help="seconds for everything; parts beyond it are skipped")
    p.add_argument("--parts", nargs="+", help="run only these parts (default: all, in order)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="models of the train_* parts; the first one also gets the 'best' candidates")
    p.add_argument("--repeats", type=int, default=3, help="timed train steps per setup")
    p.add_argument("--warmup", type=int, default=1, help="untimed train steps per setup")
    p.add_argument("--setup-limit", type=float, default=60, help="seconds per setup")
    p.add_argument("--compile-limit", type=float, default=120, help="seconds per torch.compile/CUDA-graph setup")
    p.add_argument("--pytest-limit", type=float, default=90, help="seconds for pytest -m gpu")
    p.add_argument("--train-limit", type=float, default=60, help="seconds per train.py run")
    p.add_argument("--train-backend", default="triton", help="LIF backend of the train.py runs")
    args = p.parse_args(argv)
    if args.tiny:
        args.repeats, args.warmup = 1, 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu --tiny for a dry run", file=sys.stderr)
        sys.exit(2)
    # (name, function, seconds it needs at least, seconds it leaves for the parts after it)
    parts = [("versions", part_versions, 5, 0), ("step_census", part_step_census, 20, 200),
             ("backends", part_backends, 15, 0), ("lif_speed", part_lif_speed, 15, 0)]
    parts += [(f"train_{n}", (lambda c, n=n: part_train(c, n)), 20, 0) for n in args.families]
    parts += [("best", part_best, 20, 150), ("pytest_gpu", part_pytest_gpu, 20, 90),
              ("train_runs", part_train_runs, 20, 0)]
    unknown = set(args.parts or ()) - {p[0] for p in parts}
    if unknown:
        print(f"error: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(p[0] for p in parts)}",
              file=sys.stderr)
        sys.exit(2)
    parts = [p for p in parts if not args.parts or p[0] in args.parts]
    # on the CPU the Triton kernels run in Triton's interpreter (read at each launch; child processes inherit it)
    interpret = device.type == "cpu" and "TRITON_INTERPRET" not in os.environ
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return run_parts(args, device, parts)
    finally:
        if interpret:
            del os.environ["TRITON_INTERPRET"]


def run_parts(args, device: torch.device, parts: list) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = Report(out, {"started": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
                          "tiny": args.tiny, "args": vars(args)})
    ctx = {"device": device, "tiny": args.tiny, "args": args, "out": out, "report": report, "references": {},
           "reserve": 0, "remaining": lambda: args.budget - (time.perf_counter() - start)}
    for i, (name, fn, minimum, reserve) in enumerate(parts):
        entry = report.part(name)
        ctx["reserve"] = reserve if i + 1 < len(parts) else 0
        if ctx["remaining"]() - ctx["reserve"] < minimum:
            entry.update(status="skipped", reason="time budget used up")
            report.write()
            continue
        t0 = time.perf_counter()
        try:
            with time_limit(ctx["remaining"]() - ctx["reserve"]):
                entry["result"] = fn(ctx)
            entry["status"] = "ok"
        except (Exception, PartTimeout) as exc:
            entry.update(status="timeout" if isinstance(exc, PartTimeout) else "failed", error=error_text(exc),
                         traceback=traceback.format_exc()[-3000:])
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            with contextlib.suppress(Exception):
                free_memory(device)
            report.write()
        print(f"{name}: {entry['status']} in {entry['seconds']} s", flush=True)
    report.data["seconds"] = round(time.perf_counter() - start, 1)
    report.write()
    print((out / "report.md").read_text())
    return report.data


if __name__ == "__main__":
    main()
