"""Command-line tools: ``python -m tools.energy`` and ``python -m tools.benchmark``."""
