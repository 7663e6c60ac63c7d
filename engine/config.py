"""Run configuration: one flat set of keys, from YAML and then the command line.

Precedence: field defaults < the YAML file (``-c``) < command-line flags. Every key of the
dataclass below can be set in YAML (``lr: 1e-3``) and on the command line (``--lr 1e-3``,
dashes or underscores). An unknown YAML key is an error that lists the valid keys, so a typo
can never silently fall back to a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem the user has to fix; the message says how."""


@dataclass
class Config:
    # --- what to train --------------------------------------------------------------------
    model: str = "qkformer_cifar_4_384"        # a name from models.VARIANTS
    T: Optional[int] = None                    # time steps (None: the variant's default)
    embed_dim: Optional[int] = None            # width (None: the variant's default, likewise below)
    depth: Optional[int] = None                # number of blocks
    num_heads: Optional[int] = None            # attention heads
    mlp_ratio: Optional[float] = None          # MLP hidden width / embed_dim
    img_size: Optional[int] = None             # input resolution
    num_classes: Optional[int] = None          # None: from the dataset
    fix_tb_merge: bool = False                 # fix the upstream LIF-over-T*B bug (README)
    lif_backend: Optional[str] = None          # auto | fused | torch | cupy (None: $SNN_LIF_BACKEND or auto)
    initial_checkpoint: Optional[str] = None   # start from these weights (fine-tuning)
    start_epoch: Optional[int] = None          # begin the schedule at this epoch (continued training)

    # --- data -----------------------------------------------------------------------------
    dataset: str = "cifar10"                   # cifar10 | cifar100 | imagenet | cifar10dvs | dvs128gesture | fake
    dvs_split: str = "originals"               # CIFAR10-DVS: originals (per-class first 90%) | tebn (0-99 test)
    dvs_aug: bool = False                      # event-frame augmentation: flip + SNNAugmentWide (DVS recipes)
    data_dir: str = "data"                     # folder holding cifar-10-batches-py / cifar-100-python
    download: bool = False                     # let torchvision download the dataset
    workers: int = 4
    batch_size: int = 64
    val_batch_size: int = 64
    pin_memory: bool = True

    # --- augmentation (timm) ---------------------------------------------------------------
    mean: Optional[list[float]] = None         # None: the variant's normalisation
    std: Optional[list[float]] = None
    interpolation: str = "bicubic"
    train_interpolation: str = "bicubic"
    crop_pct: Optional[float] = None          # eval resize = size / crop_pct; None: 224/256 up to 224, else 1 (MAE)
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: Optional[float] = 0.4        # ignored by timm when aa is set
    aa: Optional[str] = None                   # RandAugment/AutoAugment string, e.g. rand-m9-n1-mstd0.4-inc1
    reprob: float = 0.0                        # random erasing probability
    remode: str = "const"
    recount: int = 1
    mixup: float = 0.0                         # mixup alpha; mixup/cutmix active if either > 0
    cutmix: float = 0.0
    cutmix_minmax: Optional[list[float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mixup_off_epoch: int = 0                   # turn mixup/cutmix off from this epoch (0: never)
    smoothing: float = 0.1                     # label smoothing

    # --- optimisation ---------------------------------------------------------------------
    opt: str = "adamw"
    lr: Optional[float] = 1e-3                 # absolute learning rate; None: blr * effective batch / 256
    blr: Optional[float] = None                # base learning rate of the MAE-style ImageNet scripts
    weight_decay: float = 0.05
    momentum: float = 0.9
    opt_eps: Optional[float] = None
    opt_betas: Optional[list[float]] = None
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    accum_iter: Optional[int] = None           # micro-batches per optimizer step (None: 1, or from effective_batch)
    effective_batch: Optional[int] = None      # batch_size x accum_iter x processes; sets accum_iter for you
    layer_decay: float = 1.0                   # only 1.0 (all published runs; see README)
    sched: str = "cosine"                      # timm scheduler name, or mae_cosine (per-update, MAE/DeiT)
    epochs: int = 300
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0                   # extra epochs at min_lr after the schedule
    decay_rate: float = 0.1
    decay_epochs: float = 30                   # step schedule only
    warmup_prefix: bool = False                # cosine starts after warmup (MAE) instead of at 0 (timm)
    sched_on_updates: bool = False             # step the schedule every update, not every epoch
    amp: bool = True                           # mixed precision on CUDA; on CPU only with amp_dtype bfloat16
    eval_amp: bool = True                      # also evaluate under autocast (the DVS scripts evaluate in fp32)
    amp_dtype: str = "float16"                 # float16 (with loss scaling) | bfloat16
    grad_checkpointing: bool = False           # recompute blocks in backward: less memory, same gradients
    compile: bool = False                      # torch.compile the model (slow to start; see README)
    model_ema: bool = False
    model_ema_decay: float = 0.9998

    # --- run ------------------------------------------------------------------------------
    seed: int = 42
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    output: str = "output"                     # runs go to <output>/<experiment>
    experiment: Optional[str] = None           # None: <dataset>-<model>
    resume: Optional[str] = None               # a checkpoint, or "auto": <run dir>/last.pth
    log_interval: int = 50                     # steps between log lines when no progress bar
    tensorboard: bool = True
    progress: bool = True                      # progress bars (only on a terminal)

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
        out["backend"] = self.lif_backend
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(Config)}


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{key}'{hint}. "
                              f"Valid keys: {', '.join(sorted(FIELDS))}")


