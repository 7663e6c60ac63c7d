"""The models as backbones: timm's feature API feeding torchvision's FPN and a segmentation head,
one training step; and the feature API's contract (levels, formats, time axis, pruning)."""
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

import models

TINY_QK = dict(embed_dim=64, depth=4, num_heads=2, T=2)


def test_qkformer_backbone_trains_with_an_fpn_segmentation_head():
    backbone = timm.create_model("qkformer_10_384", features_only=True, **TINY_QK)
    channels = backbone.feature_info.channels()
    assert channels == [16, 32, 64] and backbone.feature_info.reduction() == [4, 8, 16]
    fpn = FeaturePyramidNetwork(channels, out_channels=32)
    head = nn.Conv2d(32, 5, kernel_size=1)                       # 5 classes per pixel
    params = [*backbone.parameters(), *fpn.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))

    features = backbone(images)                                  # NCHW: the time mean of each stage
    assert [tuple(f.shape) for f in features] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    pyramid = fpn(OrderedDict((f"p{i}", f) for i, f in enumerate(features)))
    logits = F.interpolate(head(pyramid["p0"]), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0                # the backbone learns too
    before = [p.detach().clone() for p in backbone.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, backbone.parameters()))


@pytest.mark.parametrize("name", ["qkformer_cifar_4_384", "spikingformer_cifar_2_384", "sglformer_cifar_4_384",
                                  "sglformer_8_384", "spikformer_cifar_2_384"])
def test_intermediates_are_the_time_mean_of_the_stages(name):
    kwargs = dict(T=2) if "cifar" in name else dict(T=2, depth=3)
    model = timm.create_model(name, **kwargs).eval()
    size = model.pretrained_cfg["input_size"][-1] if "cifar" in name else 64
    x = torch.randn(2, 3, size, size)
    final, means = model.forward_intermediates(x)
    keep = timm.create_model(name, feature_time="keep", **kwargs).eval()
    keep.load_state_dict(model.state_dict())
    _, series = keep.forward_intermediates(x)
    assert len(means) == len(series) == len(model.feature_info)
    for m, s, info in zip(means, series, model.feature_info):
        assert s.shape == (2, *m.shape) and m.shape[1] == info["num_chs"]       # [T, B, C, H, W]
        torch.testing.assert_close(s.mean(0), m, rtol=0, atol=0)
    torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    nhwc = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
    torch.testing.assert_close(nhwc[0], means[-1].permute(0, 2, 3, 1), rtol=0, atol=0)


def test_pruning_keeps_the_levels_asked_for_and_drops_the_rest():
    model = timm.create_model("qkformer_10_384", **TINY_QK)
    n = sum(p.numel() for p in model.parameters())
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert not hasattr(model, "stage3") and isinstance(model.head, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) < n
    out = model.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [o.shape[1] for o in out] == [16, 32]


def test_every_variant_builds_on_meta_and_in_bfloat16():
    for name in models.VARIANTS:
        model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
        assert {p.device.type for p in model.parameters()} == {"meta"}
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        model.reset_classifier(3)
        assert model.head.weight.device.type == "meta" and model.head.weight.dtype == torch.bfloat16


def test_head_and_pool_edge_cases_are_clear():
    model = timm.create_model("qkformer_cifar_4_384", num_classes=0, global_pool="", T=1)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 384, 8, 8)            # unpooled features
    model.reset_classifier(10)
    with pytest.raises(ValueError, match=r"unpooled.*reset_classifier\(10, 'avg'\)"):
        model(torch.randn(1, 3, 32, 32))
    model.reset_classifier(10, "avg")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    sgl = timm.create_model("sglformer_cifar_4_384", T=2).eval()
    final, [stem] = sgl.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[0], stop_early=True)
    assert final.shape == stem.shape == (1, 64, 32, 32)      # stopped at the stem: no STB pooling of it
    sgl.prune_intermediate_layers([0, 1, 2], prune_head=False)   # all levels: the STB head stays
    assert sgl(torch.randn(2, 3, 32, 32)).shape == (2, 10)
