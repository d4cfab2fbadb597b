"""The execution plan is a pure function of the config and a machine description: checked here
for 1, 2 and 16 cores with 0, 1 and 4 GPUs, without any GPU."""

from __future__ import annotations

import pytest

from pipeline.config import PROFILES, resolve
from pipeline.errors import UserError
from pipeline.machine.plan import Machine, choose, cpu_info

H200 = ("NVIDIA H200", (9, 0))
K80 = ("Tesla K80", (3, 7))


def _machine(cores: int, gpus: list[tuple[str, tuple[int, int]]] = ()) -> Machine:
    return Machine(cores, tuple(g[0] for g in gpus), tuple(g[1] for g in gpus))


@pytest.mark.parametrize("cores, folds, processes, threads", [
    (1, 5, 1, 1),
    (2, 5, 2, 1),  # as measured on 2 cores: two single-threaded folds at once
    (16, 5, 5, 3),  # a process per fold, the cores shared among them
    (16, 20, 16, 1),
    (2, 1, 1, 2),  # one fold left: it gets both cores
])
def test_cpu_plan_uses_every_core(cores: int, folds: int, processes: int, threads: int) -> None:
    plan = choose(resolve("cpu"), _machine(cores), folds)
    assert (plan.device, plan.processes, plan.threads) == ("cpu", processes, threads)
    assert plan.precision == "float32" and plan.env_for_slot(0) == {}
    assert plan.line() == (f"plan: CPU ({cores} core(s)) · {processes} fold process(es) at once · "
                           f"{threads} thread(s) each · float32 · batch 64")


def test_a_last_short_round_gets_all_the_cores() -> None:
    plan = choose(resolve("cpu"), _machine(2), 5)
    assert [plan.threads_for(n, 5) for n in range(5)] == [1, 1, 1, 1, 2]
    plan = choose(resolve("cpu"), _machine(6), 5)  # 5 at once on 6 cores
    assert [plan.threads_for(n, 5) for n in range(5)] == [1] * 5
    plan = choose(resolve("cpu", sets={"workers": "3"}), _machine(6), 5)
    assert [plan.threads_for(n, 5) for n in range(5)] == [2, 2, 2, 3, 3]
    assert [plan.threads_for(n, 5, explicit=3) for n in range(5)] == [3] * 5  # threads=3 wins


