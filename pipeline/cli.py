"""Command line: `python -m pipeline <command>`; a thin layer that resolves config and wires stages.

    python -m pipeline --help
    python -m pipeline train --profile cpu --set epochs=20
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import config as config_mod
from pipeline.config import DATA_DIR, PROFILES, RUNS_DIR, SAMPLE_DIR, SUBMISSIONS_DIR, Config
from pipeline.errors import UserError
from pipeline.train import Interrupted, Paths


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(data=Path(args.data).resolve(), runs=Path(args.runs_dir).resolve(),
                 submissions=Path(args.submissions_dir).resolve())


def _sets(args: argparse.Namespace) -> dict[str, str]:
    sets = config_mod.parse_sets(args.set)
    if getattr(args, "deterministic", False):
        sets["deterministic"] = "true"
    return sets


def _config(args: argparse.Namespace) -> Config:
    return config_mod.resolve(args.profile, Path(args.config) if args.config else None, _sets(args))


def _run_name(args: argparse.Namespace, default: str) -> str:
    return config_mod.check_run_name(args.run or default)


def _log(message: str) -> None:
    print(message, flush=True)


# --- commands -------------------------------------------------------------------------------

def _sample(args: argparse.Namespace) -> int:
    from pipeline.sample import write_sample

    out = write_sample(Path(args.out).resolve(), force=args.force)
    _log(f"embedded sample (from scikit-learn's digits) ready in {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipeline.train import train_run

    cfg = _config(args)
    train_run(cfg, _paths(args), _run_name(args, cfg.profile), log=_log)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pipeline.ensemble import predict_run
    from pipeline.train import latest_complete_run

    paths = _paths(args)
    run = config_mod.check_run_name(args.run) if args.run else latest_complete_run(paths.runs)
    predict_run(paths, run, tta=args.tta, log=_log)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from pipeline.ensemble import predict_run
    from pipeline.sample import write_sample
    from pipeline.train import train_run

    # Check the config and run name before writing anything.
    cfg = config_mod.resolve(args.profile or "tiny", Path(args.config) if args.config else None,
                             _sets(args))
    run = _run_name(args, "demo")
    data = write_sample(Path(args.data).resolve() if args.data_given else SAMPLE_DIR)
    paths = Paths(data=data, runs=Path(args.runs_dir).resolve(),
                  submissions=Path(args.submissions_dir).resolve())
    train_run(cfg, paths, run, log=_log)
    sub = predict_run(paths, run, log=_log)
    truth = data / "test_labels.csv"
    if truth.is_file():
        acc = float(np.mean(pd.read_csv(sub)["Label"].to_numpy() == pd.read_csv(truth)["Label"].to_numpy()))
        _log(f"demo: accuracy on the sample's held-aside test labels: {acc:.4f}")
    return 0


# --- parser ---------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, profile_default: str | None = "cpu") -> None:
    p.add_argument("--data", default=str(DATA_DIR), help="folder holding train.csv/test.csv (default: data/)")
    p.add_argument("--run", help="run name: outputs go to runs/<name>/ (default: the profile name)")
    p.add_argument("--profile", default=profile_default, choices=list(PROFILES),
                   help=f"config preset (default: {profile_default})")
    p.add_argument("--config", help="TOML/YAML/JSON file of config overrides")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set epochs=20")
    p.add_argument("--runs-dir", default=str(RUNS_DIR), help="where runs are written (default: runs/)")
    p.add_argument("--submissions-dir", default=str(SUBMISSIONS_DIR),
                   help="where submission CSVs are written (default: submissions/)")


def _deterministic_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="bit-identical results for the same config and seed on one machine "
                        "(TensorFlow op determinism; same as --set deterministic=true)")


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pipeline` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Digit Recognizer pipeline: data → k-fold CNNs → fold ensemble → submission.csv")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help: str, profile_default: str | None = "cpu",
            common: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if common:
            _common(p, profile_default)
        p.set_defaults(handler=handler)
        return p

    p = add("sample", _sample, "write the embedded sample dataset (from scikit-learn's digits)",
            common=False)
    p.add_argument("--out", default=str(SAMPLE_DIR), help="output folder (default: data/sample/)")
    p.add_argument("--force", action="store_true", help="rewrite even if present")

    p = add("train", _train, "k-fold train a run (resumes if the run exists)")
    _deterministic_flag(p)

    p = add("predict", _predict, "ensemble a run's fold models on test.csv → submissions/submission.csv")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (default: the run's config)")

    p = add("demo", _demo, "the whole pipeline on the embedded sample (profile tiny, run 'demo')",
            profile_default=None)
    _deterministic_flag(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn user errors into one line and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.data_given = any(a == "--data" or a.startswith("--data=") for a in argv)
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
