"""A tuning study's settings and budget, the study opened with its sampler and pruner, and the
result `train --study` uses.

    settings = Settings(study="s1", storage=default_storage(StudyFiles.of(runs, "s1")),
                        paths=paths, base=cfg, pinned={})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, Paths, check_name, keys_with
from pipeline.errors import UserError
from pipeline.files import read_json
from pipeline.tuning.storage import DEFAULT_HEARTBEAT, open_storage
from pipeline.tuning.studyfiles import StudyFiles

if TYPE_CHECKING:
    import optuna

# --- settings -------------------------------------------------------------------------------

PRUNERS = ("median", "hyperband", "none")
# Pinned keys that do not change what trials learn: a study may resume with other values.
EXECUTION_KEYS = keys_with("prediction", "source", "execution", "ensemble")


@dataclass(frozen=True)
class Budget:
    """What one study may spend, and how trials are cut short."""

    trials: int = 30  # target total number of trials in the study
    timeout: float = 1800.0  # seconds; then the running trial stops and no new one starts
    tune_folds: int = 1  # folds of the saved split each trial trains (1 … folds)
    min_epochs: int = 3
    max_epochs: int = 6
    subsample: float = 0.25  # fraction of each fold's training rows a trial uses
    pruner: str = "median"
    startup_trials: int = 5  # random trials before TPE models the space, and before pruning
    heartbeat: int = DEFAULT_HEARTBEAT

    def check(self, folds: int, pinned: dict[str, Any]) -> None:
        """Reject budgets no study can run, naming the flag."""
        rules = [
            (self.trials >= 1, f"--trials {self.trials}: must be at least 1"),
            (self.timeout > 0, f"--timeout {self.timeout:g}: must be a positive number of seconds"),
            (1 <= self.tune_folds <= folds,
             f"--tune-folds {self.tune_folds}: must be between 1 and the config's folds ({folds})"),
            (1 <= self.min_epochs <= self.max_epochs,
             f"--min-epochs {self.min_epochs} / --max-epochs {self.max_epochs}: need 1 <= min <= max"),
            (0 < self.subsample <= 1, f"--subsample {self.subsample:g}: must be in (0, 1]"),
            (self.pruner in PRUNERS, f"--pruner {self.pruner!r}: choose from {', '.join(PRUNERS)}"),
            (self.startup_trials >= 0, f"--startup-trials {self.startup_trials}: must be >= 0"),
            (self.heartbeat >= 1, f"--heartbeat {self.heartbeat}: must be at least 1 second"),
            ("subsample" not in pinned, "subsample: set the tuning subsample with --subsample, "
                                        "not --set/--config"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)

    def epochs(self, pinned: dict[str, Any]) -> tuple[int, int]:
        """The searched epoch range (a single value when epochs is pinned)."""
        if "epochs" in pinned:
            return int(pinned["epochs"]), int(pinned["epochs"])
        return self.min_epochs, self.max_epochs


@dataclass(frozen=True)
class Settings:
    """Everything a tuning worker needs; picklable, so local workers get it as is."""

    study: str
    storage: str  # SQLAlchemy URL
    paths: Paths
    base: Config  # profile + config file + --set: the config every trial starts from
    pinned: dict[str, Any]  # the keys given by --config/--set, excluded from the search
    budget: Budget = field(default_factory=Budget)
    workers: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()  # params to try first (after the baseline)

    @property
    def files(self) -> StudyFiles:
        """The folder holding this study's outputs (and its SQLite file by default)."""
        return StudyFiles.of(self.paths.runs, self.study)


# --- the study ------------------------------------------------------------------------------

def make_sampler(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The seeded TPE sampler, for one worker or many on one study."""
    import optuna

    # constant_liar: concurrent workers see running trials as bad, so they explore elsewhere.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                      multivariate=True, group=True, constant_liar=True)


def _pruner(budget: Budget, epochs_max: int) -> optuna.pruners.BasePruner:
    import optuna

    if budget.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=budget.startup_trials,
                                           n_warmup_steps=1)
    if budget.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1,
                                              max_resource=budget.tune_folds * epochs_max,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(settings: Settings) -> optuna.Study:
    """The study in its storage (created if new), with the seeded sampler and the pruner."""
    import optuna

    storage = open_storage(settings.storage, settings.budget.heartbeat)
    epochs = settings.budget.epochs(settings.pinned)
    return optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                               load_if_exists=True,
                               sampler=make_sampler(settings.base.seed,
                                                settings.budget.startup_trials),
                               pruner=_pruner(settings.budget, epochs[1]))


# --- using a study's result -----------------------------------------------------------------

def load_best_params(runs_dir: Path, study: str) -> dict[str, Any]:
    """The best_params.json record of a finished study, checked."""
    check_name(study, "--study")
    path = StudyFiles.of(runs_dir, study).best_params
    if not path.is_file():
        raise UserError(f"--study {study!r}: no {path} (unknown study, or no trial completed); "
                        f"run `make tune STUDY={study}` first")
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise UserError(f"{path}: not a best_params.json written by `tune`; re-run `make tune`")
    return record
