"""Measure the pipeline's speed (and, with --cv, its accuracy) and record it as JSON.

Prints and writes runs/bench/<timestamp>.json: the machine (CPU model, its native-bfloat16
flags), data load seconds (cold CSV and cached), training images/s of each precision × BatchNorm
kernel (one process, and the plan's processes at once, as `train` runs folds), of the plan's own
form with 1 … N processes and without augmentation, inference images/s, and with
`--cv PROFILE` a full k-fold run with per-fold accuracy, OOF accuracy and wall time; with
`--oof-tta RUN` a finished run's OOF accuracy without and with test-time augmentation.

    python scripts/benchmark.py --data data                 # speed only (a minute or two)
    python scripts/benchmark.py --data data --cv cpu        # plus the full 5-fold run of `cpu`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline.config import Paths, project_root
from pipeline.console import quiet_tensorflow
from pipeline.data.datafiles import DataFiles
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.training.calibrate import train_speed


def machine() -> dict:
    """CPU model and native-bfloat16 flags, cores and library versions."""
    import keras
    import tensorflow as tf

    from pipeline.machine.plan import this_machine

    here = this_machine()
    return {"cpu": here.cpu, "bf16_flags": here.bf16_flags, "cores": os.cpu_count(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def time_load(data: Path) -> dict:
    """Seconds to parse train.csv cold, and to reload it from the cache."""
    with tempfile.TemporaryDirectory() as runs:
        files = DataFiles(data, Path(runs))
        t = time.perf_counter()
        x, _ = files.labelled()
        cold = time.perf_counter() - t
        t = time.perf_counter()
        files.labelled()
        cached = time.perf_counter() - t
    return {"rows": len(x), "cold_csv_s": round(cold, 3), "cached_s": round(cached, 3)}


@dataclasses.dataclass(frozen=True)
class Form:
    """How the timed model trains: its precision and BatchNorm kernel ("fused" is what `train`
    uses; "keras" is Keras' own BatchNormalization, the code path before the fused kernel)."""

    precision: str
    batchnorm: str = "fused"

    @property
    def name(self) -> str:
        """How the JSON names it, e.g. "mixed_bfloat16/fused"."""
        return f"{self.precision}/{self.batchnorm}"


def _speed_worker(cfg: config_mod.Config, form: Form, plan: Any, threads: int, x: np.ndarray,
                  y: np.ndarray, n: int, barrier: Any) -> float:
    """One of several processes timed together, set up as `train` sets up its fold workers."""
    from pipeline.machine.plan import setup_tensorflow

    setup_tensorflow(cfg, plan, threads)
    return train_speed(cfg, x, y, n, form.precision, form.batchnorm == "fused", barrier, repeats=2)


def parallel_speed(cfg: config_mod.Config, form: Form, machine: Any, workers: int, x: np.ndarray,
                   y: np.ndarray, n: int, gpus: tuple[int, ...] | None = None) -> float:
    """Total training images/s of `workers` processes training at once, each set up as the plan
    for that many workers would (cores split among them; on GPUs, one GPU each)."""
    from pipeline.machine.plan import choose
    from pipeline.machine.pool import CONTEXT, Job, run_jobs

    plan = choose(dataclasses.replace(cfg, workers=workers), machine, workers)
    if gpus is not None:
        plan = dataclasses.replace(plan, gpus=gpus)
    barrier = CONTEXT.Barrier(workers)
    jobs = [Job(f"speed worker {i}", _speed_worker,
                (cfg, form, plan, plan.threads, x[:n], y[:n], n, barrier))
            for i in range(workers)]
    return sum(run_jobs(jobs, workers, slot_env=plan.env_for_slot))


def forms(machine: Any) -> list[Form]:
    """Every precision the machine can train in × both BatchNorm kernels."""
    precisions = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if machine.gpus else [])
    return [Form(p, bn) for p in precisions for bn in ("keras", "fused")]


