"""The Kaggle kernel that trains a run on Kaggle's GPU: its folder, `kernel-metadata.json` and one
script, as `kaggle-train` pushes it and `kaggle-train --dry-run --out DIR` writes it.

The script carries everything it needs: the package as an embedded tar.gz (with the version and
commit it was built from, as an installed copy records them), the run's resolved config and the
names of the run and the competition. It holds no credentials and needs no internet: it trains
with Kaggle's preinstalled TensorFlow and Keras (refusing versions older than the package needs),
reads the competition's data where Kaggle mounts it, read-only, and leaves one archive of the run
in the working folder, which `pipeline.kaggle.pulled` checks and installs.

    write_kernel(Path("kernel"), cfg, "gpu", "NvidiaTeslaT4")  # then: kaggle kernels push -p kernel
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
from pathlib import Path
from typing import Any

from pipeline.config import CODE_ROOT, Config
from pipeline.data.datafiles import DataFiles
from pipeline.files import write_json, write_text
from pipeline.provenance import code_version, git_commit

METADATA = "kernel-metadata.json"  # the name the kaggle client reads
# The script's /kaggle: the tests point it at a made-up layout in a temp folder.
ROOT_ENV = "DIGITS_KAGGLE_ROOT"
# Kaggle's titles are 5 to 50 characters, and the slug is the slugified title.
SLUG_MAX = 50
# Kaggle's longest GPU session; the weekly quota is what really bounds a run.
SESSION_TIMEOUT_S = 12 * 3600
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"  # Kaggle's "GPU T4 x2"
# The oldest TensorFlow and Keras the package runs on: Keras 3, and the first TensorFlow whose
# `keras` is Keras 3.
MIN_VERSIONS = {"tensorflow": (2, 16), "keras": (3, 0)}


def kernel_slug(run: str) -> str:
    """The kernel's slug (and title) for run `run`: `digits-<run>` in Kaggle's slug alphabet, with
    a short hash of the name when that changed it (case, '_', '.') or it was too long."""
    slug = "digits-" + re.sub(r"[^a-z0-9]+", "-", run.lower()).strip("-")
    if slug == f"digits-{run}" and len(slug) <= SLUG_MAX:
        return slug
    tag = hashlib.sha256(run.encode()).hexdigest()[:6]
    return f"{slug[:SLUG_MAX - len(tag) - 1].rstrip('-')}-{tag}"


def archive_name(run: str) -> str:
    """The one output the kernel leaves in /kaggle/working: the run folder, packed."""
    return f"{run}.tar.gz"


def script_name(run: str) -> str:
    """The kernel script's file name."""
    return f"{kernel_slug(run)}.py"


def metadata(run: str, competition: str, accelerator: str, owner: str = "") -> dict[str, Any]:
    """kernel-metadata.json with every field the client reads written out (its defaults differ
    from ours: `enable_internet` is true when left out). Without `owner` the id is the bare slug,
    which the client takes as the pushing account's."""
    slug = kernel_slug(run)
    return {
        "id": f"{owner}/{slug}" if owner else slug,
        "title": slug,  # slugifies to the id, so Kaggle keeps that slug
        "code_file": script_name(run),
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "machine_shape": accelerator,
        "dataset_sources": [],
        "competition_sources": [competition],
        "kernel_sources": [],
        "model_sources": [],
        "keywords": [],
        # Kaggle's newest image, whose TensorFlow and Keras the script checks when it starts.
        "docker_image_pinning_type": "latest",
        # Not read by the client (`kaggle kernels push -t` passes it; kaggle-train does).
        "session_timeout_seconds": SESSION_TIMEOUT_S,
    }


