"""The embedded sample: a small Kaggle-format dataset made from scikit-learn's bundled digits.

`load_digits` ships 1,797 real handwritten 8×8 digits (values 0–16) inside scikit-learn, so the
demo and the tests need no download. Each image is upscaled to 20×20 and centred in 28×28 the
way MNIST digits are, then scaled to 0–255.

    python -m pipeline sample          # writes data/sample/{train,test,sample_submission,test_labels}.csv
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.data.datafiles import DataFiles
from pipeline.data.load import PIXELS
from pipeline.errors import UserError
from pipeline.files import write_text

TEST_FRACTION = 0.3
FILES = (DataFiles.TRAIN, DataFiles.TEST, DataFiles.SAMPLE_SUBMISSION, DataFiles.TEST_LABELS)


def sample_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, 784) uint8 MNIST-like images and their labels."""
    digits = load_digits()
    small = digits.images.astype(np.float64) / 16.0
    big = np.clip(zoom(small, (1, 2.5, 2.5), order=1), 0.0, 1.0)  # (N, 20, 20), bilinear
    canvas = np.zeros((len(big), 28, 28))
    canvas[:, 4:24, 4:24] = big
    return np.round(canvas * 255).astype(np.uint8).reshape(len(big), -1), digits.target.astype(np.uint8)


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n")


def sample_files() -> dict[str, str]:
    """The sample's files, name → CSV text, in the order they are written (train.csv last)."""
    x, y = sample_images()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=0)
    train = pd.DataFrame(x_tr, columns=PIXELS)
    train.insert(0, "label", y_tr)
    ids = np.arange(1, len(x_te) + 1)
    # Last-to-first, so train.csv, the file users look for, only appears when all are there.
    return {DataFiles.TEST_LABELS: _csv(pd.DataFrame({"ImageId": ids, "Label": y_te})),
            DataFiles.SAMPLE_SUBMISSION: _csv(pd.DataFrame({"ImageId": ids, "Label": 0})),
            DataFiles.TEST: _csv(pd.DataFrame(x_te, columns=PIXELS)),
            DataFiles.TRAIN: _csv(train)}


def _is_sample(path: Path, text: str) -> bool:
    """Whether the file at `path` holds exactly `text` (the size first: real data is far bigger)."""
    data = text.encode()
    return path.stat().st_size == len(data) and path.read_bytes() == data


def write_sample(out_dir: Path, force: bool = False) -> Path:
    """Write the sample into `out_dir` (deterministic; skipped when already complete).

    Never overwrites a file it did not write: a folder holding other data (the competition's,
    say) is refused, `force` or not.
    """
    out_dir = Path(out_dir)
    files = sample_files()
    for name in FILES:  # train.csv first: the file a refusal should name
        path = out_dir / name
        if path.is_file() and not _is_sample(path, files[name]):
            raise UserError(f"{path}: not the embedded sample (your competition data?); the demo "
                            "and `sample` never overwrite it: choose another folder with --data / "
                            "--out (the default is data/sample/)")
    if not force and all((out_dir / f).is_file() for f in FILES):
        return out_dir
    for name, text in files.items():
        write_text(out_dir / name, text)
    return out_dir