def throughput(cfg: config_mod.Config, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
               images: int) -> dict:
    """Training images/s of each precision × BatchNorm kernel, in one process and in the plan's
    processes at once; of the plan's own form with 1 … N processes and without augmentation;
    inference images/s."""
    from pipeline.machine.plan import choose, this_machine
    from pipeline.modeling.model import build_model

    n = min(images, len(x))
    machine = this_machine()
    plan = choose(cfg, machine, cfg.folds)
    cfg = dataclasses.replace(cfg, precision=plan.precision)
    out: dict = {"images": n, "batch_size": cfg.batch_size, "model": cfg.model,
                 "machine": {"cores": machine.cores, "gpus": list(machine.gpus),
                             "cpu": machine.cpu, "bf16_flags": machine.bf16_flags},
                 "plan": {**plan.to_dict(), "line": plan.line()}}
    together = plan.processes
    top = len(machine.gpus) or machine.cores

    def speed(form: Form, workers: int) -> float:
        if workers == 1 and not machine.gpus:
            # One fold process on CPU is `train` training in its own process on every core:
            # measured in this process (no worker process to start for it). Best of 3 epochs:
            # on a shared machine a single short epoch can be twice as slow.
            return train_speed(cfg, x, y, n, form.precision, form.batchnorm == "fused", repeats=3)
        return parallel_speed(cfg, form, machine, workers, x, y, n)

    # What `train` runs (the plan's precision, fused BatchNorm) against the other forms, the
    # pre-fused code path (float32/keras) among them.
    out["train_img_s_by_form"] = {
        form.name: {str(w): round(speed(form, w), 1) for w in sorted({1, together})}
        for form in forms(machine)}
    mine = Form(plan.precision)
    out["form"] = mine.name
    by_form = out["train_img_s_by_form"][mine.name]
    out["train_img_s_augment"] = by_form["1"]
    out["train_img_s_plain"] = round(train_speed(dataclasses.replace(cfg, augment=False), x, y, n,
                                                  mine.precision, repeats=3), 1)
    out["augment_cost"] = round(1 - out["train_img_s_augment"] / out["train_img_s_plain"], 3)
    out["train_img_s_by_workers"] = {
        str(w): by_form[str(w)] if str(w) in by_form else round(speed(mine, w), 1)
        for w in range(1, top + 1)}
    out["fastest_workers"] = int(max(out["train_img_s_by_workers"],
                                     key=out["train_img_s_by_workers"].get))
    if machine.gpus:
        out["train_img_s_by_gpu"] = {
            str(g): round(parallel_speed(cfg, mine, machine, 1, x, y, n, (g,)), 1)
            for g in range(len(machine.gpus))}
    model = build_model(cfg)
    model.predict(x_test[:2048], batch_size=2048, verbose=0)
    t = time.perf_counter()
    model.predict(x_test, batch_size=2048, verbose=0)
    out["inference_img_s"] = round(len(x_test) / (time.perf_counter() - t), 1)
    return out


def cross_validate(profile: str, sets: dict, paths: Paths, run: str,
                   holdout: float | None = None) -> dict:
    """A full k-fold run plus prediction of `profile`, timed end to end; with `holdout`, the
    fold ensemble's score on that share of train.csv held out (the leaderboard estimate)."""
    from pipeline.files import read_json
    from pipeline.prediction.ensemble import predict_run
    from pipeline.runfiles import RunFiles
    from pipeline.training.train import train_run

    if holdout is not None:
        sets = {**sets, "holdout": str(holdout)}
    cfg = config_mod.resolve(profile, None, sets)
    t = time.perf_counter()
    metrics = train_run(cfg, paths, run)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    predict_run(paths, run)
    predict_s = time.perf_counter() - t
    held = read_json(RunFiles(paths.run_dir(run)).metrics).get("holdout")
    return {"profile": profile, "overrides": sets, "run": run, "config": cfg.to_dict(),
            "fold_accuracy": [m["val_accuracy"] for m in metrics["folds"]],
            "fold_seconds": [m["seconds"] for m in metrics["folds"]],
            "oof_accuracy": metrics["cv_accuracy"], "oof_errors": round(
                (1 - metrics["cv_accuracy"]) * metrics["n_train"]),
            **({"holdout": held} if held else {}),
            "train_wall_s": round(train_s, 1),
            "predict_wall_s": round(predict_s, 1), "total_wall_s": round(train_s + predict_s, 1)}


