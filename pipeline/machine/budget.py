"""The budget planner (`budget`, `--budget 30m`): from the training speed measured on this machine,
the recipe that fits the time a run may take (the folds' epochs, the refit members' count), and
while it trains, whether the next model still fits.

Pure functions of numbers, tested with made-up speeds and clocks; `train` measures the speed
(pipeline.training.calibrate) and applies the plan. The budget covers the run from its first
`train` to the submission file with the report; earlier invocations of the run count.

    The rule, a ladder fitted to the frontier (scripts/results/budget-frontier.json): epochs buy
    more accuracy than members (8 members × 3 epochs: 45 holdout errors; one model × 25 epochs:
    23–29), and the fold models only estimate the accuracy (the refit members make the
    submission). So each rung takes what fits of PLAN_SHARE of the time left, in this order:
      1. the members' epochs, up to the profile's, for MIN_MEMBERS members, the folds at
         FOLD_RATIO of those epochs (at least MIN_EPOCHS);
      2. members, up to the profile's count;
      3. the folds' epochs, up to the members' (so the CV validates what is submitted);
      4. members, up to MAX_MEMBERS.
    When not even one member fits, the folds are the submission and get the epochs. The rest of
    the time absorbs drift. Explicit `epochs`, `fold_epochs` and `refit` are kept as given, and a
    budget they cannot fit is refused, naming the minimum. While training, a member starts only
    if it and the tail (predict, report) still end within the budget: when the speed drops, the
    members not yet started are dropped rather than the budget overrun. A member already training
    is cut (its checkpoint kept for a resume) when, at its last epoch's pace, it and the tail,
    slowed as much, would overrun by more than OVERRUN_SHARE: a busy loop from the middle of a
    15-minute run slowed the member started just before it and predict after it, and the run took
    1,101.6 s.

The constants are first estimates; scripts/budget_frontier.py measures what each budget buys.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pipeline.console import duration
from pipeline.errors import UserError

RULE = "ladder"  # the rule's name, recorded with each plan (the first rule, before it: unnamed)
MIN_EPOCHS = 2  # the shortest model the planner chooses (one epoch is all warm-up)
MIN_MEMBERS = 3  # the members the first rung buys epochs for
FOLD_RATIO = 0.2  # the folds' epochs as a share of the members' on the first rung
PLAN_SHARE = 0.95  # of the time left, the plan fills this; the rest absorbs drift
MAX_MEMBERS = 20  # issue 22 measured ensembles of 5–20 models; beyond that is unmeasured
MODEL_SECONDS = 5.0  # per model besides its epochs: building and tracing it, OOF predictions, saving
SPAWN_SECONDS = 6.0  # per model trained in a process of its own: Python and TensorFlow start-up
TAIL_SECONDS = 15.0  # after the last model: the run's metrics, predict's start-up, the report
# Inference images/s over training images/s (both cores), the report's time folded in: fitted to
# the first frontier run (scripts/results/budget-frontier.json, 10m on an AMD EPYC family 25:
# predict took 247 s for 8 members x 5 views x 34,300 images at a measured 2 x 1,729 training
# images/s, i.e. 1.7; the guess of 4 before made that 10-minute run last 12m18s).
INFERENCE_SPEEDUP = 1.7
# A member in flight is cut only past this share of the budget: one slow epoch should not throw
# away a nearly finished model (a 30-minute run ended 1.3 s before its budget: with no slack, a
# projection 1% high would have cut its last member).
OVERRUN_SHARE = 0.03


@dataclass(frozen=True)
class Workload:
    """What each model trains on per epoch, and what `predict` infers afterwards."""

    folds: int
    fold_images: int  # one fold model's training images per epoch
    member_images: int  # one member's (every labelled row)
    test_images: int  # what predict infers: test.csv's rows and the held-out ones
    views: int = 1  # TTA views per image


@dataclass(frozen=True)
class Speed:
    """Measured training speed: images/s of one process, with `processes` training at once."""

    images_per_second: float
    processes: int = 1

    def model_seconds(self, images: int, epochs: int) -> float:
        """Seconds one model of `images` per epoch takes for `epochs` epochs, with its fixed costs."""
        spawn = SPAWN_SECONDS if self.processes > 1 else 0.0
        return images * epochs / self.images_per_second + MODEL_SECONDS + spawn


@dataclass(frozen=True)
class Recipe:
    """What a run trains: `members` refit members of `epochs` epochs, and k fold models of
    `fold_epochs` (0: as many as the members)."""

    epochs: int
    members: int
    fold_epochs: int = 0

    def __post_init__(self) -> None:
        if not self.fold_epochs:
            object.__setattr__(self, "fold_epochs", self.epochs)


def makespan(seconds: Sequence[float], slots: int) -> float:
    """When the last of `seconds` ends, started in order, each in the first free of `slots`."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def tail_seconds(recipe: Recipe, work: Workload, speed: Speed) -> float:
    """Seconds after training: the ensemble's test predictions, predict's start-up, the report."""
    models = recipe.members or work.folds
    images = work.test_images * work.views * models
    return TAIL_SECONDS + images / (INFERENCE_SPEEDUP * speed.images_per_second * speed.processes)


