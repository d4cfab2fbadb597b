"""A run's budget in `train`: the time its earlier invocations spent, its speed on this machine
(its finished models', else a calibration's), and the recipe fitted to both
(pipeline.machine.budget); then, while it trains, whether the next member still fits.

A member whose pace drops while it trains is cut at an epoch's end (`cut_when_late`): its
checkpoint stays, so a resume with a larger budget continues it.

A new run gets the plan's recipe. A started run keeps the one config.json froze (its `epochs`,
`fold_epochs` and `refit`); a larger budget than it started with adds members of that recipe, the same budget
changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.data.folds import HOLDOUT
from pipeline.machine import budget
from pipeline.console import Log, duration
from pipeline.machine.budget import BudgetPlan, Cutoff, Deadline, Recipe, Speed, Workload
from pipeline.machine.plan import (
    Machine,
    choose,
    precision_candidates,
    precision_for,
    setup_tensorflow,
)
from pipeline.prediction.inference import TTA_SHIFTS
from pipeline.runfiles import RunFiles, read_optional
from pipeline.training.calibrate import calibrate

# The recipe keys the planner chooses; set explicitly (--set, --config, a study), they are kept.
RECIPE_KEYS = ("epochs", "fold_epochs", "refit")


def spent_before(rf: RunFiles) -> float:
    """Seconds the run's earlier invocations spent (env.json's record of each start)."""
    env = read_optional(rf.env) or {}
    return sum(float(s.get("seconds", 0.0)) for s in env.get("starts", []))


def workload(cfg: Config, fold_of: np.ndarray, test_images: int) -> Workload:
    """The images each model of `cfg` trains on per epoch, and those `predict` infers (the
    `test_images` and the held-out rows, which it scores too)."""
    labelled = int(np.sum(fold_of != HOLDOUT)) * cfg.subsample
    held_out = int(np.sum(fold_of == HOLDOUT))
    return Workload(cfg.folds, round(labelled * (cfg.folds - 1) / cfg.folds), round(labelled),
                    test_images + held_out, len(TTA_SHIFTS) if cfg.tta else 1)


@dataclass(frozen=True)
class Budgeted:
    """A run's config with its recipe fitted to the budget, and the plan that fitted it."""

    cfg: Config
    plan: BudgetPlan
    work: Workload


def fit(cfg: Config, rf: RunFiles, machine: Machine, x: np.ndarray, y: np.ndarray,
        fold_of: np.ndarray, explicit: frozenset[str], test_images: int) -> Budgeted:
    """The recipe of run `rf` within `cfg.budget`: planned for a new run (after a calibration),
    kept or grown for a started one; a UserError naming the minimum when it cannot fit."""
    saved = read_optional(rf.config)
    kept = {k: getattr(cfg, k) for k in RECIPE_KEYS if k in explicit}
    if saved is not None:  # the frozen recipe, unless set explicitly again
        cfg = replace(cfg, **{k: int(saved.get(k, getattr(cfg, k))) for k in RECIPE_KEYS
                              if k not in explicit})
    spent = spent_before(rf)
    work = workload(cfg, fold_of, test_images)
    provisional = choose(cfg, machine, cfg.folds + cfg.refit)
    finished = [read_optional(m.files.metrics) for m in rf.models(cfg)] if saved else []
    speeds: dict[str, float] = {}
    if any(finished):
        ips = budget.measured_speed(finished, cfg.epochs, fallback=0.0)
    else:
        setup_tensorflow(cfg, provisional, provisional.threads)
        speeds = calibrate(cfg, x, y, precision_candidates(cfg.precision, machine))
        ips = speeds[precision_for(cfg.precision, machine, speeds)]
    speed = Speed(ips, provisional.processes)
    if saved is None:
        planned = budget.plan(cfg.budget, spent, speed, work, Recipe(cfg.epochs, cfg.refit), kept)
    else:
        recipe = Recipe(cfg.epochs, cfg.refit, cfg.fold_epochs)
        if "refit" not in explicit:
            recipe = budget.grow(recipe, float(saved.get("budget") or np.inf), cfg.budget, speed,
                                 work)
        done = sum(1 for m in finished if m)
        planned = BudgetPlan(cfg.budget, spent, recipe, speed,
                             budget.expected_seconds(recipe, work, speed, done=done),
                             tuple(f"{k}={v}" for k, v in sorted(kept.items())))
    planned = replace(planned, speeds=speeds)
    r = planned.recipe
    return Budgeted(replace(cfg, epochs=r.epochs, refit=r.members,
                            fold_epochs=r.fold_epochs if r.fold_epochs != r.epochs else 0),
                    planned, work)


def member_fits(b: Budgeted, deadline: Deadline, metas: list[dict[str, Any] | None],
                members: int) -> bool:
    """Whether member number `members` (1-based), then a submission of that many members, still
    ends within the budget, at the pace the run's last finished models kept against the plan."""
    slower = budget.slowdown(metas, b.plan.speed)
    # The members after it start only if they fit too, so the tail is that of `members` models;
    # and as in the cut, a fast pace is not taken to speed up predict.
    tail = budget.tail_seconds(replace(b.plan.recipe, members=members), b.work, b.plan.speed)
    seconds = slower * b.plan.speed.model_seconds(b.work.member_images, b.cfg.epochs)
    return deadline.may_start(seconds + max(1.0, slower) * tail)


class MemberCut(Exception):
    """A member stopped by the budget at an epoch's end (its checkpoint saved)."""


def cut_when_late(cutoff: Cutoff, label: str, epochs: int, log: Log) -> Any:
    """A Keras callback that cuts a member (raises MemberCut) at the end of an epoch when
    `cutoff` says it and the submission after it would overrun the budget at the pace of its
    last two epochs (its first in this process not counted). It goes after the checkpointing
    callback, so the epoch it ends on is saved."""
    import keras

    class CutWhenLate(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.last, self.seen, self.paces = time.time(), 0, []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # An epoch's pace: from the previous one's end, its checkpoint included.
            now, done = time.time(), epoch + 1
            pace, self.last, self.seen = now - self.last, now, self.seen + 1
            # The first epoch (here: a resumed member's too) traces the model: its pace says
            # little about the next ones.
            if self.seen > 1:
                self.paces.append(pace)
            # The faster of the last two: a neighbour finishing (its saves, the run's bookkeeping)
            # nearly doubles one epoch (a 15-minute run lost a member to one); a program that
            # takes the core slows them all.
            pace = min(self.paces[-2:], default=0.0)
            if len(self.paces) < 2 or done >= epochs or cutoff.keeps(now, epochs - done, pace):
                return
            over = cutoff.projected_end(now, epochs - done, pace) - cutoff.end
            log(f"budget: {label} cut after epoch {done}/{epochs}: at {pace:.1f} s "
                f"per epoch it and the submission after it would end {duration(over)} past the "
                "budget; the finished models make the submission (its checkpoint is kept)")
            raise MemberCut(label)

    return CutWhenLate()
