"""Optuna's own plots of a study (optimization history, importances, parallel coordinates,
slice) as PNGs: in the study's folder (`tune`) or in a run report's figures (`report`).

    optuna_plots(study, Path("runs/tune/default"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import write_png

DPI = 110  # as the report's own figures

PLOTS = (
    ("tuning_history", "plot_optimization_history"),
    ("tuning_importances", "plot_param_importances"),
    ("tuning_parallel", "plot_parallel_coordinate"),
    ("tuning_slice", "plot_slice"),
)


def optuna_plots(study: Any, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's own matplotlib plots of `study` as PNGs in `out_dir` (the study's folder, or a
    run report's figures); returns (PNG paths, reasons for skipped plots)."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    paths, skipped = [], []
    # Optuna draws with pyplot and switches the style to ggplot; rc_context puts rcParams back.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if "inline" not in matplotlib.get_backend().lower():
            plt.switch_backend("agg")
        for name, func in PLOTS:
            fig = None
            try:
                ax = getattr(ovm, func)(study)
                fig = np.atleast_1d(ax).ravel()[0].figure
                fig.set_size_inches(10, 5.5)
                paths.append(write_png(out_dir / f"{name}.png", fig, dpi=DPI, bbox_inches="tight"))
            except Exception as exc:  # e.g. too few finished trials for importances
                skipped.append(f"{name}: {type(exc).__name__}: {exc}")
            finally:
                if fig is not None:
                    plt.close(fig)
    return paths, skipped
