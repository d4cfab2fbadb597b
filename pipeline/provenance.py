"""Where a run's results came from: library versions, the code's version and commit, the data
files' hashes and the machine, recorded in `runs/<run>/env.json` so a result can be traced to what
produced it. `digits --version` prints the same version and commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CODE_ROOT, Paths, is_checkout
from pipeline.data.datafiles import DataFiles
from pipeline.data.load import file_sha256


def _built() -> tuple[str, str]:
    """The version and commit an installed copy was built from (written by setuptools-scm)."""
    try:
        from pipeline import _build  # type: ignore[attr-defined]
    except ImportError:  # a checkout never installed, or a copy packed without building
        return "", ""
    return str(_build.version), str(_build.commit or "").removeprefix("g")


def code_version() -> str:
    """The package's version: its installed metadata, else the one it was built with."""
    try:
        return importlib.metadata.version("digits")
    except importlib.metadata.PackageNotFoundError:
        return _built()[0] or "0+unknown"


def git_commit() -> tuple[str, bool]:
    """The code's commit and whether tracked files differ from it ("", False: unknown).

    A checkout asks git; an installed or packed copy reports the commit it was built from (its
    files cannot be compared, so never dirty). git is asked only in a checkout of this project,
    never in whatever repository happens to enclose site-packages.
    """
    if not (is_checkout(CODE_ROOT) and (CODE_ROOT / ".git").exists()):
        return _built()[1], False
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=CODE_ROOT, capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip() != ""
    except OSError:
        return "", False
    return commit, dirty


def describe() -> str:
    """One line: the version and the commit, as `digits --version` prints them."""
    commit, dirty = git_commit()
    where = f"commit {commit[:12]}{' with local changes' if dirty else ''}" if commit else "commit unknown"
    return f"digits {code_version()} ({where}; code in {CODE_ROOT})"


def environment(paths: Paths) -> dict[str, Any]:
    """Versions (Python, TensorFlow, Keras, CUDA, cuDNN), git commit and data hashes; the GPUs
    themselves are the machine's (pipeline.machine.plan)."""
    import keras
    import tensorflow as tf

    commit, dirty = git_commit()
    files = DataFiles(Path(paths.data))
    data = {path.name: file_sha256(path) for path in (files.train, files.test) if path.is_file()}
    build = tf.sysconfig.get_build_info()  # the CUDA and cuDNN TensorFlow was built for, if any
    return {
        "python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
        "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
        "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "version": code_version(), "git_commit": commit,
        "git_dirty": dirty, "data_dir": str(paths.data), "data_sha256": data,
    }
