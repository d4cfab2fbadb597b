"""The accuracy-vs-minutes frontier of `--budget`: for each budget, `train --budget T` on a holdout
split, then `predict` (with the report), timed as a user runs them, and the ensemble's holdout
errors; one JSON record per run appended to scripts/results/budget-frontier.json, with the CPU's
model and family, the recipe the planner chose and the speed it measured.

Each run takes its budget: run it in the background, one at a time.

    python scripts/budget_frontier.py --data data --budgets 10m 30m 60m
    python scripts/budget_frontier.py --data data --budgets 30m --model-seed 1   # a second seed
    python scripts/budget_frontier.py --data data --budgets none   # the fixed recipe, same split
    python scripts/budget_frontier.py --pair frontier-cpu-60m-m0 frontier-cpu-30m-m0

`--via-make` runs them as a user does, `make train BUDGET=T` then `make submission`, in the
checkout the script is in (a fresh clone: `make install` runs first, untimed); `--busy-at 0.5`
starts a busy loop on one core halfway through the budget, until the submission is written.

Every run holds out the same rows (`seed` 42, `holdout` 0.15), so any two are paired: each record
keeps the rows its ensemble gets wrong, and `--pair A B` compares two records without their runs. A
second seed is another `model_seed` (weights, augmentation, shuffling) on that split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.config import CODE_ROOT, Paths, parse_duration, project_root
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import holdout_rows
from pipeline.files import load_npy, read_json, write_json
from pipeline.machine.plan import cpu_info
from pipeline.prediction.evaluate import paired_errors, paired_text
from pipeline.runfiles import RunFiles, read_split

RESULTS = CODE_ROOT / "scripts" / "results" / "budget-frontier.json"


def cpu_family(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's family number as /proc/cpuinfo names it ("" elsewhere)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((v.strip() for k, _, v in (line.partition(":") for line in lines)
                 if k.strip() == "cpu family"), "")


def timed(command: list[str]) -> float:
    """Seconds `command` took in the checkout; its output goes to this script's."""
    t = time.time()
    subprocess.run(command, check=True, cwd=CODE_ROOT)
    return time.time() - t


def wrong_rows(rf: RunFiles, paths: Paths) -> list[int]:
    """train.csv's rows (0-based) the run's ensemble gets wrong on the holdout: kept with the
    record, so that any two records on the same split can be paired later without their runs."""
    rows = holdout_rows(read_split(rf.root))
    _, y = DataFiles(paths.data, paths.runs).labelled()
    wrong = np.argmax(load_npy(rf.holdout_probs), axis=1) != y[rows]
    return [int(r) for r in rows[wrong]]


def paired(a: dict, b: dict) -> str:
    """Two records' holdout errors paired, as `compare` pairs two runs."""
    either = sorted(set(a["holdout_wrong"]) | set(b["holdout_wrong"]))
    right = np.zeros(a["holdout_n"] - len(either), bool)  # the rows both get right
    wrong = [np.concatenate([np.isin(either, rec["holdout_wrong"]), right]) for rec in (a, b)]
    return paired_text(a["run"], b["run"], paired_errors(*wrong))


