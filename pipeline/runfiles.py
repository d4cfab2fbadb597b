"""The run folder `runs/<run>/`: its file names, and every check on what is in it.

Every other module finds a run's files through `RunFiles` / `FoldFiles` and asks this module
whether a run or fold is finished and intact, so the layout is written down once:

    runs/<run>/config.json env.json folds.npy oof_probs.npy metrics.json folds.csv
               test_probs.npy holdout_probs.npy prediction.json kaggle_submission.json
               kaggle_kernel.json demo.json stopped.json report.html figures/  fold_<i>/{model.keras,oof.npy,val_idx.npy,
               history.csv,metrics.json,pseudo.npy,last.keras,state.json,tb/}  member_<j>/{the
               same; no validation rows, so oof.npy and val_idx.npy are empty}

It also decides which run a command takes when it is given none (`latest_trained_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline.config import Config
from pipeline.console import Log
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import Split, same_split
from pipeline.data.load import file_sha256
from pipeline.errors import UserError
from pipeline.files import load_npy, read_json, write_json


@dataclass(frozen=True)
class FoldFiles:
    """The files of one fold's folder, `runs/<run>/fold_<i>/`."""

    root: Path

    model = property(lambda self: self.root / "model.keras")  # the finished fold model
    oof = property(lambda self: self.root / "oof.npy")  # its predictions on val_idx
    val_idx = property(lambda self: self.root / "val_idx.npy")
    history = property(lambda self: self.root / "history.csv")  # one row per epoch
    metrics = property(lambda self: self.root / "metrics.json")  # written last, with checksums
    pseudo = property(lambda self: self.root / "pseudo.npy")  # pseudo-labelled images, if any
    last = property(lambda self: self.root / "last.keras")  # per-epoch checkpoint
    state = property(lambda self: self.root / "state.json")  # its epoch, time and RNG state
    tensorboard = property(lambda self: self.root / "tb")

    # What a finished fold's checksums cover (pseudo.npy only when the fold has one).
    ARTIFACTS = ("model.keras", "oof.npy", "val_idx.npy", "history.csv")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a run: a fold, or a refit member (trained on every labelled row)."""

    index: int  # among the run's models, folds first: its seed derives from it
    member: bool
    number: int  # 0-based among the run's folds, or among its members
    count: int  # how many folds, or members, the run has
    files: FoldFiles

    @property
    def kind(self) -> str:
        """"fold" or "member"."""
        return "member" if self.member else "fold"

    @property
    def label(self) -> str:
        """How the console names this model: "fold 2", "member 1"."""
        return f"{self.kind} {self.number + 1}"

    @property
    def label_of(self) -> str:
        """The label with the count of its kind: "fold 2/5"."""
        return f"{self.label}/{self.count}"


@dataclass(frozen=True)
class RunFiles:
    """The files of one run's folder, `runs/<run>/`."""

    root: Path

    name = property(lambda self: self.root.name)
    config = property(lambda self: self.root / "config.json")  # the resolved config
    env = property(lambda self: self.root / "env.json")  # versions, commit, data hashes, plan
    folds = property(lambda self: self.root / "folds.npy")  # the split (see pipeline.data.folds)
    oof = property(lambda self: self.root / "oof_probs.npy")
    metrics = property(lambda self: self.root / "metrics.json")  # exists once training finished
    folds_csv = property(lambda self: self.root / "folds.csv")
    test_probs = property(lambda self: self.root / "test_probs.npy")
    holdout_probs = property(lambda self: self.root / "holdout_probs.npy")
    prediction = property(lambda self: self.root / "prediction.json")
    blend = property(lambda self: self.root / "blend.json")
    kaggle = property(lambda self: self.root / "kaggle_submission.json")
    # The Kaggle kernel that trains the run (`kaggle-train`): ref, version, URL and status.
    kaggle_kernel = property(lambda self: self.root / "kaggle_kernel.json")
    demo = property(lambda self: self.root / "demo.json")  # made by `demo`: never picked unnamed
    # The state "stopped, N of M members": training ended (budget, Ctrl-C, SIGTERM, a crash) with
    # the folds done but not every planned member; metrics.json covers the models it finished,
    # which the submission averages. Removed once every member has finished.
    stopped = property(lambda self: self.root / "stopped.json")
    report = property(lambda self: self.root / "report.html")
    figures = property(lambda self: self.root / "figures")

    def fold(self, i: int) -> FoldFiles:
        """Fold `i`'s folder (0-based)."""
        return FoldFiles(self.root / f"fold_{i}")

    def member(self, j: int) -> FoldFiles:
        """Refit member `j`'s folder (0-based): a model trained on all the labelled rows."""
        return FoldFiles(self.root / f"member_{j}")

    def models(self, cfg: Config) -> list[ModelEntry]:
        """Every model the run trains, in order: its folds, then its members."""
        kinds = ([(False, i, cfg.folds, self.fold(i)) for i in range(cfg.folds)]
                 + [(True, j, cfg.refit, self.member(j)) for j in range(cfg.refit)])
        return [ModelEntry(index, *kind) for index, kind in enumerate(kinds)]

    def ensemble(self, cfg: Config) -> list[ModelEntry]:
        """The models the submission averages: the refit members that finished (every planned
        one, unless the run `stopped` early), which trained on every labelled row, or while none
        has, the fold models."""
        models = self.models(cfg)
        return ([m for m in models if m.member and m.files.metrics.is_file()]
                or [m for m in models if not m.member])

    def ensemble_text(self, cfg: Config) -> str:
        """The ensemble as predict, report and compare name it: "5 refit members", "2 of 5
        planned refit members (stopped: budget)", "5 fold models"."""
        used = self.ensemble(cfg)
        stopped = read_optional(self.stopped)
        if not used[0].member:
            what = f"{len(used)} fold models"
            return what + (f" (0 of {cfg.refit} planned refit members: stopped, "
                           f"{stopped.get('why', '?')})" if stopped and cfg.refit else "")
        if stopped and len(used) < cfg.refit:
            return (f"{len(used)} of {cfg.refit} planned refit members (stopped: "
                    f"{stopped.get('why', '?')})")
        return f"{len(used)} refit member{'s' * (len(used) > 1)}"


