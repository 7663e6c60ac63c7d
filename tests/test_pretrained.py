"""Released weights: conversion to safetensors folders, sha256 checks and timm's pretrained=True (all offline)."""
import argparse
import json
import os

import pytest
import timm
import torch

import models
from models import CheckpointError, load_checkpoint
from models.pretrained import sha256_of
from tools import convert_checkpoint

VARIANT = "qkformer_cifar_4_384"
TINY = dict(embed_dim=32, depth=3, num_heads=8, num_classes=5, T=1)


def tiny():
    torch.manual_seed(0)
    model = models.build(VARIANT, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    models.reset_net(model)
    return out


@pytest.fixture
def yaml_cfg(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text("dataset: fake\nworkers: 0\nval_batch_size: 64\ndevice: cpu\nprogress: false\n"
                    + "".join(f"{k}: {v}\n" for k, v in TINY.items()))
    return path


def convert(src, out, yaml_cfg, *extra, variant=VARIANT):
    return convert_checkpoint.main([str(src), "--variant", variant, "--config", str(yaml_cfg), "--out", str(out),
                                    *extra])


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


LAYOUTS = {
    "mae": lambda sd: {"model": sd, "args": argparse.Namespace(model="x", lr=1e-3), "epoch": 3},
    "timm": lambda sd: {"state_dict": sd, "epoch": 3, "arch": "x"},
    "dataparallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_convert_round_trips_each_layout(tmp_path, yaml_cfg, layout):
    src_model = tiny()
    src = tmp_path / "checkpoint-199.pth"
    torch.save(LAYOUTS[layout](src_model.state_dict()), src)
    out = tmp_path / "converted"
    assert convert(src, out, yaml_cfg) == 0
    config = json.loads((out / "config.json").read_text())
    pcfg = config["pretrained_cfg"]
    assert config["architecture"] == VARIANT and config["model_args"]["T"] == 1 and config["model_args"]["depth"] == 3
    assert pcfg["source_sha256"] == sha256_of(src) and pcfg["sha256"] == sha256_of(out / "model.safetensors")
    assert pcfg["fix_tb_merge"] is False and pcfg["num_classes"] == 5 and pcfg["input_size"] == [3, 32, 32]
    card = (out / "README.md").read_text()
    assert "checkpoint-199.pth" in card and pcfg["sha256"] in card and "test.py" in card
    # timm: a local folder via the overlay; model arguments come from config.json
    loaded = timm.create_model(VARIANT, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(logits(loaded, x), logits(src_model, x))
    # the same folder through the engine's loader (train.py --initial-checkpoint)
    again = models.build(VARIANT, **TINY).eval()
    load_checkpoint(again, out)
    assert torch.equal(logits(again, x), logits(src_model, x))


def test_pretrained_file_overlay_checks_sha256(tmp_path, capsys):
    src = tmp_path / "w.pth"
    torch.save({"model": tiny().state_dict()}, src)
    model = timm.create_model(VARIANT, pretrained=True, **TINY,
                              pretrained_cfg_overlay=dict(file=str(src), sha256=sha256_of(src)))
    assert model.pretrained_cfg["file"] == str(src)
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        timm.create_model(VARIANT, pretrained=True, **TINY, pretrained_cfg_overlay=dict(file=str(src), sha256="0" * 64))


def test_source_checksum_mismatch_is_one_line(tmp_path, yaml_cfg, capsys):
    src = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), src)
    assert convert(src, tmp_path / "out", yaml_cfg, "--sha256", "ab" * 32) == 1
    assert "does not match" in one_line_error(capsys)


def test_tampered_safetensors_is_refused(tmp_path, yaml_cfg):
    src = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), src)
    out = tmp_path / "out"
    assert convert(src, out, yaml_cfg) == 0
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the expected"):
        load_checkpoint(models.build(VARIANT, **TINY), out)


def test_wrong_variant_is_one_line(tmp_path, yaml_cfg, capsys):
    src = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), src)
    assert convert(src, tmp_path / "out", yaml_cfg, variant="spikingformer_cifar_4_384") == 1
    assert "does not fit" in one_line_error(capsys)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_truncated_files_are_one_line(tmp_path, yaml_cfg, capsys):
    src = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), src)
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert convert(src, tmp_path / "out", yaml_cfg) == 1
    assert "not a readable torch checkpoint" in one_line_error(capsys)
    cut = tmp_path / "cut.safetensors"
    from safetensors.torch import save_file
    save_file(tiny().state_dict(), str(cut))
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
        load_checkpoint(models.build(VARIANT, **TINY), cut)
    assert "\n" not in str(info.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path, yaml_cfg, capsys):
    src = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": _Payload()}, src)
    assert convert(src, tmp_path / "out", yaml_cfg) == 1
    assert "refused to unpickle" in one_line_error(capsys)


