"""Run configuration: one flat set of keys, from YAML and then the command line.

Precedence: field defaults < the YAML file (``-c``) < command-line flags. Every key of the
dataclass below can be set in YAML (``lr: 1e-3``) and on the command line (``--lr 1e-3``; one
spelling, with dashes; booleans as ``--amp``/``--no-amp``). Types come from the annotations
(``typing.get_type_hints``), help texts, groups and allowed values from each field's metadata.
An unknown YAML key is an error that lists the valid keys, so a typo can never silently fall
back to a default. A YAML may extend another with ``base: <path relative to it>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml


from .errors import ConfigError  # noqa: F401  (re-exported: older code imports it from here)

GROUPS = {"model": "model", "data": "data", "augmentation": "augmentation (timm)",
          "optimisation": "optimisation and precision", "run": "run: outputs, logging, resume"}


def runtime_options():
    """models/options.py (names, choices, help of the models' runtime options), loaded without the
    models package, whose import builds every variant with torch: ``--help`` answers at once. A
    later ``import models`` finds it under its own name and uses the same module."""
    name = "models.options"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "models" / "options.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


OPTIONS = runtime_options().OPTIONS


def key(default, help: str, *, group: str, choices=None):
    """A config key: its default, help text, argument group and allowed values (if enumerated:
    a tuple, or a function returning one)."""
    metadata = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    # --- what to train --------------------------------------------------------------------
    model: str = key("qkformer_cifar_4_384", 'a name from models.VARIANTS', group='model')
    T: Optional[int] = key(None, "time steps (None: the variant's default)", group='model')
    embed_dim: Optional[int] = key(None, "width (None: the variant's default, likewise below)", group='model')
    depth: Optional[int] = key(None, 'number of blocks', group='model')
    num_heads: Optional[int] = key(None, 'attention heads', group='model')
    mlp_ratio: Optional[float] = key(None, 'MLP hidden width / embed_dim', group='model')
    img_size: Optional[int] = key(None, 'input resolution', group='model')
    num_classes: Optional[int] = key(None, 'None: from the dataset', group='model')
    # runtime options of the models (models/options.py: defaults, choices and help defined there)
    fix_tb_merge: bool = key(OPTIONS["fix_tb_merge"].default, OPTIONS["fix_tb_merge"].help, group='model')
    backend: Optional[str] = key(OPTIONS["backend"].default, OPTIONS["backend"].help, group='model',
        choices=OPTIONS["backend"].choices)
    attention_order: str = key(OPTIONS["attention_order"].default, OPTIONS["attention_order"].help, group='model',
        choices=OPTIONS["attention_order"].choices)
    activation_memory: str = key(OPTIONS["activation_memory"].default, OPTIONS["activation_memory"].help,
        group='model', choices=OPTIONS["activation_memory"].choices)
    initial_checkpoint: Optional[str] = key(None, 'start from these weights (fine-tuning)', group='model')
    start_epoch: Optional[int] = key(None, 'begin the schedule at this epoch (continued training)', group='model')

    # --- data -----------------------------------------------------------------------------
    dataset: str = key("cifar10", 'cifar10 | cifar100 | imagenet | cifar10dvs | dvs128gesture | fake (synthetic)',
        group='data')
    dvs_split: str = key("originals", 'CIFAR10-DVS: originals (per-class first 90%) | tebn (0-99 test)',
        group='data', choices=('originals', 'tebn'))
    dvs_aug: bool = key(False, 'event-frame augmentation: flip + SNNAugmentWide (DVS recipes)', group='data')
    allow_empty: bool = key(False, 'DVS: keep samples with fewer events than frames (T), counted in a warning, '
        'instead of stopping', group='data')
    resume_prepare: bool = key(False, 'DVS: continue an interrupted or unmarked cache from the files that verify',
        group='data')
    data_dir: str = key("data", 'folder holding cifar-10-batches-py / cifar-100-python', group='data')
    download: bool = key(False, 'let torchvision download the dataset', group='data')
    workers: int = key(4, 'data-loading processes per training process (capped at the CPUs available)', group='data')
    batch_size: int = key(64, 'training batch per process', group='data')
    val_batch_size: int = key(64, 'validation batch per process', group='data')
    pin_memory: bool = key(True, 'page-locked host memory for faster host-to-GPU copies', group='data')

    # --- augmentation (timm) ---------------------------------------------------------------
    mean: Optional[list[float]] = key(None, "None: the variant's normalisation", group='augmentation')
    std: Optional[list[float]] = key(None, "None: the variant's normalisation", group='augmentation')
    interpolation: str = key("bicubic", 'resize interpolation for evaluation',
        group='augmentation', choices=('bicubic', 'bilinear', 'nearest'))
    train_interpolation: str = key("bicubic", 'random-resized-crop interpolation ("random": timm picks)',
        group='augmentation', choices=('bicubic', 'bilinear', 'nearest', 'random'))
    crop_pct: Optional[float] = key(None, 'eval resize = size / crop_pct; None: 224/256 up to 224, else 1 (MAE)',
        group='augmentation')
    scale: list[float] = key([0.08, 1.0], 'random-resized-crop area range [min, max] (fraction of the image)',
        group='augmentation')
    ratio: list[float] = key([3 / 4, 4 / 3], 'random-resized-crop aspect-ratio range [min, max]',
        group='augmentation')
    hflip: float = key(0.5, 'horizontal flip probability', group='augmentation')
    vflip: float = key(0.0, 'vertical flip probability', group='augmentation')
    color_jitter: Optional[float] = key(0.4, 'ignored by timm when aa is set', group='augmentation')
    aa: Optional[str] = key(None, 'RandAugment/AutoAugment string, e.g. rand-m9-n1-mstd0.4-inc1',
        group='augmentation')
    aa_ops: Optional[list[str]] = key(None, "RandAugment's op names, e.g. [Rotate, ShearX] (None: timm's "
        'full set)', group='augmentation')
    reprob: float = key(0.0, 'random erasing probability', group='augmentation')
    remode: str = key("const", 'random erasing fill', group='augmentation', choices=('const', 'rand', 'pixel'))
    recount: int = key(1, 'random erasing: number of erased boxes', group='augmentation')
    mixup: float = key(0.0, 'mixup alpha; mixup/cutmix active if either > 0', group='augmentation')
    cutmix: float = key(0.0, 'cutmix alpha', group='augmentation')
    cutmix_minmax: Optional[list[float]] = key(None, 'cutmix box size range [min, max] (overrides alpha)',
        group='augmentation')
    mixup_prob: float = key(1.0, 'probability of applying mixup or cutmix to a batch', group='augmentation')
    mixup_switch_prob: float = key(0.5, 'probability of cutmix instead of mixup when both are on',
        group='augmentation')
    mixup_mode: str = key("batch", 'how mixup pairs are drawn',
        group='augmentation', choices=('batch', 'pair', 'elem'))
    mixup_off_epoch: int = key(0, 'turn mixup/cutmix off from this epoch (0: never)', group='augmentation')
    smoothing: float = key(0.1, 'label smoothing', group='augmentation')

    # --- optimisation ---------------------------------------------------------------------
    opt: str = key("adamw", 'timm optimizer name (adamw, sgd, lamb, ...)', group='optimisation')
    lr: Optional[float] = key(1e-3, 'absolute learning rate; None: blr * effective batch / 256', group='optimisation')
    blr: Optional[float] = key(None, 'base learning rate of the MAE-style ImageNet scripts', group='optimisation')
    weight_decay: float = key(0.05, 'weight decay (norms and biases are exempt, as in the originals)',
        group='optimisation')
    momentum: float = key(0.9, 'SGD momentum', group='optimisation')
    opt_eps: Optional[float] = key(None, "optimizer epsilon (None: the optimizer's default)", group='optimisation')
    opt_betas: Optional[list[float]] = key(None, "Adam betas [beta1, beta2] (None: the optimizer's default)",
        group='optimisation')
    clip_grad: Optional[float] = key(None, 'gradient clipping threshold (None: no clipping)', group='optimisation')
    clip_mode: str = key("norm", 'what clip_grad bounds', group='optimisation', choices=('norm', 'value', 'agc'))
    accum_iter: Optional[int] = key(None, 'micro-batches per optimizer step (None: 1, or from effective_batch)',
        group='optimisation')
    effective_batch: Optional[int] = key(None, 'batch_size x accum_iter x processes; sets accum_iter for you',
        group='optimisation')
    layer_decay: float = key(1.0, 'only 1.0 (all published runs; docs/datasets.md)', group='optimisation')
    sched: str = key("cosine", 'timm scheduler name, or mae_cosine (per-update, MAE/DeiT)',
        group='optimisation', choices=('cosine', 'mae_cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly', 'constant'))
    epochs: int = key(300, 'epochs of the schedule (cooldown comes on top)', group='optimisation')
    warmup_epochs: int = key(0, 'linear learning-rate warm-up epochs', group='optimisation')
    warmup_lr: float = key(1e-6, 'learning rate at the start of warm-up', group='optimisation')
    min_lr: float = key(1e-5, 'learning rate at the end of the cosine schedule', group='optimisation')
    cooldown_epochs: int = key(0, 'extra epochs at min_lr after the schedule', group='optimisation')
    decay_rate: float = key(0.1, 'step/multistep schedule: factor per decay', group='optimisation')
    decay_epochs: float = key(30, 'step schedule only', group='optimisation')
    warmup_prefix: bool = key(False, 'cosine starts after warmup (MAE) instead of at 0 (timm)', group='optimisation')
    sched_on_updates: bool = key(False, 'step the schedule every update, not every epoch', group='optimisation')
    amp: bool = key(True, 'mixed precision on CUDA; on CPU only with amp_dtype bfloat16', group='optimisation')
    eval_amp: bool = key(True, 'also evaluate under autocast (the DVS scripts evaluate in fp32)',
        group='optimisation')
    amp_dtype: str = key("float16", 'float16 (with loss scaling) | bfloat16',
        group='optimisation', choices=('float16', 'bfloat16'))
    grad_checkpointing: bool = key(OPTIONS["grad_checkpointing"].default, OPTIONS["grad_checkpointing"].help,
        group='optimisation')
    compile: bool = key(False, 'torch.compile the model (slow to start; docs/performance.md)', group='optimisation')
    cuda_graph: bool = key(False, 'replay each training step (and evaluation forward) as one CUDA graph after a '
                           'warm-up; CUDA only', group='optimisation')
    model_ema: bool = key(False, 'keep an exponential moving average of the weights (validated and saved too)',
        group='optimisation')
    model_ema_decay: float = key(0.9998, 'EMA decay per update', group='optimisation')

    # --- run ------------------------------------------------------------------------------
    seed: int = key(42, 'random seed (each process adds its rank)', group='run')
    device: str = key("auto", 'auto | cpu | cuda | cuda:N', group='run')
    output: str = key("output", 'runs go to <output>/<experiment>', group='run')
    experiment: Optional[str] = key(None, 'None: <dataset>-<model>', group='run')
    resume: Optional[str] = key(None, 'a checkpoint, or "auto": <run dir>/last.pth', group='run')
    log_interval: int = key(50, 'steps between log lines when no progress bar', group='run')
    tensorboard: bool = key(True, 'write TensorBoard logs to <run dir>/tensorboard', group='run')
    progress: bool = key(True, 'progress bars (only on a terminal)', group='run')
    preempt_signals: list[str] = key(["SIGTERM", "SIGUSR1"], 'signals that mean "the job will be killed": finish '
        'the optimizer step, checkpoint the position inside the epoch, exit with status 75 (none: off)', group='run')
    dist_timeout: float = key(300.0, 'seconds a process waits for the others (in a collective) before the run '
        'stops naming the process that stopped responding', group='run')


    def eval_crop_pct(self, img_size: int) -> float:
        if self.crop_pct is not None:
            return self.crop_pct
        return 224 / 256 if img_size <= 224 else 1.0

    def resolve_batching(self, world_size: int) -> tuple[int, float]:
        """(accum_iter, absolute lr) for `world_size` processes, per the MAE rules."""
        per_step = self.batch_size * world_size
        accum = self.accum_iter or 1
        if self.effective_batch is not None:
            if self.effective_batch % per_step:
                raise ConfigError(
                    f"effective_batch {self.effective_batch} is not a multiple of batch_size {self.batch_size} x "
                    f"{world_size} processes; change --batch-size or the number of processes")
            derived = self.effective_batch // per_step
            if self.accum_iter is not None and self.accum_iter != derived:
                raise ConfigError(f"accum_iter {self.accum_iter} contradicts effective_batch {self.effective_batch} "
                                  f"({self.batch_size} x {world_size} processes needs accum_iter {derived})")
            accum = derived
        lr = self.lr if self.lr is not None else self.blr * per_step * accum / 256
        return accum, lr

    def run_dir(self) -> Path:
        return Path(self.output) / (self.experiment or f"{self.dataset}-{self.model}")

    def model_overrides(self) -> dict[str, Any]:
        """Arguments for ``timm.create_model`` that this config sets explicitly."""
        keys = ("T", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size", "num_classes")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        out["fix_tb_merge"] = self.fix_tb_merge
        out["backend"] = self.backend
        out["attention_order"] = self.attention_order
        out["activation_memory"] = self.activation_memory
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(Config)}
BASE_KEY = "base"  # a YAML names the recipe it extends: ``base: ../recipes/cifar/qkformer.yml`` (relative to itself)
# Keys that were renamed: a YAML written with the old name (a run's config.yaml) still loads.
RENAMED = {"lif_backend": "backend"}


def choices_of(name: str) -> tuple | None:
    """The allowed values of an enumerated key, None for the others."""
    choices = FIELDS[name].metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _field_type(hint) -> tuple[type, type | None, bool]:
    """(type, list item type or None, optional) of a field, from its real annotation."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return list, typing.get_args(hint)[0], optional
    return hint, None, optional


TYPES = {name: _field_type(hint) for name, hint in typing.get_type_hints(Config).items()}


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{key}'{hint}. "
                              f"Valid keys: {', '.join(sorted(FIELDS))}")


