"""The multi-step LIF neuron as two Triton kernels: the ``"triton"`` backend of models/neuron.py.

One launch runs all T forward steps and one launch all T backward steps; each program owns a
block of neurons and keeps its membrane potential (forward) or potential gradient (backward) in
registers while it walks through time. It computes what spikingjelly's torch loop computes
(hard reset to 0, detached reset, sigmoid surrogate), with the same floating-point operations in
the same order, as the tensor operations do on the tensors' device:

* forward: ``h = v + (x - v) / tau``; spike ``h >= v_th``; ``v = h`` or 0 after a spike.
  Starting from ``v = 0`` this is also what spikingjelly's first step computes (``0. + (x - 0.) / tau``).
* backward: ``sg = sigmoid((h - v_th) * alpha)``; ``dh = ds * (1 - sg) * sg * alpha + dv``
  (``dv`` only where the neuron did not fire); ``dx = dh / tau``; ``dv_prev = dh - dx``.

Three device details decide the last bit, and the kernels follow torch on each:

* ``tensor / python_float`` on CUDA is ``tensor * (1 / tau)`` with the reciprocal rounded in the
  tensor's precision (torch's ``div_true_kernel_cuda``); on CPU it is a true division.
* torch's CUDA sigmoid is ``1 / (1 + expf(-z))`` with the accurate ``expf`` (libdevice's
  ``__nv_expf``) and an IEEE division; Triton's default ``/`` and ``tl.exp`` are approximations,
  so the kernel uses ``div_rn`` and libdevice's ``exp``, with libdevice's flush-to-zero and
  multiply-add contraction switched off (``enable_reflect_ftz=False``, ``enable_fp_fusion=False``).
* Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors: how CI runs these kernels)
  libdevice does not exist and numpy's ``exp`` differs from torch's vectorised CPU sigmoid (which
  itself differs between SIMD lanes and loop tails), so there the sigmoid values are computed by
  torch, per time step exactly as the torch loop computes them, and the kernel reads them
  (``HOST_SIGMOID``). Everything else runs in the kernels, except the final float32 to bfloat16
  rounding of input gradients, which the interpreter does by truncation and torch does here.

Under float16/bfloat16 autocast the kernels read the low-precision input, integrate in float32
and write spikes (exact) and input gradients (rounded to nearest) in the input's dtype: the same
numbers as the fused backend's ``x.float()`` ... ``.to(dtype)``. float64 input runs in float64.

Saved for backward: one tensor, ``h_seq`` (the potentials before reset, ``[T, ...]``, float32 or
float64). Spikes and reset masks are recomputed from it as ``h_seq >= v_th``.
"""
from __future__ import annotations

import functools
import os
import types

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    _IMPORT_ERROR = None
except Exception as exc:  # no triton (CPU-only torch wheels on some platforms), or a broken install
    triton = tl = libdevice = None
    _IMPORT_ERROR = exc

BLOCK_GPU = 1024     # neurons per program on a GPU (4 warps, 8 per thread)
BLOCK_INTERP = 65536  # the interpreter runs each program in numpy: fewer, larger blocks are faster


