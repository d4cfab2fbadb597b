"""`kaggle-train`, `kaggle-status` and `kaggle-pull` against the fake Kaggle API: the real kaggle
client over a socket, and the real kernel script, run once per session in a made-up /kaggle.

The session's kernel (`kernel_run`) is pushed with `--no-wait`; the script the fake server
received then trains the embedded sample locally (tiny profile, 2 folds of 1 epoch), with the
competition's data in a read-only-by-contract input folder. Its archive is what the fake serves
as that version's output, and what the other tests' kernels "produce".
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.kaggle.kernel import ROOT_ENV, kernel_slug
from pipeline.kaggle.remote import POLL_ENV
from tests.conftest import call_cli
from tests.fake_kaggle import (
    KEY,
    SIGNATURE,
    TOKEN,
    FakeKaggle,
    client_env,
    write_kaggle_json,
)
from tests.test_kaggle import RULES, cli, user_error

RUN = "kg"
REF = f"fakeuser/{kernel_slug(RUN)}"
ARCHIVE = f"{RUN}.tar.gz"
TINY = ("--profile", "tiny", "--set", "folds=2", "--set", "epochs=1")
FAST_POLLS = "0.01,0.05"


def mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")}


def run_script(text: str, root: Path, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    """Run a kernel script as Kaggle would, with `root` as its /kaggle."""
    script = root / "script.py"
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update({ROOT_ENV: str(root), "PYTHONPATH": extra_path, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return subprocess.run([sys.executable, str(script)], cwd=root / "working", env=env,
                          capture_output=True, text=True, timeout=600)


def kaggle_layout(root: Path, sample_dir: Path) -> Path:
    """A made-up /kaggle: the competition's files in input/, an empty working/."""
    shutil.copytree(sample_dir, root / "input" / "digit-recognizer")
    (root / "working").mkdir()
    return root / "input" / "digit-recognizer"


@pytest.fixture(scope="session")
def kernel_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path):
    """`kaggle-train --no-wait` pushed once, and the script Kaggle received, run locally."""
    base = tmp_path_factory.mktemp("kernel")
    server = FakeKaggle().start()
    write_kaggle_json(base / "home" / ".kaggle")
    env = client_env(server, base / "home", base / "hook")
    runs = base / "runs"
    pushed = cli(env, "kaggle-train", *TINY, "--run", RUN, "--no-wait", "--runs-dir", runs)
    assert pushed.returncode == 0, pushed.stderr
    version = server.kernels[REF][-1]
    data = kaggle_layout(base / "kaggle", sample_dir)
    before = mtimes(data)
    proc = run_script(version["request"]["text"], base / "kaggle")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    working = {p.name: p.read_bytes() for p in (base / "kaggle" / "working").iterdir()}
    yield SimpleNamespace(server=server, env=env, runs=runs, pushed=pushed, version=version,
                          data=data, before=before, after=mtimes(data), proc=proc, working=working,
                          archive=working.get(ARCHIVE, b""), sample=sample_dir)
    server.stop()


@pytest.fixture
def kaggle(kernel_run: SimpleNamespace, tmp_path: Path):
    """A fresh fake Kaggle whose pushed kernels produce the session kernel's archive and log."""
    server = FakeKaggle(kernel_files={ARCHIVE: kernel_run.archive},
                        kernel_log=kernel_run.proc.stdout).start()
    write_kaggle_json(tmp_path / "home" / ".kaggle")
    env = client_env(server, tmp_path / "home", tmp_path / "hook")
    env[POLL_ENV] = FAST_POLLS
    yield SimpleNamespace(server=server, env=env, runs=tmp_path / "runs",
                          run_dir=tmp_path / "runs" / RUN)
    server.stop()


def train(k: SimpleNamespace, *args: object) -> subprocess.CompletedProcess[str]:
    return cli(k.env, "kaggle-train", *TINY, "--run", RUN, "--runs-dir", k.runs, *args)


