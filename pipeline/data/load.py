"""Load and validate Kaggle's train.csv / test.csv into uint8 arrays, with an `.npz` cache.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first image row 2.
Any problem raises `UserError` naming the file, the row and what is wrong. The pipeline reads the
data folder through `pipeline.data.datafiles.DataFiles`, which names the files and the cache.

    x, y = load_train(Path("data/train.csv"), cache_dir=Path("runs/cache"))
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.files import save_npz

SIDE = 28
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]
TRAIN_COLUMNS = ["label", *PIXELS]
TEST_COLUMNS = PIXELS


def _raw_line(path: Path, row: int) -> str:
    """The text of spreadsheet row `row` (1-based) of a file, for counting its fields."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            if i == row:
                return line.rstrip("\r\n")
    return ""


def _first_wrong_width(path: Path, width: int) -> tuple[int, int] | None:
    """(row, field count) of the first row whose number of fields is not `width`, or None."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            n = line.rstrip("\r\n").count(",") + 1
            if n != width:
                return i, n
    return None


def _first_bad(mask: np.ndarray) -> tuple[int, int] | None:
    """(row index, column index) of the first True in a 2-D mask, row-major, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    r = int(rows[0])
    return r, int(np.argmax(mask[r]))


def read_csv(path: Path, columns: list[str]) -> np.ndarray:
    """Parse a Kaggle CSV with exactly `columns` into an int array, validating every cell."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; run `make download` "
                        "(or `python -m pipeline download --from-zip ZIP`) or pass --data DIR")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty; download it again")
    try:
        # index_col=False: never let pandas turn an extra first field into an index silently;
        # it then drops extra trailing fields with only a ParserWarning, made an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False, skip_blank_lines=False, low_memory=False)
    except pd.errors.ParserWarning:
        bad = _first_wrong_width(path, len(columns))
        where = f"row {bad[0]} has {bad[1]} columns" if bad else "a row has too many columns"
        raise UserError(f"{path}: {where}, expected {len(columns)}; fix or remove that row") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty; download it again") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise UserError(f"{path}: row {m.group(2)} has {m.group(3)} columns, expected "
                            f"{m.group(1)}; fix or remove that row") from None
        raise UserError(f"{path}: not a valid CSV file ({str(exc).strip()})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file (is it still zipped?)") from None

    header = [str(c) for c in df.columns]
    if header != columns:
        # Report the names as written, not pandas' de-duplicated ones ('pixel4.1').
        raw = _raw_line(path, 1).lstrip("\ufeff").split(",")
        if len(raw) == len(header):
            header = [h.strip().strip('"') for h in raw]
        if len(header) != len(columns):
            raise UserError(f"{path}: row 1 (header) has {len(header)} columns, expected "
                            f"{len(columns)} ({columns[0]}, …, {columns[-1]})")
        i = next(i for i, (a, b) in enumerate(zip(header, columns)) if a != b)
        raise UserError(f"{path}: row 1 (header) column {i + 1} is {header[i]!r}, expected "
                        f"{columns[i]!r}; is this the right file?")
    if len(df) == 0:
        raise UserError(f"{path}: has a header but no data rows")

    missing = df.isna().to_numpy()
    bad = _first_bad(missing)
    if bad is not None:
        r, c = bad
        row = r + 2
        fields = _raw_line(path, row)
        n = len(fields.split(",")) if fields else 0
        if not fields.strip():
            raise UserError(f"{path}: row {row} is empty; remove blank lines")
        if n != len(columns):
            raise UserError(f"{path}: row {row} has {n} columns, expected {len(columns)}; "
                            "fix or remove that row")
        raise UserError(f"{path}: row {row}, column {columns[c]!r}: missing value")

    numeric = df
    if any(dt.kind not in "iuf" for dt in df.dtypes):
        numeric = df.apply(pd.to_numeric, errors="coerce")
        bad = _first_bad(numeric.isna().to_numpy())
        if bad is not None:
            r, c = bad
            raise UserError(f"{path}: row {r + 2}, column {columns[c]!r}: "
                            f"{str(df.iat[r, c])!r} is not a number")
    values = numeric.to_numpy()
    if values.dtype.kind == "f":
        bad = _first_bad(values != np.round(values))
        if bad is not None:
            r, c = bad
            raise UserError(f"{path}: row {r + 2}, column {columns[c]!r}: "
                            f"{values[r, c]:g} is not a whole number")
    pixels = values[:, -len(PIXELS):]
    bad = _first_bad((pixels < 0) | (pixels > 255))
    if bad is not None:
        r, c = bad
        raise UserError(f"{path}: row {r + 2}, column {PIXELS[c]!r}: pixel value "
                        f"{pixels[r, c]:g} is outside 0–255")
    if columns[0] == "label":
        labels = values[:, 0]
        bad_rows = np.flatnonzero((labels < 0) | (labels > 9))
        if bad_rows.size:
            r = int(bad_rows[0])
            raise UserError(f"{path}: row {r + 2}, column 'label': {labels[r]:g} is not a digit 0–9")
    return values.astype(np.uint8)


def _cache_file(path: Path, cache_dir: Path) -> Path:
    """Name the cache by the CSV's absolute path, size and mtime: any edit invalidates it."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"{path.stem}-{key}.npz"


def _load(path: Path, columns: list[str], cache_dir: Path | None) -> np.ndarray:
    path = Path(path)
    cache = _cache_file(path, cache_dir) if cache_dir is not None and path.is_file() else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return z["values"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a corrupt cache is rebuilt from the CSV below
    values = read_csv(path, columns)
    if cache is not None:
        save_npz(cache, values=values)
    return values


def load_train(path: Path, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) uint8 from a Kaggle train.csv."""
    values = _load(path, TRAIN_COLUMNS, cache_dir)
    return values[:, 1:].reshape(-1, SIDE, SIDE, 1), values[:, 0].copy()


def load_test(path: Path, cache_dir: Path | None = None) -> np.ndarray:
    """Images (N, 28, 28, 1) uint8 from a Kaggle test.csv."""
    return _load(path, TEST_COLUMNS, cache_dir).reshape(-1, SIDE, SIDE, 1)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, to record exactly which data a run used."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
