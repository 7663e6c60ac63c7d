"""Multi-step LIF neurons (spikingjelly) with CUDA/CPU backend selection.

Every model in this package builds its neurons through :func:`lif`, which returns the same
``MultiStepLIFNode(tau, v_threshold, detach_reset=True)`` the original repositories use
(spikingjelly's default surrogate, ``Sigmoid(alpha=4)``; hard reset to 0).  The only
difference is that the backend is chosen per call from the input tensor's device:

* ``"auto"`` (default): spikingjelly's fused cupy kernel for CUDA tensors when cupy is
  installed, the pure-torch loop otherwise (CPU, or CUDA without cupy, with a one-time warning).
* ``"torch"``: always the pure-torch loop.
* ``"cupy"``: always the cupy kernel; a CPU tensor or a missing cupy is an error.

The default comes from the ``SNN_LIF_BACKEND`` environment variable when set. Models take a
``backend=`` argument and :func:`set_backend` changes an existing model.

Neuron state (the membrane potential) lives in spikingjelly's memory dict, not in buffers, so it
never appears in ``state_dict()``. Models reset it at the start of every forward; the training
engine also calls :func:`reset_net` after each step to free the last graph's memory early.
"""
from __future__ import annotations

import os
import warnings

import torch
from spikingjelly.clock_driven import functional as _sj_functional
from spikingjelly.clock_driven import neuron as _sj_neuron

BACKENDS = ("auto", "torch", "cupy")
BACKEND_ENV = "SNN_LIF_BACKEND"

_warned_cuda_without_cupy = False


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


def default_backend() -> str:
    """The backend models use when none is given: $SNN_LIF_BACKEND, else 'auto'."""
    return check_backend(os.environ.get(BACKEND_ENV, "auto"))


def check_backend(backend: str) -> str:
    """Validate a backend name; fail early when 'cupy' is asked for and cannot work here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown LIF backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cupy":
        if not torch.cuda.is_available():
            raise RuntimeError("LIF backend 'cupy' needs a CUDA GPU, and torch sees none; "
                               "use backend 'auto' or 'torch' on this machine")
        reason = cupy_unavailable_reason()
        if reason:
            raise RuntimeError(f"LIF backend 'cupy' is not usable: {reason}")
    return backend


def resolve_backend(requested: str, device: torch.device) -> str:
    """The spikingjelly backend ('torch' or 'cupy') to run for a tensor on `device`."""
    global _warned_cuda_without_cupy
    if requested == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if requested == "cupy":
        if not on_cuda:
            raise RuntimeError(f"LIF backend 'cupy' got a tensor on {device}; move the model to "
                               "CUDA or use backend 'auto'/'torch'")
        return "cupy"
    if not on_cuda:
        return "torch"
    reason = cupy_unavailable_reason()
    if reason is None:
        return "cupy"
    if not _warned_cuda_without_cupy:
        warnings.warn(f"LIF neurons run on CUDA with the slow torch backend: {reason}",
                      stacklevel=3)
        _warned_cuda_without_cupy = True
    return "torch"


class LIF(_sj_neuron.MultiStepLIFNode):
    """spikingjelly's ``MultiStepLIFNode(detach_reset=True)``; backend picked per call.

    Input ``[T, ...]``: the first dimension is time. Subclassing keeps spikingjelly's own tools
    (``reset_net``, monitors, ``isinstance(m, MultiStepLIFNode)``) working on our models.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, backend: str | None = None):
        super().__init__(tau=tau, v_threshold=v_threshold, detach_reset=True, backend="torch")
        self.requested_backend = check_backend(backend or default_backend())

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self.backend = resolve_backend(self.requested_backend, x_seq.device)
        return super().forward(x_seq)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, tau={self.tau}, detach_reset={self.detach_reset}, "
                f"backend={self.requested_backend}")


def lif(v_threshold: float = 1.0, tau: float = 2.0) -> LIF:
    """The neuron every layer uses (thresholds: 1.0, or 0.5 after attention)."""
    return LIF(tau=tau, v_threshold=v_threshold)


def set_backend(model: torch.nn.Module, backend: str | None) -> torch.nn.Module:
    """Set the backend of every LIF in `model` (None: the default from $SNN_LIF_BACKEND)."""
    backend = check_backend(backend or default_backend())
    for module in model.modules():
        if isinstance(module, LIF):
            module.requested_backend = backend
    return model


def reset_net(model: torch.nn.Module) -> None:
    """Reset every neuron's membrane potential; call between batches."""
    _sj_functional.reset_net(model)