def import_error() -> str | None:
    """None if Triton can be imported, else a sentence saying why not."""
    if _IMPORT_ERROR is None:
        return None
    return (f"Triton cannot be imported ({_IMPORT_ERROR.__class__.__name__}: {_IMPORT_ERROR}); it ships "
            "with torch's CUDA wheels (pip install -r requirements.txt on a Linux x86-64/aarch64 machine)")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1), read per call."""
    # Triton's own parsing of the variable; os.environ rather than triton.knobs keeps this traceable
    # by torch.compile.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


# --------------------------------------------------------------------------------------------------
# Kernels. Plain functions: they are wrapped by triton.jit (or the interpreter) at first use, so
# TRITON_INTERPRET is read when kernels run, not when this module is imported. They call only
# Triton builtins (tl.full, not tl.zeros): jitted helpers, Triton's own included, are made for
# one mode when they are defined and fail in the other.

def _forward_kernel(x_ptr, v0_ptr, spike_ptr, h_ptr, v_ptr, bits_ptr, scalars_ptr, T, N,
                    HAS_V0: tl.constexpr, RECIPROCAL: tl.constexpr, PACK: tl.constexpr, STORE_H: tl.constexpr,
                    BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    tau = tl.load(scalars_ptr)             # scalars: tau, 1/tau, v_th in the compute dtype
    inv_tau = tl.load(scalars_ptr + 1)
    v_th = tl.load(scalars_ptr + 2)
    v = _initial_potential(v0_ptr, offs, mask, tau, HAS_V0, BLOCK)
    x_ptrs = x_ptr + offs
    h_ptrs = h_ptr + offs
    s_ptrs = spike_ptr + offs
    # PACK (N a multiple of 8): the spikes also as bits, byte k = spikes 8k..8k+7, LSB first. The
    # program reads back the spikes it has just stored, 8 strided loads (no reduction: Triton's
    # reductions are jitted helpers, which work in one mode only, see above).
    byte = start // 8 + tl.arange(0, BLOCK // 8)
    b_ptrs = bits_ptr + byte
    sb_ptrs = spike_ptr + byte * 8
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tau.dtype)
        h = _charge(v, x, tau, inv_tau, RECIPROCAL)
        fired = h >= v_th
        if STORE_H:
            tl.store(h_ptrs, h, mask=mask)
        tl.store(s_ptrs, fired.to(tl.float32).to(spike_ptr.dtype.element_ty), mask=mask)
        if PACK:
            tl.debug_barrier()                 # the block's spikes are stored before they are read back
            word = tl.full([BLOCK // 8], 0, dtype=tl.int32)
            for j in tl.static_range(8):
                s = tl.load(sb_ptrs + j, mask=byte < N // 8, other=0.0)
                word = word | ((s != 0).to(tl.int32) << j)
            tl.store(b_ptrs, word.to(tl.uint8), mask=byte < N // 8)
            b_ptrs += N // 8
            sb_ptrs += N
        v = tl.where(fired, 0.0, h)
        x_ptrs += N
        h_ptrs += N
        s_ptrs += N
    tl.store(v_ptr + offs, v, mask=mask)


def _backward_kernel(grad_spike_ptr, h_ptr, sg_ptr, grad_x_ptr, x_ptr, v0_ptr, scalars_ptr, T, N,
                     mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, C, HW,
                     RECIPROCAL: tl.constexpr, HOST_SIGMOID: tl.constexpr, IS_FP64: tl.constexpr,
                     FROM_INPUT: tl.constexpr, HAS_V0: tl.constexpr, ONLY_H: tl.constexpr,
                     NORM: tl.constexpr, FORMULA: tl.constexpr, EXACT_FMA: tl.constexpr, ONLY_NORM: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tau = tl.load(scalars_ptr)
    inv_tau = tl.load(scalars_ptr + 1)
    v_th = tl.load(scalars_ptr + 2)
    alpha = tl.load(scalars_ptr + 3)
    if FROM_INPUT:
        # h_seq is not saved: run the forward recurrence from the saved input first, with the
        # forward kernel's own helpers (same operations, same order), into the scratch h_ptr
        v = _initial_potential(v0_ptr, offs, mask, tau, HAS_V0, BLOCK)
        x_ptrs = x_ptr + offs
        h_ptrs = h_ptr + offs
        flat = offs
        for _ in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0)
            if NORM:
                # the neuron's input is batch norm's output, recomputed here from the batch norm's
                # input with its saved statistics, as the device's batch norm computes it
                # (FORMULA, see models/bn_lif.py), rounded to the batch norm's output dtype
                c = (flat // HW) % C
                mean = tl.load(mean_ptr + c, mask=mask, other=0.0).to(tl.float32)
                invstd = tl.load(invstd_ptr + c, mask=mask, other=1.0).to(tl.float32)
                gamma = tl.load(gamma_ptr + c, mask=mask, other=1.0).to(tl.float32)
                beta = tl.load(beta_ptr + c, mask=mask, other=0.0).to(tl.float32)
                xf = x.to(tl.float32)
                if FORMULA == 0:     # CPU: alpha = invstd * gamma; out = fma(x, alpha, fma(-mean, alpha, beta))
                    scale = invstd * gamma
                    if EXACT_FMA:
                        shift = _fma_exact(-mean, scale, beta)
                        z = _fma_exact(xf, scale, shift)
                    else:
                        shift = tl.fma(-mean, scale, beta)
                        z = tl.fma(xf, scale, shift)
                elif FORMULA == 1:   # CUDA, contiguous kernel: fma(gamma * (x - mean), invstd, beta)
                    if EXACT_FMA:
                        z = _fma_exact(gamma * (xf - mean), invstd, beta)
                    else:
                        z = tl.fma(gamma * (xf - mean), invstd, beta)
                else:                # CUDA, TensorIterator kernel: fma((x - mean) * invstd, gamma, beta)
                    if EXACT_FMA:
                        z = _fma_exact((xf - mean) * invstd, gamma, beta)
                    else:
                        z = tl.fma((xf - mean) * invstd, gamma, beta)
                x = z.to(x_ptr.dtype.element_ty)
            x = x.to(tau.dtype)
            if ONLY_NORM:            # the normalised input only (checked against batch norm's output)
                tl.store(h_ptrs, x, mask=mask)
            else:
                h = _charge(v, x, tau, inv_tau, RECIPROCAL)
                tl.store(h_ptrs, h, mask=mask)
                v = tl.where(h >= v_th, 0.0, h)
            x_ptrs += N
            h_ptrs += N
            flat += N
        tl.debug_barrier()     # each element is read back by the thread that wrote it; for clarity
    grad_v = tl.full([BLOCK], 0.0, dtype=tau.dtype)   # the last step's potential feeds nothing
    for i in range(0 if (ONLY_H or ONLY_NORM) else T):
        at = (T - 1 - i).to(tl.int64) * N + offs
        h = tl.load(h_ptr + at, mask=mask, other=0.0)
        grad_s = tl.load(grad_spike_ptr + at, mask=mask, other=0.0).to(tau.dtype)
        if HOST_SIGMOID:
            sg = tl.load(sg_ptr + at, mask=mask, other=0.0)
        else:
            # torch's CUDA sigmoid: 1 / (1 + exp(-z)), accurate exp, IEEE division
            z = (h - v_th) * alpha
            e = libdevice.exp(-z)
            if IS_FP64:
                sg = 1.0 / (1.0 + e)                     # fp64 '/' is div.rn.f64
            else:
                sg = tl.math.div_rn(1.0, 1.0 + e)      # fp32 '/' would be div.full (approximate)
        grad_h = grad_s * (1.0 - sg) * sg * alpha
        grad_h = grad_h + tl.where(h >= v_th, 0.0, grad_v)
        if RECIPROCAL:
            grad_x = grad_h * inv_tau
        else:
            grad_x = grad_h / tau
        tl.store(grad_x_ptr + at, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        grad_v = grad_h - grad_x


def _initial_potential(v0_ptr, offs, mask, tau, HAS_V0: tl.constexpr, BLOCK: tl.constexpr):
    """The potential before the first step: ``v0`` where given, else 0, in the compute dtype."""
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tau.dtype)
    else:
        v = tl.full([BLOCK], 0.0, dtype=tau.dtype)
    return v


def _charge(v, x, tau, inv_tau, RECIPROCAL: tl.constexpr):
    """One step's potential before firing, ``v + (x - v) / tau`` as torch computes it on the device
    (multiplication by the rounded reciprocal on CUDA): shared by both kernels, so the backward's
    recomputation is the forward's arithmetic by construction."""
    if RECIPROCAL:
        h = v + (x - v) * inv_tau
    else:
        h = v + (x - v) / tau
    return h


