"""Whole-step CUDA graphs (engine/cuda_graph.py): refused where they cannot exist, eager where they
cannot be captured, and on a GPU the same bits as the eager step."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

import models
from conftest import ROOT, requires_cuda
from engine import cuda_graph
from engine.config import ConfigError
from engine.optim import build_optimizer
from engine.train_loop import Precision, train_one_epoch
from reference import TINY, fill_weights


def cfg(**kw):
    base = dict(cuda_graph=True, accum_iter=1, compile=False, clip_grad=None, clip_mode="norm", opt="adamw",
                lr=1e-3, weight_decay=0.05, momentum=0.9, opt_eps=None, opt_betas=None, amp=True, amp_dtype="bfloat16")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_cuda_graph_on_a_cpu_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="cuda_graph needs a CUDA device and this run uses cpu; drop --cuda-graph"):
        cuda_graph.check_available(cfg(), torch.device("cpu"))
    out = subprocess.run([sys.executable, str(ROOT / "cifar10" / "train.py"), "--cuda-graph", "--device", "cpu",
                          "--data-dir", str(tmp_path), "--output", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "cuda_graph needs a CUDA device" in out.stderr


def test_reasons_to_run_eagerly():
    model = models.QKFormer(**TINY["qkformer_cifar"][1], backend="fused")
    bf16 = Precision(torch.device("cpu"), True, torch.bfloat16)
    assert cuda_graph.eager_reason(cfg(), model, model, bf16, bf16.scaler()) is None
    fp16_scaler = types.SimpleNamespace(is_enabled=lambda: True)   # what float16 autocast on CUDA builds
    assert "loss scaling" in cuda_graph.eager_reason(cfg(), model, model, bf16, fp16_scaler)
    assert "accum_iter" in cuda_graph.eager_reason(cfg(accum_iter=2), model, model, bf16, bf16.scaler())
    models.set_backend(model, "torch")
    for m in model.modules():
        if isinstance(m, models.LIF):
            m.requested_backend = "cupy"      # as a model asked for cupy would be (cupy needs CUDA to set)
    assert "cupy" in cuda_graph.eager_reason(cfg(), model, model, bf16, bf16.scaler())


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "fused"])
def test_captured_step_gives_the_eager_bits(backend):
    """Three updates after the warm-up: weights and losses equal bit for bit to the eager loop."""
    cls, kw, shape, _ = TINY["qkformer_cifar"]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(*shape, generator=g).cuda(), torch.randint(0, 5, (shape[0],), generator=g).cuda())
               for _ in range(cuda_graph.WARMUP + 3)]
    results = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = getattr(models, cls)(**kw, backend=backend)
        fill_weights(model)
        model.cuda().train()
        c = cfg(clip_grad=1.0)
        optimizer = build_optimizer(c, model)
        precision = Precision(torch.device("cuda"), True, torch.bfloat16)
        step = cuda_graph.GraphedTrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, precision, c,
                                           lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) \
            if graphed else None
        stats = train_one_epoch(model, batches, optimizer, torch.nn.CrossEntropyLoss(), precision.scaler(), precision,
                                0, c, graph_step=step)
        assert not graphed or step.graph is not None
        results.append((stats["loss"], [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
