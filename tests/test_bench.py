"""The speed benchmark runs end to end (``--quick``) and reports every section with sane numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_speed.py"

THROUGHPUT = ("samples_per_s", "tokens_per_s", "step_ms", "peak_rss_mb")
LATENCY = ("p50_ms", "p99_ms", "batch_samples_per_s", "batch_tokens_per_s", "peak_rss_mb")


def positive(result: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        value = result.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{where}.{key} = {value!r}"
    delta = result.get("peak_delta_mb")
    assert isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0, f"{where}.peak_delta_mb = {delta}"


def test_quick_benchmark_reports_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "speed.json").read_text(encoding="utf-8"))
    assert "| lstmkit (defaults) |" in (tmp_path / "speed.md").read_text(encoding="utf-8")

    meta = results["meta"]
    assert meta["quick"] is True and meta["machine"]["torch_threads"] >= 1 and meta["machine"]["cpu"]
    assert "commit" in meta["git"]

    for workload in ("lm", "classifier"):
        training = results["training"][workload]
        for impl in ("lstmkit", "plain", "lstmkit_like"):
            positive(training[impl], THROUGHPUT, f"training.{workload}.{impl}")
        assert math.isfinite(training["ratio"]) and training["ratio"] > 0
        assert math.isfinite(training["ratio_like"]) and training["ratio_like"] > 0  # the framework's own cost
        assert training["same_model_loss_diff"] < 1e-5  # both sides start as the same model
    positive(results["training"]["lm"]["lstmkit_bf16"], THROUGHPUT, "training.lm.lstmkit_bf16")
    positive(results["training"]["lm"]["lstmkit_bf16_two_calls"], THROUGHPUT, "training.lm.lstmkit_bf16_two_calls")
    positive(results["training"]["lm"]["plain_bf16"], THROUGHPUT, "training.lm.plain_bf16")  # bf16 against bf16

    variable = results["variable_length"]
    for batching in ("bucketed", "unbucketed", "naive_padded", "bucketed_packed_kernel"):
        positive(variable[batching], THROUGHPUT, f"variable_length.{batching}")
    identity = variable["loss_identity"]
    assert identity["passed"] and identity["max_abs_diff"] <= 1e-5
    assert identity["unpacked_max_abs_diff"] > 1e-5  # without packing, padding changes the loss
    assert identity["packed_kernel_max_abs_diff"] <= 1e-5  # model.kernel=packed and the default agree
    assert variable["padding_fraction"]["bucketed"] < variable["padding_fraction"]["unbucketed"]

    for model in ("lm", "classifier"):
        for runtime in ("eager", "torchscript", "onnx"):
            positive(results["inference"][model][runtime], LATENCY, f"inference.{model}.{runtime}")

    keras = results["keras"]
    assert keras["status"] in {"ran", "skipped"}
    if keras["status"] == "skipped":
        assert "keras not installed" in proc.stdout


def test_gpu_benchmark_script_runs_on_cpu(tmp_path: Path) -> None:
    """``scripts/bench_gpu.py`` (run where a GPU is lent) keeps working: its CPU dry run times every
    workload in both precisions on both sides."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--device", "cpu", "--quick",
                           "--profile", "2", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "speed_gpu_cpu.json").read_text(encoding="utf-8"))
    assert results["device"] == "cpu" and len(results["workloads"]) == 3
    for name, workload in results["workloads"].items():
        for precision in ("32-true", "bf16-mixed"):
            for impl in ("lstmkit", "plain"):
                run = workload[f"{impl}/{precision}"]
                for key in ("samples_per_s", "tokens_per_s", "step_ms"):
                    assert math.isfinite(run[key]) and run[key] > 0, f"{name} {impl}/{precision}.{key} = {run[key]}"
            assert workload[f"ratio/{precision}"] > 0
        syncs = workload["host_syncs_per_step"]  # the plain loop reads its loss every step
        assert syncs["plain"] >= 1, syncs
        if name.startswith("word LM"):  # slices of a stream: no data preparation for the CPU stand-in to count
            assert syncs["lstmkit"] == 0, syncs
    assert "| lstmkit / plain |" in (tmp_path / "speed_gpu_cpu.md").read_text(encoding="utf-8")
    profile = (tmp_path / "profile_gpu_cpu.txt").read_text(encoding="utf-8")
    assert "## lstmkit: 2 steps" in profile and "## plain: 2 steps" in profile and "aten::mm" in profile
    assert set(results["profile_calls_per_step"]) == {"lstmkit", "plain"}