def repack(archive: bytes, drop: str = "", keras: str = "") -> bytes:
    """The kernel's archive without member `drop`, or with env.json's Keras version changed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, \
            tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            if member.name == drop:
                continue
            data = src.extractfile(member).read() if member.isfile() else None
            if keras and member.name == f"{RUN}/env.json":
                data = json.dumps({**json.loads(data), "keras": keras}).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def status_labels(server: FakeKaggle) -> list[str | None]:
    return [json.loads(r.body).get("versionLabel") for r in server.requests
            if r.path.endswith("/GetKernelSessionStatus")]


# ---------------------------------------------------------------------------- the kernel itself


def test_the_kernel_trains_on_kaggle_and_its_run_is_pulled_and_predicts(kernel_run, tmp_path):
    k = kernel_run
    request = k.version["request"]
    # The kernel as pushed: private, GPU on, internet off, the competition attached, every field.
    assert request["slug"] == REF and request["newTitle"] == kernel_slug(RUN)
    assert (request["isPrivate"], request["enableGpu"], request["enableTpu"],
            request["enableInternet"]) == (True, True, False, False)
    assert request["competitionDataSources"] == ["digit-recognizer"]
    assert request["sessionTimeoutSeconds"] == 12 * 3600
    assert request["dockerImagePinningType"] == "latest"
    assert request["machineShape"] == "NvidiaTeslaT4"
    assert (request["language"], request["kernelType"]) == ("python", "script")
    assert all(secret not in request["text"] for secret in (KEY, TOKEN, SIGNATURE, "fakeuser"))
    assert "quota: 29.0 h left of 30.0 h" in k.pushed.stdout
    # The record, alone in the run folder until a pull.
    record = json.loads((k.runs / RUN / "kaggle_kernel.json").read_text())
    assert (record["ref"], record["version"], record["status"]) == (REF, 1, "QUEUED")
    assert record["url"] == f"https://www.kaggle.com/code/{REF}"
    assert sorted(p.name for p in (k.runs / RUN).iterdir()) == ["kaggle_kernel.json"]
    # In the kernel: the input folder untouched, one archive left in the working folder.
    assert k.before == k.after
    assert list(k.working) == [ARCHIVE]
    assert "tensorflow 2." in k.proc.stdout and f"packed run {RUN}" in k.proc.stdout
    # What Kaggle would serve for version 1: the archive and the log.
    k.version.update(files=dict(k.working), log=k.proc.stdout)
    pulled = cli({**k.env, POLL_ENV: FAST_POLLS}, "kaggle-pull", "--run", RUN, "--runs-dir", k.runs)
    assert pulled.returncode == 0, pulled.stderr
    assert f"  | packed run {RUN}" in pulled.stdout  # the kernel's log, shown as it came
    assert f"installed run '{RUN}'" in pulled.stdout
    assert not list(k.runs.glob(".kaggle-pull-*"))  # the staging folder is gone
    env_json = json.loads((k.runs / RUN / "env.json").read_text())
    assert {"python", "tensorflow", "keras", "cuda", "cudnn", "machine"} <= set(env_json)
    assert env_json["git_commit"]  # the commit the embedded copy was built from
    # Its models load and predict with the local Keras.
    subs = tmp_path / "subs"
    call_cli("predict", "--run", RUN, "--data", str(k.sample), "--runs-dir", str(k.runs),
             "--submissions-dir", str(subs), "--no-report")
    assert len(pd.read_csv(subs / f"{RUN}.csv")) == 540
    # A run with models is never overwritten: neither by another pull nor by a new push (both
    # refused before the client is loaded, so run in this process).
    requests = len(k.server.requests)
    for command in ("kaggle-pull", "kaggle-train"):
        again = call_cli(command, "--run", RUN, "--runs-dir", str(k.runs), check=False)
        assert again.returncode == 2 and "already holds a run" in again.stderr
    assert len(k.server.requests) == requests


def test_dry_run_writes_the_kernel_with_no_credentials_and_no_network(tmp_path):
    env = client_env(None, tmp_path / "home", tmp_path / "hook")  # no credentials, no server
    out = tmp_path / "kernel"
    r = cli(env, "kaggle-train", "--run", "night", "--dry-run", "--out", out, "--runs-dir",
            tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["id"] == meta["title"] == "digits-night" and meta["code_file"] == "digits-night.py"
    assert (meta["enable_gpu"], meta["enable_internet"], meta["is_private"]) == (True, False, True)
    assert meta["competition_sources"] == ["digit-recognizer"]
    assert meta["docker_image_pinning_type"] == "latest"
    text = (out / "digits-night.py").read_text()
    compile(text, "digits-night.py", "exec")
    assert "PROFILE = 'gpu'" in text and "'batch_size': 256" in text  # the gpu profile, resolved
    assert not (tmp_path / "runs").exists()
    again = call_cli("kaggle-train", "--dry-run", "--out", str(out), check=False)
    assert again.returncode == 2
    assert again.stderr.strip().endswith("not empty; name a new or empty folder for the kernel")


def test_slugs_stay_within_kaggles_limits():
    assert kernel_slug("gpu") == "digits-gpu"
    long, other = "a" * 64, "a" * 63 + "b"
    assert len(kernel_slug(long)) == 50 and kernel_slug(long) != kernel_slug(other)
    assert kernel_slug("My_Run") != kernel_slug("my-run")  # case and '_' change it: hashed


def test_the_script_refuses_an_old_keras(kernel_run, tmp_path):
    old = tmp_path / "old"
    (old / "keras-2.15.0.dist-info").mkdir(parents=True)
    (old / "keras-2.15.0.dist-info" / "METADATA").write_text("Name: keras\nVersion: 2.15.0\n")
    kaggle_layout(tmp_path / "kaggle", kernel_run.sample)
    proc = run_script(kernel_run.version["request"]["text"], tmp_path / "kaggle", str(old))
    assert proc.returncode != 0
    assert "keras 2.15.0 (needs 3.0 or newer)" in proc.stdout and "nothing was trained" in proc.stdout
    assert not list((tmp_path / "kaggle" / "working").iterdir())


# ---------------------------------------------------------------------------- following a kernel


def test_an_older_complete_version_is_not_taken_for_the_new_one(kaggle, kernel_run):
    # Version 1 ran long ago and is COMPLETE; asked without a version, Kaggle answers for it.
    kaggle.server.kernels[REF] = [{"request": {}, "steps": ["COMPLETE"], "polls": 1, "failure": "",
                                   "log": "old version\n", "files": {ARCHIVE: b"not this one"}}]
    r = train(kaggle)
    assert r.returncode == 0, r.stderr
    assert "pushed kernel fakeuser/digits-kg version 2" in r.stdout
    assert set(status_labels(kaggle.server)) == {"v2"}
    assert "kernel version 2: RUNNING" in r.stdout and "old version" not in r.stdout
    assert (kaggle.run_dir / "metrics.json").is_file()
    record = json.loads((kaggle.run_dir / "kaggle_kernel.json").read_text())
    assert (record["version"], record["status"]) == (2, "COMPLETE") and record["pulled_at"]
    # Trained in float16 on a T4 (precision=auto resolved there), the run cannot grow on a CPU:
    # refused in one line.
    config = kaggle.run_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "precision": "mixed_float16"}))
    grow = call_cli("train", *TINY, "--set", "precision=auto", "--run", RUN, "--runs-dir",
                    str(kaggle.runs), "--data", str(kernel_run.sample), "--set", "refit=1",
                    "--no-report", check=False)
    assert grow.returncode == 2
    assert grow.stderr.strip().splitlines()[-1].startswith(
        "error: config: precision=mixed_float16 needs a GPU")


def test_a_kernel_ending_in_error_shows_why_and_installs_nothing(kaggle):
    kaggle.server.kernel_steps = ("QUEUED", "RUNNING", "ERROR")
    kaggle.server.kernel_failure = "Your notebook tried to allocate more memory than is available."
    kaggle.server.kernel_log = "".join(f"line {i}\n" for i in range(30))
    r = train(kaggle)
    line = user_error(r)
    assert "ended ERROR: Your notebook tried to allocate more memory" in line
    assert "nothing was installed" in line
    tail = r.stdout[r.stdout.rindex("kernel version 1: ERROR"):]
    assert "  | line 29" in tail and "  | line 10" in tail and "  | line 9\n" not in tail
    assert sorted(p.name for p in kaggle.run_dir.iterdir()) == ["kaggle_kernel.json"]
    assert json.loads((kaggle.run_dir / "kaggle_kernel.json").read_text())["status"] == "ERROR"


def test_a_timeout_says_how_to_pull_later_and_a_running_kernel_is_not_pushed_again(kaggle):
    kaggle.server.kernel_steps = ("QUEUED", "RUNNING")  # runs on and on
    line = user_error(train(kaggle, "--timeout", "0.3"))
    assert "still RUNNING" in line and f"kaggle-pull --run {RUN}" in line
    again = train(kaggle)
    assert "already has kernel version 1 RUNNING" in user_error(again)
    assert len(kaggle.server.kernels[REF]) == 1
    status = cli(kaggle.env, "kaggle-status", "--run", RUN, "--runs-dir", kaggle.runs)
    assert "version 1 is RUNNING" in status.stdout


def test_no_gpu_quota_left_pushes_nothing(kaggle):
    kaggle.server.gpu_quota = (30 * 3600.0, 30 * 3600.0)
    line = user_error(train(kaggle))
    assert "no Kaggle GPU quota left (30.0 h used of 30.0 h this week" in line
    assert "SaveKernel" not in kaggle.server.calls() and not kaggle.runs.exists()


def test_rate_limited_status_checks_are_waited_out(kaggle, kernel_run):
    kaggle.server.kernel_429 = 3
    kaggle.server.kernel_files = {ARCHIVE: repack(kernel_run.archive, keras="3.0.0")}
    r = train(kaggle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("rate-limiting status checks (429)") == 3
    assert "trained with Keras 3.0.0" in r.stderr  # another major.minor than the local one
    assert (kaggle.run_dir / "metrics.json").is_file()


def test_outputs_missing_a_model_are_refused_and_kept(kaggle, kernel_run):
    kaggle.server.kernel_files = {ARCHIVE: repack(kernel_run.archive, drop=f"{RUN}/fold_1/model.keras")}
    line = user_error(train(kaggle))
    staging = kaggle.runs / f".kaggle-pull-{RUN}"
    assert "refused: missing or damaged (checksum mismatch): fold 2" in line
    assert f"kept in {staging}" in line and (staging / ARCHIVE).is_file()
    assert sorted(p.name for p in kaggle.run_dir.iterdir()) == ["kaggle_kernel.json"]


def test_an_unknown_competition_or_rules_not_accepted_push_nothing(kaggle):
    line = user_error(train(kaggle, "--set", "competition=digit-recogniser"))
    assert "'digit-recogniser' not found" in line
    kaggle.server.errors["GetSubmissionLimits"] = (403, RULES)
    line = user_error(train(kaggle))
    assert "accept the competition rules" in line
    assert "https://www.kaggle.com/competitions/digit-recognizer/rules" in line
    assert "SaveKernel" not in kaggle.server.calls() and not kaggle.run_dir.exists()