def package_archive() -> bytes:
    """The package as a tar.gz, with a `_build.py` naming the version and commit it came from."""
    # Local changes show in the version (setuptools-scm's +d<date>) and in the script's header.
    build = (f"# Written by `kaggle-train` into the copy it embeds in a Kaggle kernel.\n"
             f"version = {code_version()!r}\ncommit = {git_commit()[0]!r}\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        package = CODE_ROOT / "pipeline"
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(CODE_ROOT)
            if path.is_file() and "__pycache__" not in rel.parts and path.name != "_build.py":
                tar.add(path, arcname=rel.as_posix(), recursive=False)
        info = tarfile.TarInfo("pipeline/_build.py")
        info.size = len(build.encode())
        tar.addfile(info, io.BytesIO(build.encode()))
    return buf.getvalue()


def script(cfg: Config, run: str) -> str:
    """The kernel's Python script for training run `run` with `cfg` on Kaggle."""
    commit, dirty = git_commit()
    packed = base64.encodebytes(package_archive()).decode("ascii")
    values = {
        "RUN": run, "PROFILE": cfg.profile, "COMPETITION": cfg.competition, "TRAIN": DataFiles.TRAIN,
        "ARCHIVE": archive_name(run), "ROOT_ENV": ROOT_ENV, "MIN_VERSIONS": MIN_VERSIONS,
        "CONFIG": {k: v for k, v in cfg.to_dict().items() if k != "profile"},
    }
    constants = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    return (_SCRIPT.replace("@RUN@", run).replace("@VERSION@", code_version())
            .replace("@COMMIT@", (commit or "unknown") + (" with local changes" if dirty else ""))
            .replace("@CONSTANTS@", constants).replace("@PACKAGE@", packed))


def write_kernel(folder: Path, cfg: Config, run: str, accelerator: str, owner: str = "") -> Path:
    """Write the kernel folder (kernel-metadata.json and the script) into `folder`; returns it."""
    folder = Path(folder)
    write_text(folder / script_name(run), script(cfg, run))
    write_json(folder / METADATA, metadata(run, cfg.competition, accelerator, owner))
    return folder


_SCRIPT = '''\
"""Train run @RUN@ of the digits pipeline on Kaggle, written by `python -m pipeline kaggle-train`.

Built from digits @VERSION@ (commit @COMMIT@). It carries the package (an embedded archive) and
the run's resolved config, needs no internet and holds no credentials. It trains with Kaggle's
preinstalled TensorFlow and Keras on the competition's data, read-only under /kaggle/input, and
leaves one archive of the run in /kaggle/working, which `python -m pipeline kaggle-pull` installs.
"""

import base64
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

@CONSTANTS@


def check_versions():
    """Exit non-zero, saying why, when TensorFlow or Keras is missing or older than needed."""
    found, old = {}, []
    for name, need in MIN_VERSIONS.items():
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
        have = tuple(int(part) for part in re.findall(r"\\d+", found[name])[:2])
        if have < tuple(need):
            old.append(f"{name} {found[name]} (needs {'.'.join(map(str, need))} or newer)")
    print(f"python {sys.version.split()[0]}, " + ", ".join(f"{k} {v}" for k, v in found.items()),
          flush=True)
    if old:
        print("error: this Kaggle image has " + ", ".join(old) + ", older than the digits package "
              "needs; nothing was trained", flush=True)
        sys.exit(3)


def find_data(root):
    """The competition's folder under /kaggle/input (Kaggle has mounted it in two places)."""
    for folder in (root / "input" / COMPETITION, root / "input" / "competitions" / COMPETITION):
        if (folder / TRAIN).is_file():
            return folder
    print(f"error: no {COMPETITION} data under {root / 'input'}: add the competition as the "
          "kernel's data source", flush=True)
    sys.exit(4)


def pack(run_dir, archive):
    """The run folder as one tar.gz, written beside `archive` and then renamed into place."""
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(run_dir, arcname=RUN)
    os.replace(tmp, archive)


def main():
    root = Path(os.environ.get(ROOT_ENV, "/kaggle"))
    working = root / "working"
    check_versions()
    data = find_data(root)
    runs = working / "runs"
    with tempfile.TemporaryDirectory(prefix="digits-code-") as code:  # not in working: no output
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(PACKAGE)), mode="r:gz") as tar:
            tar.extractall(code, filter="data")
        config = Path(code) / "config.json"
        config.write_text(json.dumps(CONFIG))
        command = [sys.executable, "-m", "pipeline", "train", "--data", str(data), "--runs-dir",
                   str(runs), "--run", RUN, "--profile", PROFILE, "--config", str(config),
                   "--no-report"]
        print("$ " + " ".join(command), flush=True)
        rc = subprocess.call(command, cwd=working, env={**os.environ, "PYTHONPATH": code})
    if rc:
        sys.exit(rc)
    pack(runs / RUN, working / ARCHIVE)
    shutil.rmtree(runs)  # the archive is the output (Kaggle lists at most 500 files)
    print(f"packed run {RUN} into {working / ARCHIVE}", flush=True)


PACKAGE = """
@PACKAGE@"""

if __name__ == "__main__":
    main()
'''