def _fma_exact(a, b, c):
    """float32 ``a * b + c`` rounded once, without an fma instruction (Triton's interpreter computes
    ``tl.fma`` as two roundings): the product is exact in float64, the float64 sum is made
    round-to-odd with its exact error (TwoSum), and rounding that to float32 is then correct."""
    p = a.to(tl.float64) * b.to(tl.float64)
    cd = c.to(tl.float64)
    s = p + cd
    bb = s - p
    err = (p - (s - bb)) + (cd - bb)
    bits = s.to(tl.int64, bitcast=True)
    toward = tl.where((err > 0) != (s < 0), 1, -1).to(tl.int64)     # one step towards the exact sum
    odd = tl.where((err != 0) & ((bits & 1) == 0), bits + toward, bits)
    return odd.to(tl.float64, bitcast=True).to(tl.float32)


def _for_mode(fn, wrap, helpers: dict):
    """`fn` wrapped for one mode, its helper functions (called by name) wrapped for the same mode:
    each mode's kernel gets its own globals, so both can live in one process."""
    scope = dict(fn.__globals__, **{name: wrap(helper) for name, helper in helpers.items()})
    return wrap(types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__))


@functools.cache
def _kernels(interpret: bool):
    # What triton.jit returns, chosen here rather than when this module is imported.
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:
        from triton.runtime.jit import JITFunction as wrap
    helpers = {"_initial_potential": _initial_potential, "_charge": _charge, "_fma_exact": _fma_exact}
    return _for_mode(_forward_kernel, wrap, helpers), _for_mode(_backward_kernel, wrap, helpers)


