"""imagenet/train.py with one fault injected into one rank, for the fault tests under torchrun.

FAULT=hang: rank FAULT_RANK blocks forever when validation starts (the others wait for it in
the next collective). FAULT=signal: rank FAULT_RANK sends itself SIGTERM at the start of its
FAULT_AT-th training forward (the other ranks get no signal and must stop at the same step).
FAULT=group-signal: the same, but SIGTERM goes to the whole process group (loader processes
included), as SLURM sends it. RANK is 0 for a single process.
"""
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import trainer  # noqa: E402
from engine.cli import train_main  # noqa: E402

if int(os.environ.get("RANK", "0")) == int(os.environ["FAULT_RANK"]):
    if os.environ["FAULT"] == "hang":
        def evaluate(*args, **kwargs):
            # torchrun's SIGTERM ends this process at once instead of raising the preemption flag
            # (a hung process would wait for torchrun's SIGKILL 30 s later: the test skips that wait)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            while True:
                time.sleep(3600)
        trainer.evaluate = evaluate
    elif os.environ["FAULT"] in ("signal", "group-signal"):
        build, at = trainer.build_model, int(os.environ["FAULT_AT"])

        def build_model(cfg, num_classes):
            model, calls = build(cfg, num_classes), [0]

            def hook(module, args):
                if module.training:
                    calls[0] += 1
                    if calls[0] == at and os.environ["FAULT"] == "signal":
                        os.kill(os.getpid(), signal.SIGTERM)
                    elif calls[0] == at:
                        os.killpg(0, signal.SIGTERM)
            model.register_forward_pre_hook(hook)
            return model
        trainer.build_model = build_model

if __name__ == "__main__":
    train_main(str(ROOT / "imagenet" / "train.py"), "qkformer_10_384.yml", "imagenet/train.py with a fault")
