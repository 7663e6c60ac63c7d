"""Multi-step LIF neurons (spikingjelly) with CUDA/CPU backend selection.

Every model in this package builds its neurons through :func:`lif`, which returns the same
``MultiStepLIFNode(tau, v_threshold, detach_reset=True)`` the original repositories use
(spikingjelly's default surrogate, ``Sigmoid(alpha=4)``; hard reset to 0).  The only
difference is that the backend is chosen per call from the input tensor's device:

* ``"auto"`` (default): for CUDA tensors spikingjelly's cupy kernel when cupy works (as the
  originals run), else ``"triton"``, else ``"fused"``, each step down warning once with the
  reason; for CPU tensors ``"fused"``.
* ``"torch"``: always spikingjelly's pure-torch loop (the reference).
* ``"fused"``: :class:`MultiStepLIF`, one autograd node for all T steps with a hand-written
  backward, on any device. It performs the same floating-point operations as the reference, so
  spikes, potentials and gradients are bit-identical (tested), with fewer temporaries and less
  autograd overhead. It does not keep ``v_seq`` (the per-step potentials). Under float16/bfloat16
  autocast it integrates the membrane potential in float32.
* ``"cupy"``: always the cupy kernel; a CPU tensor or a missing cupy is an error.
* ``"triton"``: :mod:`models.lif_triton`, one Triton kernel launch per direction for all T steps,
  bit-identical to the torch loop like ``"fused"``; Triton comes with torch's CUDA wheels. CUDA tensors only, except under Triton's CPU interpreter
  (``TRITON_INTERPRET=1``), which is how the tests run the kernels without a GPU.

The default comes from the ``SNN_LIF_BACKEND`` environment variable when set. Models take a
``backend=`` argument and :func:`set_backend` changes an existing model.

Neuron state (the membrane potential) lives in spikingjelly's memory dict, not in buffers, so it
never appears in ``state_dict()``. Models reset it at the start of every forward; the training
engine also calls :func:`reset_net` after each step to free the last graph's memory early.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
from spikingjelly.clock_driven import functional as _sj_functional
from spikingjelly.clock_driven import neuron as _sj_neuron

from . import memory

from .options import BACKENDS
BACKEND_ENV = "SNN_LIF_BACKEND"

_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def _lif_triton():
    # Imported on first use: importing triton costs time that CPU-only runs need not pay.
    from . import lif_triton
    return lif_triton


def cupy_unavailable_reason() -> str | None:
    """None if spikingjelly's cupy LIF kernels can run here, else a sentence saying why not."""
    if _sj_neuron.neuron_kernel is not None:
        return None
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return (f"cupy cannot be imported ({exc.__class__.__name__}: {exc}); "
                "install it with `pip install -r requirements-gpu.txt`")
    # spikingjelly swallows the real import error of its kernels; a common one is a missing
    # tensorboard, which it then reports as "CuPy is not installed".
    try:
        from spikingjelly.clock_driven import neuron_kernel  # noqa: F401
    except Exception as exc:
        return f"spikingjelly's cupy kernels failed to import ({exc.__class__.__name__}: {exc})"
    return "spikingjelly's cupy kernels were not loaded; restart Python after installing cupy"


@functools.cache
def triton_unavailable_reason(device: torch.device) -> str | None:
    """None if the Triton kernels run on `device` and match spikingjelly's loop bit for bit, else why not.

    Checked once per device by running both on a small input (spikes and input gradients).
    """
    lif_triton = _lif_triton()
    reason = lif_triton.import_error()
    if reason:
        return reason
    g = torch.Generator().manual_seed(0)
    x, grad = (torch.randn(4, 3000, generator=g) * 1.5 + 0.4).to(device), torch.randn(4, 3000, generator=g)
    try:
        with torch.inference_mode(False), torch.enable_grad():   # may be first called under no_grad
            x_t, x_r = x.clone().requires_grad_(), x.clone().requires_grad_()
            s_t, _, _ = lif_triton.TritonLIF.apply(x_t, None, 1.5, 0.5, 4.0)
            s_r = _sj_neuron.MultiStepLIFNode(tau=1.5, v_threshold=0.5, detach_reset=True)(x_r)
            torch.autograd.backward([s_t, s_r], [grad.to(device)] * 2)
    except Exception as exc:
        return f"the Triton kernels failed on {device} ({exc.__class__.__name__}: {exc})"
    if not (torch.equal(s_t, s_r) and torch.equal(x_t.grad, x_r.grad)):
        diff = (x_t.grad - x_r.grad).abs().max().item()
        return f"the Triton kernels differ from spikingjelly's loop on {device} (input gradients by up to {diff:.2e})"
    return None


def default_backend() -> str:
    """The backend models use when none is given: $SNN_LIF_BACKEND, else 'auto'."""
    return check_backend(os.environ.get(BACKEND_ENV, "auto"))


