"""Every published variant: built through timm, checkpoint layout and parameter counts.

``tests/data/manifests/<name>.txt`` lists the ``state_dict`` (key, shape, dtype, in order) and
the trainable-parameter count that the ORIGINAL code builds for that variant. A matching
manifest means the authors' checkpoints load with ``strict=True`` (models/checkpoint.py accounts
for the LayerNorms the originals define but never call, which the models here leave out) and
that ``to_original`` gives exactly the state dict the original code loads.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch

import models
from conftest import DATA
from models.checkpoint import to_original

MANIFESTS = sorted((DATA / "manifests").glob("*.txt"))


def read_manifest(path):
    header, rows = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            header[key] = value
        else:
            rows.append(tuple(line.split(" ")))
    variant, *overrides = header["variant"].split(" ")
    kwargs = {k: int(v) for k, v in (o.split("=") for o in overrides)}
    return variant, kwargs, int(header["trainable_params"]), rows


def build_on_meta(variant: str, **kwargs) -> torch.nn.Module:
    # Shapes and names only: the meta device skips allocating 60M-parameter models.
    with torch.device("meta"):
        return timm.create_model(variant, **kwargs)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_state_dict_matches_original(path):
    variant, kwargs, n_params, rows = read_manifest(path)
    model = build_on_meta(variant, **kwargs)
    original = to_original(model)
    assert [(k, "x".join(map(str, v.shape)) or "-", str(v.dtype).split(".")[-1]) for k, v in original.items()] == rows
    unused = sum(math.prod(u.shape) for u in getattr(model, "unused_parameters", dict)().values())
    assert trainable(model) + unused == n_params


def test_every_variant_has_a_manifest():
    covered = {read_manifest(p)[0] for p in MANIFESTS}
    assert covered == set(models.VARIANTS)
    assert set(models.VARIANTS) <= set(timm.list_models())


# Parameter counts printed in the papers (M). Spikingformer's tables count without the two
# LayerNorms per block that its code defines but never uses (Spikformer's tables did the same).
# The papers print counts rounded or truncated to two decimals.
PAPER_PARAMS = {
    "qkformer_10_384": 16.47, "qkformer_10_512": 29.08, "qkformer_10_768": 64.96,
    "qkformer_cifar_4_384-c100": 6.74, "qkformer_cifar10dvs_2_256": 1.50,
    "spikingformer_8_384": 16.81, "spikingformer_8_512": 29.68, "spikingformer_8_768": 66.34,
    "spikingformer_cifar_4_384": 9.32, "spikingformer_cifar_2_384": 5.76,
    "spikingformer_cifar_4_256": 4.15,  # listed in Spikingformer's README, not in the AAAI paper
    "spikingformer_cifar10dvs_2_256": 2.57, "spikingformer_gesture_2_256": 2.57,
    "sglformer_8_384": 16.25, "sglformer_8_512": 28.67, "sglformer_8_512_star": 28.67,
    "sglformer_8_768_star": 64.02, "sglformer_cifar_4_384": 8.85, "sglformer_cifar_4_384-c100": 8.88,
    "spikformer_8_384": 16.81, "spikformer_6_512": 23.37, "spikformer_8_512": 29.68, "spikformer_10_512": 36.01,
    "spikformer_8_768": 66.34, "spikformer_cifar_4_384": 9.32, "spikformer_cifar_4_256": 4.15,
    "spikformer_cifar_2_384": 5.76, "spikformer_cifar10dvs_2_256": 2.57, "spikformer_gesture_2_256": 2.57,
}
# Rows where the released code builds a different model than the paper reports. We follow the
# code (its checkpoints must load); the README's "Faithfulness" section explains each.
CODE_DIFFERS_FROM_PAPER = {
    "qkformer_cifar_4_384": 6.74,        # the paper prints the CIFAR100 count for CIFAR10 too
    "qkformer_gesture_2_256": 1.50,      # released DVS128 code uses mlp_ratio 4 (2.00M); 1.50M = ratio 1
    "sglformer_cifar10dvs_3_256-T10": 2.48, "sglformer_cifar10dvs_3_256": 2.58,
    "sglformer_gesture_3_256-T10": 2.08, "sglformer_gesture_3_256": 2.17,   # released DVS code: 4.07M / 4.16M
}


def paper_count(model: torch.nn.Module, variant: str) -> int:
    """Spikingformer's tables count without the never-called LayerNorms; SGLFormer's with them."""
    unused = sum(math.prod(u.shape) for u in getattr(model, "unused_parameters", dict)().values())
    return trainable(model) + (unused if variant.startswith("sglformer") else 0)


def printed_as(n: int) -> set[float]:
    return {round(n / 1e6, 2), math.floor(n / 1e4) / 100}


def test_parameter_counts_match_papers(capsys):
    lines = []
    for path in MANIFESTS:
        variant, kwargs, n_params, _ = read_manifest(path)
        model = build_on_meta(variant, **kwargs)
        count = paper_count(model, variant)
        paper = PAPER_PARAMS.get(path.stem, CODE_DIFFERS_FROM_PAPER.get(path.stem))
        if path.stem in PAPER_PARAMS:
            assert paper in printed_as(count), f"{path.stem}: {count} params vs paper {paper}M"
            verdict = "matches paper"
        elif path.stem in CODE_DIFFERS_FROM_PAPER:
            assert paper not in printed_as(count)
            verdict = "paper differs from released code"
        else:
            verdict = "no paper row"
        lines.append(f"{path.stem:34s} ours {trainable(model):>10,d}  original {n_params:>10,d}  "
                     f"paper {paper if paper else '-':>6}M  {verdict}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
