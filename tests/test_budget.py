"""`--budget`: one duration syntax, the planner with made-up speeds and clocks, and on the
embedded sample a budget refused, a budgeted run resumed with the same and a larger budget, and
the anytime ensemble of a run stopped by SIGTERM during a member."""

from __future__ import annotations

import json
import math
import re
import signal
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from pipeline import cli, config
from pipeline.errors import UserError
from pipeline.machine import budget
from pipeline.machine.budget import PLAN_SHARE, Deadline, Recipe, Speed, Workload
from pipeline.training import runbudget
from tests.conftest import call_cli, cli_in_process, interrupt, last_error_line, sha256, snapshot

# --- one duration syntax --------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400),
                                           ("1h30m", 5400), (" 2M ", 120), ("1h0m5s", 3605)])
def test_one_duration_syntax(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "m", "30 minutes", "1m30h", "-5", "1d"])
def test_a_bad_duration_names_the_syntax(bad: str) -> None:
    with pytest.raises(UserError, match=r"is not a duration: use e\.g\. 90s, 30m, 1\.5h or 1h30m"):
        config.parse_duration(bad)


DURATION_FLAGS = [("tune", "--timeout"), ("tune", "--heartbeat"), ("submit", "--timeout"),
                  ("train", "--budget"), ("kaggle-train", "--timeout"), ("kaggle-pull", "--timeout")]
REQUIRED = {"kaggle-pull": ["--run", "r"]}  # what else a command needs to parse


def test_every_duration_flag_takes_the_one_syntax(capsys: pytest.CaptureFixture) -> None:
    parser = cli.build_parser()
    for command, flag in DURATION_FLAGS:
        args = parser.parse_args([command, *REQUIRED.get(command, []), flag, "1m30s"])
        assert getattr(args, flag.lstrip("-")) == 90, (command, flag)
        with pytest.raises(SystemExit):
            parser.parse_args([command, *REQUIRED.get(command, []), flag, "90 seconds"])
        assert "is not a duration" in capsys.readouterr().err
    # No flag parses a duration its own way: every timeout, heartbeat or budget goes through it.
    sub = next(a for a in parser._actions if a.dest == "command")
    timed = {(name, a.option_strings[0]): a.type for name, p in sub.choices.items()
             for a in p._actions if re.search("timeout|heartbeat|budget", a.dest)}
    assert set(timed) == set(DURATION_FLAGS)
    assert all(t in (cli._duration, cli._budget) for t in timed.values())
    assert parser.parse_args(["train", "--budget", "none"]).budget == 0


def test_the_budget_key_takes_durations() -> None:
    assert config.resolve("tiny", sets={"budget": "30m"}).budget == 1800
    assert config.resolve("tiny", sets={"budget": "none"}).budget == 0
    assert config.resolve("tiny").budget == 0
    # `make train`'s default: 30 minutes on the `cpu` profile; the other profiles, the fixed recipe.
    assert config.resolve("cpu").budget == 1800
    assert {p: config.resolve(p).budget for p in config.PROFILES if p != "cpu"} \
        == {p: 0 for p in config.PROFILES if p != "cpu"}
    with pytest.raises(UserError, match=r"^--set: budget='half an hour' is not a duration"):
        config.resolve("tiny", sets={"budget": "half an hour"})


# --- the planner, with made-up speeds -------------------------------------------------------

# Kaggle's data: 42,000 labelled images, 5 folds, 28,000 test images with 5 TTA views.
WORK = Workload(folds=5, fold_images=33_600, member_images=42_000, test_images=28_000, views=5)
CPU = Recipe(epochs=25, members=5)  # the `cpu` profile
TWO_CORES = Speed(images_per_second=1_000, processes=2)


