"""The training stage: training a run: folds, refit members, checkpoints, metrics."""