@functools.cache
def compile_options() -> dict:
    """Launch options that keep torch's numerics: no fused multiply-add, no flush-to-zero in libdevice.

    ``enable_reflect_ftz`` exists in recent Triton only; older versions flush libdevice's
    denormals, which can change the surrogate gradient where ``|h - v_th| * alpha > ~87``.
    """
    options = {"enable_fp_fusion": False}
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        if "enable_reflect_ftz" in CUDAOptions.__dataclass_fields__:
            options["enable_reflect_ftz"] = False
    except Exception:
        pass
    return options


_SCALARS: dict = {}


def _scalars(device: torch.device, dtype: torch.dtype, tau: float, v_threshold: float, alpha: float):
    """tau, 1/tau, v_th, alpha as a small tensor in the compute dtype, cached per device.

    A tensor rather than kernel arguments: Triton passes Python floats as float32, and float64
    needs them unrounded. ``1/tau`` is rounded in the compute dtype, as torch's CUDA division does.
    """
    key = (device, dtype, tau, v_threshold, alpha)
    if key not in _SCALARS:
        tau_t = torch.tensor(tau, dtype=dtype)
        values = torch.stack([tau_t, torch.div(torch.ones((), dtype=dtype), tau_t),   # IEEE 1 / tau
                              torch.tensor(v_threshold, dtype=dtype), torch.tensor(alpha, dtype=dtype)])
        _SCALARS[key] = values.to(device)
    return _SCALARS[key]


def divides_by_reciprocal(device: torch.device) -> bool:
    """Whether torch computes ``tensor / python_float`` on `device` as a multiplication by the reciprocal."""
    return device.type == "cuda"


