"""Count what a training step asks of the device: kernel launches and host synchronisations.

:class:`OpCensus` is a ``TorchDispatchMode`` that sees every aten operator (and every operator
registered with ``torch.library``, such as the Triton LIF kernels, which it counts as one launch
each). It sorts them into

* **syncs**: operators that make the host wait for the device, because their result is a Python
  value (``item``, ``equal``, ``allclose``, ``is_nonzero``) or their output shape depends on the
  values (``nonzero``, ``masked_select``, ``unique``...): aten's ``data_dependent_output`` and
  ``dynamic_output_shape`` tags, plus the names below;
* **launches**: operators that run a kernel; views, ``detach``, allocations (``empty``) and other
  metadata operators launch none and are left out.

It works the same on the CPU, which is how the tests prove that a step makes no host syncs and
how many launches it makes on a GPU, without one. ::

    with OpCensus() as census:
        model(x).sum().backward()
    census.syncs, census.launches, census.top()
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_NAMES = {"_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero", "nonzero_static", "allclose",
              "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
              "repeat_interleave", "bincount", "histc", "_assert_async", "tolist"}
METADATA_NAMES = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "detach_",
                  "lift_fresh", "alias", "set_", "resize_", "_unsafe_view", "_reshape_alias", "view", "as_strided",
                  "t", "transpose", "permute", "expand", "squeeze", "unsqueeze", "slice", "select", "split",
                  "unbind", "chunk", "narrow", "_to_copy_meta", "_version", "sym_size", "sym_stride",
                  "sym_numel", "sym_storage_offset", "is_same_size", "record_stream", "_has_compatible_shallow_copy_type",
                  "unfold"}
# Reads of a whole tensor into Python that bypass the dispatcher (seen as tensor methods instead).
HOST_READ_METHODS = {"tolist", "numpy", "__array__"}
_SYNC_TAGS = tuple(t for t in (getattr(torch.Tag, "data_dependent_output", None),
                               getattr(torch.Tag, "dynamic_output_shape", None)) if t is not None)


def op_name(func) -> str:
    """'aten::add' style name without the overload."""
    packet = func.overloadpacket
    namespace = getattr(packet, "_qualified_op_name", str(packet)).split("::")[0]
    return f"{namespace}::{packet.__name__}" if namespace != "aten" else packet.__name__


def is_sync(func) -> bool:
    return func.overloadpacket.__name__ in SYNC_NAMES or any(t in func.tags for t in _SYNC_TAGS)


def launches_kernel(func) -> bool:
    name = func.overloadpacket.__name__
    if name in METADATA_NAMES:
        return False
    return not getattr(func, "is_view", False)


class _HostReads(TorchFunctionMode):
    def __init__(self, census: "OpCensus"):
        super().__init__()
        self.census = census

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READ_METHODS:
            self.census.sync_ops[name] += 1
            self.census.by_phase.setdefault(self.census.phase, Counter())["syncs"] += 1
        return func(*args, **(kwargs or {}))


class OpCensus(TorchDispatchMode):
    """Counts operators by name; ``syncs`` and ``launches`` as described in the module docstring.

    ``phase`` labels what is counted (set it between parts of a step); ``by_phase`` keeps the
    sync and launch counts per label.
    """

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.sync_ops: Counter = Counter()
        self.launch_ops: Counter = Counter()
        self.phase = "step"
        self.by_phase: dict[str, Counter] = {}
        self._reads = _HostReads(self)

    def __enter__(self):
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = op_name(func)
        self.ops[name] += 1
        phase = self.by_phase.setdefault(self.phase, Counter())
        if is_sync(func):
            self.sync_ops[name] += 1
            phase["syncs"] += 1
        if launches_kernel(func):
            self.launch_ops[name] += 1
            phase["launches"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> int:
        return sum(self.sync_ops.values())

    @property
    def launches(self) -> int:
        return sum(self.launch_ops.values())

    def top(self, n: int = 15) -> list[tuple[str, int]]:
        return self.launch_ops.most_common(n)
