"""Training and inference speed of a model under several setups, measured side by side.

    python -m tools.benchmark --model qkformer_cifar_4_384 --batch-size 8 --img-size 32 --T 4
    python -m tools.benchmark --model qkformer_10_384 --device cuda --setups reference cupy cupy+fp16+ckpt

A setup is a '+'-joined list of: a neuron backend (``torch``: spikingjelly's loop, ``fused``,
``cupy``, ``triton``, ``auto``), a precision (``fp32``, ``bf16``, ``fp16``: autocast), the
activation memory (``compact``, the models' default, or ``standard``: see models/memory.py),
``ckpt`` (gradient checkpointing of every block), ``cl`` (channels_last weights and input),
``fastattn`` (``attention_order="fast"``: the cheaper association order of the attention products
instead of the original files'), ``nchwpool`` (CPU max-pooling in the NCHW layout, as the
originals, instead of models.layers.MaxPool's channels_last computation), ``compile``
(torch.compile) and ``cudagraphs`` (torch.compile with CUDA graphs, mode "reduce-overhead").
Unnamed parts are torch, fp32 and compact. ``reference`` is ``torch+fp32+standard+nchwpool``:
our model with every optimisation off, i.e. the original implementation's numerics and storage. ``default`` is ``auto+fp32+compact``: what a
model runs with when nothing is set. All setups start from the same weights; their timings are
interleaved (reference, A, B, reference, A, B, ...) so that load on a shared machine affects them
alike, and each setup's logits and gradients on one batch are compared with the reference's.

Reported per setup: median train-step time (forward, backward, AdamW step, neuron reset) and
images/s; median inference time; host syncs and kernel-launching operators of one train step
(tools/op_census.py; on the CPU these are the operators a GPU would launch, the Triton kernels
under ``TRITON_INTERPRET=1`` included); memory saved for backward (what the forward leaves allocated
for the backward: CUDA allocated bytes, CPU heap bytes from glibc's mallinfo2); peak memory of a
train step above the resting level (CUDA: peak allocated; CPU: peak RSS of a fresh process per
setup, ``--no-peak`` skips it); deviation from the reference (0 = bit-identical).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import subprocess
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.distributed import pick_device  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.factories import build_model  # noqa: E402
from models.layers import MaxPool  # noqa: E402
from models.options import ACTIVATION_MEMORY as MEMORY, BACKENDS  # noqa: E402
from tools.op_census import OpCensus  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"reference": "torch+fp32+standard+nchwpool", "default": "auto+fp32+compact"}


def parse_setup(spec: str) -> dict:
    """A setup name -> its settings; ``reference``/``default`` may start a name (``default+ckpt``)."""
    head, _, rest = spec.partition("+")
    parts = ALIASES[head].split("+") + (rest.split("+") if rest else []) if head in ALIASES else spec.split("+")
    setup = {"name": spec, "backend": "torch", "precision": "fp32", "ckpt": False, "compile": False,
             "cl": False, "cudagraphs": False, "attention_order": "original", "activation_memory": "compact",
             "nchwpool": False}
    for part in parts:
        if part in BACKENDS:
            setup["backend"] = part
        elif part in PRECISIONS:
            setup["precision"] = part
        elif part in MEMORY:
            setup["activation_memory"] = part
        elif part in ("ckpt", "compile", "cl", "cudagraphs", "nchwpool"):
            setup[part] = True
        elif part == "fastattn":
            setup["attention_order"] = "fast"
        else:
            raise ValueError(f"unknown setup part {part!r} in {spec!r}")
    return setup


def default_setups(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["reference", "cupy+fp16+standard", "default", "default+fp16", "default+bf16", "default+ckpt"]
    return ["reference", "default", "default+bf16", "default+ckpt", "fused+standard"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_reader():
    """Bytes the C heap has handed out (glibc's mallinfo2: mmapped + arena blocks in use), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def used() -> int:
        info = libc.mallinfo2()
        return info.hblkhd + info.uordblks
    return used


HEAP_BYTES = _heap_reader()


def _trim_heap() -> None:
    """Give the heap's free memory back to the system (glibc), so that RSS counts live memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Runner:
    """One model + optimizer under one setup."""

    def __init__(self, setup: dict, build, state: dict, device: torch.device):
        self.setup = setup
        self.model = build(backend=setup["backend"], attention_order=setup["attention_order"],
                           activation_memory=setup["activation_memory"]).to(device)
        self.model.load_state_dict(state)
        for m in self.model.modules():
            if isinstance(m, MaxPool):
                m.channels_last_cpu = not setup["nchwpool"]
        self.model.set_grad_checkpointing(setup["ckpt"])
        self.layout = torch.channels_last if setup.get("cl") else torch.contiguous_format
        self.model.to(memory_format=self.layout)
        self.cudagraphs = setup.get("cudagraphs", False)
        if self.cudagraphs:
            self.forward = torch.compile(self.model, mode="reduce-overhead")
        else:
            self.forward = torch.compile(self.model) if setup["compile"] else self.model
        # the engine's optimizer: torch's fused AdamW (no host sync; engine/optim.py)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.device = device
        dtype = PRECISIONS[setup["precision"]]
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def loss_and_backward(self, x, y):
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.layout)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()   # the last step's outputs may be overwritten
        with self.autocast():
            out = self.forward(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.scaler.scale(loss).backward()
        return out

    def train_step(self, x, y) -> float:
        self.model.train()
        self.sync()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_and_backward(x, y)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        models.reset_net(self.model)
        self.sync()
        return time.perf_counter() - start

    @torch.no_grad()
    def infer_step(self, x) -> float:
        self.model.eval()
        self.sync()
        start = time.perf_counter()
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.layout)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            self.forward(x)
        models.reset_net(self.model)
        self.sync()
        return time.perf_counter() - start

    def saved_bytes(self, x, y) -> int | None:
        """Memory the forward leaves allocated for the backward (CUDA: allocated bytes; CPU: C
        heap bytes), measured between the forward and the backward of one train step."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        cuda = self.device.type == "cuda"
        if not cuda and HEAP_BYTES is None:
            return None
        self.sync()
        before = torch.cuda.memory_allocated(self.device) if cuda else HEAP_BYTES()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            out = self.forward(x.contiguous(memory_format=self.layout) if x.dim() == 4 else x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.sync()
        used = (torch.cuda.memory_allocated(self.device) if cuda else HEAP_BYTES()) - before
        self.scaler.scale(loss).backward()
        del out, loss
        models.reset_net(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return used

    def peak_bytes(self, x, y) -> int:
        """Peak memory of one train step above the level before it (CUDA: allocated; CPU: the
        process's peak RSS, reset through /proc/self/clear_refs: run in a fresh process)."""
        self.train_step(x, y)                  # optimizer state and caches exist from here on
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.train_step(x, y)
            return torch.cuda.max_memory_allocated(self.device) - base
        _trim_heap()                                       # RSS := live memory
        Path("/proc/self/clear_refs").write_text("5")      # peak RSS := current RSS
        base = _status_kb("VmRSS")
        self.train_step(x, y)
        return (_status_kb("VmHWM") - base) * 1024

    def outputs_and_grads(self, x, y):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_and_backward(x, y).detach().float().clone()   # CUDA graphs reuse the output memory
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        grads = [p.grad.detach().float() / scale for p in self.model.parameters() if p.grad is not None]
        models.reset_net(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return out, grads


def deviation(a, b) -> dict:
    """Logits: max |a - b| / max |b|; gradients: relative L2 over all parameters."""
    (out_a, grads_a), (out_b, grads_b) = a, b
    num = sum(((ga - gb) ** 2).sum().item() for ga, gb in zip(grads_a, grads_b))
    den = sum((gb ** 2).sum().item() for gb in grads_b)
    return {"logits": ((out_a - out_b).abs().max() / out_b.abs().max().clamp_min(1e-12)).item(),
            "grads": (num / max(den, 1e-30)) ** 0.5}


def prepare(args):
    """(device, build, weights, x, y, template facts) for the run: the same in every process."""
    device = pick_device(args.device, 0)
    torch.manual_seed(args.seed)
    overrides = {k: v for k, v in dict(T=args.T, img_size=args.img_size, embed_dim=args.embed_dim,
                                        depth=args.depth, num_heads=args.num_heads).items() if v is not None}

    def build(backend, attention_order="original", activation_memory="compact"):
        return build_model(Config(model=args.model, backend=backend, attention_order=attention_order,
                                  activation_memory=activation_memory, **overrides), None)

    template = build("torch")
    state = template.state_dict()
    size = args.img_size or template.pretrained_cfg["input_size"][-1]
    g = torch.Generator().manual_seed(args.seed)
    if template.input_kind == "events":
        x = (torch.rand(args.batch_size, template.T, 2, size, size, generator=g) < 0.1).float()
    else:
        x = torch.randn(args.batch_size, 3, size, size, generator=g)
    y = torch.randint(0, template.num_classes, (args.batch_size,), generator=g)
    facts = {"overrides": overrides, "img_size": size, "T": template.T}
    del template
    return device, build, state, x.to(device), y.to(device), facts


def peak_in_fresh_process(args, spec: str) -> float | None:
    """Peak MB of one train step of `spec`, measured in a new Python process (CPU RSS peaks
    cannot be reset for one allocation pattern inside a process that ran others)."""
    argv = [sys.executable, "-m", "tools.benchmark", "--peak-of", spec, "--model", args.model,
            "--batch-size", str(args.batch_size), "--device", args.device, "--seed", str(args.seed)]
    for flag in ("img_size", "T", "embed_dim", "depth", "num_heads"):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    # glibc: large blocks from mmap and returned at free, so the RSS peak follows live memory
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), MALLOC_MMAP_THRESHOLD_="65536",
               MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, env=env)
    if proc.returncode != 0:
        print(f"warning: peak memory of {spec} not measured: {proc.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def run(args) -> dict:
    device, build, state, x, y, facts = prepare(args)
    setups = [parse_setup(s) for s in (args.setups or default_setups(device))]
    if setups[0]["name"] != "reference":
        setups.insert(0, parse_setup("reference"))
    runners = [Runner(s, build, state, device) for s in setups]
    reference = runners[0].outputs_and_grads(x, y)
    results = []
    for r in runners:
        saved = r.saved_bytes(x, y)
        results.append({"setup": r.setup["name"], "settings": {k: v for k, v in r.setup.items() if k != "name"},
                        "deviation": deviation(r.outputs_and_grads(x, y), reference),
                        "saved_mb": None if saved is None else saved / 2**20, "train_s": [], "infer_s": []})
    for r in runners:                                   # warm-up (and compilation)
        for _ in range(args.warmup):
            r.train_step(x, y)
            r.infer_step(x)
    for r, res in zip(runners, results):                # what a step asks of the device (tools/op_census.py)
        with OpCensus() as census:
            r.train_step(x, y)
        res["step_syncs"], res["step_launches"] = census.syncs, census.launches
        res["step_sync_ops"] = dict(census.sync_ops)
    for _ in range(args.repeats):                       # interleaved timing
        for r, res in zip(runners, results):
            res["train_s"].append(r.train_step(x, y))
            res["infer_s"].append(r.infer_step(x))
    for r, res in zip(runners, results):
        if device.type == "cuda":
            res["peak_mb"] = r.peak_bytes(x, y) / 2**20
        else:
            res["peak_mb"] = peak_in_fresh_process(args, res["setup"]) if args.peak else None
    del runners
    ref = results[0]
    for res in results:
        res["train_median_s"] = statistics.median(res["train_s"])
        res["infer_median_s"] = statistics.median(res["infer_s"])
        res["train_img_s"] = args.batch_size / res["train_median_s"]
        res["infer_img_s"] = args.batch_size / res["infer_median_s"]
        res["train_time_vs_reference"] = res["train_median_s"] / ref["train_median_s"]
        res["infer_time_vs_reference"] = res["infer_median_s"] / ref["infer_median_s"]
        for key in ("saved_mb", "peak_mb"):
            ok = res[key] is not None and ref[key]
            res[key.replace("_mb", "_vs_reference")] = res[key] / ref[key] if ok else None
    return {"model": args.model, "overrides": facts["overrides"], "batch_size": args.batch_size,
            "img_size": facts["img_size"], "T": facts["T"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "repeats": args.repeats, "warmup": args.warmup, "results": results}


def peak_only(args) -> dict:
    device, build, state, x, y, _ = prepare(args)
    runner = Runner(parse_setup(args.peak_of), build, state, device)
    return {"setup": args.peak_of, "peak_mb": runner.peak_bytes(x, y) / 2**20}


def _mb(value, ratio) -> str:
    return f"{'-':>8} {'-':>5}" if value is None else f"{value:8.1f} {ratio:5.2f}"


def format_table(report: dict) -> str:
    head = (f"{report['model']}  batch {report['batch_size']}, {report['img_size']} px, T={report['T']}, "
            f"{report['device']} ({report['device_name']}, {report['threads']} threads), "
            f"median of {report['repeats']}")
    rows = [head, f"{'setup':<24} {'train img/s':>11} {'step ms':>9} {'x ref':>6} {'infer img/s':>11} "
                  f"{'x ref':>6} {'saved MB':>8} {'x ref':>5} {'peak MB':>8} {'x ref':>5} {'logits dev':>10} "
                  f"{'grad dev':>9} {'syncs':>5} {'launches':>8}"]
    for r in report["results"]:
        rows.append(f"{r['setup']:<24} {r['train_img_s']:11.2f} {1000 * r['train_median_s']:9.1f} "
                    f"{r['train_time_vs_reference']:6.2f} {r['infer_img_s']:11.2f} {r['infer_time_vs_reference']:6.2f} "
                    f"{_mb(r['saved_mb'], r['saved_vs_reference'])} {_mb(r['peak_mb'], r['peak_vs_reference'])} "
                    f"{r['deviation']['logits']:10.2e} {r['deviation']['grads']:9.2e} {r['step_syncs']:5d} "
                    f"{r['step_launches']:8d}")
    return "\n".join(rows)


FAMILY_NAMES = {"qkformer": "QKFormer", "spikingformer": "Spikingformer", "sglformer": "SGLFormer"}


def markdown_table(paths: list[str]) -> str:
    """docs/performance.md's table, from benchmark JSON reports (``--table``): ratios to each
    report's reference, host syncs and kernel-launching operators of one train step."""
    rows = ["| model | setup | train img/s | step time | inference time | saved for backward | peak memory | "
            "syncs / step | launches / step | deviation |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        report = json.loads(Path(path).read_text())
        family, _, size = report["model"].partition("_")
        name = f"{FAMILY_NAMES.get(family, family)} {size.split('_', 1)[-1].replace('_', '-')}"
        ref = report["results"][0]
        for i, r in enumerate(report["results"]):
            saved = f"{r['saved_vs_reference']:.2f}" if r.get("saved_vs_reference") is not None else "-"
            peak = f"{r['peak_vs_reference']:.2f}" if r.get("peak_vs_reference") is not None else "-"
            if i == 0:
                saved += f" ({ref['saved_mb']:.0f} MB)" if ref.get("saved_mb") else ""
                peak += f" ({ref['peak_mb']:.0f} MB)" if ref.get("peak_mb") else ""
            dev = r["deviation"]
            exact = dev["logits"] == 0 and dev["grads"] == 0
            deviation = "0" if i == 0 else ("0 (bit-identical)" if exact else f"{dev['grads']:.1e} (grads)")
            rows.append(f"| {name if i == 0 else ''} | {r['setup']} | {r['train_img_s']:.2f} | "
                        f"{r['train_time_vs_reference']:.2f} | {r['infer_time_vs_reference']:.2f} | {saved} | {peak} | "
                        f"{r.get('step_syncs', '-')} | {r.get('step_launches', '-')} | {deviation} |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="qkformer_cifar_4_384", help="a registered variant")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, help="input side (default: the variant's)")
    p.add_argument("--T", type=int, help="time steps (default: the variant's)")
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--setups", nargs="+", help="setups to compare (default: reference and the device's optimised ones)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--no-peak", dest="peak", action="store_false",
                   help="CPU: skip the peak-memory runs (one fresh process per setup)")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)   # internal: one setup's peak, in this process
    p.add_argument("--table", nargs="+", metavar="JSON", help="print docs/performance.md's markdown table of these reports and stop")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return {}
    if args.peak_of:
        print(json.dumps(peak_only(args)))
        return {}
    try:
        report = run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
