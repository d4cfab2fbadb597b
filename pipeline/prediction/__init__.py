"""The prediction stage: a trained run's models put to use: inference, ensembles, scores."""
