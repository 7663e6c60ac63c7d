"""Evaluate a checkpoint on the validation/test split: accuracy, loss, per-layer firing rates."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from models.checkpoint import extract_state_dict, fit_state_dict
from models.pretrained import read_checkpoint

from . import distributed
from .checkpoint import MODEL_KEYS
from .config import Config, ConfigError
from .data import prepare_dataset
from .energy import EnergyMeter, format_report, write_report
from .factories import build_model, data_settings, num_classes, validation_loader
from .firing import FiringRates
from .loader import seed_everything
from .logger import RunLogger
from .recipe import resolve
from .train_loop import Precision, evaluate


def saved_config(checkpoint) -> dict | None:
    """The config dict our checkpoints carry; None for the original repositories' layouts."""
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return saved if isinstance(saved, dict) else None


# How the training run validated, beyond the model itself. QKFormer's results depend on the
# batch size (the originals' T x B merge), so evaluating with the folder's default YAML instead
# would not reproduce the training-time validation.
EVAL_KEYS = ("val_batch_size", "workers", "interpolation", "crop_pct", "mean", "std", "eval_amp", "amp",
             "amp_dtype", "dvs_split")


def config_for_checkpoint(cfg: Config, checkpoint: dict, explicit: set[str] = frozenset(),
                          from_file: set[str] | None = None) -> Config:
    """Our checkpoints carry their config: the model-defining keys come from it unless given on the
    command line (``explicit``), e.g. ``--img-size 384`` to evaluate at another resolution; the
    evaluation settings (:data:`EVAL_KEYS`) too, unless given on the command line or set in a YAML
    the user named with ``-c`` (``from_file``: its keys; None when no ``-c`` was given)."""
    saved = saved_config(checkpoint)
    if saved is None:
        return cfg  # an original repository's checkpoint: the YAML/CLI config describes the model
    values = cfg.to_dict()
    values.update({k: saved[k] for k in MODEL_KEYS if k in saved and k != "dataset" and k not in explicit})
    chosen = explicit | (from_file or set())
    values.update({k: saved[k] for k in EVAL_KEYS if k in saved and k not in chosen})
    return Config(**values)


def describe_eval_settings(cfg: Config, checkpoint: dict, explicit: set[str] = frozenset(),
                           from_file: set[str] | None = None, sources: dict[str, str] | None = None) -> str:
    """One line naming the evaluation settings used and where each came from (``sources``: what
    :func:`engine.recipe.resolve` filled in, e.g. the variant's normalisation)."""
    stored = saved_config(checkpoint) or {}
    filled = {k: v for k, v in (sources or {}).items() if v.startswith("variant table")}
    parts = []
    for key in EVAL_KEYS:
        origin = ("command line" if key in explicit else "-c file" if key in (from_file or set())
                  else filled[key] if key in filled else "checkpoint" if key in stored else "default config")
        parts.append(f"{key}={getattr(cfg, key)!r} ({origin})")
    return "evaluation settings: " + ", ".join(parts)


def check_dataset(cfg: Config, checkpoint: dict, explicit: set[str] = frozenset()) -> None:
    """A checkpoint of ours records its dataset; evaluating it on another one (e.g. a CIFAR100
    model from cifar10/test.py) would print a meaningless accuracy, so it needs an explicit
    ``--dataset``."""
    trained_on = (saved_config(checkpoint) or {}).get("dataset")
    if trained_on and trained_on != cfg.dataset and "dataset" not in explicit:
        raise ConfigError(f"the checkpoint was trained on {trained_on} but this config evaluates {cfg.dataset}; "
                          f"use the {trained_on} folder's test.py, or pass --dataset {cfg.dataset} if you mean it")


