from ..errors import DataError  # noqa: F401  (one home for the engine's exception types)
