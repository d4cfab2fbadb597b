"""Command line: `python -m pipeline <command>`; a thin layer that resolves config and wires stages.

    python -m pipeline --help
    python -m pipeline train --profile cpu --set epochs=20
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import config as config_mod
from pipeline.config import PROFILES, Config, Paths, project_root
from pipeline.console import VERBOSE_ENV, warn
from pipeline.data.datafiles import DataFiles
from pipeline.errors import Interrupted, UserError


def _paths(args: argparse.Namespace) -> Paths:
    # Commands that write no submission (train, tune) have no --submissions-dir; the Kaggle
    # kernel's commands read no data here (the kernel reads Kaggle's) and have no --data.
    return Paths(data=Path(getattr(args, "data", args.defaults.data)).resolve(), runs=Path(args.runs_dir).resolve(),
                 submissions=Path(getattr(args, "submissions_dir", args.defaults.submissions)).resolve())


def _sets(args: argparse.Namespace) -> dict[str, str]:
    sets = config_mod.parse_sets(args.set)
    if getattr(args, "deterministic", False):
        sets["deterministic"] = "true"
    if getattr(args, "budget", None) is not None:
        sets["budget"] = str(args.budget)
    return sets


def _config(args: argparse.Namespace) -> Config:
    return config_mod.resolve(args.profile, Path(args.config) if args.config else None, _sets(args))


def _run_name(args: argparse.Namespace, default: str) -> str:
    return config_mod.check_name(args.run or default)


def _run_taken(args: argparse.Namespace, runs: Path) -> str:
    """The run named by --run, else the most recently trained one (the one rule for every
    command that takes a run; see pipeline.runfiles.latest_trained_run)."""
    from pipeline.runfiles import latest_trained_run

    return config_mod.check_name(args.run) if args.run else latest_trained_run(runs)


def _log(message: str) -> None:
    print(message, flush=True)


def _report_after(paths: Paths, run: str) -> None:
    """Rebuild the run's report after a command; a report problem never fails the command."""
    from pipeline.reporting.report import build_report

    try:
        build_report(paths.runs, run, data=paths.data, log=_log)
    except Exception as exc:  # the run's results are saved; the report can be rebuilt later
        warn(f"report not built ({type(exc).__name__}: {exc}); rebuild it with "
             f"`python -m pipeline report --run {run}`")


# --- commands -------------------------------------------------------------------------------