def oof_tta(paths: Paths, run: str, y: np.ndarray, x: np.ndarray) -> dict:
    """Out-of-fold accuracy of a finished run's fold models without and with test-time
    augmentation (what `tta=true` would have scored), and the seconds each took."""
    from pipeline.data.folds import HOLDOUT
    from pipeline.prediction.inference import average_probs, load_fold_model
    from pipeline.runfiles import RunFiles, load_run_config, read_split

    run_dir = paths.run_dir(run)
    models = [load_fold_model(run_dir, i) for i in range(load_run_config(run_dir).folds)]
    rows = np.flatnonzero(read_split(run_dir, len(y)) != HOLDOUT)  # the rows with OOF predictions
    out: dict = {"run": run}
    for tta in (False, True):
        t = time.perf_counter()
        oof = np.zeros((len(y), 10), dtype=np.float32)
        for i, model in enumerate(models):
            idx = np.load(RunFiles(run_dir).fold(i).val_idx)
            oof[idx] = average_probs([model], x[idx], tta=tta)
        key = "tta" if tta else "plain"
        out[f"oof_accuracy_{key}"] = float(np.mean(oof[rows].argmax(1) == y[rows]))
        out[f"oof_errors_{key}"] = int(np.sum(oof[rows].argmax(1) != y[rows]))
        out[f"seconds_{key}"] = round(time.perf_counter() - t, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(defaults.data), help="folder with train.csv/test.csv")
    p.add_argument("--profile", default="cpu", help="profile whose model is timed (default cpu)")
    p.add_argument("--images", type=int, default=8192, help="training images per timing epoch")
    p.add_argument("--cv", metavar="PROFILE", help="also run full k-fold CV of this profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the timed model and the CV run")
    p.add_argument("--run", help="run name for --cv (default bench-<profile>)")
    p.add_argument("--holdout", type=float, metavar="SHARE",
                   help="with --cv: hold out this share of train.csv and record the fold "
                   "ensemble's accuracy on it (the leaderboard estimate) with OOF and wall time")
    p.add_argument("--oof-tta", metavar="RUN",
                   help="also score a finished run's out-of-fold predictions with and without TTA")
    p.add_argument("--runs-dir", default=str(defaults.runs))
    p.add_argument("--submissions-dir", default=str(defaults.submissions))
    args = p.parse_args(argv)
    quiet_tensorflow()
    try:
        data = Path(args.data).resolve()
        runs = Path(args.runs_dir).resolve()
        sets = config_mod.parse_sets(args.set)
        cfg = config_mod.resolve(args.profile, None, sets)
        result: dict = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "data": str(data), "machine": machine(), "load": time_load(data)}
        print(json.dumps(result["load"]), flush=True)
        files = DataFiles(data, runs)
        x, y = files.labelled()
        x_test = files.unlabelled()
        result["throughput"] = throughput(cfg, x, y, x_test, args.images)
        print(json.dumps(result["throughput"]), flush=True)
        if args.cv:
            paths = Paths(data=data, runs=runs, submissions=Path(args.submissions_dir).resolve())
            result["cv"] = cross_validate(args.cv, sets, paths, args.run or f"bench-{args.cv}",
                                          args.holdout)
            print(json.dumps({k: v for k, v in result["cv"].items() if k != "config"}), flush=True)
        if args.oof_tta:
            paths = Paths(data=data, runs=runs, submissions=Path(args.submissions_dir).resolve())
            result["oof_tta"] = oof_tta(paths, args.oof_tta, y, x)
            print(json.dumps(result["oof_tta"]), flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = runs / "bench" / f"{stamp}.json"
    write_json(out, result)
    print(f"benchmark written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