def _fits(p: budget.BudgetPlan, left: float) -> None:
    """The plan fills at most PLAN_SHARE of the time left, and one more member would not fit."""
    assert budget.expected_seconds(p.recipe, WORK, p.speed) == pytest.approx(p.seconds)
    assert p.seconds <= PLAN_SHARE * left
    more = replace(p.recipe, members=p.recipe.members + 1)
    assert budget.expected_seconds(more, WORK, p.speed) > PLAN_SHARE * left


def test_the_plan_fills_the_budget_with_members_of_the_profiles_epochs() -> None:
    p = budget.plan(2 * 3600, 0, TWO_CORES, WORK, CPU, {})
    assert p.recipe == Recipe(25, p.recipe.members, 25) and 5 < p.recipe.members < budget.MAX_MEMBERS
    _fits(p, 2 * 3600)
    assert p.line(WORK, now=datetime(2025, 1, 1, 12, 0)).startswith(
        f"budget 2h00m: 5 folds × 25 epochs + {p.recipe.members} member(s) × 25 epochs · 1,000 "
        "images/s measured per process, 2 at once · expected to finish in ")


def test_the_ladder_buys_the_members_epochs_first_then_members_then_the_folds_epochs() -> None:
    plans = [budget.plan(minutes * 60, 0, TWO_CORES, WORK, CPU, {}).recipe
             for minutes in (8, 15, 30, 45, 60, 75, 90, 120)]
    for r, bigger in zip(plans, plans[1:]):  # more time never buys less of anything
        assert (bigger.epochs, bigger.fold_epochs) >= (r.epochs, r.fold_epochs)
        assert bigger.members >= r.members or bigger.epochs > r.epochs
    for r in plans:
        assert r.fold_epochs <= r.epochs
        if budget.MIN_EPOCHS < r.epochs < 25:  # rung 1: epochs for MIN_MEMBERS members, short folds
            assert r.members == budget.MIN_MEMBERS
            assert r.fold_epochs == max(budget.MIN_EPOCHS, math.ceil(budget.FOLD_RATIO * r.epochs))
        if r.members < 5 or r.fold_epochs < 25:  # rungs 2 and 3 before more members
            assert r.members <= 5
    # The budgets span every rung: short members, 25-epoch members with short folds, then more.
    assert plans[0].epochs < 25 and plans[-1] == Recipe(25, plans[-1].members, 25)
    assert any(r.epochs == 25 and r.fold_epochs < 25 for r in plans)
    assert plans[-1].members > 5


def test_a_smaller_budget_or_a_slower_machine_buys_shorter_models() -> None:
    p = budget.plan(15 * 60, 0, TWO_CORES, WORK, CPU, {})
    assert budget.MIN_EPOCHS <= p.recipe.epochs < 25 and p.recipe.members == budget.MIN_MEMBERS
    _fits(p, 15 * 60)
    slow = budget.plan(15 * 60, 0, Speed(500, 2), WORK, CPU, {})
    assert slow.recipe.epochs < p.recipe.epochs
    # Time spent by earlier invocations counts.
    later = budget.plan(15 * 60, 5 * 60, TWO_CORES, WORK, CPU, {})
    assert later.recipe.epochs < p.recipe.epochs
    _fits(later, 10 * 60)
    # Too little for one member: the folds are the submission and get the epochs (with nothing
    # to infer afterwards, a member cannot pay for itself by a shorter predict).
    untested = replace(WORK, test_images=0)
    folds = budget.plan(280, 0, TWO_CORES, untested, CPU, {})
    assert folds.recipe == Recipe(2, 0, 2)
    assert folds.line(untested).startswith("budget 4m40s: 5 folds × 2 epochs · ")


