"""Data loading: each kind of bad CSV gives one line naming file and row; good files load and cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.load import PIXELS, load_test, load_train
from pipeline.errors import UserError
from tests.conftest import last_error_line, run_cli

HEADER = "label," + ",".join(PIXELS)


def _row(label: int | str = 3, fill: int | str = 0, n: int = 784) -> str:
    return ",".join([str(label)] + [str(fill)] * n)


def _write(tmp_path: Path, lines: list[str], name: str = "train.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sample_loads_as_uint8(sample_dir: Path) -> None:
    x, y = load_train(sample_dir / "train.csv")
    assert x.shape == (1257, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.uint8
    assert set(np.unique(y)) == set(range(10)) and x.max() == 255
    assert load_test(sample_dir / "test.csv").shape == (540, 28, 28, 1)


def test_cache_is_used_and_invalidated(sample_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "train.csv"
    src.write_bytes((sample_dir / "train.csv").read_bytes())
    cache = tmp_path / "cache"
    x1, y1 = load_train(src, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    x2, y2 = load_train(src, cache_dir=cache)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    # Editing the CSV must not serve stale arrays.
    lines = src.read_text().splitlines()
    lines[1] = "9" + lines[1][1:]
    src.write_text("\n".join(lines) + "\n")
    _, y3 = load_train(src, cache_dir=cache)
    assert y3[0] == 9 and len(list(cache.glob("*.npz"))) == 2


@pytest.mark.parametrize("lines, expected", [
    ([], "file is empty"),
    ([HEADER], "no data rows"),
    (["label,pixel0,pixel1", "1,2,3"], "row 1 (header) has 3 columns, expected 785"),
    ([HEADER.replace("pixel5,", "pixelX,"), _row()], "row 1 (header) column 7 is 'pixelX', expected 'pixel5'"),
    ([HEADER, _row(), _row() + ",7"], "row 3 has 786 columns, expected 785"),
    ([HEADER, _row(), _row(n=700)], "row 3 has 701 columns, expected 785"),
    ([HEADER, _row(), _row(fill="abc")], "row 3, column 'pixel0': 'abc' is not a number"),
    ([HEADER, _row(), _row().replace(",0,0,", ",0,,", 1)], "row 3, column 'pixel1': missing value"),
    ([HEADER, _row(label=12)], "row 2, column 'label': 12 is not a digit 0–9"),
    ([HEADER, _row(), _row(fill=256)], "row 3, column 'pixel0': pixel value 256 is outside 0–255"),
    ([HEADER, _row(fill=-1)], "row 2, column 'pixel0': pixel value -1 is outside 0–255"),
    ([HEADER, _row(fill="1.5")], "row 2, column 'pixel0': 1.5 is not a whole number"),
])
def test_bad_train_csv(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(UserError) as err:
        load_train(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        load_train(tmp_path / "train.csv")


def test_test_csv_must_not_have_label(tmp_path: Path) -> None:
    path = _write(tmp_path, [HEADER, _row()], "test.csv")
    with pytest.raises(UserError, match="header"):
        load_test(path)


def test_bad_csv_from_cli_is_one_line_and_writes_nothing(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lines = (sample_dir / "train.csv").read_text().splitlines()
    lines[41] = lines[41].rsplit(",", 1)[0] + ",300"
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    (data / "test.csv").write_bytes((sample_dir / "test.csv").read_bytes())
    runs = tmp_path / "runs"
    proc = run_cli("train", "--profile", "tiny", "--data", str(data), "--runs-dir", str(runs),
                   check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"error: {data / 'train.csv'}: row 42, column 'pixel783': "
                                     "pixel value 300 is outside 0–255")
    assert not any(p.is_file() for p in runs.rglob("*"))
