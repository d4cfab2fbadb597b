"""The execution plan: how many fold processes, threads, GPUs and which precision, chosen from
the machine a run starts on (`workers=auto`, `threads=auto`; explicit values win).

`choose` is pure (a `Machine` in, a `Plan` out) so it is tested with made-up machines;
`this_machine` describes the real one, and `apply` configures TensorFlow in a worker process.

    CPU: one fold process per core, up to the folds to train; the cores are split among the
         processes of a round as threads (a last fold trained alone gets them all).
    GPU: one fold process per GPU (pinned with CUDA_VISIBLE_DEVICES; folds queue for a free
         GPU), memory growth, mixed_float16 on GPUs with tensor cores (compute capability ≥ 7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config

AUTO = 0  # the config value of `workers` / `threads` that asks for the plan's choice
# What the plan suggests on a GPU, where batches of 64 leave it mostly idle; it does not apply
# them itself, because then a run's results, and the epoch a resumed fold continues from, would
# depend on the machine. On CPU fold 1 this pair scored as the default (60 errors against 58 on
# 13,440 paired images, p = 0.85; scripts/results/fold-screens-holdout.json).
GPU_BATCH, GPU_LEARNING_RATE = 256, 0.004


@dataclass(frozen=True)
class Machine:
    """What the plan needs to know about a machine."""

    cores: int
    gpus: tuple[str, ...] = ()  # device names, e.g. ("NVIDIA H200",)
    compute_capability: tuple[tuple[int, int], ...] = ()  # per GPU, (major, minor)


@dataclass(frozen=True)
class Plan:
    """How a run's folds are executed."""

    device: str  # "cpu" or "gpu"
    processes: int  # folds trained at once, each in its own process
    threads: int  # TensorFlow threads per process while all `processes` run
    precision: str  # "float32" or "mixed_float16"
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
        hint = (f" (a GPU is better used with --set batch_size={GPU_BATCH} --set learning_rate="
                f"{GPU_LEARNING_RATE}: README, On a GPU)"
                if self.device == "gpu" and self.batch_size < GPU_BATCH else "")
        return (f"plan: {where} · {self.processes} fold process(es) at once · {self.threads} "
                f"thread(s) each · {self.precision} · batch {self.batch_size}{hint}")

    def to_dict(self) -> dict[str, Any]:
        """The plan for env.json."""
        return {"device": self.device, "processes": self.processes, "threads": self.threads,
                "precision": self.precision, "batch_size": self.batch_size,
                "gpus": list(self.gpus), "cores": self.cores}


def choose(cfg: Config, machine: Machine, folds: int) -> Plan:
    """The plan for training `folds` folds of `cfg` on `machine`."""
    folds = max(1, folds)
    cores = max(1, machine.cores)
    if machine.gpus:
        processes = cfg.workers or min(len(machine.gpus), folds)
        tensor_cores = all(cc >= (7, 0) for cc in machine.compute_capability) \
            and len(machine.compute_capability) == len(machine.gpus)
        plan = Plan("gpu", processes, cfg.threads or max(1, cores // processes),
                    "mixed_float16" if tensor_cores else "float32", cfg.batch_size,
                    gpus=tuple(range(len(machine.gpus))), cores=cores)
    else:
        processes = cfg.workers or min(cores, folds)
        plan = Plan("cpu", processes, cfg.threads or max(1, cores // processes), "float32",
                    cfg.batch_size, cores=cores)
    return plan


def this_machine() -> Machine:
    """The cores this process may use and the GPUs TensorFlow sees."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
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
    return Machine(cores, tuple(names), tuple(caps))


def apply(plan: Plan, threads: int) -> None:
    """Configure TensorFlow in this (worker) process for `plan`; before any TensorFlow work."""
    from pipeline.console import quiet_tensorflow

    quiet_tensorflow()
    import keras
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
    keras.mixed_precision.set_global_policy(plan.precision)
