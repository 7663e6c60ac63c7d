"""Resolve a recipe: its YAML chain and the command line, then what they leave to the model and data.

Recipes hold training settings only. The architecture (``T``, ``embed_dim``, ``depth``,
``num_heads``, ``mlp_ratio``, ``img_size``) and the input normalisation (``mean``, ``std``) come
from the variant table (models/variants.py) for the model the recipe names, the class count from
the dataset, and the neuron backend from ``$SNN_LIF_BACKEND`` (else ``auto``), unless the recipe
or the command line sets them. :func:`resolve` fills them in and says where each value came from,
so ``--print-config``, ``config.yaml`` and the checkpoints record the values a run really uses.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from .config import FIELDS, Config, ConfigError, load_yaml_with_sources, make_config, sources_of

ARCH_KEYS = ("T", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size")
NORM_KEYS = ("mean", "std")
BACKEND_ENV = "SNN_LIF_BACKEND"  # models.neuron.BACKEND_ENV (not imported: it loads torch)


def check_model(name: str) -> None:
    import models
    if name not in models.VARIANTS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(models.VARIANTS)}")


def variant_values(name: str) -> dict[str, Any]:
    """The architecture and normalisation the variant table gives ``name`` (its row, then the
    model class's own defaults for what the row leaves out)."""
    check_model(name)
    from models.variants import VARIANTS, default_cfgs
    cls, defaults, _ = VARIANTS[name]
    signature = inspect.signature(cls).parameters
    values = {k: defaults[k] if k in defaults else signature[k].default for k in ARCH_KEYS}
    values.update(mean=list(default_cfgs[name]["mean"]), std=list(default_cfgs[name]["std"]))
    return values


def _dataset_classes(dataset: str) -> int | None:
    """A dataset's fixed class count; None where it is counted in the data (ImageNet) or unknown."""
    from .data import DATASETS
    spec = DATASETS.get(dataset)
    return spec.classes if spec is not None and isinstance(spec.classes, int) else None


def resolve(cfg: Config, sources: dict[str, str] | None = None) -> tuple[Config, dict[str, str]]:
    """``cfg`` with every key it leaves open (None) that the variant, the dataset or the environment
    decides filled in, and where each value came from (``sources``: key -> origin, from
    :func:`engine.config.sources_of`; keys it lacks count as built-in defaults)."""
    sources = dict(sources) if sources is not None else {name: "default" for name in FIELDS}
    values = {}
    variant = variant_values(cfg.model)
    for key in (*ARCH_KEYS, *NORM_KEYS):
        if getattr(cfg, key) is None:
            values[key] = variant[key]
            sources[key] = f"variant table ({cfg.model})"
    for key in NORM_KEYS:
        given = getattr(cfg, key)
        if given is not None and len(given) != len(variant[key]):
            raise ConfigError(f"config key '{key}' expects one number per input channel: {len(variant[key])} for "
                              f"{cfg.model}, e.g. {key}: {variant[key]}; got {given}")
    if cfg.num_classes is None:
        classes = _dataset_classes(cfg.dataset)
        if classes is not None:
            values["num_classes"] = classes
            sources["num_classes"] = f"dataset ({cfg.dataset})"
        else:
            sources["num_classes"] = f"dataset ({cfg.dataset}: counted in data_dir at start)"
    if cfg.backend is None:
        env = os.environ.get(BACKEND_ENV)
        values["backend"] = env or "auto"
        sources["backend"] = f"${BACKEND_ENV}" if env else "default"
        if env:
            from .config import choices_of
            if env not in choices_of("backend"):
                raise ConfigError(f"{BACKEND_ENV}={env} is not a neuron backend; set it to one of "
                                  f"{', '.join(choices_of('backend'))}, or pass --backend")
    return dataclasses.replace(cfg, **values), sources


def resolve_values(saved: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict (a checkpoint's, a config.yaml) resolved the same way: checkpoints
    written before recipes left the architecture to the variant table store None there."""
    known = {k: v for k, v in saved.items() if k in FIELDS}
    try:
        return resolve(Config(**known))[0].to_dict()
    except ConfigError:
        return dict(saved)  # e.g. a model this code no longer knows: compare as stored


def load_recipe(path, cli_values: dict[str, Any] | None = None) -> tuple[Config, dict[str, str]]:
    """The resolved config of a recipe file with command-line values on top, and each value's origin."""
    cli_values = cli_values or {}
    values, yaml_sources = load_yaml_with_sources(path)
    cfg = make_config(values, cli_values)
    return resolve(cfg, sources_of(yaml_sources, cli_values))
