"""The speed benchmark runs end to end (``--quick``) and reports every section with sane numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

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
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        positive(results["training"]["lm"]["lstmkit_bf16"], THROUGHPUT, "training.lm.lstmkit_bf16")
        positive(results["training"]["lm"]["lstmkit_bf16_two_calls"], THROUGHPUT, "training.lm.lstmkit_bf16_two_calls")
        positive(results["training"]["lm"]["plain_bf16"], THROUGHPUT, "training.lm.plain_bf16")  # bf16 against bf16
    else:  # an AVX2-only CPU: oneDNN's LSTM has no bf16 there, and the plain loop has no fallback
        assert "has no bf16 instructions" in results["training"]["lm"]["bf16_skipped"]
        assert "bf16-mixed is not measured" in (tmp_path / "speed.md").read_text(encoding="utf-8")

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
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # an AVX2-only CPU has none for the plain loop's LSTM
    assert ("bf16-mixed" in results["skipped_precisions"]) is not bf16
    for name, workload in results["workloads"].items():
        for precision in ("32-true", "bf16-mixed") if bf16 else ("32-true",):
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


def _load_speed() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_speed_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_memory_is_the_timed_runs_median_and_failed_checks_fail_the_run() -> None:
    """The peak was the highest over every run, warm-up included: whichever runner first used a code path
    carried its one-off allocations. A failed identity check printed FAILED and exited 0."""
    import contextlib

    bench = _load_speed()
    peaks = iter([900.0, 100.0, 120.0, 110.0, 500.0, 50.0, 60.0, 55.0])  # warm-up first: a one-off 900 / 500

    @contextlib.contextmanager
    def probe():
        yield (found := {})
        found["peak_rss_mb"] = next(peaks)

    runs = bench.interleave({"a": lambda: "ta", "b": lambda: "tb"}, warmup=1, repeats=3, probe=probe)
    assert runs["a"].timings == ["ta"] * 3 and runs["b"].timings == ["tb"] * 3
    # draws in order: r0 a=900 b=100 (warm-up); r1 b=120 a=110; r2 a=500 b=50; r3 b=60 a=55
    assert runs["a"].memory == {"peak_rss_mb": 110.0} and runs["b"].memory == {"peak_rss_mb": 60.0}
    ok = {"variable_length": {"loss_identity": {"passed": True}},
          "training": {"lm": {"same_model_loss_diff": 0.0}, "classifier": {"same_model_loss_diff": 1e-8}}}
    assert bench.failed_checks(ok) == []
    bad = {"variable_length": {"loss_identity": {"passed": False, "max_abs_diff": 0.09, "tolerance": 1e-5}},
           "training": {"lm": {"same_model_loss_diff": 0.3}}}
    problems = bench.failed_checks(bad)
    assert len(problems) == 2 and "losses differ by 0.09" in problems[0] and "lm:" in problems[1]
