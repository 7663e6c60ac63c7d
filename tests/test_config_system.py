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
    with pytest.raises(ConfigError, match="'lif_backend' must be one of .*did you mean 'fused'"):
        make_config({}, {"lif_backend": "fusd"})


def test_backend_and_schedule_choices_match_what_the_code_knows():
    from engine.optim import TIMM_SCHEDULES
    from models.neuron import BACKENDS
    assert set(BACKENDS) <= set(C.FIELDS["lif_backend"].metadata["choices"])
    assert set(C.FIELDS["sched"].metadata["choices"]) == {*TIMM_SCHEDULES, "mae_cosine"}


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
    out = subprocess.run([sys.executable, TRAIN, "--print-config", "--lr", "2e-3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    assert lines["lr"].startswith("lr: 0.002") and lines["lr"].endswith("# command line")
    assert lines["model"].endswith("cifar10/qkformer.yml")
    assert lines["initial_checkpoint"].endswith("# default")
    import yaml
    printed = yaml.safe_load(out.stdout)
    assert make_config(printed, {}).to_dict() == make_config(load_yaml(ROOT / "cifar10" / "qkformer.yml"),
                                                            {"lr": "2e-3"}).to_dict()


def test_help_is_fast_because_nothing_heavy_is_imported():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, TRAIN, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "optimisation and precision" in out.stdout
    assert time.perf_counter() - start < 4.0   # measured ~0.1 s; a torch import alone takes several
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); import engine.cli; "
                            "print(any(m in sys.modules for m in ('torch', 'timm', 'spikingjelly')))" % str(ROOT)],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"
