"""Training and inference speed of a model under several setups, measured side by side.

    python -m tools.benchmark --model qkformer_cifar_4_384 --batch-size 8 --img-size 32 --T 4
    python -m tools.benchmark --model qkformer_10_384 --device cuda --setups reference cupy cupy+fp16+ckpt

A setup is a '+'-joined list of: a neuron backend (``torch``: spikingjelly's loop, ``fused``,
``cupy``, ``triton``, ``auto``), a precision (``fp32``, ``bf16``, ``fp16``: autocast), ``ckpt``
(gradient checkpointing of every block), ``cl`` (channels_last weights and input), ``fastattn``
(``attention_order="fast"``: the cheaper association order of the attention products instead of
the original files'), ``compile`` (torch.compile) and ``cudagraphs`` (torch.compile with CUDA
graphs, mode "reduce-overhead").
``reference`` is ``torch+fp32``:
our model with every optimisation off, i.e. the original implementation's forward/backward
semantics. All setups start from the same weights; their timings are interleaved (reference, A,
B, reference, A, B, ...) so that load on a shared machine affects them alike, and each setup's
logits and gradients on one batch are compared with the reference's.

Reported per setup: median train-step time (forward, backward, AdamW step, neuron reset) and
images/s; median inference time; activation memory (CUDA: peak allocated during a train step;
CPU: bytes autograd saves for the backward); deviation from the reference.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
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
from models.neuron import BACKENDS  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("torch", "fused", "cupy", "triton", "auto")


def parse_setup(spec: str) -> dict:
    parts = ["torch", "fp32"] if spec == "reference" else spec.split("+")
    setup = {"name": spec, "backend": "torch", "precision": "fp32", "ckpt": False, "compile": False,
             "cl": False, "cudagraphs": False, "attention_order": "original"}
    for part in parts:
        if part in BACKENDS:
            setup["backend"] = part
        elif part in PRECISIONS:
            setup["precision"] = part
        elif part in ("ckpt", "compile", "cl", "cudagraphs"):
            setup[part] = True
        elif part == "fastattn":
            setup["attention_order"] = "fast"
        else:
            raise ValueError(f"unknown setup part {part!r} in {spec!r}")
    return setup


def default_setups(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["reference", "cupy", "cupy+fp16", "cupy+fp16+ckpt", "triton+fp16"]
    return ["reference", "fused", "fused+bf16", "fused+bf16+ckpt"]


class Runner:
    """One model + optimizer under one setup."""

    def __init__(self, setup: dict, build, state: dict, device: torch.device):
        self.setup = setup
        self.model = build(backend=setup["backend"], attention_order=setup["attention_order"]).to(device)
        self.model.load_state_dict(state)
        self.model.set_grad_checkpointing(setup["ckpt"])
        self.layout = torch.channels_last if setup.get("cl") else torch.contiguous_format
        self.model.to(memory_format=self.layout)
        self.cudagraphs = setup.get("cudagraphs", False)
        if self.cudagraphs:
            self.forward = torch.compile(self.model, mode="reduce-overhead")
        else:
            self.forward = torch.compile(self.model) if setup["compile"] else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
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

    def activation_bytes(self, x, y) -> int:
        """CUDA: peak memory of a train step above the resting level; CPU: saved-for-backward bytes."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.loss_and_backward(x, y)
            torch.cuda.synchronize(self.device)
            used = torch.cuda.max_memory_allocated(self.device) - base
        else:
            storages = {}

            def pack(t):
                if t.device.type == "cpu" and not isinstance(t, torch.nn.Parameter):
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self.loss_and_backward(x, y)
            used = sum(storages.values())
        models.reset_net(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return used

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


def run(args) -> dict:
    device = pick_device(args.device, 0)
    torch.manual_seed(args.seed)
    overrides = {k: v for k, v in dict(T=args.T, img_size=args.img_size, embed_dim=args.embed_dim,
                                        depth=args.depth, num_heads=args.num_heads).items() if v is not None}

    def build(backend, attention_order="original"):
        return build_model(Config(model=args.model, backend=backend, attention_order=attention_order,
                                  **overrides), None)

    template = build("torch")
    state = template.state_dict()
    size = args.img_size or template.pretrained_cfg["input_size"][-1]
    g = torch.Generator().manual_seed(args.seed)
    if template.input_kind == "events":
        x = (torch.rand(args.batch_size, template.T, 2, size, size, generator=g) < 0.1).float()
    else:
        x = torch.randn(args.batch_size, 3, size, size, generator=g)
    y = torch.randint(0, template.num_classes, (args.batch_size,), generator=g)
    x, y = x.to(device), y.to(device)

    setups = [parse_setup(s) for s in (args.setups or default_setups(device))]
    if setups[0]["name"] != "reference":
        setups.insert(0, parse_setup("reference"))
    runners = [Runner(s, build, state, device) for s in setups]
    reference = runners[0].outputs_and_grads(x, y)
    results = []
    for r in runners:
        results.append({"setup": r.setup["name"], "deviation": deviation(r.outputs_and_grads(x, y), reference),
                        "activation_mb": r.activation_bytes(x, y) / 2**20, "train_s": [], "infer_s": []})
    for r in runners:                                   # warm-up (and compilation)
        for _ in range(args.warmup):
            r.train_step(x, y)
            r.infer_step(x)
    for _ in range(args.repeats):                       # interleaved timing
        for r, res in zip(runners, results):
            res["train_s"].append(r.train_step(x, y))
            res["infer_s"].append(r.infer_step(x))
    ref_train = statistics.median(results[0]["train_s"])
    ref_infer = statistics.median(results[0]["infer_s"])
    for res in results:
        res["train_median_s"] = statistics.median(res["train_s"])
        res["infer_median_s"] = statistics.median(res["infer_s"])
        res["train_img_s"] = args.batch_size / res["train_median_s"]
        res["infer_img_s"] = args.batch_size / res["infer_median_s"]
        res["train_time_vs_reference"] = res["train_median_s"] / ref_train
        res["infer_time_vs_reference"] = res["infer_median_s"] / ref_infer
        res["activation_vs_reference"] = res["activation_mb"] / max(results[0]["activation_mb"], 1e-9)
    return {"model": args.model, "overrides": overrides, "batch_size": args.batch_size, "img_size": size,
            "T": template.T, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "repeats": args.repeats, "warmup": args.warmup, "results": results}


def format_table(report: dict) -> str:
    head = (f"{report['model']}  batch {report['batch_size']}, {report['img_size']} px, T={report['T']}, "
            f"{report['device']} ({report['device_name']}, {report['threads']} threads), "
            f"median of {report['repeats']}")
    rows = [head, f"{'setup':<22} {'train img/s':>11} {'step ms':>9} {'x ref':>6} {'infer img/s':>11} "
                  f"{'x ref':>6} {'act. MB':>8} {'x ref':>6} {'logits dev':>10} {'grad dev':>9}"]
    for r in report["results"]:
        rows.append(f"{r['setup']:<22} {r['train_img_s']:11.2f} {1000 * r['train_median_s']:9.1f} "
                    f"{r['train_time_vs_reference']:6.2f} {r['infer_img_s']:11.2f} {r['infer_time_vs_reference']:6.2f} "
                    f"{r['activation_mb']:8.1f} {r['activation_vs_reference']:6.2f} "
                    f"{r['deviation']['logits']:10.2e} {r['deviation']['grads']:9.2e}")
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
    args = p.parse_args(argv)
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
