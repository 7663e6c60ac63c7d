"""The engine's exception types: problems a user can fix, each message saying how.

Kept free of heavy imports, so the command line can name them before torch is loaded. The
command lines print any of these as one line, ``error: ...``, with exit status 2. (Checkpoint
problems raise ``models.CheckpointError``, which belongs to the model package.)
"""


class ConfigError(ValueError):
    """A configuration problem: unknown key, bad value, contradictory settings, busy run folder."""


class DataError(RuntimeError):
    """A dataset that is missing or malformed; the message names the path and the fix."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is intact."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory in a step; the message names the fixes in order of cost."""


def user_errors() -> tuple:
    """Every exception type the command lines print as one line (checkpoint problems included);
    models is imported only when asked, so that this module stays free of torch."""
    from models import CheckpointError
    return (ConfigError, DataError, CheckpointError, NonFiniteLoss, OutOfMemory, CheckpointWriteError)
