"""The ``attention_order`` option: "original" (default) or "fast", from timm, the config and the benchmark.

That "original" is bit-identical to the original code and "fast" is not is tested in
test_equivalence.py; here: the option reaches every attention module and bad values are refused.
"""
import pytest
import timm
import torch

import models
from engine import config as C
from models.layers import SpikingSelfAttention
from models.sglformer import GlobalSSA
from models.spikformer import TokenSelfAttention
from tools import benchmark

SMALL = dict(embed_dim=48, depth=3, num_heads=4, T=2, num_classes=5)


def _orders(model):
    return [m.attention_order for m in model.modules()
            if isinstance(m, (SpikingSelfAttention, GlobalSSA, TokenSelfAttention))]


@pytest.mark.parametrize("name", ["qkformer_cifar_4_384", "spikingformer_cifar_4_384", "sglformer_cifar_4_384",
                                  "sglformer_8_384", "spikformer_cifar_4_384", "spikformer_cifar10dvs_2_256"])
def test_option_reaches_every_attention_and_keeps_parameters(name):
    small = dict(SMALL, depth=1) if name == "sglformer_cifar_4_384" else SMALL
    default = timm.create_model(name, **small)
    fast = timm.create_model(name, attention_order="fast", **small)
    assert _orders(default) and set(_orders(default)) == {"original"}
    assert set(_orders(fast)) == {"fast"}
    assert [(k, v.shape) for k, v in default.state_dict().items()] == \
        [(k, v.shape) for k, v in fast.state_dict().items()]
    models.set_attention_order(default, "fast")
    assert set(_orders(default)) == {"fast"}


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="attention_order must be one of original, fast"):
        timm.create_model("spikingformer_cifar_4_384", attention_order="quick", **SMALL)
    with pytest.raises(ValueError, match="attention_order"):
        models.set_attention_order(torch.nn.Linear(2, 2), "quick")


def test_config_key_and_benchmark_setup():
    assert C.Config().model_overrides()["attention_order"] == "original"
    args = C.build_parser("x").parse_args(["--attention-order", "fast"])
    assert C.make_config({}, vars(args)).model_overrides()["attention_order"] == "fast"
    assert C.FIELDS["attention_order"].metadata["choices"] == models.ATTENTION_ORDERS
    with pytest.raises(C.ConfigError, match="'attention_order' must be one of original, fast; got 'quick'"):
        C.make_config({"attention_order": "quick"}, {})
    assert benchmark.parse_setup("fused+fastattn")["attention_order"] == "fast"
    assert benchmark.parse_setup("fused")["attention_order"] == "original"
