"""The shared training engine behind every dataset folder's train.py and test.py.

config (keys, YAML, CLI) -> recipe (bases, variant table, dataset) -> factories (model, data,
loaders, loss, EMA; shared by trainer, tester and tools) -> trainer (build / resume / epoch /
report) with optim, train_loop, checkpoint, logger and telemetry; tester for evaluation.
"""
