"""A tuning study's folder, `runs/tune/<study>/`: its file names, written down once.

    runs/tune/<study>/study.db best_params.json summary.txt trials.csv tuning_*.png
                      worker-<i>.log .claim.lock trials/

(the PNG names are `pipeline.tuning.plots.PLOTS`, shared with a run report's figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyFiles:
    """The files of one study's folder."""

    root: Path

    db = property(lambda self: self.root / "study.db")  # the SQLite storage (no --storage)
    best_params = property(lambda self: self.root / "best_params.json")  # what `train --study` reads
    summary = property(lambda self: self.root / "summary.txt")
    trials_csv = property(lambda self: self.root / "trials.csv")
    claim_lock = property(lambda self: self.root / ".claim.lock")  # one machine's workers' claim

    @classmethod
    def of(cls, runs_dir: Path, study: str) -> StudyFiles:
        """The folder of study `study` under `runs_dir`: `runs/tune/<study>`."""
        return cls(Path(runs_dir) / "tune" / study)

    def worker_log(self, index: int | str) -> Path:
        """Local worker `index`'s output (a placeholder such as "<i>" names them all)."""
        return self.root / f"worker-{index}.log"

    def trial_fold(self, number: int, fold: int) -> Path:
        """Where a trial's fold would keep its files (trials save no checkpoint: none is made)."""
        return self.root / "trials" / f"{number}-fold_{fold}"
