"""The op-trace recorder and replayer (tests/optrace.py) that the equivalence tests rely on."""
import pytest
import torch

import models
import optrace
from reference import TINY, make_input, run_case
from test_equivalence import _differences, _ours


def test_aliases_in_place_updates_and_constants_replay_exactly():
    a = torch.arange(6.0)
    alias = a[2:]            # made before recording: a tensor the trace can only know by its storage
    generator = torch.Generator().manual_seed(0)
    recorder = optrace.Recorder({"a": a})
    with recorder:
        alias.mul_(2)                                      # updates the leaf through the alias
        noise = torch.rand(3, generator=generator)         # a random draw: stored by value
        c = a[1:4] + alias[:3] * torch.tensor([3.0, 4.0, 5.0])
        d = (c + noise).unsqueeze(0).t()
    trace = recorder.trace({"c": c, "d": d, "a": a})
    kinds = [r[0] for r in trace["records"]]
    assert kinds.count("view") == 1 and trace["by_value"] == ["aten.rand.generator"]
    trace = optrace.load_bytes(optrace.dump_bytes(trace))  # through the file format
    replayed = optrace.replay(trace, {"a": torch.arange(6.0)})
    for name, value in (("c", c), ("d", d), ("a", a)):
        assert torch.equal(replayed[name], value) and replayed[name].stride() == value.stride(), name


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_trace_of_our_model_replays_to_the_same_bits(checkpointing):
    """Forward, backward, batch-norm updates and gradient accumulation, also with block
    checkpointing (recomputation inside the backward)."""
    cls, kwargs, shape, kind = TINY["sglformer_imagenet_late"]
    model, x = getattr(models, cls)(**kwargs, backend="fused"), make_input(shape, kind)
    model.set_grad_checkpointing(checkpointing)
    for key in ("eval_float64", "train_float32"):
        mode, dtype = key.split("_")
        trace = optrace.record(lambda wrap: run_case(model, x, mode, getattr(torch, dtype), models.reset_net,
                                                     wrap=wrap))
        got, leaves = _ours(model, x, key)
        assert not _differences(got, optrace.replay(trace, leaves)), key
        assert trace["by_value"] == ["aten.randn.generator"]  # the loss projection's random draw


def test_replay_stops_where_this_machine_disagrees_with_the_recording():
    """An output with other strides than recorded is an error, never a silently different replay."""
    a = torch.randn(2, 3, 4)
    recorder = optrace.Recorder({"a": a})
    with recorder:
        b = a.permute(2, 0, 1).contiguous() * 2
    trace = recorder.trace({"b": b})
    op = next(r for r in trace["records"] if r[0] == "op" and r[1] == "aten.clone.default")
    op[4][0][2] = list(reversed(op[4][0][2]))
    with pytest.raises(optrace.ReplayError, match="aten.clone.default"):
        optrace.replay(trace, {"a": a.clone()})
