"""Record the aten operations of one ``reference.run_case`` and replay them on another machine.

The equivalence tests need the ORIGINAL code's gradients as THIS machine's kernels compute them:
tensors stored on one CPU round differently from another CPU's conv/matmul kernels, so they can
only be compared within a tolerance. A trace is the original program itself, one level down:
every aten call its forward and backward issued (autograd's own calls, the batch-norm buffer
updates and the gradient accumulation included), with non-tensor arguments written out and tensors
named by number. Replaying it runs the same kernels on the same values in the same order, here.

* :class:`Recorder` (a ``TorchDispatchMode``) sees each call below autograd. A tensor argument is
  one of: a leaf named by the caller (parameters and buffers by ``state_dict`` key, the input), an
  earlier call's output, a new tensor object on the storage of one of those (autograd's saved
  tensors, ``.data``; replayed as ``as_strided``), or a constant stored by value (only what the
  trace cannot derive, such as the output of a call that takes a random generator).
* :func:`replay` runs the records with the caller's leaves and returns the tensors that
  :func:`record` named as results: the logits, every parameter gradient and every buffer.
  It checks each output's shape, strides and dtype against the recording and stops with an
  error at the first difference, so a trace never replays silently wrong.

Traces are stored as xz-compressed JSON (``save``/``load``), a few hundred kB per model file.
"""
from __future__ import annotations

import base64
import contextlib
import json
import lzma
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

FORMAT = 1
_ENUMS = {"memory_format": torch.memory_format, "layout": torch.layout}


class _Unserialisable(Exception):
    pass