def train_command(run: str) -> str:
    """The command that trains (or finishes) run `run`, for error messages."""
    return f"`python -m pipeline train --run {run}`"


# --- the run as a whole ---------------------------------------------------------------------

def load_run_config(run_dir: Path) -> Config:
    """The config a run was trained with."""
    rf = RunFiles(Path(run_dir))
    if not rf.config.is_file():
        raise UserError(f"{rf.root}: no such run (no config.json); train it first with "
                        f"{train_command(rf.name)}")
    return config_mod.from_dict(read_json(rf.config), str(rf.config))


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Refuse to continue a run that was started with a different config (execution keys aside)."""
    rf = RunFiles(Path(run_dir))
    if not rf.config.is_file():
        return
    saved, now = saved_config(rf.root), cfg.to_dict()
    free = config_mod.keys_with("execution", "ensemble")
    diff = [k for k in now if k not in free and saved.get(k) != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in diff[:4])
        raise UserError(f"run '{rf.name}' was started with another config ({changes}); "
                        "use a new --run name, or `make clean-run RUN=...` to start it over")


def saved_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json as a dict of every key: keys added since the run started take their
    default, which is what runs did before them (the precision: see `started_precision`)."""
    rf = RunFiles(Path(run_dir))
    return {**Config().to_dict(), "precision": started_precision(rf.root), **read_json(rf.config)}


def started_precision(run_dir: Path) -> str:
    """The precision a run started with ("auto" for a new run): config.json's; for runs made before
    the key existed, the plan's in env.json, else float32 (then the only CPU precision)."""
    rf = RunFiles(Path(run_dir))
    saved = read_optional(rf.config)
    if saved is None:
        return "auto"
    if saved.get("precision", "auto") != "auto":
        return str(saved["precision"])
    env = read_optional(rf.env) or {}
    return str(env.get("plan", {}).get("precision", "float32"))


def read_split(run_dir: Path, rows: int | None = None) -> np.ndarray:
    """The run's saved split (fold number per train.csv row), refusing a damaged file."""
    rf = RunFiles(Path(run_dir))
    why = "missing"
    if rf.folds.is_file():
        try:
            split = load_npy(rf.folds)
            if split.ndim == 1 and split.dtype.kind == "i" and (rows is None or len(split) == rows):
                return split
            why = f"{split.shape} {split.dtype}, not one fold number per row"
            if rows is not None and split.ndim == 1:
                why = f"{len(split)} rows, but train.csv has {rows}"
        except (ValueError, OSError, EOFError) as exc:
            why = f"unreadable: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
    raise UserError(f"{rf.folds}: {why}; retrain the run ({train_command(rf.name)} after "
                    f"`make clean-run RUN={rf.name}`), or pass --data with the train.csv it used")


def run_split(data: DataFiles, run_dir: Path) -> Split:
    """The labelled images of `data` with the split run `run_dir` saved (predict, blend, reports,
    scripts), refusing a split that is not one fold number per row of that train.csv."""
    x, y = data.labelled()
    return Split(x, y, read_split(run_dir, len(y)))


def check_same_split(run_dir: Path, fold_of: np.ndarray) -> None:
    """Refuse to resume a run whose saved split (folds and holdout) differs from this one's."""
    rf = RunFiles(Path(run_dir))
    if not rf.folds.is_file():
        return
    theirs = read_split(rf.root)  # a damaged file is refused there
    if not same_split(theirs, fold_of):
        raise UserError(f"{rf.folds}: run '{rf.name}' was split differently (other train.csv, "
                        "folds, seed or holdout, or the file is damaged); use a new --run name, or "
                        "`make clean-run RUN=...` to start it over")