def test_explicit_values_win_and_the_plan_says_so() -> None:
    p = budget.plan(30 * 60, 0, TWO_CORES, WORK, CPU, {"epochs": 3})
    assert p.recipe.epochs == 3 and p.fitted_around == ("epochs=3",)
    _fits(p, 30 * 60)
    assert p.line(WORK).endswith("· fitted around epochs=3")
    q = budget.plan(30 * 60, 0, TWO_CORES, WORK, CPU, {"refit": 2})
    assert q.recipe.members == 2 and q.seconds <= PLAN_SHARE * 30 * 60
    # With its members fixed, the rest of the time goes to epochs.
    assert budget.expected_seconds(replace(q.recipe, epochs=q.recipe.epochs + 1), WORK, TWO_CORES) \
        > PLAN_SHARE * 30 * 60 or q.recipe.epochs == 25
    f = budget.plan(60 * 60, 0, TWO_CORES, WORK, CPU, {"fold_epochs": 3})
    assert f.recipe.fold_epochs == 3 and f.recipe.epochs == 25 and f.fitted_around == ("fold_epochs=3",)
    _fits(f, 60 * 60)


def test_a_budget_too_small_is_refused_naming_the_minimum() -> None:
    with pytest.raises(UserError) as exc:
        budget.plan(5 * 60, 0, TWO_CORES, WORK, CPU, {})
    least = re.search(r"give at least --budget (\d+)s, or --budget none for the fixed recipe$",
                      str(exc.value))
    assert re.match(r"budget 5m00s is too small: 5 fold models × 2 epochs( and \d member\(s\) × 2 "
                    r"epochs)? need about ", str(exc.value)) and least
    assert "1,000 images/s measured on this machine (2 at once)" in str(exc.value)
    p = budget.plan(int(least.group(1)), 0, TWO_CORES, WORK, CPU, {})  # the minimum does fit
    assert (p.recipe.epochs, p.recipe.fold_epochs) == (budget.MIN_EPOCHS, budget.MIN_EPOCHS)
    with pytest.raises(UserError, match=r"5 fold models × 5 epochs and 3 member\(s\) × 25 epochs "
                                        r"need .*fitted around epochs=25, refit=3; give at least "
                                        r"--budget \d+m, or --budget none for the fixed recipe$"):
        budget.plan(30 * 60, 0, TWO_CORES, WORK, CPU, {"epochs": 25, "refit": 3})


def test_a_larger_budget_on_resume_adds_members_of_the_same_recipe() -> None:
    r = Recipe(8, 4)
    assert budget.grow(r, 1800, 1800, TWO_CORES, WORK) == r  # the same budget changes nothing
    assert budget.grow(r, 1800, 1200, TWO_CORES, WORK) == r
    more = budget.grow(r, 1800, 3600, TWO_CORES, WORK)
    assert more.epochs == 8 and more.members > 4
    extra = budget.expected_seconds(more, WORK, TWO_CORES) - budget.expected_seconds(r, WORK, TWO_CORES)
    assert extra <= PLAN_SHARE * 1800


def test_precision_from_measurement_where_the_flags_cannot_tell() -> None:
    from pipeline.machine.plan import Machine, choose, precision_candidates

    bf16 = Machine(2, cpu_flags=frozenset({"avx512_bf16"}))
    cfg = config.resolve("cpu")
    assert precision_candidates("auto", bf16) == ["mixed_bfloat16", "float32"]
    assert precision_candidates("float32", bf16) == ["float32"]
    assert precision_candidates("auto", Machine(2)) == ["float32"]
    assert choose(cfg, bf16, 5).precision == "mixed_bfloat16"  # no measurement: the flags
    assert choose(cfg, bf16, 5, {"mixed_bfloat16": 1234, "float32": 937}).precision == "mixed_bfloat16"
    assert choose(cfg, bf16, 5, {"mixed_bfloat16": 900, "float32": 937}).precision == "float32"
    explicit = config.resolve("cpu", sets={"precision": "mixed_bfloat16"})
    assert choose(explicit, bf16, 5, {"mixed_bfloat16": 900, "float32": 937}).precision \
        == "mixed_bfloat16"


