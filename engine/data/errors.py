class DataError(RuntimeError):
    """A dataset that is missing or malformed; the message names the path and the fix."""
