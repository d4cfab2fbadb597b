"""The execution plan: how many fold processes, threads, GPUs and which precision, chosen from
the machine a run starts on (`workers=auto`, `threads=auto`, `precision=auto`; explicit values
win).

`choose` is pure (a `Machine` in, a `Plan` out) so it is tested with made-up machines;
`this_machine` describes the real one, and `apply` configures TensorFlow in a worker process.

    CPU: one fold process per core, up to the folds to train; the cores are split among the
         processes of a round as threads (a last fold trained alone gets them all).
    GPU: one fold process per GPU (pinned with CUDA_VISIBLE_DEVICES; folds queue for a free
         GPU), memory growth.
    Precision (auto): mixed_bfloat16 on CPUs with native bfloat16 (the amx_bf16 or avx512_bf16
         flag), mixed_float16 on GPUs with tensor cores (compute capability ≥ 7), else float32.
         Where a calibration timed both (a run with a budget), float32 when bfloat16 was no
         faster: the flags misjudge some CPUs. Resolved here alone: `train`, `tune` and the
         benchmark train in the plan's.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PROFILES, Config
from pipeline.errors import UserError

AUTO = 0  # the config value of `workers` / `threads` that asks for the plan's choice
# CPU flags (as /proc/cpuinfo names them) of native bfloat16 arithmetic, which oneDNN's
# convolutions use: AMX tiles, or AVX512 bfloat16 dot products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Machine:
    """What the plan needs to know about a machine."""

    cores: int
    gpus: tuple[str, ...] = ()  # device names, e.g. ("NVIDIA H200",)
    compute_capability: tuple[tuple[int, int], ...] = ()  # per GPU, (major, minor)
    cpu: str = ""  # the CPU's model name
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo's flags

    @property
    def bf16_flags(self) -> list[str]:
        """The CPU's native-bfloat16 flags (empty: none)."""
        return [f for f in BF16_FLAGS if f in self.cpu_flags]

    @property
    def tensor_cores(self) -> bool:
        """Every GPU has tensor cores (compute capability 7.0 or newer)."""
        return (bool(self.gpus) and len(self.compute_capability) == len(self.gpus)
                and all(cc >= (7, 0) for cc in self.compute_capability))

    def describe(self) -> dict[str, Any]:
        """What env.json records of the machine."""
        return {"cpu": self.cpu, "cores": self.cores, "bf16_flags": self.bf16_flags,
                "gpus": list(self.gpus)}


