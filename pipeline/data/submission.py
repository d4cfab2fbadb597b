"""The submission file: Kaggle's `ImageId,Label` CSV, validated before it is written or sent.

    validate_submission(pd.read_csv("submissions/submission.csv"), read_sample_ids(Path("data")))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.datafiles import DataFiles
from pipeline.errors import UserError
from pipeline.files import write_text

COLUMNS = ["ImageId", "Label"]
KAGGLE_ROWS = 28_000


def read_sample_ids(data_dir: Path) -> np.ndarray | None:
    """The ImageIds of `sample_submission.csv` in `data_dir`, or None when it is absent."""
    path = DataFiles(Path(data_dir)).sample_submission
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid CSV ({str(exc).strip()}); download it again") from None
    if list(df.columns) != COLUMNS or df["ImageId"].dtype.kind not in "iu":
        raise UserError(f"{path}: expected columns ImageId,Label with integer ids; download it again")
    return df["ImageId"].to_numpy()


def validate_submission(df: pd.DataFrame, expected_ids: np.ndarray, source: str) -> None:
    """Raise UserError unless `df` has the right header, ids (in order) and labels 0–9."""
    if list(df.columns) != COLUMNS:
        raise UserError(f"{source}: header is {','.join(map(str, df.columns))!r}, "
                        f"expected 'ImageId,Label'")
    if len(df) == 0:
        raise UserError(f"{source}: has no rows")
    if len(df) != len(expected_ids):
        raise UserError(f"{source}: has {len(df)} rows, expected {len(expected_ids)} "
                        "(one per test image)")
    for col in COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | (values.to_numpy() % 1 != 0))
        if bad.size:
            r = int(bad[0])
            value = df[col].iloc[r]
            shown = repr(value) if isinstance(value, str) else str(getattr(value, "item", lambda: value)())
            raise UserError(f"{source}: row {r + 2}, column {col}: {shown} is not an integer")
    ids = df["ImageId"].to_numpy().astype(np.int64)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise UserError(f"{source}: row {r + 2}: ImageId {ids[r]} appears more than once")
    wrong = np.flatnonzero(ids != expected_ids)
    if wrong.size:
        r = int(wrong[0])
        raise UserError(f"{source}: row {r + 2}: ImageId {ids[r]}, expected {expected_ids[r]} "
                        "(ids must be 1…N in order, as in sample_submission.csv)")
    labels = df["Label"].to_numpy().astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        r = int(bad[0])
        raise UserError(f"{source}: row {r + 2}: Label {labels[r]} is not a digit 0–9")


def read_submission(path: Path, expected_ids: np.ndarray) -> pd.DataFrame:
    """Read and validate an existing submission CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid CSV ({str(exc).strip()})") from None
    validate_submission(df, expected_ids, str(path))
    return df


def write_submission(path: Path, labels: np.ndarray, expected_ids: np.ndarray) -> pd.DataFrame:
    """Validate and atomically write `ImageId,Label` for the given predicted labels."""
    df = pd.DataFrame({"ImageId": expected_ids.astype(np.int64), "Label": labels.astype(np.int64)})
    validate_submission(df, expected_ids, str(path))
    write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return df
