"""Evaluate a checkpoint on the validation/test split: accuracy, loss, per-layer firing rates."""
from __future__ import annotations

import json
from pathlib import Path


import models
from models.checkpoint import check_compatible, extract_state_dict

from . import distributed
from .checkpoint import MODEL_KEYS
from .config import Config
from .data import build_dataset, dataset_spec
from .firing import FiringRates
from .loader import eval_loader, seed_everything
from .logger import RunLogger
from .train_loop import Precision, evaluate
from .trainer import build_model, data_settings


def config_for_checkpoint(cfg: Config, checkpoint: dict) -> Config:
    """Our checkpoints carry their config: take the model-defining keys from it."""
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        return cfg  # an original repository's checkpoint: the YAML/CLI config describes the model
    values = cfg.to_dict()
    values.update({k: saved[k] for k in MODEL_KEYS if k in saved and k != "dataset"})
    return Config(**values)


def test(cfg: Config, checkpoint_path: str, use_ema: bool = False, save_json: str | None = None,
         local_rank: int | None = None) -> dict:
    info = distributed.init(cfg.device, local_rank)
    log = RunLogger(None, enabled=info.is_main, tensorboard=False, progress=cfg.progress,
                    log_interval=cfg.log_interval)
    try:
        checkpoint = models.safe_load(checkpoint_path)
        cfg = config_for_checkpoint(cfg, checkpoint)
        seed_everything(cfg.seed)
        num_classes = cfg.num_classes or dataset_spec(cfg.dataset).num_classes
        model = build_model(cfg, num_classes)
        state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
        check_compatible(model, state_dict)
        model.load_state_dict(state_dict)
        input_size, mean, std = data_settings(cfg, model)
        val_set = build_dataset(cfg, False, input_size, mean, std)
        val_loader = eval_loader(cfg, val_set, info)
        model.to(info.device)
        precision = Precision.from_config(cfg, info.device)
        with FiringRates(model) as firing:
            metrics = evaluate(model, val_loader, precision, log.progress(val_loader, len(val_loader), "test"))
        rates = firing.rates(info.device)
        result = {"checkpoint": str(checkpoint_path), "ema": use_ema, "model": cfg.model, "dataset": cfg.dataset,
                  "T": model.T, **metrics, "mean_firing_rate": sum(rates.values()) / max(len(rates), 1),
                  "firing_rates": rates}
        if info.is_main:
            log.info(f"{cfg.model} on {cfg.dataset} ({metrics['samples']} images): top-1 {metrics['top1']:.2f}, "
                     f"top-5 {metrics['top5']:.2f}, loss {metrics['loss']:.4f}")
            print(format_rates(rates))
            if save_json:
                Path(save_json).parent.mkdir(parents=True, exist_ok=True)
                Path(save_json).write_text(json.dumps(result, indent=2))
                log.info(f"results written to {save_json}")
        return result
    finally:
        log.close()
        distributed.cleanup()


def format_rates(rates: dict[str, float]) -> str:
    width = max((len(n) for n in rates), default=10)
    lines = [f"{'LIF layer':<{width}}  firing rate", f"{'-' * width}  -----------"]
    lines += [f"{name:<{width}}  {rate:11.4f}" for name, rate in rates.items()]
    mean = sum(rates.values()) / max(len(rates), 1)
    lines.append(f"{'mean over layers':<{width}}  {mean:11.4f}")
    return "\n".join(lines)