@dataclass(frozen=True)
class Plan:
    """How a run's folds are executed."""

    device: str  # "cpu" or "gpu"
    processes: int  # folds trained at once, each in its own process
    threads: int  # TensorFlow threads per process while all `processes` run
    precision: str  # "float32", "mixed_bfloat16" or "mixed_float16"
    batch_size: int
    gpus: tuple[int, ...] = field(default_factory=tuple)  # GPU index of each process slot
    cores: int = 1

    def threads_for(self, n: int, total: int, explicit: int = AUTO) -> int:
        """Threads of the n-th of `total` folds: the cores split among the folds of its round."""
        if explicit:
            return explicit
        start = n - n % self.processes
        return max(1, self.cores // min(self.processes, total - start))

    def env_for_slot(self, slot: int) -> dict[str, str]:
        """Environment of the process in `slot`: its one GPU (none on CPU)."""
        if self.device != "gpu":
            return {}
        return {"CUDA_VISIBLE_DEVICES": str(self.gpus[slot % len(self.gpus)])}

    def line(self) -> str:
        """The plan as the one line `train` prints before the first fold."""
        where = (f"{len(self.gpus)} GPU(s) ({', '.join(map(str, self.gpus))})" if self.device == "gpu"
                 else f"CPU ({self.cores} core(s))")
        # The `gpu` profile's batch and learning rate, suggested rather than applied: applied,
        # they would make a run's results, and the epoch a resumed fold continues from, depend on
        # the machine.
        gpu = PROFILES["gpu"]
        hint = (f" (a GPU is better used with --set batch_size={gpu['batch_size']} --set "
                f"learning_rate={gpu['learning_rate']}: README, On a GPU)"
                if self.device == "gpu" and self.batch_size < gpu["batch_size"] else "")
        return (f"plan: {where} · {self.processes} fold process(es) at once · {self.threads} "
                f"thread(s) each · {self.precision} · batch {self.batch_size}{hint}")

    def to_dict(self) -> dict[str, Any]:
        """The plan for env.json."""
        return {"device": self.device, "processes": self.processes, "threads": self.threads,
                "precision": self.precision, "batch_size": self.batch_size,
                "gpus": list(self.gpus), "cores": self.cores}


def precision_for(requested: str, machine: Machine, speeds: dict[str, float] | None = None) -> str:
    """The precision to train in on `machine`: `requested`, or for auto the machine's best, by
    its flags, or by the images/s a calibration measured (`speeds`, per precision) where any."""
    if requested == "mixed_float16" and not machine.gpus:
        raise UserError("config: precision=mixed_float16 needs a GPU (a CPU has no fast float16); "
                        "use auto, float32 or mixed_bfloat16")
    if requested != "auto":
        return requested
    if machine.gpus:
        return "mixed_float16" if machine.tensor_cores else "float32"
    if not machine.bf16_flags:
        return "float32"
    speeds = speeds or {}
    faster = speeds.get("mixed_bfloat16", math.inf) > speeds.get("float32", 0.0)
    return "mixed_bfloat16" if faster else "float32"


def precision_candidates(requested: str, machine: Machine) -> list[str]:
    """The precisions a calibration times: the one chosen from the flags, and float32 beside a
    bfloat16 chosen by them (explicit precisions are not second-guessed)."""
    chosen = precision_for(requested, machine)
    return [chosen, "float32"] if requested == "auto" and chosen == "mixed_bfloat16" else [chosen]


def choose(cfg: Config, machine: Machine, folds: int,
           speeds: dict[str, float] | None = None) -> Plan:
    """The plan for training `folds` folds of `cfg` on `machine` (with `speeds`, the images/s a
    calibration measured per precision)."""
    folds = max(1, folds)
    cores = max(1, machine.cores)
    precision = precision_for(cfg.precision, machine, speeds)
    if machine.gpus:
        processes = cfg.workers or min(len(machine.gpus), folds)
        plan = Plan("gpu", processes, cfg.threads or max(1, cores // processes), precision,
                    cfg.batch_size, gpus=tuple(range(len(machine.gpus))), cores=cores)
    else:
        processes = cfg.workers or min(cores, folds)
        plan = Plan("cpu", processes, cfg.threads or max(1, cores // processes), precision,
                    cfg.batch_size, cores=cores)
    return plan


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags (Linux; elsewhere the platform's name and no flags)."""
    model, flags = platform.processor(), frozenset()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def this_machine() -> Machine:
    """The cores this process may use, the CPU, and the GPUs TensorFlow sees."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cpu, flags = cpu_info()
    from pipeline.console import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names, caps = [], []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(str(details.get("device_name", gpu.name)))
        if details.get("compute_capability"):
            caps.append(tuple(details["compute_capability"]))
    return Machine(cores, tuple(names), tuple(caps), cpu, flags)


def apply(plan: Plan, threads: int) -> None:
    """Configure TensorFlow in this (worker) process for `plan`; before any TensorFlow work."""
    from pipeline.console import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    current = tf.config.threading.get_intra_op_parallelism_threads()
    if threads and threads != current:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            # TensorFlow fixes its thread pools when it starts: a second run in one process (a
            # notebook, a script calling train_run twice) keeps the first run's.
            from pipeline.console import warn

            warn(f"TensorFlow has already started in this process: it keeps "
                 f"{current or 'its default'} thread(s) instead of {threads}")
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            # Without it each process reserves the whole GPU's memory up front.
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already started with its memory setting (a second run in one process)


def setup_tensorflow(cfg: Config, plan: Plan, threads: int) -> None:
    """Configure this process's TensorFlow for the plan (threads, GPU memory) and the config's
    determinism; must run before TensorFlow starts working."""
    apply(plan, threads)
    if cfg.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