def _sample(args: argparse.Namespace) -> int:
    from pipeline.data.sample import write_sample

    out = write_sample(Path(args.out).resolve(), force=args.force)
    _log(f"embedded sample (from scikit-learn's digits) ready in {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipeline.training.train import train_run

    cfg, provenance = _with_study(args, _config(args))
    if args.max_folds is not None and args.max_folds < 1:
        raise UserError(f"--max-folds {args.max_folds}: must be at least 1")
    paths, run = _paths(args), _run_name(args, cfg.profile)
    # What the user fixed, which a budget plans around: --set, --config, the study's params.
    explicit = config_mod.explicit_keys(Path(args.config) if args.config else None, _sets(args))
    explicit |= set((provenance or {}).get("tuned_params", {}).get("params") or ())
    if train_run(cfg, paths, run, log=_log, provenance=provenance, max_folds=args.max_folds,
                 explicit=frozenset(explicit), plan_only=args.plan_only) is not None \
            and not args.no_report:
        _report_after(paths, run)
    return 0


def _with_study(args: argparse.Namespace, cfg: Config) -> tuple[Config, dict | None]:
    """Apply a tuning study's best params (--study NAME, or the config key `study`)."""
    name = getattr(args, "study", None) or cfg.study
    if not name:
        return cfg, None
    from pipeline.tuning.study import load_best_params

    record = load_best_params(Path(args.runs_dir).resolve(), name)
    cfg = config_mod.resolve(args.profile, Path(args.config) if args.config else None,
                             _sets(args), extra={**record["params"], "study": name})
    if cfg.study != name:
        raise UserError(f"--study {name!r} conflicts with study={cfg.study!r} from --set")
    tuned_on = record.get("budget", {}).get("profile", cfg.profile)
    _log(f"using study '{name}': best trial {record['best_trial']} (tuning val accuracy "
         f"{record['value']:.4f}" + (f", tuned on profile {tuned_on})" if tuned_on != cfg.profile
                                     else ")"))
    keys = ("study", "storage", "best_trial", "value", "metric", "budget", "written", "params")
    return cfg, {"tuned_params": {k: record.get(k) for k in keys}}


def _tune(args: argparse.Namespace) -> int:
    from pipeline.tuning import tune
    from pipeline.tuning.space import read_enqueue
    from pipeline.tuning.storage import default_storage
    from pipeline.tuning.study import Budget, Settings
    from pipeline.tuning.studyfiles import StudyFiles

    study = config_mod.check_name(args.study, "--study")
    file = Path(args.config) if args.config else None
    sets = config_mod.parse_sets(args.set)
    base = _config(args)
    paths = _paths(args)
    budget = Budget(trials=args.trials, timeout=args.timeout, tune_folds=args.tune_folds,
                    min_epochs=args.min_epochs, max_epochs=args.max_epochs,
                    subsample=args.subsample, pruner=args.pruner,
                    startup_trials=args.startup_trials, heartbeat=round(args.heartbeat))
    settings = Settings(
        study=study, storage=args.storage or default_storage(StudyFiles.of(paths.runs, study)),
        paths=paths,
        base=base, pinned={k: getattr(base, k) for k in sorted(config_mod.explicit_keys(file, sets))},
        budget=budget, workers=args.workers,
        enqueue=read_enqueue(Path(args.enqueue), base) if args.enqueue else ())
    tune.run_study(settings, log=_log, plots=args.plots)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from pipeline.tuning.dashboard import serve, storage_url

    serve(storage_url(Path(args.runs_dir).resolve(), args.study, args.storage), args.study,
          port=args.port, log=_log)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pipeline.prediction.ensemble import predict_run

    paths = _paths(args)
    run = _run_taken(args, paths.runs)
    predict_run(paths, run, tta=args.tta, log=_log)
    if not args.no_report:
        _report_after(paths, run)
    return 0


def _blend(args: argparse.Namespace) -> int:
    from pipeline.prediction.ensemble import blend_runs

    runs = [config_mod.check_name(r) for r in args.runs]
    name = config_mod.check_name(args.name or "blend-" + "-".join(runs))
    blend_runs(_paths(args), runs, name, log=_log)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from pipeline.data.sample import write_sample
    from pipeline.prediction.ensemble import predict_run
    from pipeline.runfiles import mark_demo
    from pipeline.training.train import train_run

    # Check the config and run name before writing anything.
    cfg = _config(args)
    run = _run_name(args, "demo")
    data = write_sample(Path(args.data).resolve())  # refuses a folder of other data
    paths = _paths(args)
    train_run(cfg, paths, run, log=_log)
    # Marked only once training accepted the folder: a run of the user's own is never marked.
    mark_demo(paths.run_dir(run), data)
    # Its submission is for the sample's 540 test images, never Kaggle's: submission.csv, the
    # file a user uploads by hand, stays the last real run's.
    sub = predict_run(paths, run, log=_log, latest=False)
    truth = DataFiles(data).test_labels
    if truth.is_file():
        acc = float(np.mean(pd.read_csv(sub)["Label"].to_numpy() == pd.read_csv(truth)["Label"].to_numpy()))
        _log(f"demo: accuracy on the sample's held-aside test labels: {acc:.4f}")
    _report_after(paths, run)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.reporting.report import build_report
    from pipeline.reporting.summary import summary_text

    runs = Path(args.runs_dir).resolve()
    run = _run_taken(args, runs)
    build_report(runs, run, data=Path(args.data).resolve() if args.data_given else None, log=_log)
    _log(summary_text(runs / run))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pipeline.reporting.summary import compare_text
    from pipeline.runfiles import finished_runs

    runs_dir = Path(args.runs_dir).resolve()
    runs = [config_mod.check_name(r) for r in args.runs] or finished_runs(runs_dir)
    if not runs:
        raise UserError(f"{runs_dir}: no finished run to compare; run `make train` first")
    _log(compare_text(runs_dir, runs))
    return 0


def _download(args: argparse.Namespace) -> int:
    from pipeline.kaggle.client import download

    download(args.competition, Path(args.data).resolve(), force=args.force,
             from_zip=Path(args.from_zip).resolve() if args.from_zip else None, log=_log)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipeline.kaggle.submit import submit_run
    from pipeline.runfiles import RunFiles

    paths = _paths(args)
    # A bare --file belongs to no run; otherwise the run is picked as every command picks it.
    run = None if args.file and not args.run else _run_taken(args, paths.runs)
    submit_run(paths, competition=args.competition, run=run, picked=not args.run,
               file=Path(args.file).resolve() if args.file else None, message=args.message,
               dry_run=args.dry_run, wait=not args.no_wait, timeout=_positive(args.timeout), log=_log)
    # The report shows the Kaggle result recorded in the run; rebuild it when there is one.
    if not args.dry_run and run and RunFiles(paths.run_dir(run)).kaggle.is_file():
        _report_after(paths, run)
    return 0


def _kaggle_train(args: argparse.Namespace) -> int:
    from pipeline.kaggle import remote

    cfg = _config(args)
    run = _run_name(args, cfg.profile)
    if args.dry_run:
        if not args.out:
            raise UserError("--dry-run needs --out DIR: the folder the kernel is written into")
        remote.dry_run(cfg, run, args.accelerator, Path(args.out).resolve(), log=_log)
        return 0
    if args.out:
        raise UserError("--out goes with --dry-run (a pushed kernel's folder is not kept)")
    remote.train_on_kaggle(cfg, _paths(args), run, accelerator=args.accelerator,
                           wait=not args.no_wait, timeout=_positive(args.timeout), log=_log)
    return 0


def _kaggle_status(args: argparse.Namespace) -> int:
    from pipeline.kaggle import remote

    remote.kernel_status(_paths(args), config_mod.check_name(args.run), log=_log)
    return 0


def _kaggle_pull(args: argparse.Namespace) -> int:
    from pipeline.kaggle import remote

    remote.follow_and_pull(_paths(args), config_mod.check_name(args.run),
                           timeout=_positive(args.timeout), log=_log)
    return 0


def _positive(seconds: float) -> float:
    """A --timeout's seconds, refused unless positive."""
    if seconds <= 0:
        raise UserError(f"--timeout {seconds:g}: must be a positive number of seconds")
    return seconds


def _submissions(args: argparse.Namespace) -> int:
    from pipeline.kaggle.records import show_submissions

    show_submissions(Path(args.runs_dir).resolve(), args.competition, limit=args.limit, log=_log)
    return 0


# --- parser ---------------------------------------------------------------------------------
# Each command gets only the flags it uses, with its own defaults in its help.

LATEST = "the most recently trained run; a demo run only when named"


def _data_flag(p: argparse.ArgumentParser, default: Path, shown: str = "data/") -> None:
    p.add_argument("--data", default=str(default),
                   help=f"folder holding train.csv/test.csv/sample_submission.csv (default: {shown})")


def _run_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--run", help=f"outputs go to runs/<RUN>/ (default: {default})")


def _taken_run_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--run", help=f"the run to {what} (default: {LATEST})")


def _config_flags(p: argparse.ArgumentParser, profile: str) -> None:
    p.add_argument("--profile", default=profile, choices=list(PROFILES),
                   help=f"config preset (default: {profile})")
    p.add_argument("--config", help="TOML/YAML/JSON file of config overrides")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set epochs=20")


def _runs_dir_flag(p: argparse.ArgumentParser, default: Path) -> None:
    p.add_argument("--runs-dir", default=str(default), help="where runs live (default: runs/)")


def _submissions_dir_flag(p: argparse.ArgumentParser, default: Path) -> None:
    p.add_argument("--submissions-dir", default=str(default),
                   help="where submission CSVs are written (default: submissions/)")


def _competition_flag(p: argparse.ArgumentParser, default: str | None, shown: str) -> None:
    p.add_argument("--competition", default=default, metavar="SLUG",
                   help=f"competition slug or URL (default: {shown})")


def _tune_args(p: argparse.ArgumentParser) -> None:
    from pipeline.tuning.study import PRUNERS, Budget

    b = Budget()
    p.add_argument("--study", default="default",
                   help="study name: runs/tune/<STUDY>/ (default: default)")
    p.add_argument("--trials", type=int, default=b.trials,
                   help="target total number of trials; a re-run adds only the missing ones "
                   f"(default: {b.trials})")
    p.add_argument("--timeout", type=_duration, default=b.timeout, metavar="DURATION",
                   help="after this long (90s, 30m, 1.5h; a bare number is seconds) stop the "
                   f"running trial (re-run on resume) and start no new one (default: {b.timeout:g}s)")
    p.add_argument("--storage", help="Optuna storage as an SQLAlchemy URL, e.g. "
                   "postgresql://user:pw@host/db to share a study between machines "
                   "(default: sqlite:///runs/tune/<STUDY>/study.db)")
    p.add_argument("--workers", type=_workers, default=0, metavar="N|auto",
                   help="local worker processes (default: auto — the profile's `workers`, else one "
                   "per core or GPU, as `train` plans it)")
    p.add_argument("--tune-folds", type=int, default=b.tune_folds,
                   help=f"folds of the saved split each trial trains (default: {b.tune_folds})")
    p.add_argument("--min-epochs", type=int, default=b.min_epochs,
                   help=f"smallest epochs value searched (default: {b.min_epochs})")
    p.add_argument("--max-epochs", type=int, default=b.max_epochs,
                   help=f"largest epochs value searched (default: {b.max_epochs})")
    p.add_argument("--subsample", type=float, default=b.subsample,
                   help=f"fraction of the training rows a trial uses (default: {b.subsample:g})")
    p.add_argument("--pruner", default=b.pruner, choices=PRUNERS, help=f"(default: {b.pruner})")
    p.add_argument("--startup-trials", type=int, default=b.startup_trials,
                   help=f"trials before TPE and pruning start (default: {b.startup_trials})")
    p.add_argument("--enqueue", metavar="JSON",
                   help="JSON list of {param: value} objects to try first")
    p.add_argument("--heartbeat", type=_duration, default=b.heartbeat, metavar="DURATION",
                   help=f"time between a trial's heartbeats (whole seconds); a trial silent for 4x "
                   f"this is re-run (default: {b.heartbeat}s)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="save Optuna's plots as PNG in the study folder (default: on)")


def _duration(value: str) -> float:
    """A duration flag's value in seconds: 90, 90s, 30m, 1.5h or 1h30m (config.parse_duration)."""
    try:
        return config_mod.parse_duration(value)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _budget(value: str) -> float:
    """`--budget DURATION`, or `none` (0): the fixed recipe."""
    return 0.0 if value.strip().lower() == "none" else _duration(value)


def _workers(value: str) -> int:
    """`--workers N` or `--workers auto` (0)."""
    if value.strip().lower() == "auto":
        return 0
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number or auto") from None


def _no_report_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-report", action="store_true",
                   help="do not rebuild runs/<run>/report.html afterwards (saves a few seconds a "
                   "command when scripting many; `report --run RUN` builds it later)")


def _deterministic_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="bit-identical results for the same config and seed on one machine "
                        "(TensorFlow op determinism; same as --set deterministic=true)")