def expected_seconds(recipe: Recipe, work: Workload, speed: Speed, done: int = 0) -> float:
    """Seconds `recipe` takes from its first model (after the first `done`, which finished) to
    the submission and report."""
    models = ([speed.model_seconds(work.fold_images, recipe.fold_epochs)] * work.folds
              + [speed.model_seconds(work.member_images, recipe.epochs)] * recipe.members)
    return makespan(models[done:], speed.processes) + tail_seconds(recipe, work, speed)


@dataclass(frozen=True)
class BudgetPlan:
    """The recipe chosen for a budget, and what it was chosen from."""

    budget: float
    spent: float  # by earlier invocations of the run
    recipe: Recipe
    speed: Speed
    seconds: float  # expected from now to the submission and report
    fitted_around: tuple[str, ...] = ()  # the explicit values it kept, e.g. ("refit=3",)
    speeds: dict[str, float] = field(default_factory=dict)  # images/s of each precision measured

    def line(self, work: Workload, now: datetime | None = None) -> str:
        """The one line `train` prints before training (and `--plan-only` alone)."""
        r, s = self.recipe, self.speed
        finish = (now or datetime.now()) + timedelta(seconds=self.seconds)
        members = f" + {r.members} member(s) × {r.epochs} epochs" if r.members else ""
        spent = f", {duration(self.spent)} of it already spent" if self.spent else ""
        around = f" · fitted around {', '.join(self.fitted_around)}" if self.fitted_around else ""
        return (f"budget {duration(self.budget)}{spent}: {work.folds} folds × {r.fold_epochs} epochs"
                f"{members} · {s.images_per_second:,.0f} images/s measured per process, "
                f"{s.processes} at once · expected to finish in {duration(self.seconds)}, at "
                f"{finish:%H:%M} (with predict and the report){around}")

    def to_dict(self) -> dict[str, Any]:
        """The plan for env.json."""
        return {"budget": self.budget, "spent": round(self.spent, 2), "rule": RULE,
                **asdict(self.recipe),
                **asdict(self.speed), "expected_seconds": round(self.seconds, 2),
                "fitted_around": list(self.fitted_around),
                "speeds": {k: round(v, 1) for k, v in self.speeds.items()}}


def plan(budget: float, spent: float, speed: Speed, work: Workload, default: Recipe,
         explicit: dict[str, int]) -> BudgetPlan:
    """The recipe of a new run with `budget` seconds of which `spent` are gone: the ladder (see
    above) up to `default` (the profile's epochs and members), `explicit` values (`epochs`,
    `fold_epochs`, `refit`) kept as given."""
    room = PLAN_SHARE * (budget - spent)
    fixed = explicit.get("refit")
    folds_fixed = explicit.get("fold_epochs")
    options = ([explicit["epochs"]] if "epochs" in explicit
               else list(range(default.epochs, min(MIN_EPOCHS, default.epochs) - 1, -1)))

    def recipe(epochs: int, members: int, folds: int | None = None) -> Recipe:
        short = max(min(MIN_EPOCHS, epochs), math.ceil(FOLD_RATIO * epochs))
        return Recipe(epochs, members, folds_fixed or folds or (short if members else epochs))

    def fits(r: Recipe) -> bool:
        return expected_seconds(r, work, speed) <= room

    def most(r: Recipe, key: str, up_to: int) -> Recipe:
        """`r` with `key` raised as far as it fits, up to `up_to`."""
        start = getattr(r, key)
        return next((c for v in range(max(start, up_to), start, -1)
                     if fits(c := replace(r, **{key: v}))), r)

    wanted = [fixed] if fixed is not None else list(range(MIN_MEMBERS, -1, -1))
    chosen = next((r for m in wanted for e in options if fits(r := recipe(e, m))), None)
    around = tuple(f"{k}={v}" for k, v in sorted(explicit.items()))
    if chosen is None:
        least_recipe = min((recipe(options[-1], m) for m in wanted),
                           key=lambda r: expected_seconds(r, work, speed))
        need = spent + expected_seconds(least_recipe, work, speed) / PLAN_SHARE
        members = (f" and {least_recipe.members} member(s) × {least_recipe.epochs} epochs"
                   if least_recipe.members else "")
        kept = f", fitted around {', '.join(around)}" if around else ""
        raise UserError(
            f"budget {duration(budget)} is too small: {work.folds} fold models × "
            f"{least_recipe.fold_epochs} epochs{members} need about {duration(need)} at the "
            f"{speed.images_per_second:,.0f} images/s measured on this machine "
            f"({speed.processes} at once){kept}; give at least --budget {least(need)}, or "
            "--budget none for the fixed recipe")
    if chosen.members and fixed is None:
        chosen = most(chosen, "members", max(default.members, MIN_MEMBERS))
    if chosen.members and folds_fixed is None:
        chosen = most(chosen, "fold_epochs", chosen.epochs)
    if chosen.members and fixed is None:
        chosen = most(chosen, "members", MAX_MEMBERS)
    return BudgetPlan(budget, spent, chosen, speed, expected_seconds(chosen, work, speed), around)