# --- re-planning while training, with a made-up clock ---------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _meta(images: int, epochs: int, speed: float) -> dict:
    """A finished model's record as training writes it, at `speed` images/s."""
    return {"n_train": images, "epochs_run": epochs, "n_pseudo": 0,
            "seconds": images * epochs / speed + budget.MODEL_SECONDS,
            "finished_at": datetime.now(timezone.utc).isoformat()}


@pytest.mark.parametrize("slowdown, started", [(1.0, "all"), (1.5, "some"), (3.0, "none")])
def test_members_not_started_are_dropped_when_the_speed_drops(slowdown: float, started: str) -> None:
    one = Speed(1_000, 1)
    p = budget.plan(3600, 0, one, WORK, CPU, {})
    b = runbudget.Budgeted(config.resolve("cpu", sets={"epochs": str(p.recipe.epochs),
                                                       "fold_epochs": str(p.recipe.fold_epochs),
                                                       "refit": str(p.recipe.members)}), p, WORK)
    clock = Clock()
    deadline = Deadline(3600, 0, clock=clock)
    speed = one.images_per_second / slowdown  # another program took part of the core
    metas = []
    for _ in range(WORK.folds):  # every fold trains, whatever the speed
        metas.append(_meta(WORK.fold_images, p.recipe.fold_epochs, speed))
        clock.now += metas[-1]["seconds"]
    members = 0
    while members < p.recipe.members and runbudget.member_fits(b, deadline, metas, members + 1):
        metas.append(_meta(WORK.member_images, p.recipe.epochs, speed))
        clock.now += metas[-1]["seconds"]
        members += 1
    assert {"all": members == p.recipe.members, "none": members == 0,
            "some": 0 < members < p.recipe.members}[started], members
    if members or slowdown == 1:  # what started ends, with the submission, within the budget
        tail = budget.tail_seconds(Recipe(p.recipe.epochs, members), WORK, Speed(speed, 1))
        assert clock.now + tail <= 3600


def test_a_member_starts_when_it_and_a_submission_of_its_size_fit() -> None:
    """The 10-minute frontier run (AMD EPYC, family 25) dropped member 2 of 3 with 5m22s left:
    the pace of the last fold (slowed by the member beside it) was taken for a member's, with the
    tail of all 3 planned members; member 1 took 1m47s and predicting 1 member 40 s."""
    work = Workload(folds=5, fold_images=28_560, member_images=35_700, test_images=34_300, views=5)
    speed = Speed(1_336.4, 2)
    plan = budget.BudgetPlan(600, 0, Recipe(epochs=5, members=3, fold_epochs=3), speed, 568.0)
    b = runbudget.Budgeted(config.resolve("cpu", sets={"epochs": "5", "fold_epochs": "3",
                                                       "refit": "3"}), plan, work)
    clock = Clock()
    deadline = Deadline(600, 0, clock=clock)
    at = datetime(2026, 12, 4, tzinfo=timezone.utc)

    def done(images: int, epochs: int, seconds: float, after: float) -> dict:
        return {"n_train": images, "epochs_run": epochs, "seconds": seconds,
                "finished_at": (at + timedelta(seconds=after)).isoformat()}

    metas: list[dict | None] = [done(28_560, 3, s, t) for s, t in
                                [(70, 70), (72, 72), (72, 142), (79, 151), (96, 247)]]
    metas += [None, None, None]
    clock.now = 600 - 322  # 5m22s left, member 1 in flight
    assert budget.slowdown(metas, speed) == pytest.approx((79 / 69.1 + 96 / 69.1) / 2, rel=0.01)
    assert runbudget.member_fits(b, deadline, metas, 2)
    # Member 1 finished in 107 s, 5m03s left: member 3 still fits with a 3-member submission ...
    metas[5] = done(35_700, 5, 107, 297)
    clock.now = 600 - 303
    assert runbudget.member_fits(b, deadline, metas, 3)
    # ... and not when the models had taken three times the plan's seconds.
    slow = [m and {**m, "seconds": 3 * m["seconds"]} for m in metas]
    assert budget.slowdown(slow, speed) == pytest.approx(3 * budget.slowdown(metas, speed))
    assert not runbudget.member_fits(b, deadline, slow, 3)


