"""Loading checkpoints safely, in every layout the original repositories wrote."""
import argparse
import os

import pytest
import torch

import models
from models import CheckpointError, load_checkpoint
from models.checkpoint import to_original


def tiny(num_classes=5):
    return models.build("qkformer_cifar_4_384", embed_dim=32, depth=3, num_classes=num_classes, T=2)


def randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mae_layout_with_argparse_namespace(tmp_path):
    """QKFormer/SGLFormer ImageNet (MAE's save_model): model, optimizer, epoch, scaler, args."""
    src = randomized(tiny())
    opt = torch.optim.AdamW(src.parameters())
    path = tmp_path / "checkpoint-199.pth"
    torch.save({"model": src.state_dict(), "optimizer": opt.state_dict(), "epoch": 199,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="QKFormer_10_384", blr=6e-4)}, path)
    dst = tiny()
    ckpt = load_checkpoint(dst, path)
    assert_same_weights(src, dst)
    assert ckpt["epoch"] == 199 and ckpt["args"].blr == 6e-4


def test_timm_layout_with_ddp_prefix_and_ema(tmp_path):
    """Spikingformer/QKFormer CIFAR (timm's CheckpointSaver): state_dict, state_dict_ema, 'module.'."""
    src, ema = randomized(tiny()), tiny()
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "QKFormer", "metric": 95.1, "args": argparse.Namespace(lr=1e-3),
                "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
                "state_dict_ema": ema.state_dict()}, path)
    dst = tiny()
    load_checkpoint(dst, path)
    assert_same_weights(src, dst)
    load_checkpoint(dst, path, use_ema=True)
    assert_same_weights(ema, dst)


def test_bare_state_dict(tmp_path):
    src = randomized(tiny())
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = tiny()
    load_checkpoint(dst, tmp_path / "w.pth")
    assert_same_weights(src, dst)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Exploit()
    payload.target = marker
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": payload}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(tiny(), path)
    assert not marker.exists()


def test_checkpoint_of_another_variant_lists_the_mismatch(tmp_path):
    torch.save({"model": tiny(num_classes=100).state_dict()}, tmp_path / "c100.pth")
    with pytest.raises(CheckpointError, match=r"head.weight \(100, 32\) vs model \(5, 32\).*num_classes"):
        load_checkpoint(tiny(num_classes=5), tmp_path / "c100.pth")
    other = models.build("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, num_classes=5)
    torch.save(other.state_dict(), tmp_path / "sf.pth")
    with pytest.raises(CheckpointError, match="keys missing from the checkpoint: patch_embed1.proj_conv.weight"):
        load_checkpoint(tiny(), tmp_path / "sf.pth")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tiny(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tiny(), tmp_path / "junk.pth")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="no model weights found"):
        load_checkpoint(tiny(), tmp_path / "nomodel.pth")
    torch.save({"model": tiny().state_dict()}, tmp_path / "noema.pth")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(tiny(), tmp_path / "noema.pth", use_ema=True)


def test_training_checkpoint_with_the_unused_layernorms_resumes(tmp_path):
    """Training checkpoints written while Spikingformer still held the originals' never-called
    LayerNorms: weights, EMA and optimizer state carry over, the LayerNorm entries dropped."""
    from timm.optim import create_optimizer_v2

    from engine.checkpoint import without_unused_layernorms
    from models.checkpoint import to_original
    model = models.build("spikingformer_cifar_2_384", embed_dim=32, num_heads=2, T=1, num_classes=4)
    original = to_original(model)
    params = dict(model.named_parameters())

    def legacy_tree() -> torch.nn.Module:   # the old module: the same parameters plus the LayerNorms
        root = torch.nn.Module()
        for key, value in original.items():
            if key not in params and key not in model.unused_parameters():
                continue
            *path, leaf = key.split(".")
            node = root
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, torch.nn.Module())
                node = getattr(node, part)
            node.register_parameter(leaf, torch.nn.Parameter(value.clone()))
        return root
    old = legacy_tree()
    old_opt = create_optimizer_v2(old, opt="adamw", lr=1e-3, weight_decay=0.05)
    for name, p in old.named_parameters():
        if name in params:    # the LayerNorms never had a gradient
            p.grad = torch.randn_like(p)
    old_opt.step()
    saved = {"model": to_original(model), "model_ema": to_original(model), "optimizer": old_opt.state_dict()}
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    state = without_unused_layernorms(saved, model, opt)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    old_by_name = {n: old_opt.state[p] for n, p in old.named_parameters() if p in old_opt.state}
    assert set(old_by_name) == set(params)
    for name, p in model.named_parameters():
        assert torch.equal(opt.state[p]["exp_avg"], old_by_name[name]["exp_avg"]), name


@pytest.mark.parametrize("name", ["spikformer_8_512", "spikformer_cifar_4_384", "spikformer_cifar10dvs_2_256"])
def test_spikformer_original_layouts_load_strictly(tmp_path, name):
    """An original Spikformer state dict (its never-used LayerNorms at 1/0, the DVS pos_embed at a
    random value, as the original code leaves them) loads strictly; a trained LayerNorm is refused."""
    small = dict(embed_dim=32, num_heads=2, depth=2, num_classes=5)
    source, target = models.build(name, **small), models.build(name, **small)
    original = to_original(source)
    if "pos_embed" in original:
        assert list(original)[0] == "pos_embed" and "norm.weight" in original
        original["pos_embed"] = torch.randn_like(original["pos_embed"])
    torch.save({"model": original, "args": argparse.Namespace(model="spikformer")}, tmp_path / "orig.pth")
    load_checkpoint(target, tmp_path / "orig.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    headless = to_original(models.build(name, **dict(small, num_classes=0)))
    assert set(headless) == set(original) - {"head.weight", "head.bias"}     # nothing left out with the head
    original["block.1.norm2.weight"] = original["block.1.norm2.weight"] * 1.5
    torch.save(original, tmp_path / "trained_norm.pth")
    with pytest.raises(CheckpointError, match="block.1.norm2.weight in the checkpoint holds trained values"):
        load_checkpoint(target, tmp_path / "trained_norm.pth")