def _launch_setup(device: torch.device):
    interpret = interpreting()
    if not interpret and device.type != "cuda":
        raise RuntimeError(f"the Triton LIF kernels got a tensor on {device}; they need CUDA tensors "
                           "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    forward, backward = _kernels(interpret)
    return forward, backward, interpret, (BLOCK_INTERP if interpret else BLOCK_GPU)


def forward(x_seq: torch.Tensor, v0: torch.Tensor | None, tau: float, v_threshold: float, alpha: float,
            pack: bool = False, store_h: bool = True):
    """Spikes (dtype of ``x_seq``), the last potential, ``h_seq`` (compute dtype) of all T steps, and
    with `pack` the spikes as bits (:func:`models.memory.pack_bits`'s layout; written by the same
    launch, for compact activation memory), else an empty tensor. `pack` needs ``N % 8 == 0``.
    Without `store_h` (a backward that recomputes it) ``h_seq`` is an empty tensor."""
    if import_error():
        raise RuntimeError(import_error())
    kernel, _, interpret, block = _launch_setup(x_seq.device)
    x = x_seq.contiguous()
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    T, N = x.shape[0], x[0].numel()
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h_seq = torch.empty(x.shape if store_h else (0,), dtype=compute, device=x.device)
    v_last = torch.empty(x.shape[1:], dtype=compute, device=x.device)
    pack = pack and N % 8 == 0
    bits = torch.empty(T * N // 8 if pack else 0, dtype=torch.uint8, device=x.device)
    has_v0 = v0 is not None
    v0 = v0.detach().expand(x.shape[1:]).contiguous() if has_v0 else h_seq   # h_seq: unused pointer
    if N > 0:
        kernel[(triton.cdiv(N, block),)](
            x, v0, spikes, h_seq, v_last, bits if pack else h_seq, _scalars(x.device, compute, tau, v_threshold, alpha),
            T, N, HAS_V0=has_v0, RECIPROCAL=divides_by_reciprocal(x.device), PACK=pack, STORE_H=store_h,
            BLOCK=block, **compile_options())
    return spikes, v_last, h_seq, bits


def backward(grad_spikes: torch.Tensor, h_seq: torch.Tensor | None, tau: float, v_threshold: float, alpha: float,
             dtype: torch.dtype, x_seq: torch.Tensor | None = None, v0: torch.Tensor | None = None,
             norm: list[torch.Tensor] | None = None, channels: int = 1, inner: int = 1, formula: int = 0,
             only_norm: bool = False) -> torch.Tensor:
    """The input gradient, in ``dtype`` and contiguous (as autograd builds it for the torch loop).

    Without ``h_seq``, from `x_seq` (the forward's input) and `v0` (its starting potential, or
    None): the same launch first recomputes ``h_seq`` into scratch memory. With `norm` (batch
    norm's saved mean, inverse std, weight and bias; `channels` and `inner`, the spatial size),
    `x_seq` is the batch norm's input and the launch normalises it first (models/bn_lif.py).
    `only_norm`: return just the normalised input (float32), for the check of `formula`."""
    from_input, has_v0 = h_seq is None, v0 is not None
    if from_input:
        x_seq = x_seq.contiguous()
        h_seq = torch.empty(x_seq.shape, dtype=torch.float64 if x_seq.dtype == torch.float64 else torch.float32,
                            device=x_seq.device)
        v0 = v0.detach().expand(x_seq.shape[1:]).contiguous() if has_v0 else h_seq
    _, kernel, interpret, block = _launch_setup(h_seq.device)
    grad_spikes = grad_spikes.contiguous()
    T, N = h_seq.shape[0], h_seq[0].numel()
    # The interpreter rounds float32 to bfloat16 by truncation; there torch does that last rounding.
    store_dtype = torch.float32 if interpret and dtype == torch.bfloat16 else dtype
    grad_x = torch.empty(h_seq.shape, dtype=store_dtype, device=h_seq.device)
    sg = h_seq   # unused pointer unless the sigmoid comes from torch
    norm_args = (*norm, channels, inner) if norm is not None else (h_seq, h_seq, h_seq, h_seq, 1, 1)
    common = dict(RECIPROCAL=divides_by_reciprocal(h_seq.device), IS_FP64=h_seq.dtype == torch.float64,
                  HAS_V0=has_v0, NORM=norm is not None, FORMULA=formula, EXACT_FMA=interpret, BLOCK=block,
                  **compile_options())
    grid = (triton.cdiv(N, block),)
    scalars = _scalars(h_seq.device, h_seq.dtype, tau, v_threshold, alpha)
    if only_norm:
        if N > 0:
            kernel[grid](grad_spikes, h_seq, sg, grad_x, x_seq, v0, scalars, T, N, *norm_args,
                         HOST_SIGMOID=interpret, FROM_INPUT=True, ONLY_H=False, ONLY_NORM=True, **common)
        return h_seq
    if interpret and from_input and N > 0:
        # the interpreter's sigmoid comes from torch (below), which needs h_seq: a first pass of
        # the same kernel computes only that
        kernel[grid](grad_spikes, h_seq, sg, grad_x, x_seq, v0, scalars, T, N, *norm_args,
                     HOST_SIGMOID=True, FROM_INPUT=True, ONLY_H=True, ONLY_NORM=False, **common)
        from_input = False
    if interpret:
        # torch's sigmoid per step on a tensor shaped like the loop's (its CPU result depends on
        # which elements fall into SIMD lanes); the kernel does the rest.
        sg = torch.empty_like(h_seq)
        for t in range(T):
            sg[t] = ((h_seq[t] - v_threshold) * alpha).sigmoid_()
    if N > 0:
        kernel[grid](grad_spikes, h_seq, sg, grad_x, x_seq if from_input else h_seq, v0 if from_input else h_seq,
                     scalars, T, N, *norm_args,
                     HOST_SIGMOID=interpret, FROM_INPUT=from_input, ONLY_H=False, ONLY_NORM=False, **common)
    return grad_x.to(dtype)


# The two launches as torch operators, so that torch.compile treats them as opaque calls (no graph
# break at every neuron, no tracing into Triton).
torch.library.custom_op(
    "spiking_transformers::lif_triton_forward", forward, mutates_args=(),
    schema="(Tensor x_seq, Tensor? v0, float tau, float v_threshold, float alpha, bool pack, bool store_h=True) "
           "-> (Tensor, Tensor, Tensor, Tensor)")
torch.library.custom_op(
    "spiking_transformers::lif_triton_backward", backward, mutates_args=(),
    schema="(Tensor grad_spikes, Tensor? h_seq, float tau, float v_threshold, float alpha, ScalarType dtype, "
           "Tensor? x_seq=None, Tensor? v0=None, Tensor[]? norm=None, int channels=1, int inner=1, int formula=0, "
           "bool only_norm=False) -> Tensor")


@torch.library.register_fake("spiking_transformers::lif_triton_forward")
def _forward_fake(x_seq, v0, tau, v_threshold, alpha, pack, store_h=True):
    compute = torch.float64 if x_seq.dtype == torch.float64 else torch.float32
    nbytes = x_seq.numel() // 8 if pack and x_seq[0].numel() % 8 == 0 else 0
    return (x_seq.new_empty(x_seq.shape), x_seq.new_empty(x_seq.shape[1:], dtype=compute),
            x_seq.new_empty(x_seq.shape if store_h else (0,), dtype=compute), x_seq.new_empty(nbytes, dtype=torch.uint8))


@torch.library.register_fake("spiking_transformers::lif_triton_backward")
def _backward_fake(grad_spikes, h_seq, tau, v_threshold, alpha, dtype, x_seq=None, v0=None, norm=None, channels=1,
                   inner=1, formula=0, only_norm=False):
    return grad_spikes.new_empty(grad_spikes.shape, dtype=torch.float32 if only_norm else dtype)


class TritonLIF(torch.autograd.Function):
    """``spikes, v_last, bits = TritonLIF.apply(x_seq, v0, tau, v_threshold, alpha, pack=False)``: all T
    steps, one node.

    ``v0`` (the potential left by a previous call, or None for 0) is used as a constant, as in the
    fused backend. Saves ``h_seq`` only (see the module docstring). ``bits``: see :func:`forward`.

    ``tail`` (:func:`models.memory.tail_mode`): the neuron ends a segment that compact memory
    recomputes in backward. It then saves its input instead of ``h_seq`` ("first") and, when the
    segment is replayed, launches nothing at all ("replay": its outputs are left unwritten, nothing
    reads them): the backward launch recomputes ``h_seq`` from the input itself.
    """

    @staticmethod
    def forward(ctx, x_seq, v0, tau: float, v_threshold: float, alpha: float, pack: bool = False,
                tail: str | None = None):
        ctx.tau, ctx.v_threshold, ctx.alpha, ctx.dtype = tau, v_threshold, alpha, x_seq.dtype
        ctx.from_input = tail is not None
        if tail == "replay":
            empty = x_seq.new_empty((0,), dtype=torch.uint8)
            spikes, v_last, bits = torch.empty_like(x_seq), x_seq.new_empty(x_seq.shape[1:]), empty
        else:
            spikes, v_last, h_seq, bits = torch.ops.spiking_transformers.lif_triton_forward(
                x_seq, v0, tau, v_threshold, alpha, pack, tail is None)
        if ctx.from_input:
            ctx.has_v0 = v0 is not None
            ctx.save_for_backward(x_seq, *((v0,) if v0 is not None else ()))
        else:
            ctx.save_for_backward(h_seq)
        ctx.mark_non_differentiable(v_last, bits)
        ctx.set_materialize_grads(False)    # no zero-filled gradients for v_last and bits: no launches
        return spikes, v_last, bits

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last, grad_bits):
        if grad_spikes is None:
            return None, None, None, None, None, None, None
        backward = torch.ops.spiking_transformers.lif_triton_backward
        if ctx.from_input:
            x_seq, *v0 = ctx.saved_tensors
            grad_x = backward(grad_spikes, None, ctx.tau, ctx.v_threshold, ctx.alpha, ctx.dtype, x_seq,
                              v0[0] if v0 else None)
        else:
            (h_seq,) = ctx.saved_tensors
            grad_x = backward(grad_spikes, h_seq, ctx.tau, ctx.v_threshold, ctx.alpha, ctx.dtype)
        return grad_x, None, None, None, None, None, None
