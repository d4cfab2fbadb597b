"""Which of a study's trials count toward its target, which must be re-run, and which were
re-run already: what the worker loop, the progress bar and the summary agree on.

    tally = Tally.of(study.get_trials(deepcopy=False)); tally.best()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

MAX_RETRIES = 2  # re-runs of a trial whose worker died, before it counts as failed


def _interrupted(t: FrozenTrial) -> bool:
    """A failed trial whose parameters are not to blame: Ctrl-C, or a worker that died."""
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and "error" not in t.user_attrs


@dataclass
class Tally:
    """The study's trials sorted into what counts toward the target and what must be re-run."""

    counted: list[FrozenTrial]
    retry: list[FrozenTrial]  # interrupted trials to run again with the same parameters
    superseded: list[FrozenTrial]  # interrupted trials already re-run

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> Tally:
        """Sort a study's trials."""
        retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        counted, retry, superseded = [], [], []
        for t in trials:
            if _interrupted(t) and t.number in retried:
                superseded.append(t)
            elif _interrupted(t) and t.user_attrs.get("retries", 0) < MAX_RETRIES:
                retry.append(t)
            else:
                counted.append(t)
        return cls(counted, retry, superseded)

    def states(self) -> dict[str, int]:
        """Counts of counted trials by state name."""
        out: dict[str, int] = {}
        for t in self.counted:
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def finished(self) -> list[FrozenTrial]:
        """Counted trials that ended (complete, pruned or failed)."""
        return [t for t in self.counted if t.state.is_finished()]

    def best(self) -> FrozenTrial | None:
        """The complete trial with the highest value (the earliest on ties)."""
        from optuna.trial import TrialState

        done = [t for t in self.counted if t.state == TrialState.COMPLETE and t.value is not None]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None
