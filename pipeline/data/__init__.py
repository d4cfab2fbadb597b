"""The data stage: reading and checking the competition's CSV files, the sample, the folds."""
