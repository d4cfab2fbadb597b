"""A Kaggle kernel's outputs, pulled into a staging folder beside the runs: unpacked, checked as
the run checks itself (config, metrics, every model present and matching its checksums), and only
then installed into the run folder, which must hold nothing but the kernel's record. A refused
pull leaves the staging folder where it is, named in the message; the run folder is untouched.

    staging = staging_dir(paths.runs, "gpu")   # pipeline.kaggle.remote downloads into it
    install(staging, paths.run_dir("gpu"))
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tarfile
from pathlib import Path

from pipeline.console import Log, warn
from pipeline.errors import UserError
from pipeline.files import run_lock
from pipeline.kaggle.kernel import archive_name
from pipeline.runfiles import (
    RunFiles,
    finished_metrics,
    fold_intact,
    load_run_config,
    read_optional,
)


def staging_dir(runs: Path, run: str) -> Path:
    """The empty staging folder for run `run`'s outputs: hidden, beside the runs (same filesystem,
    so installing is a rename); a refused earlier pull's is replaced."""
    folder = Path(runs) / f".kaggle-pull-{run}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def check_empty(run_dir: Path) -> None:
    """Refuse a run folder that holds anything but the kernel's record: a run is never overwritten."""
    rf = RunFiles(Path(run_dir))
    others = sorted(p.name for p in rf.root.iterdir() if p.name not in (rf.kaggle_kernel.name, ".lock")) \
        if rf.root.is_dir() else []
    if others:
        shown = ", ".join(others[:4]) + (", …" if len(others) > 4 else "")
        raise UserError(f"{rf.root} already holds a run ({shown}); a run is never overwritten: use "
                        f"another --run name, or `make clean-run RUN={rf.name}` to start it over")


def _unpack(staging: Path, run: str) -> Path:
    """The run folder unpacked from the kernel's archive in `staging`, or a UserError."""
    archive = staging / archive_name(run)
    if not archive.is_file():
        found = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
        raise UserError(f"the kernel's outputs hold no {archive.name} (found: {found})")
    unpacked = staging / "unpacked"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = tar.getnames()
            if any(n != run and not n.startswith(f"{run}/") for n in names):
                raise UserError(f"{archive.name} holds files outside run {run}/")
            tar.extractall(unpacked, filter="data")  # no links out, no absolute paths, no '..'
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive.name} is damaged ({type(exc).__name__}: {exc})") from None
    return unpacked / run


def _problems(run_dir: Path) -> list[str]:
    """What a pulled run lacks: config, metrics, or models that are missing or fail their checksums."""
    rf = RunFiles(run_dir)
    try:
        cfg = load_run_config(rf.root)
        finished_metrics(rf.root)
    except UserError as exc:
        return [str(exc)]
    bad = [m.label for m in rf.models(cfg) if not fold_intact(m.files.root)]
    return [f"missing or damaged (checksum mismatch): {', '.join(bad)}"] if bad else []


def _check_keras(run_dir: Path, log: Log) -> None:
    """Warn when the kernel trained with another Keras major.minor than this one loads with."""
    theirs = str((read_optional(RunFiles(run_dir).env) or {}).get("keras", ""))
    ours = importlib.metadata.version("keras")
    if theirs and theirs.split(".")[:2] != ours.split(".")[:2]:
        warn(f"the kernel trained with Keras {theirs}, this machine has Keras {ours} (another "
             "major.minor): if its models fail to load or predict here, install Keras "
             f"{'.'.join(theirs.split('.')[:2])}.x")
    elif theirs:
        log(f"the kernel trained with Keras {theirs} (this machine: {ours})")


def install(staging: Path, run_dir: Path, log: Log = print) -> None:
    """Check the outputs pulled into `staging` and move the run into `run_dir`; on any problem
    raise a UserError naming `staging`, which is kept, and leave `run_dir` as it was."""
    run_dir = Path(run_dir)
    try:
        pulled = _unpack(staging, run_dir.name)
        problems = _problems(pulled)
    except UserError as exc:
        problems, pulled = [str(exc)], None
    if problems:
        raise UserError(f"the kernel's outputs were refused: {'; '.join(problems)}; nothing was "
                        f"installed in {run_dir}, and the outputs are kept in {staging}")
    with run_lock(run_dir):
        check_empty(run_dir)
        rf = RunFiles(pulled)
        entries = sorted(pulled.iterdir(), key=lambda p: p.name == rf.metrics.name)
        for entry in entries:  # metrics.json last: the run is finished only once all is there
            os.replace(entry, run_dir / entry.name)
    shutil.rmtree(staging)
    _check_keras(run_dir, log)