def test_a_member_in_flight_is_cut_when_its_pace_would_overrun_the_budget() -> None:
    """A 15-minute run with a busy loop from 7m30s: the member started just before it slowed to
    1.5x, predict after it to 2x, and the run ended at 1,101.6 s; cut, it would not have."""
    p = budget.plan(900, 0, Speed(1_650, 2), WORK, CPU, {})
    cut = budget.cutoff_at(p, WORK, end=900.0)
    epoch = WORK.member_images / 1_650
    assert cut.epoch_seconds == pytest.approx(epoch)
    assert cut.tail == pytest.approx(budget.tail_seconds(p.recipe, WORK, p.speed))
    assert cut.slack == pytest.approx(0.03 * 900)
    # At the planned pace, a member that ends with the tail inside the budget goes on ...
    ends = 900 - cut.tail - budget.MODEL_SECONDS
    assert cut.keeps(ends - 3 * epoch, 3, epoch)
    # ... and one a little late, within the slack: one slow epoch must not waste a model.
    assert cut.keeps(ends - 3 * epoch + 20, 3, epoch * 1.02)
    # 1.5x slower: its epochs left and the slowed tail overrun by far more than the slack.
    now = 470.0
    assert not cut.keeps(now, 11, 1.5 * epoch)
    assert cut.projected_end(now, 11, 1.5 * epoch) == pytest.approx(
        now + 11 * 1.5 * epoch + budget.MODEL_SECONDS + 1.5 * cut.tail)
    # Faster than planned: the tail is not assumed faster.
    assert cut.projected_end(now, 1, epoch / 2) == pytest.approx(
        now + epoch / 2 + budget.MODEL_SECONDS + cut.tail)


# --- on the embedded sample -----------------------------------------------------------------

TINY = ["train", "--profile", "tiny", "--no-report"]


def test_too_small_a_budget_is_refused_before_training(tmp_path: Path, sample_dir: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    flags = ["--data", str(sample_dir), "--runs-dir", str(runs), "--run", "b"]
    proc = call_cli(*TINY, *flags, "--budget", "3s", check=False)
    assert proc.returncode == 2
    assert re.fullmatch(r"error: budget 0m03s is too small: 2 fold models × 2 epochs"
                        r"( and \d member\(s\) × 2 epochs)? need about "
                        r"\d+m\d\ds at the [\d,]+ images/s measured on this machine \(1 at once\); "
                        r"give at least --budget \d+s, or --budget none for the fixed recipe",
                        last_error_line(proc))
    # At most a cache: the parsed CSV and the split (runs/cache/, runs/folds/).
    assert {p.split("/")[0] for p in snapshot(runs)} <= {"folds"}
    # --plan-only: the line, and again nothing written.
    proc = call_cli(*TINY, *flags, "--budget", "1h", "--plan-only")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("budget "))
    assert re.match(r"budget 1h00m: 2 folds × 4 epochs \+ 20 member\(s\) × 4 epochs · [\d,]+ "
                    r"images/s measured per process, 1 at once · expected to finish in ", line)
    assert not (runs / "b").exists()


