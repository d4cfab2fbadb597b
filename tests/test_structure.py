"""How the code holds together: no import cycle, config key roles declared once, fold models that
any Keras loads, the bugs found by reading the code, and a quiet console."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import config
from pipeline.config import CODE_ROOT
from tests.conftest import call_cli, last_error_line, run_cli

PACKAGE = CODE_ROOT / "pipeline"

# Who may import whom, written once. Each entry is a package of pipeline/ (a stage folder) or a
# module of the top floor; the list runs from the top (the command line) to the ground. A module
# imports from its own package or from a package on a lower layer: never upward, never sideways.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"reporting"},
    {"tuning"},
    {"training", "kaggle"},
    {"prediction"},
    {"runfiles", "provenance"},
    {"modeling", "machine", "data"},
    {"config", "files"},
    {"console", "errors", "__init__", "_build"},  # _build: written by setuptools-scm at install
]


def _modules() -> dict[str, Path]:
    """Every module of the package, sub-packages too, by dotted name."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(CODE_ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pipeline modules a file imports anywhere in it (lazy imports inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            for a in node.names:  # `from pipeline.pkg import module` names the module
                full = f"{node.module}.{a.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pipeline."))
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    """Each pipeline module → the pipeline modules it imports."""
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _package(module: str) -> str:
    """The entry of LAYERS a module belongs to: its stage folder, or itself on the top floor."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs upward or sideways in LAYERS, and every module LAYERS does not place."""
    layer = {pkg: i for i, floor in enumerate(LAYERS) for pkg in floor}
    out = [f"{m}: its package {_package(m)!r} is on no layer" for m in graph if _package(m) not in layer]
    for module, deps in sorted(graph.items()):
        here = _package(module)
        for dep in sorted(deps):
            there = _package(dep)
            if there != here and here in layer and layer.get(there, -1) <= layer[here]:
                out.append(f"{module} imports {dep}: {there!r} is not below {here!r}")
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle found, as `a → b → a`."""
    done: set[str] = set()
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(" → ".join(path[path.index(node):] + [node]))
            return
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    return cycles


def test_the_package_import_graph_has_no_cycle_and_no_import_upward() -> None:
    graph = _graph()
    # The parser sees the stages and their imports, lazy ones included.
    assert len(graph) > 40 and "pipeline.training.train" in graph
    assert "pipeline.modeling.model" in graph["pipeline.training.train"]
    assert "pipeline.reporting.figures" in graph["pipeline.reporting.report"]
    assert import_cycles(graph) == []
    assert layering_violations(graph) == []


def test_the_layering_check_fails_on_an_import_upward_sideways_or_in_a_circle() -> None:
    graph = _graph()
    upward = {**graph, "pipeline.data.load": graph["pipeline.data.load"] | {"pipeline.reporting.figures"}}
    assert layering_violations(upward) == [
        "pipeline.data.load imports pipeline.reporting.figures: 'reporting' is not below 'data'"]
    sideways = {**graph, "pipeline.kaggle.submit": graph["pipeline.kaggle.submit"] | {"pipeline.training.jobs"}}
    assert len(layering_violations(sideways)) == 1
    unplaced = {**graph, "pipeline.extra.thing": set()}
    assert layering_violations(unplaced) == ["pipeline.extra.thing: its package 'extra' is on no layer"]
    circle = {**graph, "pipeline.data.folds": graph["pipeline.data.folds"] | {"pipeline.data.load"},
              "pipeline.data.load": graph["pipeline.data.load"] | {"pipeline.data.folds"}}
    assert import_cycles(circle) and layering_violations(circle) == []


def test_the_run_folder_and_the_report_need_no_keras() -> None:
    """Describing a run folder, loading a finished run and drawing its page import no Keras:
    `pipeline.modeling.model` is reached from none of them, lazily or not."""
    graph = _graph()
    for start in ("pipeline.runfiles", "pipeline.reporting.rundata", "pipeline.reporting.report", "pipeline.reporting.summary"):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        assert "pipeline.modeling.model" not in seen, start


def test_config_key_roles_are_declared_once_and_cover_every_key() -> None:
    keys = {f.name for f in config.fields(config.Config)}
    assert all(config.role(k) in config.ROLES for k in keys)
    assert config.keys_with("execution") == {"threads", "workers", "deterministic", "competition"}


def test_what_each_stage_ignores_follows_the_key_roles(tmp_path: Path) -> None:
    """What tune, a resumed study and compare leave out, seen in what they do (not by comparing
    each stage's constant with the keys_with() call that defines it)."""
    import optuna

    from pipeline.config import Config, Paths
    from pipeline.data.folds import Split
    from pipeline.reporting import summary
    from pipeline.tuning import space, tune
    from pipeline.tuning.study import Settings

    # tune: with every key pinned, a trial's params (what best_params.json holds, what train
    # copies) are exactly the model keys: no split, prediction, execution or numerics key.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = space.suggest(optuna.create_study().ask(), Config().to_dict(), (1, 2))
    assert set(params) == config.keys_with("model")
    assert "holdout" not in params and "precision" not in params and "label_smoothing" in params

    # A study resumes with other workers, threads, TTA, study name or competition, but not with
    # another model, split or arithmetic.
    def setup(**pinned: object) -> dict:
        settings = Settings(study="s", storage="sqlite://", paths=Paths(tmp_path, tmp_path, tmp_path),
                            base=Config(), pinned=pinned)
        return tune._setup_record(settings, Split(x=None, y=np.zeros(10, np.uint8), fold_of=None))

    plain = setup()
    assert setup(workers=2, threads=1, deterministic=True, tta=False, study="x",
                 competition="c") == plain
    for key, value in (("dropout", 0.3), ("seed", 7), ("precision", "float32")):
        assert setup(**{key: value}) != plain, key

    # compare: two runs differing in how they ran (workers, threads, TTA) and in one model
    # key list only the model key among the settings that differ.
    for name, changed in (("a", {}), ("b", {"workers": 2, "threads": 1, "tta": False,
                                             "dropout": 0.3})):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({**Config().to_dict(), **changed}))
        (run / "metrics.json").write_text(json.dumps({"folds": [], "cv_accuracy": 0.9,
                                                      "fold_accuracy_mean": 0.9,
                                                      "fold_accuracy_std": 0.0}))
    rows = summary.compare_rows(tmp_path / "runs", ["a", "b"])
    assert list(rows["settings that differ"]) == ["dropout=0.1", "dropout=0.3"]


