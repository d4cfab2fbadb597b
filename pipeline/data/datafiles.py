"""The data folder (`data/` or `--data DIR`): the competition's file names, and the one place that
reads its images, through the parse cache in the runs folder.

Every other module finds the data's files through `DataFiles`, as it finds a run's through
`pipeline.runfiles.RunFiles`, so the names Kaggle gives them are written down once:

    data/train.csv test.csv sample_submission.csv   (the competition's archive)
    data/sample/{the same, test_labels.csv}         (the embedded sample, `pipeline.data.sample`)
    runs/cache/<csv stem>-<key>.npz                 (parsed copies, `pipeline.data.load`)

    x, y = DataFiles(Path("data"), runs=Path("runs")).labelled()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Paths
from pipeline.data.load import load_test, load_train


@dataclass(frozen=True)
class DataFiles:
    """The files of one data folder, and where their parsed copies are cached."""

    root: Path
    runs: Path | None = None  # the runs folder whose cache/ keeps parsed copies; None: none kept

    TRAIN = "train.csv"  # labelled images: label, pixel0 … pixel783
    TEST = "test.csv"  # the images to predict: pixel0 … pixel783
    SAMPLE_SUBMISSION = "sample_submission.csv"  # ImageId,Label: the ids a submission must have
    TEST_LABELS = "test_labels.csv"  # the embedded sample's answers for test.csv (never Kaggle's)

    train = property(lambda self: self.root / self.TRAIN)
    test = property(lambda self: self.root / self.TEST)
    sample_submission = property(lambda self: self.root / self.SAMPLE_SUBMISSION)
    test_labels = property(lambda self: self.root / self.TEST_LABELS)
    sample = property(lambda self: self.root / "sample")  # where `sample` and `demo` write by default

    @property
    def cache(self) -> Path | None:
        """The folder of parsed copies of the CSVs (None: parse them every time)."""
        return None if self.runs is None else self.runs / "cache"

    @classmethod
    def of(cls, paths: Paths) -> DataFiles:
        """The data folder a command was given, cached in its runs folder."""
        return cls(Path(paths.data), Path(paths.runs))

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """train.csv's images (N, 28, 28, 1) and labels (N,), uint8, checked cell by cell."""
        return load_train(self.train, cache_dir=self.cache)

    def unlabelled(self) -> np.ndarray:
        """test.csv's images (N, 28, 28, 1), uint8, checked cell by cell."""
        return load_test(self.test, cache_dir=self.cache)