class Recorder(TorchDispatchMode):
    """Records every aten call made while active; ``leaves`` maps names to the starting tensors."""

    def __init__(self, leaves: dict[str, torch.Tensor]):
        super().__init__()
        self.records: list = []
        self.by_value: set[str] = set()   # calls whose outputs had to be stored by value
        self._objects: list[torch.Tensor] = []  # every tensor seen, kept alive so ids stay unique
        self._tid: dict[int, int] = {}          # id(tensor object) -> tensor number
        self._storage: dict[int, int] = {}      # storage address -> a tensor number on that storage
        for name, t in leaves.items():
            self.records.append(["leaf", self._register(t), name])

    # -- tensor numbering -------------------------------------------------------------------
    def _register(self, t: torch.Tensor) -> int:
        tid = len(self._objects)
        self._objects.append(t)
        self._tid[id(t)] = tid
        if t.untyped_storage().nbytes():
            ptr = t.untyped_storage().data_ptr()
            base = self._storage.get(ptr)
            if base is None or self._objects[base].untyped_storage().data_ptr() != ptr:
                self._storage[ptr] = tid
        return tid

    def _const(self, t: torch.Tensor) -> int:
        value = t.detach().contiguous().cpu()
        data = base64.b64encode(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"").decode()
        tid = self._register(t)
        self.records.append(["const", tid, _dtype_name(t.dtype), list(t.shape), list(t.stride()), data])
        return tid

    def ref(self, t: torch.Tensor) -> int:
        """The number of `t`, emitting a view or constant record for a tensor object not seen yet."""
        tid = self._tid.get(id(t))
        if tid is not None:
            return tid
        storage = t.untyped_storage()
        base = self._storage.get(storage.data_ptr()) if storage.nbytes() else None
        if base is not None and self._objects[base].untyped_storage().data_ptr() == storage.data_ptr() \
                and self._objects[base].dtype == t.dtype:
            tid = self._register(t)
            self.records.append(["view", tid, base, list(t.shape), list(t.stride()), t.storage_offset()])
            return tid
        return self._const(t)

    def _encode(self, a):
        if isinstance(a, torch.Tensor):
            return {"t": self.ref(a)}
        if isinstance(a, (list, tuple)):
            return [self._encode(x) for x in a]
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        if isinstance(a, torch.dtype):
            return {"dtype": _dtype_name(a)}
        if isinstance(a, torch.device):
            return {"device": str(a)}
        for kind, cls in _ENUMS.items():
            if isinstance(a, cls):
                return {kind: str(a).removeprefix("torch.")}
        raise _Unserialisable(type(a).__name__)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:  # arguments first: an in-place call changes them
            encoded = [str(func), self._encode(list(args)), {k: self._encode(v) for k, v in kwargs.items()}]
        except _Unserialisable:
            out = func(*args, **kwargs)
            self.by_value.add(str(func))
            for o in pytree.tree_leaves(out):
                if isinstance(o, torch.Tensor):
                    self._const(o)
            return out
        out = func(*args, **kwargs)
        outs = []
        for o in pytree.tree_leaves(out):
            if not isinstance(o, torch.Tensor):
                outs.append(None)
                continue
            tid = self._tid.get(id(o))
            if tid is None:
                tid = self._register(o)
            outs.append([tid, list(o.shape), list(o.stride()), o.storage_offset(), _dtype_name(o.dtype)])
        self.records.append(["op", *encoded, outs])
        return out

    def trace(self, results: dict) -> dict:
        """The trace, with `results` (tensors, or dicts of them) named for :func:`replay`."""
        def number(r):
            return {k: number(v) for k, v in r.items()} if isinstance(r, dict) else self.ref(r)
        named = number(results)  # may add view records: do this before copying the records
        return {"format": FORMAT, "records": list(self.records), "results": named,
                "by_value": sorted(self.by_value)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def record(run) -> dict:
    """Trace ``run(wrap)``, a call of ``reference.run_case(model, ..., wrap=wrap)``.

    The leaves are the model's ``state_dict`` tensors and the prepared input (``"input"``); the
    results are the logits, the parameter gradients and the buffers after the run.
    """
    captured = {}

    @contextlib.contextmanager
    def wrap(m, prepared_x):
        leaves = dict(m.state_dict(keep_vars=True))
        leaves["input"] = prepared_x
        recorder = Recorder(leaves)
        handle = m.register_forward_hook(lambda module, inputs, out: captured.setdefault("logits", out))
        try:
            with recorder:
                yield
        finally:
            handle.remove()
        # name the results (outside the mode: only view/const records can follow)
        captured["trace"] = recorder.trace({
            "logits": captured["logits"],
            "grads": {n: p.grad for n, p in m.named_parameters() if p.grad is not None},
            "buffers": dict(m.named_buffers())})

    run(wrap)
    trace = captured["trace"]
    consts = {r[1] for r in trace["records"] if r[0] == "const"}
    derived = [trace["results"]["logits"], *trace["results"]["grads"].values()]
    if any(t in consts for t in derived):
        raise RuntimeError("a result could not be derived from the trace (stored by value)")
    return trace


# -- replay ---------------------------------------------------------------------------------

def _op(name: str):
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def _decode(a, env):
    if isinstance(a, list):
        return [_decode(x, env) for x in a]
    if isinstance(a, dict):
        (kind, value), = a.items()
        if kind == "t":
            return env[value]
        if kind == "dtype":
            return getattr(torch, value)
        if kind == "device":
            return torch.device(value)
        return getattr(torch, value)  # memory_format, layout
    return a


class ReplayError(RuntimeError):
    pass


def replay(trace: dict, leaves: dict[str, torch.Tensor]) -> dict:
    """Run `trace` on `leaves` (same names as recorded; buffers are updated in place).

    Returns the recorded results with tensors in place of numbers; for :func:`record`'s traces
    ``{"logits": tensor, "grads": {name: tensor}, "buffers": {name: tensor}}``.
    """
    if trace.get("format") != FORMAT:
        raise ReplayError(f"trace format {trace.get('format')} is not {FORMAT}")
    env: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, rec in enumerate(trace["records"]):
            kind = rec[0]
            if kind == "leaf":
                env[rec[1]] = leaves[rec[2]]
            elif kind == "view":
                _, tid, base, size, stride, offset = rec
                env[tid] = env[base].as_strided(size, stride, offset)
            elif kind == "const":
                _, tid, dtype, size, stride, data = rec
                dtype = getattr(torch, dtype)
                flat = torch.frombuffer(bytearray(base64.b64decode(data)), dtype=torch.uint8) if data else \
                    torch.empty(0, dtype=torch.uint8)
                t = torch.empty_strided(size, stride, dtype=dtype)
                t.copy_(flat.view(dtype).reshape(size) if flat.numel() else torch.empty(size, dtype=dtype))
                env[tid] = t
            else:
                _, name, args, kwargs, outs = rec
                out = _op(name)(*_decode(args, env), **{k: _decode(v, env) for k, v in kwargs.items()})
                flat = pytree.tree_leaves(out)
                if len(flat) != len(outs):
                    raise ReplayError(f"record {i} ({name}): {len(flat)} outputs, recorded {len(outs)}")
                for o, spec in zip(flat, outs):
                    if spec is None:
                        continue
                    tid, size, stride, offset, dtype = spec
                    if (list(o.shape), list(o.stride()), o.storage_offset(), _dtype_name(o.dtype)) != \
                            (size, stride, offset, dtype):
                        raise ReplayError(f"record {i} ({name}): output {list(o.shape)} {list(o.stride())} "
                                          f"+{o.storage_offset()} {o.dtype}, recorded {size} {stride} "
                                          f"+{offset} {dtype}")
                    env[tid] = o

    def tensors(r):
        return {k: tensors(v) for k, v in r.items()} if isinstance(r, dict) else env[r]
    return tensors(trace["results"])


def dump_bytes(traces: dict) -> bytes:
    return lzma.compress(json.dumps(traces, separators=(",", ":")).encode(), preset=9)


def load_bytes(data: bytes) -> dict:
    return json.loads(lzma.decompress(data))


def save(path: Path, traces: dict) -> None:
    Path(path).write_bytes(dump_bytes(traces))


def load(path: Path) -> dict:
    return load_bytes(Path(path).read_bytes())