def busy_loop(after: float) -> subprocess.Popen:
    """A process that waits `after` seconds, then keeps one core busy until it is killed."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    return subprocess.Popen([*pin, sys.executable, "-c",
                             f"import time; time.sleep({after}); exec('while True: pass')"])


def measure(budget: str, model_seed: int, holdout: float, profile: str, paths: Paths,
            via_make: bool, busy_at: float) -> dict:
    """Train and predict one run within `budget` ("none": the fixed recipe); its record."""
    run = f"frontier-{profile}-{budget}-m{model_seed}{'-busy' if busy_at else ''}"
    where = ["--data", str(paths.data), "--runs-dir", str(paths.runs)]
    split = ["--set", f"holdout={holdout}", "--set", f"model_seed={model_seed}"]
    if via_make:  # as README says: the outputs go to the checkout's runs/ and submissions/
        paths = Paths(paths.data, CODE_ROOT / "runs", CODE_ROOT / "submissions")
        subprocess.run(["make", "install"], check=True, cwd=CODE_ROOT, stdout=subprocess.DEVNULL)
        data = f"DATA={paths.data}"
        steps = [["make", "train", data, f"PROFILE={profile}", f"RUN={run}",
                  f"BUDGET={budget}", f"ARGS={' '.join(split)}"],
                 ["make", "submission", data, f"RUN={run}"]]
    else:
        steps = [[sys.executable, "-m", "pipeline", "train", "--profile", profile, "--run", run,
                  "--budget", budget, *split, "--no-report", *where],
                 [sys.executable, "-m", "pipeline", "predict", "--run", run, *where,
                  "--submissions-dir", str(paths.submissions)]]
    seconds = parse_duration(budget) if budget != "none" else None
    busy = busy_loop(busy_at * seconds) if busy_at and seconds else None
    try:
        train = timed(steps[0])
        predict = timed(steps[1])
    finally:
        if busy:
            busy.kill()
    rf = RunFiles(paths.run_dir(run))
    cfg, env, metrics = read_json(rf.config), read_json(rf.env), read_json(rf.metrics)
    model, flags = cpu_info()
    return {"run": run, "budget": budget, "budget_seconds": seconds,
            "via": "make train + make submission" if via_make else "python -m pipeline",
            "commit": env.get("git_commit"), "busy_loop_from": busy_at * seconds if busy else None,
            "seed": cfg["seed"], "model_seed": model_seed, "holdout": holdout, "profile": profile,
            "train_seconds": round(train, 1), "predict_seconds": round(predict, 1),
            "total_seconds": round(train + predict, 1),
            "holdout_errors": metrics["holdout"]["errors"], "holdout_n": metrics["holdout"]["n"],
            "holdout_wrong": wrong_rows(rf, paths),
            "epochs": cfg["epochs"], "refit": cfg["refit"],
            "members_finished": len(metrics.get("members", [])),
            "fold_epochs": cfg.get("fold_epochs") or cfg["epochs"],
            "plan": env["starts"][-1].get("budget"), "precision": cfg["precision"],
            "rule": (env["starts"][-1].get("budget") or {}).get("rule"),
            "cpu": model, "cpu_family": cpu_family(),
            "bf16_flags": sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16")),
            "cores": env["machine"]["cores"], "at": datetime.now(timezone.utc).isoformat()}


def main(argv: list[str] | None = None) -> int:
    """Measure each budget in turn and append its record to scripts/results/."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", nargs="+", default=[], help="e.g. 10m 30m 60m, or none")
    p.add_argument("--model-seed", type=int, default=0, help="another ensemble on the same split")
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    p.add_argument("--via-make", action="store_true", help="make train BUDGET=T + make submission")
    p.add_argument("--busy-at", type=float, default=0.0,
                   help="start a busy loop on one core at this share of the budget (0: none)")
    p.add_argument("--results", default=str(RESULTS), help="the JSON file records are appended to")
    p.add_argument("--beside", default="",
                   help="what else ran beside them (recorded; the figure leaves out their minutes)")
    p.add_argument("--pair", nargs=2, metavar="RUN", help="pair two recorded runs' holdout errors")
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.pair:
        by_run = {r["run"]: r for r in read_json(results) if "holdout_wrong" in r}
        print(paired(by_run[args.pair[0]], by_run[args.pair[1]]))
        return 0
    runs = Path(args.runs_dir).resolve()
    # Its own submissions folder: never over the user's submissions/submission.csv.
    paths = Paths(Path(args.data).resolve(), runs, runs / "frontier-submissions")
    for budget in args.budgets:
        record = measure(budget, args.model_seed, args.holdout, args.profile, paths,
                         args.via_make, args.busy_at)
        if args.beside:
            record["beside"] = args.beside
        records = read_json(results) if results.is_file() else []
        write_json(results, [*records, record])
        print(json.dumps(record, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
