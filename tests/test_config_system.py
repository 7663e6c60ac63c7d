"""The config system: real types, choices, one flag spelling, --print-config, base recipes, fast --help."""
import subprocess
import sys
import time
import typing

import pytest

from conftest import ROOT
from engine import config as C
from engine.config import ConfigError, load_yaml, load_yaml_with_sources, make_config

TRAIN = str(ROOT / "cifar10" / "train.py")


def test_types_come_from_annotations_not_strings():
    assert C.TYPES["T"] == (int, None, True)
    assert C.TYPES["scale"] == (list, float, False)
    assert C.TYPES["amp"] == (bool, None, False)
    assert set(C.TYPES) == set(typing.get_type_hints(C.Config))
    cfg = make_config({}, {"T": "8", "scale": ["0.5", "1"], "amp": "false"})
    assert cfg.T == 8 and isinstance(cfg.T, int) and cfg.scale == [0.5, 1.0] and cfg.amp is False
    with pytest.raises(ConfigError, match="'T' expects int, got '8.5'"):
        make_config({}, {"T": "8.5"})


def test_every_key_has_help_a_group_and_enumerations_have_choices():
    for f in C.fields(C.Config):
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["group"] in C.GROUPS, f.name
    with pytest.raises(ConfigError, match="'amp_dtype' must be one of float16, bfloat16; got 'fp16'"):
        make_config({}, {"amp_dtype": "fp16"})
    with pytest.raises(ConfigError, match="'backend' must be one of .*did you mean 'fused'"):
        make_config({}, {"backend": "fusd"})


def test_backend_and_schedule_choices_match_what_the_code_knows():
    from engine.optim import TIMM_SCHEDULES
    from models.neuron import BACKENDS
    assert C.choices_of("backend") == tuple(BACKENDS)   # read from models/neuron.py, so new backends follow
    assert set(C.FIELDS["sched"].metadata["choices"]) == {*TIMM_SCHEDULES, "mae_cosine"}


def test_backend_has_one_name_and_an_explicit_value_beats_the_environment(tmp_path, monkeypatch):
    from engine.factories import build_model
    from engine.recipe import resolve
    parser = C.build_parser("x")
    assert parser.parse_args(["--backend", "torch"]).backend == "torch"
    assert parser.parse_args(["--lif-backend", "triton"]).backend == "triton"   # the issue-12 spelling
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "nope"])
    old = tmp_path / "config.yaml"                      # a run folder's config.yaml of older code
    old.write_text("lif_backend: fused\n")
    assert load_yaml(old) == {"backend": "fused"}
    monkeypatch.setenv("SNN_LIF_BACKEND", "cupy")
    cfg, sources = resolve(make_config({}, {"backend": "torch", "embed_dim": 32, "depth": 3}))
    assert cfg.backend == "torch" and cfg.model_overrides()["backend"] == "torch"
    model = build_model(cfg, 10)   # would fail on a machine without CUDA if cupy won
    from models import LIF
    assert {m.requested_backend for m in model.modules() if isinstance(m, LIF)} == {"torch"}
    cfg, sources = resolve(make_config({}, {}))
    assert cfg.backend == "cupy" and sources["backend"] == "$SNN_LIF_BACKEND"
    monkeypatch.setenv("SNN_LIF_BACKEND", "cuppy")
    with pytest.raises(ConfigError, match="SNN_LIF_BACKEND=cuppy is not a neuron backend"):
        resolve(make_config({}, {}))
    monkeypatch.delenv("SNN_LIF_BACKEND")
    cfg, sources = resolve(make_config({}, {}))
    assert cfg.backend == "auto" and sources["backend"] == "default"


def test_one_spelling_per_flag():
    parser = C.build_parser("x")
    flags = [s for a in parser._actions for s in a.option_strings]
    assert "--data-dir" in flags and "--data_dir" not in flags
    assert "--amp" in flags and "--no-amp" in flags
    assert len(flags) == len(set(flags))


def test_base_recipes_chain_and_report_sources(tmp_path):
    (tmp_path / "_base.yml").write_text("epochs: 100\nlr: 1.0e-3\nscale: [0.5, 1.0]\n")
    (tmp_path / "mid.yml").write_text("base: _base.yml\nepochs: 200\n")
    (tmp_path / "top.yml").write_text("base: mid.yml\nwarmup_epochs: 3\n")
    values, sources = load_yaml_with_sources(tmp_path / "top.yml")
    assert values == {"epochs": 200, "lr": 1e-3, "scale": [0.5, 1.0], "warmup_epochs": 3}
    assert sources["epochs"].endswith("mid.yml") and sources["lr"].endswith("_base.yml")
    (tmp_path / "_base.yml").write_text("base: top.yml\n")
    with pytest.raises(ConfigError, match="recipe bases form a cycle"):
        load_yaml(tmp_path / "top.yml")
    (tmp_path / "bad.yml").write_text("base: _base.yml\nepoch: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_yaml(tmp_path / "bad.yml")


def test_print_config_shows_resolved_values_and_origins(tmp_path):
    out = subprocess.run([sys.executable, TRAIN, "--print-config", "--lr", "2e-3"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    assert lines["lr"].startswith("lr: 0.002") and lines["lr"].endswith("# command line")
    assert lines["dataset"].endswith(" cifar10/qkformer.yml")                    # the overlay
    assert lines["model"].endswith(" recipes/cifar/qkformer.yml")               # its family base
    assert lines["weight_decay"].endswith(" recipes/cifar/common.yml")          # the CIFAR base
    assert lines["embed_dim"].startswith("embed_dim: 384") and lines["embed_dim"].endswith(
        "# variant table (qkformer_cifar_4_384)")
    assert lines["num_classes"].startswith("num_classes: 10") and lines["num_classes"].endswith("# dataset (cifar10)")
    assert lines["initial_checkpoint"].endswith("# default")
    import yaml
    from engine.recipe import load_recipe
    printed = yaml.safe_load(out.stdout)
    assert make_config(printed, {}).to_dict() == load_recipe(ROOT / "cifar10" / "qkformer.yml",
                                                             {"lr": "2e-3"})[0].to_dict()


def test_help_is_fast_because_nothing_heavy_is_imported():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, TRAIN, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "optimisation and precision" in out.stdout
    assert time.perf_counter() - start < 4.0   # measured ~0.1 s; a torch import alone takes several
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); import engine.cli; "
                            "print(any(m in sys.modules for m in ('torch', 'timm', 'spikingjelly')))" % str(ROOT)],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"
