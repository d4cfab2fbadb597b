"""The modeling stage: the Keras models: the registry, their training and saved forms."""
