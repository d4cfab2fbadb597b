"""The accuracy-vs-minutes frontier of `--budget`: for each budget, `train --budget T` on a holdout
split, then `predict` (with the report), timed as a user runs them, and the ensemble's holdout
errors; one JSON record per run appended to scripts/results/budget-frontier.json, with the CPU's
model and family, the recipe the planner chose and the speed it measured.

Each run takes its budget: run it in the background, one at a time.

    python scripts/budget_frontier.py --data data --budgets 10m 30m 60m
    python scripts/budget_frontier.py --data data --budgets 30m --model-seed 1   # a second seed
    python scripts/budget_frontier.py --data data --budgets none   # today's default, same split

Every run holds out the same rows (`seed` 42, `holdout` 0.15), so any two are paired; a second
seed is another `model_seed` (weights, augmentation, shuffling) on that split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import CODE_ROOT, Paths, parse_duration, project_root
from pipeline.files import read_json, write_json
from pipeline.machine.plan import cpu_info
from pipeline.runfiles import RunFiles

RESULTS = CODE_ROOT / "scripts" / "results" / "budget-frontier.json"


def cpu_family(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's family number as /proc/cpuinfo names it ("" elsewhere)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((v.strip() for k, _, v in (line.partition(":") for line in lines)
                 if k.strip() == "cpu family"), "")


def timed(*args: str) -> float:
    """Seconds `python -m pipeline ARGS` took; its output goes to this script's."""
    t = time.time()
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, cwd=CODE_ROOT)
    return time.time() - t


def measure(budget: str, model_seed: int, holdout: float, profile: str, paths: Paths) -> dict:
    """Train and predict one run within `budget` ("none": the fixed recipe); its record."""
    run = f"frontier-{profile}-{budget}-m{model_seed}"
    where = ["--data", str(paths.data), "--runs-dir", str(paths.runs)]
    train = timed("train", "--profile", profile, "--run", run, "--budget", budget,
                  "--set", f"holdout={holdout}", "--set", f"model_seed={model_seed}", "--no-report", *where)
    predict = timed("predict", "--run", run, *where, "--submissions-dir", str(paths.submissions))
    rf = RunFiles(paths.run_dir(run))
    cfg, env, metrics = read_json(rf.config), read_json(rf.env), read_json(rf.metrics)
    model, flags = cpu_info()
    return {"run": run, "budget": budget,
            "budget_seconds": parse_duration(budget) if budget != "none" else None,
            "seed": cfg["seed"], "model_seed": model_seed, "holdout": holdout, "profile": profile,
            "train_seconds": round(train, 1), "predict_seconds": round(predict, 1),
            "total_seconds": round(train + predict, 1),
            "holdout_errors": metrics["holdout"]["errors"], "holdout_n": metrics["holdout"]["n"],
            "epochs": cfg["epochs"], "refit": cfg["refit"],
            "members_finished": len(metrics.get("members", [])),
            "plan": env["starts"][-1].get("budget"), "precision": cfg["precision"],
            "cpu": model, "cpu_family": cpu_family(),
            "bf16_flags": sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16")),
            "cores": env["machine"]["cores"], "at": datetime.now(timezone.utc).isoformat()}


def main() -> int:
    """Measure each budget in turn and append its record to scripts/results/."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", nargs="+", required=True, help="e.g. 10m 30m 60m, or none")
    p.add_argument("--model-seed", type=int, default=0, help="another ensemble on the same split")
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    args = p.parse_args()
    runs = Path(args.runs_dir).resolve()
    # Its own submissions folder: never over the user's submissions/submission.csv.
    paths = Paths(Path(args.data).resolve(), runs, runs / "frontier-submissions")
    for budget in args.budgets:
        record = measure(budget, args.model_seed, args.holdout, args.profile, paths)
        records = read_json(RESULTS) if RESULTS.is_file() else []
        write_json(RESULTS, [*records, record])
        print(json.dumps(record, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
