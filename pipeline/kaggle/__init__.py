"""The kaggle stage: Kaggle's site: the competition's archive, the client, submissions."""
