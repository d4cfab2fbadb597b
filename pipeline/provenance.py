"""Where a run's results came from: library versions, the git commit, the data files' hashes and
the machine, recorded in `runs/<run>/env.json` so a result can be traced to what produced it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PROJ_ROOT, Paths
from pipeline.data.datafiles import DataFiles
from pipeline.data.load import file_sha256


def git_commit() -> tuple[str, bool]:
    """The project's git commit and whether tracked files differ from it ("", False: no git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJ_ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJ_ROOT, capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip() != ""
    except OSError:
        return "", False
    return commit, dirty


def environment(paths: Paths) -> dict[str, Any]:
    """Versions, git commit and data hashes."""
    import keras
    import tensorflow as tf

    commit, dirty = git_commit()
    files = DataFiles(Path(paths.data))
    data = {path.name: file_sha256(path) for path in (files.train, files.test) if path.is_file()}
    return {
        "python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "git_commit": commit, "git_dirty": dirty,
        "data_dir": str(paths.data), "data_sha256": data,
    }
