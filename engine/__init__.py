"""The shared training engine behind every dataset folder's train.py and test.py.

config (YAML + CLI) -> data (datasets, transforms, loaders) -> optim (timm optimizer and
schedule) -> train_loop (epoch, evaluation) -> checkpoint (atomic, resumable) -> logger.
"""
