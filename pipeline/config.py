"""One typed config for every stage, its defaults, named profiles, and the project's paths.

Resolution order: defaults → profile → config file (TOML/YAML/JSON) → `--set key=value` flags.
Unknown keys, wrong types and invalid values raise `UserError` naming the key.

    python -m pipeline train --profile tiny --set epochs=3 --set model=simple
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

# The folder the package's code sits in: a checkout when it is one (pyproject.toml beside it),
# else site-packages or a read-only copy, which is never written to.
CODE_ROOT = Path(__file__).resolve().parents[1]


def is_checkout(folder: Path) -> bool:
    """True if `folder` is a checkout of this project: the package beside a pyproject.toml naming it."""
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text()).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "digits" and (folder / "pipeline" / "__init__.py").is_file()


def project_root(cwd: Path | None = None) -> Path:
    """Where data/, runs/ and submissions/ live, the one rule: the checkout holding the working
    directory (nearest upward, as git finds its repository), else the working directory itself.

    So a checkout driven by the Makefile writes into itself, and an installed copy (or the code
    attached read-only in a Kaggle notebook) writes under the folder it is run from.
    """
    here = Path(cwd or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if is_checkout(d)), here)



@dataclass(frozen=True)
class Paths:
    """Where a command reads data and writes outputs (the CLI's --data/--runs-dir/--submissions-dir)."""

    data: Path
    runs: Path
    submissions: Path

    def run_dir(self, run: str) -> Path:
        """The folder of one run."""
        return self.runs / run

    @classmethod
    def under(cls, root: Path) -> Paths:
        """The default layout under a project folder: root/data, root/runs, root/submissions."""
        return cls(data=root / "data", runs=root / "runs", submissions=root / "submissions")


RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Config:
    """Everything a run depends on; saved as `runs/<run>/config.json`.

    Each key has a role (field metadata, default "model"), from which every stage derives what
    it may ignore: see ROLES.
    """

    # the preset these values started from (recorded, not a knob)
    profile: str = field(default="cpu", metadata={"role": "record"})
    # data and folds
    folds: int = field(default=5, metadata={"role": "split"})  # k of the stratified k-fold CV
    # seeds the folds, and (with model_seed) weights, augmentation and shuffling
    seed: int = field(default=42, metadata={"role": "split"})
    model_seed: int = 0  # vary to train another ensemble member on the same folds
    # share of each model's training rows used (stratified; validation rows stay whole); <1 for
    # quick experiments
    subsample: float = field(default=1.0, metadata={"role": "split"})
    # share of train.csv held out of every fold, trial and pseudo-label (stratified, seeded): after
    # `predict` the fold ensemble is scored on it, an estimate of what Kaggle's test will score
    holdout: float = field(default=0.0, metadata={"role": "split"})
    # model
    model: str = "lean"  # a name in pipeline.modeling.model.MODELS
    filters: int = 32  # width of the first conv block; later blocks double it
    kernel_size: int = 3
    dropout: float = 0.10  # after each conv block (augmentation already regularises)
    dense_units: int = 128
    dense_dropout: float = 0.20
    # augmentation (layers inside the model, active only while training)
    augment: bool = True
    rotation: float = 10.0  # degrees, ±
    zoom: float = 0.10  # fraction, ±
    shift: float = 0.10  # fraction of width/height, ±
    # optimisation
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 2e-3  # peak learning rate
    lr_schedule: str = "onecycle"  # onecycle | cosine | exponential | constant
    warmup_epochs: float = 1.0  # linear warm-up for onecycle/cosine
    lr_decay: float = 0.85  # per-epoch factor for the exponential schedule
    label_smoothing: float = 0.1
    adam_beta_1: float = 0.9  # Adam's first-moment decay
    adam_beta_2: float = 0.999  # Adam's second-moment decay
    # Weight averaging: the saved model holds an exponential moving average of the weights with
    # this momentum per step (Adam's use_ema), its BatchNorm statistics recomputed for the
    # averaged weights; 0 = off (the last step's weights).
    ema: float = 0.0
    early_stopping: int = 0  # patience in epochs on val_accuracy; 0 = off (train all epochs)
    # ensemble
    # Members trained on all the labelled rows (every fold's training and validation rows) for
    # `epochs` epochs, the count the folds validated, beside the folds; the submission averages
    # these instead of the fold models, which still give the OOF/CV scores. 0 = none: the
    # submission averages the fold models.
    refit: int = field(default=5, metadata={"role": "ensemble"})
    # Seconds the whole run may take, from its first `train` to the submission file with the
    # report (`--budget 30m`); 0 (none) = the fixed recipe above. `train` measures this machine's
    # speed and chooses `epochs` and `refit` to fit (pipeline.machine.budget); values set
    # explicitly win. The chosen recipe is frozen in config.json; a larger budget on resume adds
    # members of that recipe.
    budget: float = field(default=0.0, metadata={"role": "ensemble"})
    # Epochs of the fold models when they differ from the members' (`epochs`); 0 = the same. A
    # budget sets it: short folds estimate the accuracy, the members get the epochs.
    fold_epochs: int = field(default=0, metadata={"role": "split"})
    # prediction
    # Average predictions over the image and its four one-pixel shifts. For the `cpu` profile
    # it removed 5, 10 and 6 of 184, 189 and 197 OOF errors with three seeds, for ~1 minute
    # more (scripts/results/README.md).
    tta: bool = field(default=True, metadata={"role": "prediction"})
    # pseudo-labelling (opt-in; README): fold k also trains on the test images and on its own
    # validation images as labelled by the teacher run's fold-k model, which never saw the
    # latter, so the out-of-fold accuracy measures what pseudo-labels do for the submission.
    pseudo_from: str = ""  # a finished run on the same folds (the teacher); "" = off
    pseudo_keep: float = 0.97  # share of each image set used, the teacher's most confident first
    # execution
    # auto (0): chosen from the machine by pipeline.machine.plan — one fold process per core (per GPU),
    # up to the folds; on 2 cores two single-threaded folds at once train ~1.2–1.3× faster than
    # one fold on two threads (scripts/results/README.md).
    # folds trained at once, each in its own process
    workers: int = field(default=0, metadata={"role": "execution"})
    # TensorFlow threads per process; auto (0) = the cores shared among the running workers
    threads: int = field(default=0, metadata={"role": "execution"})
    # bit-identical results on one machine (slower)
    deterministic: bool = field(default=False, metadata={"role": "execution"})
    # The arithmetic a fold trains in: auto = mixed_bfloat16 on CPUs with native bfloat16
    # (amx_bf16 or avx512_bf16; ~2–3× the images/s), mixed_float16 on GPUs with tensor cores,
    # float32 elsewhere (pipeline.machine.plan). A run keeps the precision it started with (config.json
    # holds the resolved value); saved models and every prediction are float32 whatever it is.
    precision: str = field(default="auto", metadata={"role": "numerics"})
    # tuning and Kaggle
    # take model hyperparameters from this Optuna study's best trial
    study: str = field(default="", metadata={"role": "source"})
    competition: str = field(default="digit-recognizer", metadata={"role": "execution"})

    def model_epochs(self, member: bool) -> int:
        """Epochs of a refit member (`epochs`) or of a fold model (`fold_epochs`, else `epochs`)."""
        return self.epochs if member or not self.fold_epochs else self.fold_epochs

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict, in declaration order."""
        return dataclasses.asdict(self)


def folds_text(cfg: dict[str, Any]) -> str:
    """"5 folds × 25 epochs" for a saved config, with the folds' own epochs when it has them."""
    return f"{cfg.get('folds')} folds × {cfg.get('fold_epochs') or cfg.get('epochs')} epochs"


# What a key's role says about it. Every list of keys that a stage treats alike derives from here.
ROLES = {
    "model": "what the models learn: searched or pinned by `tune`, copied from a study",
    "split": "which rows train and validate each fold, and for how long (fold_epochs): a run's "
             "own choice, never from a study",
    "prediction": "how predictions are made (the OOF ones too, so a run resumes only with the same)",
    "source": "where hyperparameters came from (the study)",
    "record": "recorded with the run, not a knob (the profile it started from)",
    "execution": "how a run is executed or submitted; may change when a run resumes",
    "ensemble": "the models a run trains beyond its folds for the submission: the run's own "
                "choice, never searched or taken from a study; may grow when a run resumes",
    "numerics": "the arithmetic a run trains in: the run's or the machine's choice, never "
                "searched or taken from a study; fixed once the run starts",
}


def role(key: str) -> str:
    """The role of config key `key` (see ROLES)."""
    return next(f.metadata.get("role", "model") for f in fields(Config) if f.name == key)


def keys_with(*roles: str) -> frozenset[str]:
    """The config keys whose role is one of `roles`."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s): {', '.join(sorted(unknown))}")
    return frozenset(f.name for f in fields(Config) if f.metadata.get("role", "model") in roles)


# The model builders' names (pipeline.modeling.model derives its registry from this tuple), here so
# checking a config needs no Keras import.
MODEL_NAMES = ("simple", "deep", "lean", "strided", "deotte")
LR_SCHEDULES = ("onecycle", "cosine", "exponential", "constant")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# Presets hold only their differences from the defaults, with the reason.
PROFILES: dict[str, dict[str, Any]] = {
    # The default for real data on a 2-core CPU: the accuracy/time trade-off in README, Performance.
    # (Real data, fold 1: dropout 0.10/0.20 + batch 64 + label smoothing 0.1 reached 0.9949
    # against 0.9937 with dropout 0.25/0.25, batch 128, no smoothing (`deep`, 15 epochs); `lean`
    # for 25 epochs, two folds at a time, then took 5-fold OOF from 0.9952 to 0.9956 in the
    # same wall time. Peak LR 0.004 or dropout 0.2/0.3 changed fold 1 by less than its noise.)
    # A budget of 30 minutes: the fixed recipe (5 folds + 5 members × 25 epochs) took 53 minutes
    # on a 2-core AMD EPYC (Zen 4) and 34 on an AMX Xeon; within 30 the planner keeps 25-epoch
    # members (scripts/results/budget-frontier.json). `--budget none` gives the fixed recipe.
    "cpu": {"budget": 1800.0},
    # Test and demo size: two folds, a couple of epochs, a narrow net; runs in seconds.
    # One process: starting a worker (importing TensorFlow) costs more than a tiny fold saves.
    # No TTA: it would five-fold every prediction in the tests for no information.
    # No refit members: the fold ensemble is the submission, and the tests train half as much.
    "tiny": {"folds": 2, "epochs": 4, "filters": 16, "dense_units": 64, "batch_size": 32,
             "learning_rate": 3e-3, "warmup_epochs": 1.0, "workers": 1, "tta": False, "refit": 0,
             # The same numbers on every host, whatever its CPU flags.
             "precision": "float32"},
    # The seed project's network, kept as the baseline the report compares against.
    "simple": {"model": "simple", "epochs": 10, "augment": False, "lr_schedule": "constant",
               "learning_rate": 1e-3, "batch_size": 128, "dense_dropout": 0.5, "label_smoothing": 0.0,
               "tta": False, "refit": 0},
    # Long run for a GPU or a night on CPU: wider and longer.
    "full": {"filters": 48, "dense_units": 256, "epochs": 40},
    # For a GPU, where batches of 64 leave it mostly idle: batch 256 at the learning rate that
    # scored as the default's on CPU (fold-1 screen: 60 errors against 58 of 13,440, p = 0.85),
    # `full`'s wider net, and twice the members. Not measured on a GPU (none was available).
    "gpu": {"batch_size": 256, "learning_rate": 4e-3, "filters": 48, "dense_units": 256,
            "epochs": 40, "refit": 10},
}


def _check(cfg: Config) -> None:
    """Reject values no run can use, naming the key."""
    rules: list[tuple[bool, str, str]] = [
        (cfg.folds >= 2, "folds", "must be at least 2"),
        (cfg.epochs >= 1, "epochs", "must be at least 1"),
        (0 <= cfg.fold_epochs <= 10_000, "fold_epochs", "must be in [0, 10000] (0 = as epochs)"),
        (cfg.batch_size >= 1, "batch_size", "must be at least 1"),
        (cfg.learning_rate > 0, "learning_rate", "must be positive"),
        (0 < cfg.subsample <= 1, "subsample", "must be in (0, 1]"),
        (0 <= cfg.holdout <= 0.5, "holdout", "must be in [0, 0.5] (a share of train.csv; 0 = none)"),
        (cfg.model in MODEL_NAMES, "model", f"must be one of {', '.join(MODEL_NAMES)}"),
        (cfg.filters >= 1, "filters", "must be at least 1"),
        (cfg.kernel_size in (3, 5, 7), "kernel_size", "must be 3, 5 or 7"),
        (0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)"),
        (0 <= cfg.dense_dropout < 1, "dense_dropout", "must be in [0, 1)"),
        (cfg.dense_units >= 1, "dense_units", "must be at least 1"),
        (0 <= cfg.rotation <= 180, "rotation", "must be in [0, 180] degrees"),
        (0 <= cfg.zoom < 1, "zoom", "must be in [0, 1)"),
        (0 <= cfg.shift < 1, "shift", "must be in [0, 1)"),
        (cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
        (cfg.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
        (0 < cfg.lr_decay <= 1, "lr_decay", "must be in (0, 1]"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
        (0 < cfg.adam_beta_1 < 1, "adam_beta_1", "must be in (0, 1)"),
        (0 < cfg.adam_beta_2 < 1, "adam_beta_2", "must be in (0, 1)"),
        (0 <= cfg.ema < 1, "ema", "must be in [0, 1) (0 = no weight averaging)"),
        (cfg.early_stopping >= 0, "early_stopping", "must be >= 0"),
        (0 <= cfg.refit <= 100, "refit", "must be in [0, 100] (members on all rows; 0 = none)"),
        (cfg.refit == 0 or cfg.early_stopping == 0, "refit",
         "needs early_stopping=0: members train on every labelled row, with none left to stop on"),
        (cfg.threads >= 0, "threads", "must be >= 0"),
        (0 <= cfg.budget <= 7 * 86_400, "budget", "must be none or a duration of at most 7 days"),
        (cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}"),
        (cfg.pseudo_from == "" or valid_name(cfg.pseudo_from),
         "pseudo_from", "must be the name of a finished run (letters, digits, '.', '_', '-')"),
        (0 < cfg.pseudo_keep <= 1, "pseudo_keep", "must be in (0, 1]"),
        (cfg.workers >= 0, "workers", "must be auto or at least 1"),
        (cfg.workers <= 64, "workers", "must be at most 64"),
        (0 <= cfg.model_seed < 10_000, "model_seed", "must be in [0, 9999]"),
        (cfg.profile in PROFILES, "profile", f"must be one of {', '.join(PROFILES)}"),
        # Upper bounds: values past these are typos that would crash deep inside TensorFlow.
        # Each fold seeds Keras with seed + 1000·fold, which must stay below 2**32.
        (0 <= cfg.seed < 2**31, "seed", "must be in [0, 2147483647]"),
        (cfg.folds <= 100, "folds", "must be at most 100"),
        (cfg.epochs <= 10_000, "epochs", "must be at most 10000"),
        (cfg.batch_size <= 65_536, "batch_size", "must be at most 65536"),
        (cfg.filters <= 1024, "filters", "must be at most 1024"),
        (cfg.dense_units <= 16_384, "dense_units", "must be at most 16384"),
        (cfg.threads <= 1024, "threads", "must be at most 1024"),
    ]
    for ok, key, why in rules:
        if not ok:
            raise UserError(f"config: {key}={getattr(cfg, key)!r} {why}")


# Keys whose value "auto" (stored as 0) lets pipeline.machine.plan choose from the machine.
AUTO_KEYS = ("workers", "threads")
# Keys holding a duration (seconds; "none" = 0): written as every duration flag takes them.
DURATION_KEYS = ("budget",)
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds in `text`: 90, 90s, 30m, 1.5h or 1h30m (a bare number is seconds); the one
    syntax of every duration flag and key."""
    match = DURATION.fullmatch(str(text).strip().lower())
    if not match or not any(match.groups()):
        raise UserError(f"{text!r} is not a duration: use e.g. 90s, 30m, 1.5h or 1h30m "
                        "(a bare number is seconds)")
    h, m, s = (float(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert `value` to the declared type of `key`, or raise naming the key and its source."""
    types = {f.name: f.type for f in fields(Config)}
    if key not in types:
        raise UserError(f"{source}: unknown config key '{key}' (valid keys: {', '.join(types)})")
    kind = types[key]
    wrong = UserError(f"{source}: {key}={value!r} is not a valid {kind}")
    if key in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    if key in DURATION_KEYS and isinstance(value, str):
        if value.strip().lower() in ("none", ""):
            return 0.0
        try:
            return parse_duration(value)
        except UserError as exc:
            raise UserError(f"{source}: {key}={exc}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise wrong
    if kind == "int":
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise wrong
    if kind == "float":
        if isinstance(value, bool):
            raise wrong
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise wrong from None
        if not math.isfinite(number):
            raise UserError(f"{source}: {key}={value!r} must be a finite number")
        return number
    if not isinstance(value, str):
        raise wrong
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON file of config overrides (a flat table of key = value)."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"{path}: config files must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{path}: malformed config file: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of key = value pairs")
    return data


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """Turn `["epochs=3", "model=simple"]` into a dict, rejecting malformed items."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set epochs=3")
        out[key.strip()] = value.strip()
    return out


def explicit_keys(file: Path | None, sets: dict[str, Any]) -> set[str]:
    """The config keys a user fixed with --config or --set (tuning leaves them alone; a budget
    plans around them)."""
    keys = set(sets)
    if file is not None:
        keys |= set(read_config_file(file))
    return keys


def resolve(profile: str = "cpu", file: Path | None = None, sets: dict[str, Any] | None = None,
            extra: dict[str, Any] | None = None) -> Config:
    """Build the config: defaults, then the profile, the file, `extra` and the `--set` overrides."""
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: unknown profile (choose from {', '.join(PROFILES)})")
    values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        layers.append((str(file), read_config_file(file)))
    if extra:
        layers.append(("study", extra))
    if sets:
        layers.append(("--set", sets))
    for source, layer in layers:
        for key, value in layer.items():
            if key == "profile":
                raise UserError(f"{source}: choose the profile with --profile, not as a config key")
            values[key] = _coerce(key, value, source)
    cfg = Config(**values)
    _check(cfg)
    return cfg


def from_dict(data: dict[str, Any], source: str) -> Config:
    """Rebuild a saved config (e.g. `runs/<run>/config.json`), checking it like any other."""
    values = {k: _coerce(k, v, source) for k, v in data.items()}
    cfg = Config(**values)
    _check(cfg)
    return cfg


def valid_name(name: str) -> bool:
    """Whether `name` may name a run or a study: one folder that stays inside runs/ (runs/tune/)."""
    return RUN_NAME.match(name) is not None and ".." not in name


def check_name(name: str, flag: str = "--run") -> str:
    """`name` if it may name a run or a study, else a UserError naming `flag`."""
    if not valid_name(name):
        raise UserError(f"{flag} {name!r}: use letters, digits, '.', '_' and '-' only "
                        "(no path separators or '..'), at most 64 characters")
    return name
