"""The package as users install it: the `digits` command, its metadata, one list of runtime
dependencies, and where an installed copy writes (under the folder it is run from)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

from pipeline.config import CODE_ROOT, Paths, project_root

PYPROJECT = tomllib.loads((CODE_ROOT / "pyproject.toml").read_text())


def _requirements(name: str) -> set[str]:
    lines = (CODE_ROOT / name).read_text().splitlines()
    return {_name(line) for line in lines if line.strip() and line[0] not in "#-"}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (`psycopg[binary]==3.3.9` → psycopg)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def test_the_digits_command_has_the_same_subcommands_and_a_version() -> None:
    assert PYPROJECT["project"]["scripts"] == {"digits": "pipeline.cli:main"}
    (entry,) = md.entry_points(group="console_scripts", name="digits")  # installed by make install
    assert entry.value == "pipeline.cli:main"
    digits = Path(sys.executable).with_name("digits")
    helps = [subprocess.run(cmd, cwd=CODE_ROOT, capture_output=True, text=True, timeout=120)
             for cmd in ([str(digits), "--help"], [sys.executable, "-m", "pipeline", "--help"])]
    assert helps[0].returncode == 0 and helps[0].stdout.startswith("usage: digits ")
    # The same commands and flags: the help from the first section on is the same text.
    sections = [h.stdout[h.stdout.index("\npositional arguments:"):] for h in helps]
    assert sections[0] == sections[1] and "    train " in sections[0]
    version = subprocess.run([str(digits), "--version"], cwd="/", capture_output=True, text=True,
                             timeout=120)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True,
                          text=True).stdout.strip()
    # The version is the installed metadata's (frozen at install); the commit is the checkout's now.
    assert version.returncode == 0
    assert re.fullmatch(rf"digits \S+ \(commit {head[:12]}( with local changes)?; code in {CODE_ROOT}\)\n",
                        version.stdout), version.stdout


def test_one_list_of_runtime_dependencies_covers_every_import() -> None:
    """pyproject.toml reads requirements.txt; test tools live apart; every third-party module the
    package imports comes from a listed distribution."""
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    runtime, dev = _requirements("requirements.txt"), _requirements("requirements-dev.txt")
    assert "pytest" not in runtime and "pytest" in dev and not runtime & dev
    assert {_name(d) for d in md.requires("digits")} == runtime
    owners = md.packages_distributions()
    imported = set()
    for path in (CODE_ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - set(sys.stdlib_module_names) if m != "pipeline"}
    missing = {m: owners.get(m) for m in third_party
               if not {_name(d) for d in owners.get(m, [])} & runtime}
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_files_beside_the_code_travel_as_package_data() -> None:
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]
    found = {}
    for path in (CODE_ROOT / "pipeline").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            package = ".".join(path.parent.relative_to(CODE_ROOT).parts)
            found.setdefault(package, []).append(path.name)
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in declared.items()}


def test_outputs_go_under_the_checkout_or_else_the_working_folder(tmp_path: Path) -> None:
    assert project_root(CODE_ROOT) == CODE_ROOT
    assert project_root(CODE_ROOT / "pipeline" / "reporting") == CODE_ROOT  # as git finds its repo
    assert project_root(tmp_path) == tmp_path.resolve()
    other = tmp_path / "other"  # a pyproject of another project is not a checkout of this one
    (other / "pipeline").mkdir(parents=True)
    (other / "pipeline" / "__init__.py").write_text("")
    (other / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert project_root(other) == other.resolve()
    assert Paths.under(tmp_path) == Paths(tmp_path / "data", tmp_path / "runs", tmp_path / "submissions")


def test_demo_run_in_an_empty_folder_writes_only_under_that_folder(demo_once: SimpleNamespace) -> None:
    """What `digits demo` does for a user of an installed copy (the session's demo ran so)."""
    root = demo_once.root
    assert sorted(p.name for p in root.iterdir()) == ["data", "runs", "submissions"]
    assert sorted(p.name for p in (root / "data").iterdir()) == ["sample"]
    assert (root / "runs" / "demo" / "report.html").is_file()
    assert (root / "submissions" / "demo.csv").is_file()
    started = (root / "data" / "sample" / "train.csv").stat().st_mtime
    # The code's own folder got nothing from it.
    for there in (CODE_ROOT / "runs" / "demo", CODE_ROOT / "data" / "sample",
                  CODE_ROOT / "submissions" / "demo.csv"):
        assert not there.exists() or all(p.stat().st_mtime < started for p in [there, *there.rglob("*")])