@pytest.mark.parametrize("cores, gpus, folds, processes, precision", [
    (16, [H200], 5, 1, "mixed_float16"),
    (16, [H200] * 4, 5, 4, "mixed_float16"),  # a fold per GPU; the fifth waits for a free one
    (16, [H200] * 4, 2, 2, "mixed_float16"),
    (2, [K80], 5, 1, "float32"),  # no tensor cores: float16 would only be slower
])
def test_gpu_plan_is_one_process_per_gpu(cores: int, gpus: list, folds: int, processes: int,
                                         precision: str) -> None:
    plan = choose(resolve("cpu"), _machine(cores, gpus), folds)
    assert (plan.device, plan.processes, plan.precision) == ("gpu", processes, precision)
    assert plan.threads == max(1, cores // processes)
    assert [plan.env_for_slot(s) for s in range(processes)] == \
        [{"CUDA_VISIBLE_DEVICES": str(s)} for s in range(processes)]
    assert plan.line().startswith(f"plan: {len(gpus)} GPU(s)")
    # The config's batch is kept (results and resume must not depend on the machine), with a hint.
    assert plan.batch_size == 64 and plan.line().endswith(
        "batch 64 (a GPU is better used with --set batch_size=256 --set learning_rate=0.004: "
        "README, On a GPU)")
    big = choose(resolve("cpu", sets={"batch_size": "256"}), _machine(cores, gpus), folds)
    assert big.line().endswith("batch 256")


def test_the_gpu_hint_is_the_gpu_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint suggests what `--profile gpu` sets, read from PROFILES, not a copy of it."""
    monkeypatch.setitem(PROFILES["gpu"], "batch_size", 512)
    monkeypatch.setitem(PROFILES["gpu"], "learning_rate", 0.006)
    hint = " (a GPU is better used with --set batch_size=512 --set learning_rate=0.006: README, On a GPU)"
    for batch in (64, 256):
        plan = choose(resolve("cpu", sets={"batch_size": str(batch)}), _machine(16, [H200]), 5)
        assert plan.line().endswith(f"batch {batch}{hint}")
    assert choose(resolve("cpu", sets={"batch_size": "512"}), _machine(16, [H200]), 5) \
        .line().endswith("batch 512")


def test_explicit_workers_and_threads_win() -> None:
    cfg = resolve("cpu", sets={"workers": "1", "threads": "4"})
    assert (choose(cfg, _machine(16), 5).processes, choose(cfg, _machine(16), 5).threads) == (1, 4)
    assert choose(cfg, _machine(16, [H200] * 4), 5).processes == 1
    auto = resolve("cpu", sets={"workers": "auto", "threads": "auto"})
    assert (auto.workers, auto.threads) == (0, 0)
    assert choose(resolve("tiny"), _machine(16), 2).processes == 1  # the profile's own choice


_APPLY_TWICE = """
import tensorflow as tf
from pipeline.machine.plan import apply, choose, Machine
from pipeline.config import PROFILES, resolve
tf.constant(1.0) + 1.0  # TensorFlow has started: its thread pools are fixed now
plan = choose(resolve("cpu"), Machine(2), 5)
apply(plan, 1)
apply(plan, 1)
print("threads", tf.config.threading.get_intra_op_parallelism_threads())
"""


def test_a_second_run_in_one_process_keeps_the_threads_with_a_warning() -> None:
    """A notebook that has used TensorFlow, then trains: no crash, one clear warning."""
    import subprocess
    import sys

    from pipeline.config import CODE_ROOT

    proc = subprocess.run([sys.executable, "-c", _APPLY_TWICE], cwd=CODE_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "threads 0"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: TensorFlow has already started in this process: it keeps its "
                        "default thread(s) instead of 1"] * 2


# Made-up CPUs by their flags: what `precision=auto` picks must not depend on the host's CPU.
AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})
NO_BF16 = frozenset({"avx2", "avx512f"})


@pytest.mark.parametrize("flags, gpus, precision", [
    (AMX, [], "mixed_bfloat16"),
    (AVX512_BF16, [], "mixed_bfloat16"),
    (NO_BF16, [], "float32"),
    (AMX, [H200], "mixed_float16"),  # a GPU with tensor cores wins over the host's bf16
    (NO_BF16, [K80], "float32"),
])
def test_auto_precision_follows_the_machine(flags: frozenset, gpus: list, precision: str) -> None:
    machine = Machine(2, tuple(g[0] for g in gpus), tuple(g[1] for g in gpus), "a CPU", flags)
    plan = choose(resolve("cpu"), machine, 5)
    assert plan.precision == precision and f" · {precision} · " in plan.line()
    assert machine.describe()["bf16_flags"] == sorted(flags & {"amx_bf16", "avx512_bf16"})
    # An explicit precision wins; `tiny` pins float32 so the tests compute alike everywhere.
    assert choose(resolve("cpu", sets={"precision": "float32"}), machine, 5).precision == "float32"
    assert choose(resolve("tiny"), machine, 2).precision == "float32"


def test_float16_on_a_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(UserError, match=r"^config: precision=mixed_float16 needs a GPU"):
        choose(resolve("cpu", sets={"precision": "mixed_float16"}), Machine(2, cpu_flags=AMX), 5)
    with pytest.raises(UserError, match="precision='bfloat16' must be one of auto, float32"):
        resolve("cpu", sets={"precision": "bfloat16"})


def test_cpu_info_reads_the_model_name_and_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    model, flags = cpu_info(cpuinfo)
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and {"amx_bf16", "avx512_bf16"} <= flags
    assert cpu_info(tmp_path / "missing")[1] == frozenset()
