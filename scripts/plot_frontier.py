"""The accuracy-vs-minutes figure of `--budget`, from scripts/results/budget-frontier.json: holdout
errors (6,300 held-out rows) against the minutes from `train` to the submission, one line per
host (CPU model and family) for the planner's current rule, the fixed recipe (`--budget none`)
as a star, runs of an earlier rule as hollow circles, runs before a fix to it (`superseded_by`) as
crosses; runs timed beside a busy loop or another
job are left out.

    python scripts/plot_frontier.py   # writes scripts/results/budget-frontier.png
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.config import CODE_ROOT  # noqa: E402
from pipeline.files import read_json, write_png  # noqa: E402
from pipeline.machine.budget import RULE  # noqa: E402

RESULTS = CODE_ROOT / "scripts" / "results"


def host(record: dict) -> str:
    """The host a record was measured on, as the figure names it."""
    return f"{record['cpu']}, CPU family {record['cpu_family']}"


def main(argv: list[str] | None = None) -> int:
    """Draw the figure from the recorded runs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS / "budget-frontier.json")
    p.add_argument("--out", type=Path, default=RESULTS / "budget-frontier.png")
    args = p.parse_args(argv)
    # A busy loop, or another job beside a run (`beside`), makes its minutes no timing.
    records = [r for r in read_json(args.results)
               if not r.get("busy_loop_from") and not r.get("beside")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("rule") == RULE and not r.get("superseded_by"):
            lines[host(r)].append(r)
    for i, (name, rs) in enumerate(sorted(lines.items())):
        color = f"C{i}"
        by_budget: dict[float, list[dict]] = defaultdict(list)
        for r in rs:
            by_budget[r["budget_seconds"]].append(r)
        xs = sorted(by_budget)
        ax.plot([sum(r["total_seconds"] for r in by_budget[b]) / len(by_budget[b]) / 60 for b in xs],
                [sum(r["holdout_errors"] for r in by_budget[b]) / len(by_budget[b]) for b in xs],
                "-", color=color, label=f"--budget, {name}")
        ax.plot([r["total_seconds"] / 60 for r in rs], [r["holdout_errors"] for r in rs], "o",
                color=color)
        for r in rs:
            ax.annotate(r["budget"], (r["total_seconds"] / 60, r["holdout_errors"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    hosts = sorted({host(r) for r in records})
    for r in records:
        color = f"C{sorted(lines).index(host(r))}" if host(r) in lines else f"C{hosts.index(host(r))}"
        if r["budget"] == "none":
            ax.plot(r["total_seconds"] / 60, r["holdout_errors"], "*", ms=13, color=color,
                    label=f"fixed recipe (5 folds + 5 members × 25 epochs), {host(r)}")
        elif r.get("superseded_by"):  # a run of this rule before a fix to it
            ax.plot(r["total_seconds"] / 60, r["holdout_errors"], "x", color=color,
                    label=f"before a fix to the rule, {host(r)}")
        elif r.get("rule") != RULE:
            ax.plot(r["total_seconds"] / 60, r["holdout_errors"], "o", mfc="none", color=color,
                    label=f"first rule (members before epochs), {host(r)}")
    ax.axhline(24, color="grey", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[1], 24, " target at 30 min: 24", va="center", fontsize=8, color="grey")
    ax.set_xlabel("minutes, from train to the submission file (2 cores)")
    ax.set_ylabel("holdout errors (of 6,300)")
    ax.set_title("What a budget buys: --set holdout=0.15, seed 42", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    write_png(args.out, fig, dpi=110, bbox_inches="tight")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