def test_resuming_with_the_same_budget_changes_nothing_and_a_larger_one_adds_members(
        tmp_path: Path, sample_dir: Path) -> None:
    runs = tmp_path / "runs"
    args = [*TINY, "--data", str(sample_dir), "--runs-dir", str(runs), "--run", "b",
            "--set", "epochs=1"]
    run = runs / "b"
    first = call_cli(*args, "--budget", "35s")
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["budget"], cfg["epochs"]) == (35, 1) and cfg["refit"] >= 1, first.stdout
    assert "fitted around epochs=1" in first.stdout
    models = {p: sha256(p) for p in run.glob("*/model.keras")}
    env = json.loads((run / "env.json").read_text())
    assert len(env["starts"]) == 1 and env["starts"][0]["seconds"] > 0
    assert env["starts"][0]["budget"]["members"] == cfg["refit"]

    again = call_cli(*args, "--budget", "35s")
    assert json.loads((run / "config.json").read_text()) == cfg
    assert "===" not in again.stdout and {p: sha256(p) for p in run.glob("*/model.keras")} == models
    assert len(json.loads((run / "env.json").read_text())["starts"]) == 2
    # Without --budget, the run keeps its own: the same command resumes, changing nothing.
    plain = call_cli(*args)
    assert json.loads((run / "config.json").read_text()) == cfg
    assert "===" not in plain.stdout and {p: sha256(p) for p in run.glob("*/model.keras")} == models

    more = call_cli(*args, "--budget", "50s")
    grown = json.loads((run / "config.json").read_text())
    assert grown["budget"] == 50 and grown["epochs"] == 1 and grown["refit"] > cfg["refit"]
    assert f"then {grown['refit']} member(s)" in more.stdout
    trained = len(re.findall(r"^=== member \d+/", more.stdout, re.M))
    assert trained >= 1 or "budget: " in more.stdout, more.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    finished = sorted(p.parent.name for p in run.glob("member_*/metrics.json"))
    assert len(metrics["members"]) == len(finished)
    assert (run / "stopped.json").is_file() == (len(finished) < grown["refit"])


def test_sigterm_during_a_member_leaves_a_submission_of_the_finished_models(
        tmp_path: Path, sample_dir: Path) -> None:
    runs, subs = tmp_path / "runs", tmp_path / "subs"
    args = ["train", "--profile", "tiny", "--set", "epochs=2", "--set", "refit=3", "--run", "t",
            "--data", str(sample_dir), "--runs-dir", str(runs), "--no-report"]
    stopped = interrupt(args, 2, signal.SIGTERM, 3, kind="member")
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert last_error_line(stopped).endswith(
        "; the submission is ready from 1 of its 3 planned refit members")
    run = runs / "t"
    state = json.loads((run / "stopped.json").read_text())
    assert (state["members"], state["planned"], state["why"]) == (1, 3, "interrupted")
    assert len(json.loads((run / "metrics.json").read_text())["members"]) == 1
    assert (run / "member_1" / "last.keras").is_file()  # resumable where it stopped

    out = call_cli("predict", "--run", "t", "--data", str(sample_dir), "--runs-dir", str(runs),
                   "--submissions-dir", str(subs), "--no-report").stdout
    assert out.startswith("1 of 3 planned refit members (stopped: interrupted) on 540 test images")
    sub = pd.read_csv(subs / "t.csv")
    assert len(sub) == 540 and sub["Label"].between(0, 9).all()
    assert json.loads((run / "prediction.json").read_text())["models"] == 1
    compare = call_cli("compare", "t", "--runs-dir", str(runs)).stdout
    assert "1 of 3 planned refit members" in compare


def test_the_workload_counts_what_predict_infers_the_test_and_the_held_out_rows() -> None:
    """predict scores the held-out rows too: a 10-minute frontier run that left them out of its
    plan (and guessed inference 4x faster than training) took 12m18s."""
    import numpy as np

    from pipeline.data.folds import HOLDOUT

    cfg = config.resolve("cpu")
    fold_of = np.array([HOLDOUT] * 150 + [0, 1, 2, 3, 4] * 170)
    work = runbudget.workload(cfg, fold_of, test_images=1000)
    assert (work.fold_images, work.member_images) == (680, 850)
    assert work.test_images == 1000 + 150 and work.views == 5