def least(seconds: float) -> str:
    """A budget of at least `seconds`, as --budget takes it: whole seconds below ten minutes,
    else whole minutes."""
    return f"{math.ceil(seconds)}s" if seconds < 600 else f"{math.ceil(seconds / 60)}m"


def grow(recipe: Recipe, old_budget: float, budget: float, speed: Speed, work: Workload) -> Recipe:
    """A started run's recipe on resume: kept, or with a larger budget, more members of it (as
    many as the extra time buys at today's speed)."""
    if budget <= old_budget:
        return recipe
    limit = expected_seconds(recipe, work, speed) + PLAN_SHARE * (budget - old_budget)
    members = max(m for m in range(recipe.members, max(recipe.members, MAX_MEMBERS) + 1)
                  if m == recipe.members
                  or expected_seconds(replace(recipe, members=m), work, speed) <= limit)
    return replace(recipe, members=members)


def measured_speed(metas: Sequence[dict[str, Any] | None], epochs: int,
                   fallback: float) -> float:
    """Training images/s of the last model finished (its recorded images, epochs and seconds),
    or `fallback` before any has."""
    done = [m for m in metas if m and m.get("seconds")]
    if not done:
        return fallback
    last = max(done, key=lambda m: str(m.get("finished_at", "")))
    images = last["n_train"] + last.get("n_pseudo", 0)
    return images * last.get("epochs_run", epochs) / max(1e-6, last["seconds"] - MODEL_SECONDS)


def slowdown(metas: Sequence[dict[str, Any] | None], speed: Speed) -> float:
    """How many times the seconds `speed` plans the run's last finished models took: the mean over
    the last as many as train at once (a fold's and a member's alike), 1 before any has."""
    done = sorted((m for m in metas if m and m.get("seconds")),
                  key=lambda m: str(m.get("finished_at", "")))[-speed.processes:]
    # A model's own seconds leave out its process's start-up: plan them as one process would.
    alone = Speed(speed.images_per_second)
    ratios = [m["seconds"] / alone.model_seconds(m["n_train"] + m.get("n_pseudo", 0),
                                                 m["epochs_run"]) for m in done]
    return sum(ratios) / len(ratios) if ratios else 1.0


@dataclass(frozen=True)
class Cutoff:
    """When a member in flight is cut: its epochs left at its last epoch's pace, then predict
    and the report slowed as much as that epoch was against the plan, past the budget's end (a
    time.time() value) by more than `slack` seconds."""

    end: float
    epoch_seconds: float  # one member epoch at the planned speed
    tail: float  # predict and the report after the last model, at the planned speed
    slack: float

    def projected_end(self, now: float, epochs_left: int, last_epoch: float) -> float:
        """When the member and the tail after it would end, at the pace of its `last_epoch`."""
        slower = max(1.0, last_epoch / self.epoch_seconds)
        return now + epochs_left * last_epoch + MODEL_SECONDS + self.tail * slower

    def keeps(self, now: float, epochs_left: int, last_epoch: float) -> bool:
        """Whether the member goes on."""
        return self.projected_end(now, epochs_left, last_epoch) <= self.end + self.slack


def cutoff_at(plan: BudgetPlan, work: Workload, end: float) -> Cutoff:
    """The cutoff of a run's members under `plan`, its budget ending at `end` (time.time())."""
    s = plan.speed
    return Cutoff(end, work.member_images / s.images_per_second,
                  tail_seconds(plan.recipe, work, s), OVERRUN_SHARE * plan.budget)


@dataclass
class Deadline:
    """The run's budget against a clock: what is spent (earlier invocations included), and
    whether a model of some seconds may still start."""

    budget: float
    spent_before: float = 0.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if math.isnan(self.started):
            self.started = self.clock()

    def spent(self) -> float:
        """Seconds of the budget spent so far."""
        return self.spent_before + self.clock() - self.started

    def left(self) -> float:
        """Seconds of the budget left (negative: overrun)."""
        return self.budget - self.spent()

    def may_start(self, seconds: float) -> bool:
        """Whether something taking `seconds` (a model, then the tail) ends within the budget."""
        return seconds <= self.left()