def finished_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics.json, or a UserError saying how to get one."""
    rf = RunFiles(Path(run_dir))
    if not rf.config.is_file():
        raise UserError(f"{rf.root}: no such run (no config.json); train it first with "
                        f"{train_command(rf.name)}")
    if not rf.metrics.is_file():
        raise UserError(f"run '{rf.name}' is not finished (no metrics.json); run "
                        f"{train_command(rf.name)} to complete it")
    metrics = read_json(rf.metrics)
    if not isinstance(metrics, dict) or "folds" not in metrics:
        raise UserError(f"{rf.metrics}: not a run's metrics; retrain the run")
    return metrics


def read_optional(path: Path) -> dict[str, Any] | None:
    """A JSON object the pipeline wrote, or None when the file does not exist."""
    if not Path(path).is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


def mark_demo(run_dir: Path, data: Path) -> None:
    """Record that `demo` made this run, so no command picks it unless it is named."""
    write_json(RunFiles(Path(run_dir)).demo, {"made_by": "python -m pipeline demo",
                                              "data": str(data)})


def is_demo(run_dir: Path) -> bool:
    """True for a run made by `demo` (on the embedded sample: never one to submit)."""
    return RunFiles(Path(run_dir)).demo.is_file()


def trained_at(run_dir: Path) -> float:
    """When training last finished a fold or refit member of the run (seconds since the epoch).

    From what training alone writes: each finished model's recorded `finished_at` (for folds
    trained before that key existed, its metrics.json's mtime). `predict` rewrites the run's
    metrics.json (its holdout estimate), never a fold's, so looking at a run does not change this.
    """
    rf = RunFiles(Path(run_dir))
    times = []
    # Members count too: growing `refit` on a finished run must make its old submission stale.
    for meta_path in [*rf.root.glob("fold_*/metrics.json"), *rf.root.glob("member_*/metrics.json")]:
        try:
            meta = read_optional(meta_path) or {}
            times.append(datetime.fromisoformat(str(meta["finished_at"])).timestamp())
        except (UserError, KeyError, TypeError, ValueError):  # older or damaged: the file's time
            times.append(meta_path.stat().st_mtime)
    # A run with no fold folders (made by hand) falls back to its metrics.json.
    return max(times) if times else rf.metrics.stat().st_mtime


def finished_runs(runs_dir: Path) -> list[str]:
    """Names of the runs under `runs_dir` that finished training, in the order they finished."""
    done = [p.parent for p in Path(runs_dir).glob("*/metrics.json")
            if RunFiles(p.parent).config.is_file()]
    return [p.name for p in sorted(done, key=lambda p: (trained_at(p), p.name))]


def latest_trained_run(runs_dir: Path) -> str:
    """The run a command takes when none is named: the one whose training finished last.

    Runs made by `demo` are left out (they learnt the embedded sample, not the competition).
    """
    runs = finished_runs(runs_dir)
    done = [run for run in runs if not is_demo(Path(runs_dir) / run)]
    if not done:
        demos = [run for run in runs if run not in done]
        named = (f" (demo runs are taken only when named: --run {demos[-1]}, or "
                 f"RUN={demos[-1]} for make)" if demos else "")
        raise UserError(f"{runs_dir}: no trained run found{named}; train one with `make train`")
    return done[-1]


# --- folds ----------------------------------------------------------------------------------

def _intact_meta(fold_dir: Path) -> dict[str, Any] | None:
    """The fold's metrics.json if it exists and every file still matches its recorded checksum."""
    ff = FoldFiles(Path(fold_dir))
    if not ff.metrics.is_file():
        return None
    try:
        meta = read_json(ff.metrics)
    except UserError:
        return None
    if not isinstance(meta, dict) or not meta.get("sha256"):
        return None
    for name, digest in meta["sha256"].items():
        path = ff.root / name
        if not path.is_file() or file_sha256(path) != digest:
            return None
    return meta


def fold_checksums(fold_dir: Path) -> dict[str, str]:
    """SHA-256 of each artifact of a finished fold, to be recorded in its metrics.json."""
    ff = FoldFiles(Path(fold_dir))
    names = (*FoldFiles.ARTIFACTS, *((ff.pseudo.name,) if ff.pseudo.is_file() else ()))
    return {name: file_sha256(ff.root / name) for name in names}


def fold_intact(fold_dir: Path) -> bool:
    """True when the fold finished and its files still match the checksums it recorded."""
    return _intact_meta(fold_dir) is not None


def fold_done(fold_dir: Path, log: Log = print) -> dict[str, Any] | None:
    """The finished fold's metrics, or None if it must be (re)trained."""
    ff = FoldFiles(Path(fold_dir))
    if not ff.metrics.is_file():
        return None
    meta = _intact_meta(ff.root)
    if meta is None:
        log(f"{ff.root.name}: saved files are missing or corrupt (checksum mismatch); retraining this fold")
        ff.metrics.unlink(missing_ok=True)
    return meta
