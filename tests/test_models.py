"""Model API: every variant runs forward/backward through timm; bad input gets clear errors."""
import pytest
import timm
import torch

import models

def small_input(model) -> torch.Tensor:
    """The smallest input each variant accepts: 32x32 images, 64x64 event frames, except where a
    head is sized for the input (SGLFormer CIFAR/DVS)."""
    sized_head = isinstance(model, models.SGLFormer) and model.layout != "imagenet"
    if model.input_kind == "events":
        side = model.img_size if sized_head else 64
        return (torch.rand(2, model.T, 2, side, side) < 0.2).float()
    side = model.img_size if sized_head else 32
    return torch.randn(2, 3, side, side)


def small_variant(name: str):
    """The variant at its real width but with the fewest time steps and blocks that keep its structure."""
    overrides = {"T": 2}
    if name.startswith("sglformer") and "dvs" not in name and "gesture" not in name and "cifar" not in name:
        overrides["depth"] = 3
    elif name.startswith(("qkformer_10", "spikingformer_8")):
        overrides["depth"] = 4 if name.startswith("qkformer") else 1
    return timm.create_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(models.VARIANTS))
def test_forward_backward_every_variant(name):
    model = small_variant(name).train()
    x = small_input(model)
    y = model(x)
    assert y.shape == (2, model.num_classes) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    # every parameter takes part (the originals' never-called LayerNorms are left out)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_timm_api():
    model = timm.create_model("qkformer_cifar_4_384", embed_dim=32, depth=3, num_classes=7, T=2)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.num_classes == 7
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32, 4, 4)                                      # NCHW: the mean over T
    assert model.forward_features(x, keep_time=True).shape == (2, 2, 32, 4, 4)   # [T, B, C, H, W]
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    # forward() pools in the originals' order (tokens, then time); through the NCHW features the
    # time mean comes first: the same logits within rounding
    torch.testing.assert_close(model.forward_head(feats), model(x), rtol=1e-5, atol=1e-6)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465)


def test_static_model_accepts_time_series_input():
    model = timm.create_model("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, T=3).eval()
    x = torch.randn(2, 3, 16, 16)
    repeated = x.unsqueeze(1).repeat(1, 3, 1, 1, 1)  # [B, T, C, H, W]
    torch.testing.assert_close(model(repeated), model(x), rtol=0, atol=0)


def test_bad_inputs_and_arguments_are_clear_errors():
    dvs = timm.create_model("qkformer_cifar10dvs_2_256")
    with pytest.raises(ValueError, match=r"expects input \[B, T, C, H, W\]"):
        dvs(torch.randn(2, 2, 64, 64))
    img = timm.create_model("qkformer_cifar_4_384")
    with pytest.raises(ValueError, match="got shape"):
        img(torch.randn(3, 32, 32))
    sgl = timm.create_model("sglformer_cifar10dvs_3_256", T=10)
    with pytest.raises(ValueError, match="built for T=10 .* build the model with T=4"):
        sgl(torch.rand(2, 4, 2, 128, 128))
    sgl_cifar = timm.create_model("sglformer_cifar_4_384").eval()
    with pytest.raises(ValueError, match="built for 64 tokens"):
        sgl_cifar(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="never applies them"):
        timm.create_model("qkformer_10_384", drop_path_rate=0.1)
    with pytest.raises(models.CheckpointError, match="no local weights"):
        timm.create_model("qkformer_10_384", pretrained=True)
    with pytest.raises(ValueError, match="unknown QKFormer layout"):
        models.QKFormer(layout="video")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        timm.create_model("spikingformer_cifar_4_384", num_heads=5)
    with pytest.raises(KeyError, match="unknown model 'qkformer_1'"):
        models.build("qkformer_1")


def test_qkformer_runs_at_the_papers_higher_resolutions():
    # HST-10-768 is evaluated at 288 and 384 with the 224-trained weights: no size-bound params.
    model = timm.create_model("qkformer_10_384", depth=4, T=1).eval()
    with torch.no_grad():
        for side in (224, 288, 384):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 1000)


def test_a_pool_on_spikes_needs_a_neuron():
    """Unit(lif_pool=True) announces its pooled output as spikes; without a LIF that would be
    batch-norm output, and compact memory would store it as bits."""
    from models.layers import ConvUnits, Unit
    with pytest.raises(ValueError, match="lif_pool .* needs a post-order unit with a LIF"):
        ConvUnits([Unit("proj", 3, 8, pool=True, lif_pool=True, lif=False)])