def test_a_fold_model_loads_compiled_in_plain_keras(tiny_run) -> None:  # type: ignore[no-untyped-def]
    """Outside the pipeline: a process that never imports it loads, evaluates and predicts."""
    model = tiny_run.run_dir / "fold_0" / "model.keras"
    code = f"""
import sys, numpy as np, keras
m = keras.models.load_model({str(model)!r})
assert not any(name == "pipeline" or name.startswith("pipeline.") for name in sys.modules)
assert m.optimizer is not None and m.compiled
x = np.zeros((3, 28, 28, 1), dtype=np.uint8)
print(type(m.loss).__name__, round(float(m.loss.label_smoothing), 3),
      type(m.optimizer.learning_rate).__name__ if hasattr(m.optimizer, "learning_rate") else "",
      m.predict(x, verbose=0).shape, len(m.evaluate(x, np.eye(10)[[1, 2, 3]], verbose=0)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:2] == ["CategoricalCrossentropy", "0.1"], proc.stdout
    assert "(3, 10)" in proc.stdout and proc.stdout.strip().endswith("2")


def test_first_lines_are_the_pipelines_own(tiny_run) -> None:  # type: ignore[no-untyped-def]
    """`demo` (what `make demo` runs): no TensorFlow start-up lines before, between or after."""
    lines = tiny_run.stdout.splitlines()
    assert lines[0].startswith("run 'demo': profile tiny")
    # The execution plan, one line before the first fold, and recorded in env.json.
    assert lines[1].startswith("plan: CPU (") and "1 fold process(es) at once" in lines[1]
    plan = json.loads((tiny_run.run_dir / "env.json").read_text())["plan"]
    assert plan["device"] == "cpu" and plan["processes"] == 1 and plan["precision"] == "float32"
    noise = ("oneDNN", "cuda", "absl", "TF_ENABLE_ONEDNN_OPTS", "I0000", "E0000", "retracing")
    assert not [line for line in tiny_run.stderr.splitlines() if any(n in line for n in noise)]
    assert not [line for line in tiny_run.stdout.splitlines() if any(n in line for n in noise)]


def test_verbose_shows_the_libraries_lines(tiny_run, sample_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("--verbose", "predict", "--no-report", "--run", "demo", "--data", str(tiny_run.data),
                   "--runs-dir", str(tiny_run.runs), "--submissions-dir", str(tmp_path))
    assert "oneDNN" in proc.stderr or "cuda" in proc.stderr.lower(), proc.stderr[-2000:]


def test_train_with_a_study_keeps_deterministic(sample_dir: Path, tmp_path: Path) -> None:
    """`train --study NAME --deterministic` used to rebuild the config from --set alone."""
    study = tmp_path / "runs" / "tune" / "s"
    study.mkdir(parents=True)
    (study / "best_params.json").write_text(json.dumps({
        "params": {"filters": 8, "dense_units": 16}, "best_trial": 0, "value": 0.5,
        "budget": {"profile": "tiny"}}))
    run_cli("train", "--profile", "tiny", "--study", "s", "--deterministic", "--max-folds", "1",
            "--set", "epochs=1", "--data", str(sample_dir), "--runs-dir", str(tmp_path / "runs"),
            "--run", "r")
    saved = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert saved["deterministic"] is True and saved["filters"] == 8 and saved["study"] == "s"


def test_a_damaged_split_file_is_one_line(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.run_dir, runs / "demo")
    (runs / "demo" / "folds.npy").write_bytes(b"\x93NUMPY garbage")
    common = ["--run", "demo", "--data", str(tiny_run.data), "--runs-dir", str(runs)]
    for command in (["predict", *common, "--submissions-dir", str(tmp_path / "s")],
                    ["report", *common]):
        proc = call_cli(*command, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert last_error_line(proc).startswith(f"error: {runs / 'demo' / 'folds.npy'}: unreadable")
    # The shared split cache is rebuilt, not trusted, when damaged.
    from pipeline.data.folds import load_folds, make_folds

    y = pd.read_csv(tiny_run.data / "train.csv", usecols=["label"])["label"].to_numpy()
    load_folds(tmp_path / "cache", y, 2, 42)
    (cache,) = (tmp_path / "cache" / "folds").glob("*.npy")
    cache.write_bytes(b"not numpy")
    assert np.array_equal(load_folds(tmp_path / "cache", y, 2, 42), make_folds(y, 2, 42))


def test_predict_and_blend_wait_for_no_one_they_refuse_a_busy_run(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.files import run_lock

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.run_dir, runs / "demo")
    common = ["--data", str(tiny_run.data), "--runs-dir", str(runs), "--submissions-dir",
              str(tmp_path / "s")]
    with run_lock(runs / "demo"):
        proc = run_cli("predict", "--run", "demo", *common, check=False)
    assert proc.returncode == 2 and "another command (pid" in last_error_line(proc)
    assert not (tmp_path / "s").exists()  # nothing written
    shutil.copytree(tiny_run.run_dir, runs / "demo2")
    with run_lock(runs / "both"):
        proc = run_cli("blend", "demo", "demo2", "--name", "both", *common, check=False)
    assert proc.returncode == 2 and "another command (pid" in last_error_line(proc)


@pytest.mark.parametrize("labels, message", [
    ([3] * 40, "no image of digit(s) 0, 1, 2, 4, 5, 6, 7, 8, 9 among 40 rows"),
    ([d for d in range(10) for _ in range(4)] + [7], "digit(s) 0 (4), 1 (4), 2 (4)"),
])
def test_train_refuses_missing_or_too_rare_digits(tmp_path: Path, labels: list[int],
                                                   message: str) -> None:
    rng = np.random.default_rng(0)
    rows = np.column_stack([labels, rng.integers(0, 256, (len(labels), 784))])
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(rows, columns=["label", *[f"pixel{i}" for i in range(784)]]).to_csv(
        data / "train.csv", index=False)
    proc = call_cli("train", "--profile", "tiny", "--set", "folds=5", "--data", str(data),
                    "--runs-dir", str(tmp_path / "runs"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in last_error_line(proc), last_error_line(proc)
    assert not (tmp_path / "runs" / "tiny").exists()
