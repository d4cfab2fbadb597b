"""What the user sees in the terminal: durations, tables, and no library start-up noise.

TensorFlow prints ~8 lines when it loads (oneDNN, CUDA, absl) from C++ straight to the process's
stderr, before any Python log setting can apply. `quiet_tensorflow()` imports it with stderr
pointed at /dev/null and turns its Python loggers down; set PIPELINE_VERBOSE=1 (or pass
`--verbose`) to see everything. Fold and tuning worker processes inherit the setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

import pandas as pd

VERBOSE_ENV = "PIPELINE_VERBOSE"
# Where a stage sends its progress lines (the CLI passes a flushing print).
Log = Callable[[str], None]


def verbose() -> bool:
    """True when the user asked to see the libraries' own output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "no")


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (C++ writes bypass sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras without their start-up lines (unless verbose); idempotent."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        with _stderr_to_devnull():
            import keras  # noqa: F401
            import tensorflow as tf

            # The CUDA probe logs on first device query; do it here, silenced.
            tf.config.list_physical_devices("GPU")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)  # e.g. predict-function retracing warnings
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"keras(\..*)?$")


def warn(message: str) -> None:
    """A warning line on stderr: the command goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """Seconds as `1h02m` or `3m05s`."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def table(rows: pd.DataFrame | list[dict], index: bool = False) -> str:
    """Rows as an aligned plain-text table (pandas' own formatting)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return df.to_string(index=index)
