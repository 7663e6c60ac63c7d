"""Command lines of the per-dataset ``train.py``/``test.py`` scripts.

Errors a user can fix (bad config, missing data, unusable checkpoint, NaN loss) are printed
as one line, ``error: ...``, with exit status 2; a run stopped by a preemption signal after
checkpointing says so in one line, ``preempted: ...``, with exit status 75 (engine/preemption.py);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import (FIELDS, build_parser, format_config, load_yaml, load_yaml_with_sources, make_config,
                     resolve_config_path, sources_of)
from .errors import user_errors

# torch, timm and spikingjelly are imported only after the command line is parsed, so that
# `--help` and argument errors answer at once.


def _parser(description: str) -> argparse.ArgumentParser:
    parser = build_parser(description)
    # torch.distributed.launch passes --local_rank (torch < 2) or --local-rank (torch >= 2).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _config(args, script: str, default_config: str, resolved: bool = True):
    """The recipe (``-c``, else the script's default) with the command line on top; ``resolved``:
    with the keys it leaves open filled from the variant table, the dataset and the environment
    (engine/recipe.py). ``--print-config`` prints the resolved config with each value's origin."""
    script_dir = Path(script).resolve().parent
    values, sources = load_yaml_with_sources(resolve_config_path(args.config, script_dir, default_config))
    cfg = make_config(values, vars(args))
    if args.print_config or resolved:
        from .recipe import resolve
        full, origins = resolve(cfg, sources_of(sources, vars(args)))
        if args.print_config:
            print(format_config(full, origins), end="")
            sys.exit(0)
        return full
    return cfg


def _run(fn):
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    from .preemption import EXIT_PREEMPTED, Preempted
    try:
        return fn()
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


def train_main(script: str, default_config: str, description: str) -> None:
    """``train.py``: ``python train.py [-c CONFIG.yml] [--key value ...]``."""
    args = _parser(description).parse_args()
    from .trainer import train
    _run(lambda: train(_config(args, script, default_config), local_rank=args.local_rank))


def test_main(script: str, default_config: str, description: str) -> None:
    """``test.py``: ``python test.py --checkpoint PATH [-c CONFIG.yml] [--key value ...]``."""
    parser = _parser(description)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint to evaluate: ours (last.pth/best.pth) or an original repository's")
    parser.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights in the checkpoint")
    parser.add_argument("--save-json", default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, metavar="PX",
                        help="evaluate at each of these input sizes, e.g. 224 288 384 (eval crop: 224/256 "
                             "up to 224, full image above, unless --crop-pct is given)")
    parser.add_argument("--energy", default=None, metavar="DIR",
                        help="also count MACs, synaptic operations and energy over the test set; report, "
                             "firing-rate plot and TensorBoard logs go to DIR")
    args = parser.parse_args()
    from .tester import test
    explicit = {k for k, v in vars(args).items() if v is not None and k in FIELDS}
    script_dir = Path(script).resolve().parent

    def run():
        # Without -c, evaluation settings come from the checkpoint's stored config, not this folder's
        # default YAML; with -c, the keys that file sets are the user's choice.
        from_file = None if args.config is None else \
            set(load_yaml(resolve_config_path(args.config, script_dir, default_config)))
        # Unresolved: what the checkpoint stores decides first, the variant table the rest.
        return test(_config(args, script, default_config, resolved=False), args.checkpoint, args.use_ema, args.save_json,
                    local_rank=args.local_rank, explicit=explicit, resolutions=args.resolutions,
                    energy_dir=args.energy, from_file=from_file)
    _run(run)


def prepare_main(dataset: str) -> None:
    """``prepare.py``: raw files -> events -> frames for each T, reporting exactly what is missing."""
    from .data.dvs import SOURCES, build_dvs, prepare
    parser = argparse.ArgumentParser(
        description=f"Prepare {dataset}: put {SOURCES[dataset]} into <data-dir>/download, then run this once "
                    f"per number of frames T (nothing is downloaded).")
    parser.add_argument("--data-dir", required=True, help="dataset folder (holds download/ or extract/ or events_np/)")
    parser.add_argument("--T", type=int, nargs="+", default=[16], help="frames per sample to cache (e.g. 16 10)")
    for name in ("allow_empty", "resume_prepare"):   # the config keys of the same name
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=FIELDS[name].metadata["help"])
    args = parser.parse_args()

    def run():
        for T in args.T:
            frames = prepare(dataset, args.data_dir, T, allow_empty=args.allow_empty, resume=args.resume_prepare)
            train, test = (build_dvs(dataset, args.data_dir, split, T, allow_empty=args.allow_empty)
                           for split in (True, False))
            print(f"{dataset} T={T}: {len(train)} train / {len(test)} test samples in {frames}")
    _run(run)
