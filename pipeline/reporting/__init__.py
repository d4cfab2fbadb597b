"""The reporting stage: a finished run shown: the report page, figures, terminal summaries."""
