"""What a tuning study has produced: which trials count, progress, the summary and the files.

Reads the study from its storage and writes `runs/tune/<study>/`: summary.txt (also printed),
trials.csv, best_params.json and Optuna's plots (optimization history, parameter importances,
parallel coordinates, slice) as PNG. `Progress` is the progress bar over trials with the best
value so far. `python -m pipeline tune` (pipeline.tuning.tune) calls these; nothing here trains.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pipeline.console import Log, duration
from pipeline.files import write_json, write_text
from pipeline.tuning.plots import optuna_plots
from pipeline.tuning.storage import masked
from pipeline.tuning.study import Settings
from pipeline.tuning.tally import Tally

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def _short(params: dict[str, Any]) -> str:
    parts = []
    for k, v in params.items():
        parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def trial_line(t: FrozenTrial) -> str:
    """One line describing a finished trial."""
    secs = duration(t.user_attrs.get("seconds", 0.0))
    if t.state.name == "COMPLETE":
        head = f"val acc {t.value:.4f}"
    elif t.state.name == "PRUNED":
        head = f"pruned after epoch {t.user_attrs.get('pruned_at_epoch', '?')}"
    else:
        head = f"failed: {t.user_attrs.get('error', 'interrupted')}"
    tag = " (baseline)" if t.user_attrs.get("baseline") else ""
    if "retry_of" in t.user_attrs:
        tag += f" (re-run of trial {t.user_attrs['retry_of']})"
    return f"trial {t.number:>3}{tag}: {head} in {secs} · {_short(t.params)}"


class Progress:
    """A progress bar over the target number of trials showing the best value, and one printed
    line per trial as it finishes (from this process or any other worker)."""

    def __init__(self, study: optuna.Study, target: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        tally = Tally.of(study.get_trials(deepcopy=False))
        self.seen = {t.number for t in tally.finished()}
        self.bar = tqdm(total=target, initial=min(len(self.seen), target), unit="trial",
                        desc=f"tune {study.study_name}", disable=not enabled, dynamic_ncols=True)
        self._postfix(tally)

    def _postfix(self, tally: Tally) -> None:
        best = tally.best()
        if best is not None:
            self.bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})")

    def update(self, study: optuna.Study) -> None:
        """Print trials finished since the last call and move the bar."""
        tally = Tally.of(study.get_trials(deepcopy=False))
        new = [t for t in tally.finished() if t.number not in self.seen]
        for t in sorted(new, key=lambda t: t.number):
            self.seen.add(t.number)
            self.bar.write(trial_line(t))
        self.bar.update(max(0, min(len(self.seen), self.bar.total) - self.bar.n))
        self._postfix(tally)

    def close(self) -> None:
        self.bar.close()


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_text(settings: Settings, study: optuna.Study) -> str:
    """The summary table: trial counts by state, the best value and params, the top trials."""
    tally = Tally.of(study.get_trials(deepcopy=False))
    n = tally.states()
    lines = [f"study '{settings.study}' ({masked(settings.storage)}), target {settings.budget.trials} "
             "trials",
             f"  complete {n.get('COMPLETE', 0)} · pruned {n.get('PRUNED', 0)} · "
             f"failed {n.get('FAIL', 0)} · running {n.get('RUNNING', 0)} · "
             f"waiting {n.get('WAITING', 0)} · interrupted and re-run {len(tally.superseded)}"
             + (f" · interrupted, to re-run on resume {len(tally.retry)}" if tally.retry else "")]
    base = next((t for t in tally.counted if t.user_attrs.get("baseline")
                 and t.state.name == "COMPLETE"), None)
    best = tally.best()
    if best is None:
        lines.append("no trial has completed yet")
        return "\n".join(lines)
    lines.append(f"best: trial {best.number}, validation accuracy {best.value:.4f}"
                 + (f" (baseline trial {base.number}: {base.value:.4f})" if base else ""))
    for k, v in best.user_attrs.get("hyperparameters", best.params).items():
        lines.append(f"  {k:<14} {_fmt_value(v)}")
    done = sorted((t for t in tally.counted if t.state.name == "COMPLETE"),
                  key=lambda t: -(t.value or 0.0))[:10]
    lines.append(f"top {len(done)} complete trials:")
    lines.append(f"  {'trial':>5}  {'val_acc':>7}  {'time':>6}  params")
    for t in done:
        lines.append(f"  {t.number:>5}  {t.value:>7.4f}  {duration(t.user_attrs.get('seconds', 0)):>6}  "
                     f"{_short(t.params)}")
    return "\n".join(lines)


def trials_table(study: optuna.Study) -> str:
    """Every trial as CSV: number, state, value, time, why it failed, and its parameters (by name)."""
    import pandas as pd

    df = study.trials_dataframe(attrs=("number", "state", "value", "user_attrs", "params"))
    table = df[["number", "state", "value"]].copy()
    for key in ("seconds", "pruned_at_epoch", "baseline", "retry_of", "error"):
        table[key] = df.get(f"user_attrs_{key}", pd.Series(None, index=df.index, dtype=object))
    table["baseline"] = table["baseline"].eq(True)
    for column in ("pruned_at_epoch", "retry_of"):  # integers with gaps, not floats
        table[column] = table[column].astype("Int64")
    params = [c for c in df if c.startswith("params_")]
    return pd.concat([table, df[params].rename(columns=lambda c: c.removeprefix("params_"))],
                     axis=1).to_csv(index=False)


def best_params_record(settings: Settings, study: optuna.Study) -> dict[str, Any] | None:
    """What best_params.json holds: the best trial's hyperparameters and where they came from."""
    tally = Tally.of(study.get_trials(deepcopy=False))
    best = tally.best()
    if best is None:
        return None
    n = tally.states()
    b = settings.budget
    return {
        "study": settings.study, "storage": masked(settings.storage), "best_trial": best.number,
        "value": best.value, "metric": f"val_accuracy (mean over {b.tune_folds} fold(s))",
        "params": best.user_attrs.get("hyperparameters", best.params),
        "searched": sorted(best.params), "pinned": settings.pinned,
        "budget": {"profile": settings.base.profile, "folds": settings.base.folds,
                   "seed": settings.base.seed, "tune_folds": b.tune_folds,
                   "subsample": b.subsample, "epochs": list(b.epochs(settings.pinned)),
                   "pruner": b.pruner},
        "trials": {"complete": n.get("COMPLETE", 0), "pruned": n.get("PRUNED", 0),
                   "failed": n.get("FAIL", 0)},
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(settings: Settings, study: optuna.Study, log: Log = print,
                  plots: bool = True) -> dict[str, Any] | None:
    """Write summary.txt, trials.csv, best_params.json and the plots; print the summary."""
    files = settings.files
    text = summary_text(settings, study)
    write_text(files.summary, text + "\n")
    write_text(files.trials_csv, trials_table(study))
    record = best_params_record(settings, study)
    if record is not None:
        write_json(files.best_params, record)
    if plots:
        for why in optuna_plots(study, files.root)[1]:
            log(f"tuning plot skipped — {why}")
    log(text)
    if record is not None:
        log(f"best params → {files.best_params}; train with them: "
            f"python -m pipeline train --study {settings.study} --run tuned")
    return record