Command = Callable[[argparse.Namespace], int]


class _Version(argparse.Action):
    """`--version`, asked of git or the build record only when given (not at every start)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from pipeline.provenance import describe

        print(describe())
        parser.exit()


def build_parser(defaults: Paths | None = None) -> argparse.ArgumentParser:
    """The `python -m pipeline` argument parser with every subcommand; path flags default to
    `defaults` (the layout under config.project_root())."""
    defaults = defaults or Paths.under(project_root())
    # Installed, the same commands are `digits …`; from a checkout, `python -m pipeline …`.
    prog = "digits" if Path(sys.argv[0]).name == "digits" else "python -m pipeline"
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Digit Recognizer pipeline: data → k-fold CNNs → fold ensemble → submission.csv")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own start-up and log lines (TensorFlow's, "
                        f"oneDNN's, CUDA's); the same as {VERBOSE_ENV}=1")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and the commit the code comes from, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        # No abbreviations: `--run` must not quietly mean `--runs-dir` where there is no --run.
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(handler=handler)
        return p

    p = add("sample", _sample, "write the embedded sample dataset (from scikit-learn's digits)")
    p.add_argument("--out", default=str(DataFiles(defaults.data).sample),
                   help="output folder (default: data/sample/)")
    p.add_argument("--force", action="store_true",
                   help="rewrite even if present (never over files the sample did not write)")

    p = add("train", _train, "k-fold train a run (resumes if the run exists)")
    _data_flag(p, defaults.data)
    _run_flag(p, "the profile name")
    _config_flags(p, "cpu")
    _runs_dir_flag(p, defaults.runs)
    p.add_argument("--max-folds", type=int, metavar="N",
                   help="train at most N more folds, then stop (a quick look; re-run to finish)")
    p.add_argument("--budget", type=_budget, metavar="DURATION",
                   help="the time the run may take to its submission file with the report, e.g. "
                   "30m or 1.5h (earlier invocations count): the recipe (epochs, refit members) "
                   "is fitted to the speed measured on this machine; explicit values win; none = "
                   "the fixed recipe (the same as --set budget=...)")
    p.add_argument("--plan-only", action="store_true",
                   help="print the run's plan (with --budget: models × epochs, measured images/s, "
                   "expected finish) and stop; writes nothing but the parse cache")
    _deterministic_flag(p)
    p.add_argument("--study", help="use the best params of runs/tune/<STUDY>/best_params.json "
                   "(from `tune`); --set still overrides them")
    _no_report_flag(p)

    p = add("tune", _tune, "search hyperparameters with Optuna (re-running resumes; "
            "--workers/--storage to scale out)")
    _data_flag(p, defaults.data)
    _config_flags(p, "cpu")
    _runs_dir_flag(p, defaults.runs)
    _tune_args(p)

    from pipeline.tuning.dashboard import DEFAULT_PORT

    p = add("dashboard", _dashboard, "watch a tuning study in the browser: optuna-dashboard on "
            "http://127.0.0.1:PORT, until Ctrl-C")
    p.add_argument("--study", required=True, help="the study to show (runs/tune/<STUDY>/)")
    p.add_argument("--storage", help="the study's storage URL (default: "
                   "sqlite:///runs/tune/<STUDY>/study.db, as for tune)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1; 0 picks a free one (default: {DEFAULT_PORT})")
    _runs_dir_flag(p, defaults.runs)

    p = add("predict", _predict, "average a run's models (its refit members, else its fold models) on test.csv → "
            "submissions/<run>.csv and submissions/submission.csv")
    _data_flag(p, defaults.data)
    _taken_run_flag(p, "predict")
    _runs_dir_flag(p, defaults.runs)
    _submissions_dir_flag(p, defaults.submissions)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (default: the run's config key tta)")
    _no_report_flag(p)

    p = add("blend", _blend, "average finished runs trained on the same folds (seeds/architectures)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="runs to average")
    p.add_argument("--name", help="output name: runs/<name>/, submissions/<name>.csv "
                   "(default: blend-<RUN>-<RUN>…)")
    _data_flag(p, defaults.data)
    _runs_dir_flag(p, defaults.runs)
    _submissions_dir_flag(p, defaults.submissions)

    default_competition = Config().competition
    p = add("download", _download, "download and install the competition data from Kaggle into --data")
    _data_flag(p, defaults.data)
    _competition_flag(p, default_competition, default_competition)
    p.add_argument("--force", action="store_true", help="download again even if valid files are present")
    p.add_argument("--from-zip", metavar="ZIP", help="install from an archive on disk instead of downloading")

    p = add("submit", _submit, "validate a run's submission (built if needed) and upload it to Kaggle")
    _data_flag(p, defaults.data)
    _taken_run_flag(p, "submit")
    _runs_dir_flag(p, defaults.runs)
    _submissions_dir_flag(p, defaults.submissions)
    _competition_flag(p, None, "the run's config key competition, which is "
                      f"{default_competition} unless set when it was trained")
    p.add_argument("--file", metavar="CSV", help="submit this CSV instead of the run's submission")
    p.add_argument("--message", help="submission description (default: run, profile and CV accuracy)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and show what would be sent; send nothing")
    p.add_argument("--no-wait", action="store_true", help="do not wait for Kaggle's score")
    p.add_argument("--timeout", type=_duration, default=600.0, metavar="DURATION",
                   help="how long to wait for the score: 90s, 10m (a bare number is seconds; "
                   "default: 10m)")

    from pipeline.kaggle.kernel import DEFAULT_ACCELERATOR, SESSION_TIMEOUT_S

    waiting = (f"how long to wait for the kernel before leaving it running on Kaggle, e.g. 90m or "
               f"6h (default: {SESSION_TIMEOUT_S // 3600}h, its longest session)")
    p = add("kaggle-train", _kaggle_train, "train a run on Kaggle's GPU: push a private kernel, "
            "follow it and install the run it trained into runs/<run>/")
    _run_flag(p, "the profile name")
    _config_flags(p, "gpu")
    _runs_dir_flag(p, defaults.runs)
    p.add_argument("--accelerator", default=DEFAULT_ACCELERATOR, metavar="SHAPE",
                   help=f"Kaggle's machine shape (default: {DEFAULT_ACCELERATOR}, GPU T4 x2)")
    p.add_argument("--no-wait", action="store_true",
                   help="push and return; kaggle-status and kaggle-pull follow it later")
    p.add_argument("--timeout", type=_duration, default=float(SESSION_TIMEOUT_S), metavar="DURATION",
                   help=waiting)
    p.add_argument("--dry-run", action="store_true",
                   help="write the kernel into --out DIR (kernel-metadata.json and the script); "
                   "no credentials, nothing sent")
    p.add_argument("--out", metavar="DIR", help="where --dry-run writes the kernel")

    p = add("kaggle-status", _kaggle_status, "the status of a run's Kaggle kernel (kaggle-train)")
    p.add_argument("--run", required=True, help="the run whose kernel to check")
    _runs_dir_flag(p, defaults.runs)

    p = add("kaggle-pull", _kaggle_pull, "wait for a run's Kaggle kernel, then check its outputs "
            "and install the run (after kaggle-train --no-wait)")
    p.add_argument("--run", required=True, help="the run whose kernel to pull")
    _runs_dir_flag(p, defaults.runs)
    p.add_argument("--timeout", type=_duration, default=float(SESSION_TIMEOUT_S), metavar="DURATION",
                   help=waiting)
    p = add("submissions", _submissions, "the competition's past submissions on Kaggle, newest first: "
            "date, file, description, status, public score and the local run each came from")
    _competition_flag(p, default_competition, default_competition)
    _runs_dir_flag(p, defaults.runs)
    p.add_argument("--limit", type=int, default=20, help="show at most this many (default: 20)")

    p = add("demo", _demo, "the whole pipeline on the embedded sample: writes it, trains, predicts "
            "and reports; never over other data, never submissions/submission.csv")
    _data_flag(p, DataFiles(defaults.data).sample, "data/sample/; a folder holding other data is refused")
    _run_flag(p, "demo")
    _config_flags(p, "tiny")
    _runs_dir_flag(p, defaults.runs)
    _submissions_dir_flag(p, defaults.submissions)
    _deterministic_flag(p)

    p = add("report", _report, "rebuild runs/<run>/report.html (figures, metrics) and print a "
            "summary")
    _taken_run_flag(p, "report on")
    p.add_argument("--data", default=str(defaults.data),
                   help="folder with the run's train.csv/test.csv (default: the one it was trained on)")
    _runs_dir_flag(p, defaults.runs)

    p = add("compare", _compare, "runs side by side: settings, CV accuracy with its confidence "
            "interval, time, Kaggle score")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names (default: every finished run)")
    _runs_dir_flag(p, defaults.runs)
    parser.set_defaults(defaults=defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn user errors into one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.data_given = any(a == "--data" or a.startswith("--data=") for a in argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # fold and tuning workers inherit it
    # TensorFlow is imported only where a command first needs it (pipeline.modeling.model, pipeline.machine.plan),
    # always through console.quiet_tensorflow, so a command refused early never pays for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # SIGTERM (a scheduler's or `kill`'s stop) is handled as Ctrl-C: a run saves what it has.
    sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return args.handler(args) or 0
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, sigterm)
