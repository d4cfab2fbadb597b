"""Data loading: each kind of bad CSV gives one line naming file and row; good files load and cache."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config import CODE_ROOT, Paths
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import HOLDOUT, load_split, make_folds
from pipeline.data.load import PIXELS, load_test, load_train
from pipeline.errors import UserError
from pipeline.files import load_npy
from pipeline.runfiles import RunFiles, load_run_config, run_split
from tests.conftest import copy_demo, last_error_line, run_cli

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


def test_the_data_folder_is_named_in_one_module() -> None:
    """The competition's file names, and the calls that parse its CSVs through the cache, appear
    in pipeline/data/datafiles.py alone: every other module goes through `DataFiles`."""
    names = {"train.csv", "test.csv", "sample_submission.csv", "test_labels.csv"}
    spelled, parsed = set(), set()
    for path in (CODE_ROOT / "pipeline").rglob("*.py"):
        where = str(path.relative_to(CODE_ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.add(where)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("load_train", "load_test")):
                parsed.add(where)
    assert spelled == {"pipeline/data/datafiles.py"}
    assert parsed == {"pipeline/data/datafiles.py"}


def test_split_loaders_give_a_run_its_arrays(demo_once: SimpleNamespace, tmp_path: Path) -> None:
    """`load_split` (train's and tune's first step) and `run_split` (a trained run's saved split)
    give the demo run train.csv's arrays and the folds it trained on, parsed once into the cache."""
    t = copy_demo(demo_once, tmp_path)
    paths = Paths(t.data, t.runs, t.subs)
    cfg = load_run_config(t.run_dir)
    x, y = load_train(t.data / "train.csv")
    saved = load_npy(RunFiles(t.run_dir).folds)
    assert np.array_equal(saved, make_folds(y, cfg.folds, cfg.seed))
    for split in (load_split(paths, cfg), run_split(DataFiles.of(paths), t.run_dir)):
        assert np.array_equal(split.x, x) and np.array_equal(split.y, y)
        assert np.array_equal(split.fold_of, saved) and split.holdout.size == 0
    assert [p.name.split("-")[0] for p in (t.runs / "cache").glob("*.npz")] == ["train"]

    # With a holdout: the seeded stratified share is held out of every fold, and saved for reuse.
    held = load_split(paths, replace(cfg, holdout=0.2))
    assert np.array_equal(held.fold_of, make_folds(y, cfg.folds, cfg.seed, 0.2))
    assert np.array_equal(held.holdout, np.flatnonzero(held.fold_of == HOLDOUT))
    assert abs(held.holdout.size - 0.2 * len(y)) < 1
    assert len(list((t.runs / "folds").glob("*-h0.2.npy"))) == 1

    # A train.csv the run was not trained on is refused, naming the run's split file.
    lines = (t.data / "train.csv").read_text().splitlines()
    (t.data / "train.csv").write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(UserError, match=f"{len(y)} rows, but train.csv has {len(y) - 10}"):
        run_split(DataFiles.of(paths), t.run_dir)
