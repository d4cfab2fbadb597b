"""A smoke run of scripts/benchmark.py on the embedded sample: it measures and writes its JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import CODE_ROOT


def test_benchmark_smoke(sample_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--data", str(sample_dir), "--profile", "tiny",
         "--images", "256", "--cv", "tiny", "--holdout", "0.2", "--set", "epochs=1",
         "--oof-tta", "bench-tiny", "--runs-dir", str(tmp_path / "runs"),
         "--submissions-dir", str(tmp_path / "subs")],
        cwd=CODE_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (out,) = (tmp_path / "runs" / "bench").glob("*.json")
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["tensorflow"]
    assert result["machine"]["cpu"] and isinstance(result["machine"]["bf16_flags"], list)
    # Both load timings are taken (which is faster is the machine's business, not the test's).
    assert result["load"]["rows"] == 1257
    assert result["load"]["cold_csv_s"] > 0 and result["load"]["cached_s"] > 0
    t = result["throughput"]
    assert t["train_img_s_plain"] > 0 and t["train_img_s_augment"] > 0 and t["inference_img_s"] > 0
    # Each precision × BatchNorm kernel, in one process (tiny's plan is one process).
    assert set(t["train_img_s_by_form"]) == {"float32/keras", "float32/fused",
                                             "mixed_bfloat16/keras", "mixed_bfloat16/fused"}
    assert all(set(v) == {"1"} and v["1"] > 0 for v in t["train_img_s_by_form"].values())
    assert t["form"] == "float32/fused"  # tiny pins float32; train uses the fused kernel
    assert t["train_img_s_augment"] == t["train_img_s_by_form"]["float32/fused"]["1"]
    cores = result["machine"]["cores"]
    assert set(t["train_img_s_by_workers"]) == {str(w) for w in range(1, cores + 1)}
    assert all(rate > 0 for rate in t["train_img_s_by_workers"].values())
    # The plan for the timed config: `tiny` pins one fold process (the speeds above are what a
    # user compares it with).
    assert t["plan"]["processes"] == 1 and t["plan"]["line"].startswith("plan: CPU")
    assert 1 <= t["fastest_workers"] <= cores
    cv = result["cv"]
    assert len(cv["fold_accuracy"]) == 2 and 0 < cv["oof_accuracy"] <= 1
    assert cv["total_wall_s"] >= cv["train_wall_s"] > 0
    # The leaderboard estimate: the fold ensemble on the 20% of train.csv held out of the folds.
    assert cv["holdout"]["n"] == math.ceil(0.2 * 1257)  # scikit-learn rounds the test share up
    assert 0 < cv["holdout"]["accuracy"] <= 1
    assert cv["holdout"]["errors"] == round((1 - cv["holdout"]["accuracy"]) * cv["holdout"]["n"])
    assert cv["config"]["holdout"] == 0.2
    assert (tmp_path / "subs" / "submission.csv").is_file()
    tta = result["oof_tta"]
    # The same models on the same images (thread counts may move a near-tie by one image).
    assert tta["oof_accuracy_plain"] == pytest.approx(cv["oof_accuracy"], abs=1.5 / 1006)
    assert 0 < tta["oof_accuracy_tta"] <= 1 and tta["oof_errors_plain"] >= 0