def _check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown LIF backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def check_backend(backend: str) -> str:
    """Validate a backend name; fail early when 'cupy' is asked for and cannot work here."""
    _check_name(backend)
    if backend == "cupy":
        if not torch.cuda.is_available():
            raise RuntimeError("LIF backend 'cupy' needs a CUDA GPU, and torch sees none; "
                               "use backend 'auto' or 'torch' on this machine")
        reason = cupy_unavailable_reason()
        if reason:
            raise RuntimeError(f"LIF backend 'cupy' is not usable: {reason}")
    if backend == "triton":
        reason = _lif_triton().import_error()
        if reason:
            raise RuntimeError(f"LIF backend 'triton' is not usable: {reason}; use backend 'fused'")
        if not torch.cuda.is_available() and not _lif_triton().interpreting():
            raise RuntimeError("LIF backend 'triton' needs a CUDA GPU, and torch sees none; use backend 'fused' "
                               "on this machine (TRITON_INTERPRET=1 runs the kernels on the CPU, for tests)")
    return backend


def resolve_backend(requested: str, device: torch.device) -> str:
    """The implementation ('torch', 'fused', 'cupy' or 'triton') to run for a tensor on `device`."""
    if requested in ("torch", "fused"):
        return requested
    on_cuda = device.type == "cuda"
    if requested == "cupy":
        if not on_cuda:
            raise RuntimeError(f"LIF backend 'cupy' got a tensor on {device}; move the model to "
                               "CUDA or use backend 'auto'/'torch'")
        return "cupy"
    if requested == "triton":
        if not on_cuda and not _lif_triton().interpreting():
            raise RuntimeError(f"LIF backend 'triton' got a tensor on {device}; move the model to CUDA or use "
                               "backend 'fused'")
        return "triton"
    if not on_cuda:
        return "fused"
    reason = cupy_unavailable_reason()
    if reason is None:
        return "cupy"
    _warn_once("cupy", f"LIF neurons on CUDA run without spikingjelly's cupy kernel: {reason}")
    reason = triton_unavailable_reason(device)
    if reason is None:
        return "triton"    # as fast, and bit-identical to the torch loop
    _warn_once("triton", f"LIF neurons on CUDA run without the Triton kernels either (slower fused backend): {reason}")
    return "fused"


class LIF(_sj_neuron.MultiStepLIFNode):
    """spikingjelly's ``MultiStepLIFNode(detach_reset=True)``; backend picked per call.

    Input ``[T, ...]``: the first dimension is time. Subclassing keeps spikingjelly's own tools
    (``reset_net``, monitors, ``isinstance(m, MultiStepLIFNode)``) working on our models.
    """

    is_lif = True   # how models/memory.py and models/bn_lif.py recognise one without importing this module

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, backend: str | None = None):
        super().__init__(tau=tau, v_threshold=v_threshold, detach_reset=True, backend="torch")
        # Without an explicit backend only the name is checked here: the model applies its own
        # ``backend=`` argument (or the environment's) to every neuron afterwards with
        # :func:`set_backend`, so an explicit argument always wins over $SNN_LIF_BACKEND.
        self.requested_backend = check_backend(backend) if backend else \
            _check_name(os.environ.get(BACKEND_ENV, "auto"))
        self.implementation = None  # what the last call ran: torch, fused, cupy or triton

    def backend_for(self, device: torch.device) -> str:
        """The implementation this neuron runs for a tensor on `device`."""
        return resolve_backend(self.requested_backend, device)

    def forward(self, x_seq: torch.Tensor, norm: torch.nn.Module | None = None, lif_shape=None) -> torch.Tensor:
        """Spikes of ``x_seq`` ([T, ...]). With `norm`: ``x_seq`` is that batch norm's input and the
        neuron sees its output reshaped to `lif_shape`, both in one autograd node (models/bn_lif.py;
        the caller checks :func:`models.bn_lif.applies`)."""
        if norm is not None:
            return self._norm_and_fire(x_seq, norm, lif_shape)
        # Spikes are 0/1: a compact training forward stores them as bits (models/memory.py);
        # the Triton kernel has written those bits already.
        self._bits = None
        spikes = self._spikes(x_seq)
        bits, self._bits = self._bits, None
        return memory.note_spikes(spikes, bits)

    def _norm_and_fire(self, y: torch.Tensor, norm: torch.nn.Module, lif_shape) -> torch.Tensor:
        from . import bn_lif
        self.implementation, self.backend, self.v_seq = "triton", "torch", None
        v0 = self.v if isinstance(self.v, torch.Tensor) else None
        spikes, self.v, bits = bn_lif.BatchNormLIF.apply(y, norm.weight, norm.bias, norm, self, tuple(lif_shape), v0,
                                                         memory.packing())
        return memory.note_spikes(spikes, bits if bits.numel() else None)

    def _spikes(self, x_seq: torch.Tensor) -> torch.Tensor:
        backend = self.implementation = resolve_backend(self.requested_backend, x_seq.device)
        if backend == "triton":
            self.backend = "torch"
            v0 = self.v if isinstance(self.v, torch.Tensor) else None
            # float16/bfloat16 input is integrated in float32 inside the kernels, as below
            pack = memory.packing() and torch.is_grad_enabled()
            spikes, self.v, bits = _lif_triton().TritonLIF.apply(x_seq, v0, float(self.tau), float(self.v_threshold),
                                                                 float(self.surrogate_function.alpha), pack,
                                                                 memory.tail_mode())
            self._bits = bits if bits.numel() else None
            self.v_seq = None
            return spikes
        if backend == "fused":
            self.backend = "torch"
            v0 = self.v if isinstance(self.v, torch.Tensor) else None
            # Under float16/bfloat16 autocast the membrane potential is still integrated in float32
            # (spikes are exact in any precision); only convolutions and matmuls run in low precision.
            low = x_seq.dtype in (torch.float16, torch.bfloat16)
            spikes, v = MultiStepLIF.apply(x_seq.float() if low else x_seq, v0, float(self.tau),
                                           float(self.v_threshold), float(self.surrogate_function.alpha))
            self.v, self.v_seq = v, None
            return spikes.to(x_seq.dtype) if low else spikes
        self.backend = backend
        return super().forward(x_seq)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, tau={self.tau}, detach_reset={self.detach_reset}, "
                f"backend={self.requested_backend}")