def test_a_member_slowed_in_flight_is_cut_and_the_folds_make_the_submission(
        tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A run whose members train 10,000x slower than planned (as if another program took the
    core): its first member is cut after its third epoch instead of overrunning the budget,
    its checkpoint kept, and the fold models make the submission."""
    from pipeline.training import train

    def slowed(plan: budget.BudgetPlan, work: Workload, end: float) -> budget.Cutoff:
        cut = budget.cutoff_at(plan, work, end)
        return replace(cut, epoch_seconds=cut.epoch_seconds / 10_000)

    monkeypatch.setattr(train, "cutoff_at", slowed)
    runs, subs = tmp_path / "runs", tmp_path / "subs"
    code, err = cli_in_process(capsys, *TINY, "--set", "epochs=4", "--set", "refit=2",
                               "--budget", "10m", "--run", "c", "--data", str(sample_dir),
                               "--runs-dir", str(runs))
    assert code == 0, err
    run = runs / "c"
    state = json.loads((run / "stopped.json").read_text())
    assert (state["members"], state["planned"], state["why"]) == (0, 2, "budget")
    assert (run / "member_0" / "last.keras").is_file()  # resumable where it was cut
    assert not (run / "member_0" / "metrics.json").exists() and not (run / "member_1").exists()
    assert json.loads((run / "member_0" / "state.json").read_text())["epoch"] == 3
    code, err = cli_in_process(capsys, "predict", "--run", "c", "--data", str(sample_dir),
                               "--runs-dir", str(runs), "--submissions-dir", str(subs),
                               "--no-report")
    assert code == 0, err
    assert len(pd.read_csv(subs / "c.csv")) == 540
    assert json.loads((run / "prediction.json").read_text())["models"] == 2  # the folds


def test_one_slow_epoch_does_not_cut_a_member_two_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 15-minute frontier run (AMD EPYC, family 25): member 3 of 3 (11 epochs, 25.5 s each as
    planned) was cut after one 39.7 s epoch while member 2 finished beside it; the next epochs
    ran at ~21 s. Judged on the faster of its last two epochs it goes on; two slow ones cut it."""
    from types import SimpleNamespace

    clock = Clock()
    monkeypatch.setattr(runbudget, "time", SimpleNamespace(time=clock))
    lines: list[str] = []
    cut = budget.Cutoff(end=900.0, epoch_seconds=35_700 / 1_398, tail=123.0, slack=27.0)
    callback = runbudget.cut_when_late(cut, "member 3/3", 11, lines.append)
    clock.now = 517.0
    callback.on_train_begin()
    for epoch, pace in enumerate([21.0, 22.0, 39.7, 21.0]):
        clock.now += pace
        callback.on_epoch_end(epoch)
    assert not lines
    assert not cut.keeps(clock.now - 21.0, 8, 39.7)  # what the last epoch alone would have said
    clock.now += 40.0
    callback.on_epoch_end(4)
    with pytest.raises(runbudget.MemberCut):
        clock.now += 40.0
        callback.on_epoch_end(5)
    assert lines[0].startswith("budget: member 3/3 cut after epoch 6/11: at 40.0 s per epoch")


def test_the_cut_is_announced_in_one_line() -> None:
    """What the user reads when a member is cut: at a planned pace, a tail of a minute that ends
    55 s past the budget."""
    import time

    lines: list[str] = []
    callback = runbudget.cut_when_late(budget.Cutoff(end=time.time() + 10, epoch_seconds=1.0, tail=60.0,
                                                     slack=5.0), "member 1/2", 4, lines.append)
    callback.on_train_begin()
    callback.on_epoch_end(0)  # the first epoch is never judged, the second not alone
    callback.on_epoch_end(1)
    assert not lines
    with pytest.raises(runbudget.MemberCut):
        callback.on_epoch_end(2)
    assert re.fullmatch(r"budget: member 1/2 cut after epoch 3/4: at \d+\.\d s per epoch it and "
                        r"the submission after it would end 0m5\ds past the budget; the "
                        r"finished models make the submission \(its checkpoint is kept\)",
                        lines[0]), lines
