"""Bad input wherever it enters — data CSVs, config files, flags, run names, submission files,
model files — gives one `error:` line and exit code 2, never a traceback, and writes nothing.

Most cases run the real CLI entry point (`pipeline.cli.main`) in this process, which is fast:
an exception escaping `main` is exactly what a user would see as a traceback. A few run it as a
subprocess to check the real process end to end. The cases that need a trained run (a fuzzed
test.csv given to `predict`, an unsafe model file) are in test_reliability.py, beside its runs.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import CODE_ROOT
from pipeline.data.submission import read_submission
from pipeline.errors import UserError
from tests.conftest import call_cli, cli_in_process, last_error_line, mutate_csv, run_cli

# --- data CSVs ------------------------------------------------------------------------------

def _train_csv_case(sample: Path, case: str) -> bytes | None:
    lines = (sample / "train.csv").read_text().split("\n")
    row = lines[1].split(",")
    if case == "missing file":
        return None
    if case == "empty file":
        return b""
    if case == "wrong header":
        lines[0] = lines[0].replace("pixel9,", "pixel_9,")
    elif case == "extra value on the first data row":
        lines[1] += ",0"
    elif case == "short row":
        lines[5] = ",".join(lines[5].split(",")[:-3])
    elif case == "non-numeric cell":
        lines[7] = lines[7].replace(",0,", ",O,", 1)
    elif case == "missing value":
        lines[9] = lines[9].replace(",0,", ",,", 1)
    elif case == "label out of range":
        lines[3] = "11," + lines[3].split(",", 1)[1]
    elif case == "pixel out of range":
        lines[2] = ",".join(lines[2].split(",")[:-1] + ["300"])
    else:
        raise AssertionError(case)
    assert row  # the sample has rows to break
    return "\n".join(lines).encode()


@pytest.mark.parametrize("case, message", [
    ("missing file", "train.csv: file not found; run `make download`"),
    ("empty file", "train.csv: file is empty; download it again"),
    ("wrong header", "train.csv: row 1 (header) column 11 is 'pixel_9', expected 'pixel9'"),
    ("extra value on the first data row", "train.csv: row 2 has 786 columns, expected 785"),
    ("short row", "train.csv: row 6 has 782 columns, expected 785"),
    ("non-numeric cell", "train.csv: row 8, column 'pixel"),
    ("missing value", "train.csv: row 10, column 'pixel"),
    ("label out of range", "train.csv: row 4, column 'label': 11 is not a digit 0–9"),
    ("pixel out of range", "train.csv: row 3, column 'pixel783': pixel value 300 is outside 0–255"),
])
def test_bad_train_csv_is_one_line_and_writes_nothing(capsys, sample_dir: Path, tmp_path: Path,
                                                      case: str, message: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    content = _train_csv_case(sample_dir, case)
    if content is not None:
        (data / "train.csv").write_bytes(content)
    code, err = cli_in_process(capsys, "train", "--profile", "tiny", "--data", str(data),
                               "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {data / 'train.csv'}:") and message in err[0]
    assert not (tmp_path / "runs").exists()


def test_bad_csv_in_a_real_process(sample_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(_train_csv_case(sample_dir, "extra value on the first data row"))
    proc = run_cli("train", "--profile", "tiny", "--data", str(tmp_path),
                   "--runs-dir", str(tmp_path / "runs"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"error: {tmp_path / 'train.csv'}: row 2 has 786 columns, "
                                     "expected 785; fix or remove that row")
    assert not (tmp_path / "runs").exists()


# Each mutation makes the file invalid (for test.csv; the last group for train.csv too).
def test_fuzzed_train_csv_never_crashes_and_writes_nothing(capsys, sample_dir: Path,
                                                          tmp_path: Path) -> None:
    train_csv = tmp_path / "train.csv"
    good = (sample_dir / "train.csv").read_text()
    rng = random.Random(11)
    for i in range(40):
        bad = mutate_csv(good, rng, for_test_csv=False)
        train_csv.write_bytes(bad.encode("utf-8", "surrogateescape"))
        code, err = cli_in_process(capsys, "train", "--profile", "tiny", "--data", str(tmp_path),
                         "--runs-dir", str(tmp_path / "runs"))
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {train_csv}:"), (i, err)
        assert not (tmp_path / "runs").exists()


# --- config files, flags and run names ------------------------------------------------------

@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "epochs = 3\nepoch = 4\n", "c.toml: unknown config key 'epoch'"),
    ("c.toml", 'epochs = "ten"\n', "c.toml: epochs='ten' is not a valid int"),
    ("c.toml", "augment = 1\n", "c.toml: augment=1 is not a valid bool"),
    ("c.toml", "[train]\nepochs = 3\n", "c.toml: unknown config key 'train'"),
    ("c.toml", "[model]\nfilters = 3\n", "c.toml: model={'filters': 3} is not a valid str"),
    ("c.toml", "dropout = 1.5\n", "config: dropout=1.5 must be in [0, 1)"),
    ("c.toml", "learning_rate = inf\n", "c.toml: learning_rate=inf must be a finite number"),
    ("c.toml", "seed = -1\n", "config: seed=-1 must be in [0, 2147483647]"),
    ("c.toml", "filters = 100000000\n", "config: filters=100000000 must be at most 1024"),
    ("c.toml", "epochs = 3\nepochs = 4\n", "c.toml: malformed config file"),
    ("c.toml", "epochs = [\n", "c.toml: malformed config file"),
    ("c.yaml", "epochs: [1, 2\n", "c.yaml: malformed config file"),
    ("c.yaml", "epochs: !!python/object/apply:os.system ['echo pwned']\n", "c.yaml: malformed config file"),
    ("c.yaml", "- epochs\n", "c.yaml: expected a table of key = value pairs"),
    ("c.yaml", "batch_size: .nan\n", "c.yaml: batch_size=nan is not a valid int"),
    ("c.json", '{"epochs": 3,}', "c.json: malformed config file"),
    ("c.toml", b"epochs = 3\n\xff\xfe = 1\n", "c.toml: malformed config file"),
    ("c.ini", "epochs = 3\n", "c.ini: config files must end in .toml, .yaml, .yml or .json"),
    ("missing.toml", None, "missing.toml: config file not found"),
])
def test_bad_config_file(capsys, tmp_path: Path, name: str, text, message: str) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    code, err = cli_in_process(capsys, "train", "--config", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "epochs"], "error: --set 'epochs': expected key=value, e.g. --set epochs=3"),
    (["--set", "epochs=1e9"], "error: --set: epochs='1e9' is not a valid int"),
    (["--set", "learning_rate=nan"], "error: --set: learning_rate='nan' must be a finite number"),
    (["--set", "seed=99999999999"], "error: config: seed=99999999999 must be in [0, 2147483647]"),
    (["--set", "profile=tiny"], "error: --set: choose the profile with --profile, not as a config key"),
    (["--set", "batch_size=0"], "error: config: batch_size=0 must be at least 1"),
    (["--run", "../escape"], "error: --run '../escape': use letters, digits"),
    (["--run", "a/b"], "error: --run 'a/b': use letters, digits"),
    (["--run", ".hidden"], "error: --run '.hidden': use letters, digits"),
    (["--run", "x" * 65], "error: --run 'xxxx"),
    (["--run", "run name"], "error: --run 'run name': use letters, digits"),
    (["--profile", "huge"], "python -m pipeline train: error: argument --profile: invalid choice: 'huge'"),
    (["--epochs", "3"], "python -m pipeline: error: unrecognized arguments: --epochs 3"),
    (["--data", "/nonexistent/dir"], "error: /nonexistent/dir/train.csv: file not found"),
])
def test_bad_flags_and_run_names(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    code, err = cli_in_process(capsys, "train", "--profile", "tiny", "--runs-dir", str(tmp_path / "runs"), *args)
    assert code == 2 and err and err[-1].startswith(message), err
    if not err[-1].startswith("python -m pipeline"):  # argparse prints its usage first
        assert len(err) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [
    ["predict", "--set", "tta=false"], ["predict", "--profile", "cpu"],
    ["predict", "--config", "c.toml"], ["blend", "a", "b", "--run", "x"],
    ["blend", "a", "b", "--profile", "cpu"], ["blend", "a", "b", "--set", "epochs=1"],
    ["tune", "--run", "x"], ["tune", "--submissions-dir", "x"], ["train", "--submissions-dir", "x"],
    ["download", "--run", "x"], ["download", "--set", "competition=x"],
    ["download", "--runs-dir", "x"], ["submit", "--profile", "cpu"], ["submit", "--set", "tta=false"],
], ids=" ".join)
def test_a_flag_the_command_does_not_use_is_a_usage_error(capsys, tmp_path: Path,
                                                          args: list[str]) -> None:
    # Folders of its own, so that a command which did accept the flag would touch nothing real.
    own = ["--data", str(tmp_path / "data")]
    if args[0] != "download":
        own += ["--runs-dir", str(tmp_path / "runs")]
    code, err = cli_in_process(capsys, *args[:-2], *own, *args[-2:])
    assert code == 2
    assert err[-1] == f"python -m pipeline: error: unrecognized arguments: {' '.join(args[-2:])}"


def _help(command: str) -> str:
    return " ".join(call_cli(command, "--help").stdout.split())


def test_each_command_shows_its_own_defaults() -> None:
    latest = "(default: the most recently trained run; a demo run only when named)"
    for command in ("predict", "submit", "report"):
        text = _help(command)
        assert latest in text and "profile name" not in text, text
    train = _help("train")
    assert "outputs go to runs/<RUN>/ (default: the profile name)" in train
    assert "config preset (default: cpu)" in train and "most recently" not in train
    demo = _help("demo")
    assert "(default: data/sample/;" in demo and "config preset (default: tiny)" in demo
    assert "outputs go to runs/<RUN>/ (default: demo)" in demo
    assert "(default: data/)" not in demo and "(default: None)" not in demo
    assert "competition slug or URL (default: digit-recognizer)" in _help("download")
    assert ("(default: the run's config key competition, which is digit-recognizer unless set "
            "when it was trained)") in _help("submit")


def test_bad_config_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 3\nfilters: lots\n")
    proc = run_cli("demo", "--config", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs"),
                   "--data", str(tmp_path / "data"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == f"error: {tmp_path / 'c.yaml'}: filters='lots' is not a valid int"
    assert not (tmp_path / "runs").exists()


# --- submission files given to `submit` -----------------------------------------------------

IDS = np.arange(1, 6)


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "file is empty"),
    (b"ImageId,Label\n", "has no rows"),
    (b"ImageId,Label\n1,0\n2,1\n3,2\n4,3\n", "has 4 rows, expected 5"),
    (b"ImageId,Label\n1,0\n2,1\n3,2\n4,3\n5,4\n6,5\n", "has 6 rows, expected 5"),
    (b"Id,Label\n1,0\n2,1\n3,2\n4,3\n5,4\n", "header is 'Id,Label', expected 'ImageId,Label'"),
    (b"ImageId,Label,Extra\n1,0,1\n2,1,1\n3,2,1\n4,3,1\n5,4,1\n", "header is 'ImageId,Label,Extra'"),
    (b"ImageId,Label\n1,0\n2,1\n2,2\n4,3\n5,4\n", "row 4: ImageId 2 appears more than once"),
    (b"ImageId,Label\n1,0\n2,1\n3,2\n5,3\n4,4\n", "row 5: ImageId 5, expected 4"),
    (b"ImageId,Label\n0,0\n1,1\n2,2\n3,3\n4,4\n", "row 2: ImageId 0, expected 1"),
    (b"ImageId,Label\n1,0\n2,10\n3,2\n4,3\n5,4\n", "row 3: Label 10 is not a digit 0\u20139"),
    (b"ImageId,Label\n1,0\n2,-1\n3,2\n4,3\n5,4\n", "row 3: Label -1 is not a digit 0\u20139"),
    (b"ImageId,Label\n1,0\n2,1.5\n3,2\n4,3\n5,4\n", "row 3, column Label: 1.5 is not an integer"),
    (b"ImageId,Label\n1,0\n2,\n3,2\n4,3\n5,4\n", "row 3, column Label: nan is not an integer"),
    (b"ImageId,Label\n1,0\n2,seven\n3,2\n4,3\n5,4\n", "row 3, column Label: 'seven' is not an integer"),
    (b'ImageId,Label\n1,0\n"2,1\n3,2\n4,3\n5,4\n', "not a valid CSV"),
    (b"ImageId,Label\n1,0\n2,1,7\n3,2\n4,3\n5,4\n", "not a valid CSV"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a valid CSV"),
])
def test_bad_submission_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "submission.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_submission(path, IDS)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_submission_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("ImageId,Label\n1,0\n2,1\n3,2\n4,3\n5,9\n")
    assert read_submission(path, IDS)["Label"].tolist() == [0, 1, 2, 3, 9]


# --- model files and arrays: safe loading ---------------------------------------------------

def test_pickled_array_is_refused(tmp_path: Path) -> None:
    from pipeline.files import load_npy

    np.save(tmp_path / "oof.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy(tmp_path / "oof.npy")


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name of the callee, call) for every call in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            out.append((".".join(reversed(parts)), node))
    return out


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


# Functions that unpack into a private staging folder, by file.
STAGING_FUNCTIONS = {"kaggle/archive.py": ("extract_archive",), "kaggle/client.py": ("download",)}


def _in_staging(tree: ast.Module, call: ast.Call, functions: tuple[str, ...]) -> bool:
    """True if `call` sits in one of `functions`, which unpack the archive into a staging folder."""
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name in functions:
            if fn.lineno <= call.lineno <= (fn.end_lineno or fn.lineno):
                return True
    return False


def test_source_loads_safely_and_writes_only_through_the_atomic_helpers() -> None:
    """Static guard over every module of pipeline/, sub-packages too: safe loaders only, no shell,
    every write atomic."""
    problems = []
    paths = sorted((CODE_ROOT / "pipeline").rglob("*.py"))
    assert len(paths) > 40 and any(p.parent.name == "training" for p in paths)  # sees the stages
    for path in paths:
        rel = path.relative_to(CODE_ROOT / "pipeline").as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for name, call in _calls(tree):
            where = f"{rel}:{call.lineno} {name}"
            last = name.rsplit(".", 1)[-1]
            if _kw(call, "shell") not in (None, False):
                problems.append(f"{where}: shell=True")
            if name in ("eval", "exec", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"):
                problems.append(f"{where}: unsafe loader")
            if name in ("np.load", "numpy.load") and _kw(call, "allow_pickle") is not False:
                problems.append(f"{where}: np.load without allow_pickle=False")
            if last == "load_model" and name != "load_model" and _kw(call, "safe_mode") is not True:
                problems.append(f"{where}: Keras load without safe_mode=True")
            if rel == "files.py":
                continue  # the atomic helpers themselves
            if _in_staging(tree, call, STAGING_FUNCTIONS.get(rel, ())):
                continue  # unpacks into a private temp folder that is moved into place only when complete
            mode = call.args[1].value if (name == "open" and len(call.args) > 1
                                          and isinstance(call.args[1], ast.Constant)) else _kw(call, "mode")
            if name == "open" and isinstance(mode, str) and set(mode) & set("wax+"):
                problems.append(f"{where}: open for writing")
            if last in ("write_text", "write_bytes") and "." in name and not name.startswith("files."):
                problems.append(f"{where}: Path.{last} is not atomic")
            if name in ("np.save", "np.savez", "np.savez_compressed", "shutil.copy", "shutil.copyfile",
                        "shutil.move", "os.rename"):
                problems.append(f"{where}: direct write")
            if last in ("to_csv", "to_json", "to_parquet") and (call.args or _kw(call, "path_or_buf")):
                problems.append(f"{where}: writes a file directly")
            if last == "save" and "." in name and not name.startswith(("np.", "numpy.")):
                problems.append(f"{where}: model saved without files.save_keras")
            if last == "savefig" and call.args and not isinstance(call.args[0], ast.Name):
                problems.append(f"{where}: figure saved straight to a path")
    assert problems == []
