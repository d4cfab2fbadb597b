"""Per-epoch checkpoints of a fold: `last.keras` + `state.json`, so a killed fold resumes from
its last finished epoch with the same augmentation and dropout random streams.

Keras saves the weights and the optimizer (whose step count says which epoch the checkpoint
holds) but not where its random-number streams stand: `state.json` records those. A checkpoint
holds the model's saved form (pipeline.modeling.model), like the fold's final model file. An epoch whose
loss is not finite stops the fold before anything of it is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.console import Log, duration
from pipeline.errors import UserError
from pipeline.files import read_json, save_keras, write_json, write_text
from pipeline.runfiles import FoldFiles

# What a fold whose loss is no longer finite suggests (after "start a new run (--run NAME) with").
NON_FINITE_ADVICE = "--set precision=float32, or a lower --set learning_rate"


@dataclass(frozen=True)
class Eta:
    """Seconds left in the run, from a model's seconds per epoch: the epochs it has left, then
    `later` epochs of the models still waiting for a process (per process); shown against the
    run's budget when it has one (`budget_end`, a time.time() value)."""

    epochs: int
    later: float = 0.0
    budget_end: float = 0.0

    def __call__(self, per_epoch: float, done: int) -> float:
        return per_epoch * ((self.epochs - done) + self.later)

    def text(self, per_epoch: float, done: int) -> str:
        """The run's ETA as the epoch line shows it, with the budget left when there is one."""
        left = f" · budget {duration(max(0.0, self.budget_end - time.time()))} left" \
            if self.budget_end else ""
        return f"run ETA {duration(self(per_epoch, done))}{left}"


def rng_states(model: Any) -> list[list[int]]:
    """Where each random layer's stream stands."""
    from pipeline.modeling.model import seed_generators

    return [np.asarray(g.state.value).tolist() for g in seed_generators(model)]


def check_finite(logs: dict[str, float], label: str, epoch: int) -> None:
    """Stop a fold whose loss has become NaN or infinite, in one line saying what to try."""
    bad = {k: v for k, v in logs.items() if k in ("loss", "val_loss") and not math.isfinite(v)}
    if bad:
        what = " and ".join(f"{'training' if k == 'loss' else 'validation'} loss" for k in bad)
        raise UserError(f"{label}: the {what} became {next(iter(bad.values()))} in epoch {epoch}; "
                        "the fold stopped before saving it (finished folds are kept). Start a new "
                        f"run (--run NAME) with {NON_FINITE_ADVICE}")


def epoch_logger(ff: FoldFiles, history: list[dict[str, Any]], t_start: float,
                 elapsed_before: float, label: str, epochs: int, eta: Eta, log: Log,
                 save: bool = True,
                 saved_form: Callable[[Any], Any] = lambda model: model) -> Any:
    """A Keras callback that records each epoch in `history`, prints one line for it, and (with
    `save`) checkpoints the fold's `saved_form(model)` so that a kill loses at most the epoch in
    progress. An epoch whose loss is not finite raises UserError before anything is saved."""
    import keras

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            check_finite(logs, label, epoch + 1)
            row = {"epoch": epoch + 1, **logs,
                   "learning_rate": float(np.asarray(self.model.optimizer.learning_rate))}
            history.append(row)
            elapsed = elapsed_before + time.time() - t_start
            if save:
                # History first, then the model, then state: a kill between any two leaves a
                # history at least as long as the checkpoint, whose optimizer step count says
                # which epoch it holds (see `resume`).
                write_text(ff.history, pd.DataFrame(history).to_csv(index=False))
                save_keras(saved_form(self.model), ff.last)
                write_json(ff.state, {"epoch": epoch + 1, "elapsed": elapsed,
                                      "rng": rng_states(self.model)})
            per_epoch = elapsed / max(1, len(history))
            scores = " ".join(f"{k} {row[k]:.4f}" for k in
                              ("loss", "accuracy", "val_loss", "val_accuracy") if k in row)
            log(f"  {label} epoch {epoch + 1:>2}/{epochs} · {scores} · lr "
                f"{row['learning_rate']:.1e} · {duration(elapsed)} · "
                f"{eta.text(per_epoch, epoch + 1)}")

    return EpochEnd()


@dataclass
class Resumed:
    """Where a fold stands: its checkpointed model (saved form; None: start afresh), the epochs
    it holds, the seconds they took and their history rows."""

    model: Any = None
    done: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def resume(ff: FoldFiles, label: str, steps: int, log: Log) -> Resumed:
    """The fold's last checkpoint (an empty Resumed if there is none or it is unreadable)."""
    from pipeline.modeling.model import load_model, seed_generators

    if not (ff.last.is_file() and ff.history.is_file()):
        return Resumed()
    try:
        model = load_model(ff.last)
        # The optimizer's step count is saved inside the model, so it cannot disagree with it.
        done = int(model.optimizer.iterations) // steps
        history = pd.read_csv(ff.history).head(done).to_dict("records")
        if done < 1 or len(history) != done:
            raise ValueError(f"history has {len(history)} rows, checkpoint {done} epochs")
        state = read_json(ff.state) if ff.state.is_file() else {}
        state = state if isinstance(state, dict) else {}
        elapsed = float(state.get("elapsed", 0.0))
        # Continue the augmentation/dropout streams instead of replaying epoch 1's draws.
        generators, rng = seed_generators(model), state.get("rng", [])
        if len(rng) == len(generators):
            for gen, value in zip(generators, rng):
                gen.state.assign(np.asarray(value, dtype=gen.state.dtype))
    except Exception as exc:  # a checkpoint torn by a kill or damaged on disk: never use it
        log(f"  {label}: checkpoint unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); restarting this fold")
        return Resumed()
    log(f"  resuming {label} after epoch {done} ({duration(elapsed)} done)")
    return Resumed(model, done, elapsed, history)


def clear(ff: FoldFiles) -> None:
    """Remove the checkpoint once the fold's final files are written."""
    ff.last.unlink(missing_ok=True)
    ff.state.unlink(missing_ok=True)


def tensorboard(ff: FoldFiles) -> list:
    """Per-epoch TensorBoard scalars in `<fold>/tb/` for `make tensorboard`; none without the package."""
    import importlib.util

    import keras

    # Keras' callback writes through tf.summary, which needs the tensorboard package.
    if importlib.util.find_spec("tensorboard") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(ff.tensorboard), histogram_freq=0,
                                        write_graph=False, update_freq="epoch", profile_batch=0)]
