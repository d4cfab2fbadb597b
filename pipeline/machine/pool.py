"""Child processes for parallel work: fold workers (`train`), tuning workers (`tune`) and the
benchmark's timed workers all run through `run_jobs`.

Each job runs `target(*args)` in a fresh *spawned* process (fork is unsafe once TensorFlow has
started threads), at most `slots` at a time. Its return value comes back through a pipe; a
`UserError` comes back as one line, Ctrl-C as `KeyboardInterrupt`, anything else as the child's
traceback. A child ends itself when its parent dies, so a killed command leaves nothing behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError

CONTEXT = multiprocessing.get_context("spawn")


@dataclass
class Job:
    """One unit of work for a child process."""

    name: str
    target: Callable[..., Any]
    args: tuple = ()
    log_path: str | None = None  # send the child's stdout and stderr to this file
    env: dict[str, str] = field(default_factory=dict)  # set in the child before `target` runs


@dataclass
class _Running:
    job: Job
    proc: Any
    conn: Any
    slot: int = 0


def _watch_parent(parent: int) -> None:
    """End this process if its parent dies, so a killed run leaves no worker behind it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child(job: Job, parent: int, conn: Any) -> None:
    """A child's entry point: run the job and send back ("ok", value) or what went wrong."""
    _watch_parent(parent)
    if job.log_path:
        fd = os.open(job.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    try:
        conn.send(("ok", job.target(*job.args)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the reply
        conn.send(("interrupted", ""))
    except UserError as exc:
        conn.send(("error", str(exc)))
    except BaseException:
        text = traceback.format_exc()
        if job.log_path:
            print(text, flush=True)
        conn.send(("crash", text))


def _start(job: Job, env: dict[str, str]) -> _Running:
    receive, send = CONTEXT.Pipe(duplex=False)
    proc = CONTEXT.Process(target=_child, name=job.name, args=(job, os.getpid(), send))
    # A spawned child starts with the parent's environment: set its own (e.g. the GPU it may
    # see, which CUDA reads once at start-up) around the start.
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    send.close()
    return _Running(job, proc, receive)


def _outcome(r: _Running) -> Any:
    """The finished child's return value, or the matching exception raised here."""
    kind, value = r.conn.recv() if r.conn.poll() else ("died", r.proc.exitcode)
    r.proc.join()
    if kind == "ok":
        return value
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "error":
        raise UserError(value)
    if kind == "crash":
        raise RuntimeError(f"{r.job.name} failed in its worker process:\n{value}")
    where = f" (its output: {r.job.log_path})" if r.job.log_path else ""
    raise UserError(f"{r.job.name}: its worker process died (exit code {value}, e.g. killed for "
                    f"memory){where}; run the same command again to resume")


def _stop(running: list[_Running]) -> None:
    """Stop the children still running: a terminal's Ctrl-C has reached them already, so give
    them a moment to finish their reply before sending one more, then kill what remains."""
    deadline = time.time() + 3
    for r in running:
        r.proc.join(timeout=max(0.0, deadline - time.time()))
    for r in running:
        if r.proc.is_alive():
            os.kill(r.proc.pid, signal.SIGINT)
    for r in running:
        r.proc.join(timeout=60)
        if r.proc.is_alive():
            r.proc.kill()
            r.proc.join()


def run_jobs(jobs: list[Job], slots: int,
             on_start: Callable[[int, Job, int], None] = lambda n, job, pid: None,
             on_done: Callable[[int, Job, Any], None] = lambda n, job, value: None,
             on_tick: Callable[[], None] = lambda: None, poll: float = 0.2,
             slot_env: Callable[[int], dict[str, str]] = lambda slot: {},
             admit: Callable[[int], bool] = lambda n: True) -> list[Any]:
    """Run `jobs`, `slots` at a time; their return values in job order. The first failure stops
    the others and is raised here. `on_start(n, job, pid)` and `on_done(n, job, value)` follow
    each job; `on_tick()` runs between polls (e.g. a progress bar). A job starts in the first
    free slot (0 … slots-1) with `slot_env(slot)` added to its environment (e.g. its GPU), if
    `admit(n)` lets it when its turn comes: else it and the jobs after it never start (None)."""
    pending = list(enumerate(jobs))
    running: dict[int, _Running] = {}
    results: list[Any] = [None] * len(jobs)
    try:
        while pending or running:
            while pending and len(running) < slots:
                if not admit(pending[0][0]):
                    pending.clear()
                    break
                n, job = pending.pop(0)
                slot = min(set(range(slots)) - {r.slot for r in running.values()})
                running[n] = _start(job, {**slot_env(slot), **job.env})
                running[n].slot = slot
                on_start(n, job, running[n].proc.pid)
            time.sleep(poll)
            on_tick()
            for n in [n for n, r in running.items() if r.conn.poll() or not r.proc.is_alive()]:
                r = running.pop(n)
                results[n] = _outcome(r)
                on_done(n, r.job, results[n])
    finally:
        _stop(list(running.values()))
    return results