def test(cfg: Config, checkpoint_path: str, use_ema: bool = False, save_json: str | None = None,
         local_rank: int | None = None, explicit: set[str] = frozenset(),
         resolutions: list[int] | None = None, energy_dir: str | None = None,
         from_file: set[str] | None = None) -> list[dict]:
    """Evaluate at ``cfg.img_size`` (or each of ``resolutions``); one result dict per resolution.

    ``energy_dir``: also count MACs/SOPs and energy over the test set (engine/energy.py) and write
    the report, the firing-rate plot and TensorBoard scalars/figures there.
    """
    info = distributed.init(cfg.device, local_rank, cfg.dist_timeout)
    log = RunLogger(None, enabled=info.is_main, tensorboard=False, progress=cfg.progress,
                    log_interval=cfg.log_interval)
    try:
        checkpoint = read_checkpoint(checkpoint_path)  # a file, a converted folder or an hf_hub: id
        check_dataset(cfg, checkpoint, explicit)
        cfg = config_for_checkpoint(cfg, checkpoint, explicit, from_file)
        # What neither the checkpoint nor the user set comes from the (checkpoint's) variant.
        cfg, sources = resolve(cfg, {})
        log.info(describe_eval_settings(cfg, checkpoint, explicit, from_file, sources))
        seed_everything(cfg.seed)
        model = build_model(cfg, num_classes(cfg))
        model.load_state_dict(fit_state_dict(model, extract_state_dict(checkpoint, use_ema=use_ema)))
        model.to(info.device)
        precision = Precision.from_config(cfg, info.device)
        prepare_dataset(cfg, model.T, info)
        results = []
        for size in resolutions or [None]:
            run_cfg = cfg if size is None else dataclasses.replace(cfg, img_size=size)
            input_size = data_settings(run_cfg, model)[0]
            val_loader = validation_loader(run_cfg, model, info)
            meter = EnergyMeter(model) if energy_dir else FiringRates(model)
            with meter:
                metrics = evaluate(model, val_loader, precision,
                                   log.progress(val_loader, len(val_loader), f"test {input_size[-1]}px"),
                                   amp=cfg.eval_amp)
            firing = meter.firing if energy_dir else meter
            rates = firing.rates(info.device)
            results.append({"checkpoint": str(checkpoint_path), "ema": use_ema, "model": cfg.model,
                            "dataset": cfg.dataset, "T": model.T, "img_size": input_size[-1],
                            "crop_pct": run_cfg.eval_crop_pct(input_size[-1]), **metrics,
                            "mean_firing_rate": sum(rates.values()) / max(len(rates), 1), "firing_rates": rates})
            log.info(f"{cfg.model} on {cfg.dataset} at {input_size[-1]}px ({metrics['samples']} images): "
                     f"top-1 {metrics['top1']:.2f}, top-5 {metrics['top5']:.2f}, loss {metrics['loss']:.4f}")
            if info.is_main:
                print(format_rates(rates))
            if energy_dir:
                summary = meter.summary(info.device)  # collective: every rank takes part
                results[-1]["energy"] = {k: summary[k] for k in ("energy_mj", "macs", "sops", "dense",
                                                                 "mean_firing_rate", "conventions_mj")}
                if info.is_main:
                    _write_energy(summary, Path(energy_dir) / f"{input_size[-1]}px",
                                  f"{cfg.model} on {cfg.dataset}, {input_size[-1]} px, T={model.T}")
        if info.is_main and save_json:
            Path(save_json).parent.mkdir(parents=True, exist_ok=True)
            Path(save_json).write_text(json.dumps(results if resolutions else results[0], indent=2))
            log.info(f"results written to {save_json}")
        return results
    finally:
        log.close()
        distributed.cleanup()


def _write_energy(summary: dict, out: Path, title: str) -> None:
    print(format_report(summary))
    write_report(summary, out, title)
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(out / "tensorboard")) as tb:
        for key in ("energy_mj", "macs", "sops", "mean_firing_rate"):
            tb.add_scalar(f"energy/{key}", summary[key], 0)
        for convention, mj in summary["conventions_mj"].items():
            tb.add_scalar(f"energy/{convention}_mj", mj, 0)
        for name, rate in summary["firing_rates"].items():
            tb.add_scalar(f"firing_rate/{name}", rate, 0)
        tb.add_text("energy/report", "<pre>" + format_report(summary) + "</pre>", 0)


def format_rates(rates: dict[str, float]) -> str:
    width = max((len(n) for n in rates), default=10)
    lines = [f"{'LIF layer':<{width}}  firing rate", f"{'-' * width}  -----------"]
    lines += [f"{name:<{width}}  {rate:11.4f}" for name, rate in rates.items()]
    mean = sum(rates.values()) / max(len(rates), 1)
    lines.append(f"{'mean over layers':<{width}}  {mean:11.4f}")
    return "\n".join(lines)
