"""The tuning stage: the hyperparameter search: Optuna studies, their storage and reports."""