def _coerce(name: str, value: Any) -> Any:
    """YAML gives '1e-3' as a string and ints for floats; convert to the field's type."""
    optional = FIELDS[name].type.startswith("Optional[")
    if optional and isinstance(value, str) and value.lower() in ("none", "null", ""):
        return None  # "--lr none", "--aa none": unset an optional key from the command line
    if value is None:
        if not optional:
            default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING \
                else FIELDS[name].default_factory()
            raise ConfigError(f"config key '{name}' has no value (null); give one, or delete the line "
                              f"to use the default {default!r}")
        return None
    kind = FIELDS[name].type.replace("Optional[", "").rstrip("]")
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind.startswith("list"):
            items = value if isinstance(value, (list, tuple)) else [value]
            return [float(v) for v in items]
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{name}' expects {kind}, got {value!r}") from None
    return value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
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
    _check_keys(values, str(path))
    return {k: _coerce(k, v) for k, v in values.items()}


def field_help() -> dict[str, str]:
    """Each key's help text: the comment beside it in :class:`Config` plus its built-in default."""
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        match = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if match:
            comments[match[1]] = match[2]
    out = {}
    for f in fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = (f"{comments[f.name]} " if f.name in comments else "") + f"(built-in default: {default})"
    return out


def build_parser(description: str) -> argparse.ArgumentParser:
    """One flag per config key (``--lr``, ``--data-dir``...), plus ``-c/--config``."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", help="YAML file with config keys (path, or a name next to the script)")
    group = parser.add_argument_group(
        "config keys", "Each overrides the YAML file, which overrides the built-in defaults shown here; "
                       "the run's resolved values are written to <run dir>/config.yaml.")
    helps = field_help()
    for f in fields(Config):
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        kind = f.type.replace("Optional[", "").rstrip("]")
        text = helps[f.name].replace("%", "%%")
        if kind == "bool":
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind.startswith("list"):
            group.add_argument(*flags, dest=f.name, nargs="+", default=None, metavar="V", help=text)
        else:
            group.add_argument(*flags, dest=f.name, default=None, metavar=kind.upper(), help=text)
    return parser


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


# List keys whose length is fixed: a scalar (``scale: 1.0``) or a wrong count would otherwise
# fail deep inside timm.
LIST_LENGTHS = {"scale": 2, "ratio": 2, "opt_betas": 2, "cutmix_minmax": 2, "mean": 3, "std": 3}


def _check_list_lengths(cfg: Config) -> None:
    for key, length in LIST_LENGTHS.items():
        value = getattr(cfg, key)
        if value is not None and len(value) != length:
            example = FIELDS[key].default_factory() if FIELDS[key].default_factory is not dataclasses.MISSING \
                else [0.0] * length
            raise ConfigError(f"config key '{key}' expects a list of {length} numbers, e.g. {key}: {example}, "
                              f"got {value}")


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