def _default(name: str) -> Any:
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "yes", "1", "on"):
                return True
            if value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if not isinstance(value, (bool, int)):
            raise ValueError
        return bool(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if kind is str:
        if isinstance(value, (list, dict)):
            raise ValueError
        return str(value)
    raise TypeError(f"unsupported config type {kind}")


def _coerce(name: str, value: Any) -> Any:
    """YAML gives '1e-3' as a string and ints for floats; convert to the field's real type."""
    kind, item, optional = TYPES[name]
    if optional and isinstance(value, str) and value.lower() in ("none", "null", ""):
        return None  # "--lr none", "--aa none": unset an optional key from the command line
    if value is None:
        if not optional:
            raise ConfigError(f"config key '{name}' has no value (null); give one, or delete the line "
                              f"to use the default {_default(name)!r}")
        return None
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(_list_message(name, value))
        try:
            return [_scalar(item, v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(_list_message(name, value)) from None
    try:
        value = _scalar(kind, value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{name}' expects {'true/false' if kind is bool else kind.__name__}, "
                          f"got {value!r}") from None
    choices = choices_of(name)
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key '{name}' must be one of {', '.join(choices)}; got {value!r}{hint}")
    return value


# List keys whose length is fixed: a scalar (``scale: 1.0``) or a wrong count would otherwise
# fail deep inside timm.
# ``mean``/``std`` hold one number per input channel (3 for images, 2 for event frames): their
# length is checked against the variant when the recipe is resolved (engine/recipe.py).
LIST_LENGTHS = {"scale": 2, "ratio": 2, "opt_betas": 2, "cutmix_minmax": 2}
PER_CHANNEL = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _list_message(name: str, value: Any) -> str:
    length = LIST_LENGTHS.get(name)
    example = _default(name) or PER_CHANNEL.get(name) or [0.0] * (length or 2)
    count = f"{length} numbers" if length else "numbers, one per input channel" if name in PER_CHANNEL else \
        "names" if TYPES[name][1] is str else "numbers"
    return f"config key '{name}' expects a list of {count}, e.g. {name}: {example}, got {value!r}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML ({problem}); "
                              f"write one 'key: value' per line, lists as [a, b]") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def load_yaml_with_sources(path: str | os.PathLike, _chain: tuple = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A recipe's values with its ``base:`` chain applied (the file's own keys win), and for
    each key the file it came from."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: recipe bases form a cycle ({cycle}); remove one 'base:' line")
    values = _read_yaml(path)
    base = values.pop(BASE_KEY, None)
    for old, new in RENAMED.items():
        if old in values and new not in values:
            values[new] = values.pop(old)
    _check_keys(values, str(path))
    merged, sources = {}, {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' names one YAML file, e.g. base: _qkformer.yml; got {base!r}")
        merged, sources = load_yaml_with_sources(os.path.normpath(path.parent / base), (*_chain, path.resolve()))
    for k, v in values.items():
        merged[k] = _coerce(k, v)
        sources[k] = str(path)
    return merged, sources


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    return load_yaml_with_sources(path)[0]


def field_help() -> dict[str, str]:
    """Each key's help text (its field metadata) plus its built-in default."""
    return {f.name: f"{f.metadata['help']} (built-in default: {_default(f.name)})" for f in fields(Config)}


def build_parser(description: str) -> argparse.ArgumentParser:
    """One flag per config key (``--lr``, ``--data-dir``, ``--amp/--no-amp``...), in groups, plus
    ``-c/--config`` and ``--print-config``."""
    parser = argparse.ArgumentParser(
        description=description, allow_abbrev=False,
        epilog="Each key overrides the YAML file (and the bases it names), which overrides the built-in "
               "defaults shown here; the run's resolved values are written to <run dir>/config.yaml.")
    parser.add_argument("-c", "--config", help="YAML file with config keys (path, or a name next to the script)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML, with where each value came from, and exit")
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    helps = field_help()
    for f in fields(Config):
        kind, item, _ = TYPES[f.name]
        group = groups[f.metadata["group"]]
        flag = f"--{f.name.replace('_', '-')}"
        text = helps[f.name].replace("%", "%%")
        choices = choices_of(f.name)
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is list:
            group.add_argument(flag, dest=f.name, nargs="+", default=None, metavar=item.__name__.upper(),
                               help=text)
        elif choices:
            group.add_argument(flag, dest=f.name, default=None, choices=choices, help=text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=kind.__name__.upper(), help=text)
    for old, new in RENAMED.items():   # earlier spellings keep working, unlisted
        parser.add_argument(f"--{old.replace('_', '-')}", dest=new, default=None, choices=choices_of(new),
                            help=argparse.SUPPRESS)
    return parser


def sources_of(yaml_sources: dict[str, str], cli_values: dict[str, Any]) -> dict[str, str]:
    """Where each key's value comes from: a YAML file, the command line, or the built-in default."""
    out = {name: "default" for name in FIELDS}
    out.update(yaml_sources)
    out.update({k: "command line" for k, v in cli_values.items() if v is not None and k in FIELDS})
    return out


def format_config(cfg: Config, sources: dict[str, str]) -> str:
    """The resolved config as YAML, one key per line, each with its origin as a comment."""
    lines = []
    for name, value in cfg.to_dict().items():
        text = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()
        text = text[1:-1] if text.startswith("{") else text  # {key: value} -> key: value
        origin = sources.get(name, "default")
        if os.path.isabs(origin):  # a recipe file: shown relative to the working directory
            origin = os.path.relpath(origin)
        lines.append(f"{text:<48} # {origin}")
    return "\n".join(lines) + "\n"


def resolve_config_path(name: str | None, script_dir: Path, default: str) -> Path:
    """``-c`` as given, else relative to the script's folder; the script's default if absent."""
    if name is None:
        return script_dir / default
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    return script_dir / name


def _learning_rate_layer(layer: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """``lr`` (absolute) and ``blr`` (scaled by the batch) are one setting: the layer that sets one
    of them replaces both, so ``--blr`` on the command line overrides a YAML ``lr`` and a YAML with
    only ``blr`` is not shadowed by the built-in ``lr``. One layer setting both is ambiguous."""
    given = [k for k in ("lr", "blr") if layer.get(k) is not None]
    if len(given) == 2:
        raise ConfigError(f"{where} sets both lr ({layer['lr']}) and blr ({layer['blr']}); keep one: lr is the "
                          f"absolute learning rate, blr is scaled by effective batch / 256")
    if given:
        other = "blr" if given[0] == "lr" else "lr"
        values[other] = None


def make_config(yaml_values: dict[str, Any], cli_values: dict[str, Any]) -> Config:
    values = dict(yaml_values)
    _learning_rate_layer(yaml_values, values, "the YAML file")
    cli = {k: _coerce(k, v) for k, v in cli_values.items() if v is not None and k in FIELDS}
    _learning_rate_layer(cli, values, "the command line")
    values.update(cli)
    for key, value in values.items():
        if value is not None:
            values[key] = _coerce(key, value)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def _check_list_lengths(cfg: Config) -> None:
    for key, length in LIST_LENGTHS.items():
        value = getattr(cfg, key)
        if value is not None and len(value) != length:
            raise ConfigError(_list_message(key, value))


def validate(cfg: Config) -> None:
    _check_list_lengths(cfg)
    if cfg.accum_iter is not None and cfg.accum_iter < 1:
        raise ConfigError(f"accum_iter must be >= 1, got {cfg.accum_iter}")
    if cfg.lr is None and cfg.blr is None:
        raise ConfigError("set a learning rate: lr (absolute) or blr (scaled by the effective batch / 256)")
    if cfg.layer_decay != 1.0:
        raise ConfigError("layer_decay other than 1.0 is not implemented (no published run uses it)")
    if cfg.batch_size < 1 or cfg.val_batch_size < 1:
        raise ConfigError("batch_size and val_batch_size must be >= 1")
    if cfg.amp_dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {cfg.amp_dtype!r}")
    for key in ("epochs", "T", "effective_batch", "embed_dim", "depth", "num_heads", "img_size", "num_classes"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.workers < 0 or cfg.log_interval < 1:
        raise ConfigError("workers must be >= 0 and log_interval >= 1")


def dump(cfg: Config, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