class MultiStepLIF(torch.autograd.Function):
    """All T steps of a hard-reset (to 0), detach-reset LIF with a sigmoid surrogate, as one node.

    spikingjelly's step is ``h = v + (x - v) / tau``; ``s = heaviside(h - v_th)``;
    ``v = (1 - s) * h + s * 0``. The same values with fewer operations: ``h - v_th >= 0`` exactly
    when ``h >= v_th`` (IEEE subtraction of unequal floats is never 0), and the reset leaves ``h``
    where there is no spike and 0 where there is one. The backward is what autograd computes
    through spikingjelly's graph, in its order:
    ``dh = ds * (1 - sg) * sg * alpha + dv * (1 - s)`` with ``sg = sigmoid((h - v_th) * alpha)``,
    ``dx = dh / tau``, ``dv_prev = dh - dh / tau``. Spikes, potentials and gradients are equal to
    spikingjelly's (up to the sign of zeros), which the tests check.
    """

    @staticmethod
    def forward(ctx, x_seq, v0, tau: float, v_threshold: float, alpha: float):
        h_seq = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        fired = torch.empty(x_seq.shape, dtype=torch.bool, device=x_seq.device)
        v = None if v0 is None else v0.detach()
        for t in range(x_seq.shape[0]):
            h = h_seq[t]
            if v is None:     # v = 0: 0 + (x - 0) / tau is x / tau
                torch.div(x_seq[t], tau, out=h)
            else:
                torch.sub(x_seq[t], v, out=h).div_(tau).add_(v)
            torch.ge(h, v_threshold, out=fired[t])
            v = h.masked_fill(fired[t], 0.0)
        ctx.save_for_backward(h_seq, fired)
        ctx.tau, ctx.v_threshold, ctx.alpha = tau, v_threshold, alpha
        ctx.mark_non_differentiable(v)
        ctx.set_materialize_grads(False)    # no zero-filled gradient for v: one launch less
        return fired.to(x_seq.dtype), v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        if grad_spikes is None:
            return None, None, None, None, None
        h_seq, fired = ctx.saved_tensors
        tau, v_threshold, alpha = ctx.tau, ctx.v_threshold, ctx.alpha
        # Contiguous, as the gradient autograd builds for spikingjelly's loop: the batch norm before
        # the neuron reduces over it, and a permuted layout would change its summation order.
        grad_x = torch.empty(grad_spikes.shape, dtype=grad_spikes.dtype, device=grad_spikes.device)
        grad_v = None
        for t in reversed(range(grad_spikes.shape[0])):
            sg = ((h_seq[t] - v_threshold) * alpha).sigmoid_()
            grad_h = grad_spikes[t] * (1. - sg)
            grad_h.mul_(sg).mul_(alpha)
            if grad_v is not None:   # the last step's potential feeds nothing
                grad_h.add_(grad_v.masked_fill_(fired[t], 0.0))
            torch.div(grad_h, tau, out=grad_x[t])
            grad_v = grad_h.sub_(grad_x[t])
        return grad_x, None, None, None, None


def lif(v_threshold: float = 1.0, tau: float = 2.0) -> LIF:
    """The neuron every layer uses (thresholds: 1.0, or 0.5 after attention)."""
    return LIF(tau=tau, v_threshold=v_threshold)


def reset_net(model: torch.nn.Module) -> None:
    """Reset every neuron's membrane potential; call between batches."""
    _sj_functional.reset_net(model)