def test_pretrained_without_weights_says_where_to_get_them():
    # raised before the (large) model is built
    with pytest.raises(CheckpointError, match=r"pan\.baidu\.com/s/1LsECpFOxh30O3vHWow8OGQ.*convert_checkpoint"):
        timm.create_model("spikingformer_8_768", pretrained=True)
    with pytest.raises(CheckpointError, match="no released weights are known"):
        timm.create_model("qkformer_10_512", pretrained=True)


def test_timm_registry_lists_where_weights_are():
    cfg = timm.models.get_pretrained_cfg("spikingformer_8_768")
    assert "pan.baidu.com" in cfg.origin_url and "file: checkpoint-284.pth.tar" in cfg.notes
    assert "sha256: none published" in cfg.notes and not cfg.has_weights  # nothing downloads by itself
    assert timm.models.get_pretrained_cfg("sglformer_cifar_4_384").num_classes == 100


def test_hub_id_from_offline_cache(tmp_path, yaml_cfg, monkeypatch):
    import huggingface_hub.constants as hub_constants
    src_model = tiny()
    src = tmp_path / "w.pth"
    torch.save({"model": src_model.state_dict()}, src)
    out = tmp_path / "converted"
    assert convert(src, out, yaml_cfg) == 0
    # the hub's on-disk cache layout: models--org--name/{refs/main, snapshots/<rev>/...}
    cache = tmp_path / "hub"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--tiny-qkformer" / "snapshots" / rev
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (snapshot / name).write_bytes((out / name).read_bytes())
    (cache / "models--someone--tiny-qkformer" / "refs").mkdir()
    (cache / "models--someone--tiny-qkformer" / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    x = torch.rand(2, 3, 32, 32)
    model = timm.create_model("hf_hub:someone/tiny-qkformer", pretrained=True, cache_dir=str(cache)).eval()
    assert torch.equal(logits(model, x), logits(src_model, x))
    again = models.build(VARIANT, **TINY).eval()
    load_checkpoint(again, "hf_hub:someone/tiny-qkformer")  # train.py --initial-checkpoint hf_hub:...
    assert torch.equal(logits(again, x), logits(src_model, x))
    blob = snapshot / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # the sha256 in the cached config.json no longer matches
    with pytest.raises(CheckpointError, match="does not match the expected"):
        load_checkpoint(again, "hf_hub:someone/tiny-qkformer")
    with pytest.raises(CheckpointError, match="hf_hub:someone/missing: cannot get model.safetensors") as info:
        load_checkpoint(again, "hf_hub:someone/missing")
    assert "\n" not in str(info.value)


def test_verify_records_measured_top1(tmp_path, yaml_cfg):
    src = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), src)
    out = tmp_path / "out"
    assert convert(src, out, yaml_cfg, "--verify", "--data-dir", str(tmp_path / "data")) == 0
    top1 = json.loads((out / "config.json").read_text())["pretrained_cfg"]["measured_top1"]
    assert 0.0 <= top1 <= 100.0
    assert f"{top1:.2f}" in (out / "README.md").read_text()


def test_pretrained_adapts_the_head_and_the_first_conv_as_timm_does(tmp_path):
    src_model = tiny()
    src = tmp_path / "w.pth"
    torch.save({"model": src_model.state_dict()}, src)
    source = src_model.state_dict()
    for kwargs in (dict(num_classes=3), dict(num_classes=0), dict(in_chans=1)):
        model = timm.create_model(VARIANT, pretrained=True, **{**TINY, **kwargs},
                                  pretrained_cfg_overlay=dict(file=str(src)))
        own = model.state_dict()
        kept = [k for k in own if not k.startswith(("head.", "patch_embed1.proj_conv."))]
        assert kept and all(torch.equal(own[k], source[k]) for k in kept)
        if "in_chans" in kwargs:    # timm sums the RGB filters into one channel
            torch.testing.assert_close(own["patch_embed1.proj_conv.weight"],
                                       source["patch_embed1.proj_conv.weight"].sum(1, keepdim=True))
    with pytest.raises(CheckpointError, match="shape mismatches"):   # anything else must still fit exactly
        timm.create_model(VARIANT, pretrained=True, **{**TINY, "embed_dim": 64},
                          pretrained_cfg_overlay=dict(file=str(src)))
