"""The upstream LIF-over-merged-T*B bug (QKFormer issue #14): kept by default, fixable.

Default behaviour is checked against the original code in test_equivalence.py; here: what the
bug does (a sample's output depends on the rest of its batch) and what the fix does.
"""
import pytest
import torch

import models
from reference import TINY, fill_weights, make_input

# Configs whose original code has the bug: QKFormer's SSA projection, SGLFormer ImageNet's
# SSA projection, and the first patch-embedding LIF of SGLFormer ImageNet "late" (8-384, 8-512).
AFFECTED = ["qkformer_imagenet", "qkformer_cifar", "qkformer_dvs", "sglformer_imagenet_early",
            "sglformer_imagenet_late"]


def build(config, **overrides):
    cls, kwargs, shape, kind = TINY[config]
    model = getattr(models, cls)(**{**kwargs, **overrides})
    fill_weights(model)
    x = make_input((4,) + shape[1:], kind)  # batch of 4
    return model.eval(), x


@pytest.mark.parametrize("config", AFFECTED)
def test_default_mixes_samples_of_a_batch(config):
    model, x = build(config)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    assert not torch.allclose(batched, alone, atol=1e-4), "the upstream bug should be reproduced"


@pytest.mark.parametrize("config", AFFECTED)
def test_fix_makes_samples_independent(config):
    model, x = build(config, fix_tb_merge=True)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
        shuffled = model(x.flip(0)).flip(0)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, shuffled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", AFFECTED)
def test_fix_changes_nothing_else(config):
    """Same checkpoint layout, and with a batch of one (T*1 = T) both behaviours coincide."""
    default, x = build(config)
    fixed, _ = build(config, fix_tb_merge=True)
    assert [(k, v.shape) for k, v in default.state_dict().items()] == \
           [(k, v.shape) for k, v in fixed.state_dict().items()]
    with torch.no_grad():
        torch.testing.assert_close(default(x[:1]), fixed(x[:1]), rtol=0, atol=0)


def test_unaffected_families_are_batch_independent_already():
    for config in ["spikingformer_imagenet", "sglformer_cifar"]:
        model, x = build(config)
        with torch.no_grad():
            torch.testing.assert_close(model(x), torch.cat([model(x[i:i + 1]) for i in range(len(x))]),
                                       rtol=1e-5, atol=1e-5)
