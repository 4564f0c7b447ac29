#!/usr/bin/env python
"""GPU speed benchmark (issue #6, "run the speed benchmark there too"): lstmkit against a plain
PyTorch loop on one CUDA GPU, in float32 and in bf16-mixed autocast.

The CPU benchmark (``scripts/bench_speed.py``) answers what the framework costs where the CPU does
the arithmetic; on a GPU the kernels are cuDNN's and a small LSTM step takes a few milliseconds, so
the framework's per-step Python work (Lightning's hooks, logging, lstmkit's packing) is a larger
share and is what this script measures. It reuses bench_speed's models, data and ABBA interleaving
and only adds the device: the same ``lstmkit`` Trainer (``conf/trainer/default.yaml`` with
``accelerator=gpu``) and the same hand-written loops with the batches, state and model on the GPU.

Workloads: the PTB-small word LM (2 x 200), the same LM at Zaremba et al.'s medium size (2 x 650;
its step time also sizes the PTB medium run in ``scripts/gpu_checks.sh``) and the SST-2-size
bidirectional classifier over variable lengths. Each is timed ``--repeats`` times after
``--warmup`` epochs (median reported), every GPU epoch ends with ``torch.cuda.synchronize``, and
each run's peak CUDA memory (``max_memory_allocated``) is recorded.

    python scripts/bench_gpu.py --out bench/results          # on a CUDA machine, ~2 min
    python scripts/bench_gpu.py --device cpu --quick         # smoke check of the script on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_speed as bs

from lstmkit.files import json_text
from lstmkit.module import SequenceModel
from lstmkit.syncs import HostSyncCounter, SyncAudit

PRECISIONS = ("32-true", "bf16-mixed")
DEVICE = "cuda"  # or "cpu" (--device), set once by main()


class SyncedEpochTimer(bs.EpochTimer):
    """bench_speed's epoch timer, waiting for the GPU's queue at both ends of the epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        super().on_train_epoch_end(trainer, pl_module)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def kit_epoch(model: SequenceModel, datamodule: L.LightningDataModule, root: str, precision: str,
              extra: list[L.Callback] | None = None) -> bs.Timing:
    """One epoch through ``Trainer.fit`` as ``lstmkit train trainer=gpu`` configures it."""
    cfg = bs.trainer_config(root)
    cfg.accelerator = "gpu" if DEVICE == "cuda" else "cpu"
    timer = SyncedEpochTimer()
    start = time.perf_counter()
    trainer = instantiate(cfg, callbacks=[*bs.lstmkit_callbacks(), timer, *(extra or [])], logger=False,
                          precision=precision)
    trainer.fit(model, datamodule=datamodule)
    total = time.perf_counter() - start
    model.trainer = None  # type: ignore[assignment]
    datamodule.trainer = None
    return bs.Timing(timer.seconds, total - timer.seconds)


@contextlib.contextmanager
def cuda_peak() -> Iterator[dict[str, float]]:
    """Peak CUDA memory allocated during the block (MB)."""
    out: dict[str, float] = {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    yield out
    torch.cuda.synchronize()
    out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def memory_probe() -> contextlib.AbstractContextManager[dict[str, float]]:
    """The device's peak memory: CUDA's allocator on a GPU, the process's resident set on CPU."""
    return cuda_peak() if DEVICE == "cuda" else bs.memory_probe()


def measure(runners: dict[str, Callable[[], bs.Timing]], work: bs.Workload, warmup: int,
            repeats: int) -> dict[str, Any]:
    """bench_speed's ABBA runs and summaries, with the lstmkit / plain ratio per precision."""
    runs = bs.interleave(runners, warmup, repeats, probe=memory_probe)
    out: dict[str, Any] = {"workload": asdict(work), **{n: bs.summarise_runs(r, work) for n, r in runs.items()}}
    for precision in PRECISIONS:
        out[f"ratio/{precision}"] = round(
            out[f"lstmkit/{precision}"]["samples_per_s"] / out[f"plain/{precision}"]["samples_per_s"], 4)
    if "lstmkit_like/32-true" in out:  # the framework's own cost: lstmkit on the plain loop's code paths
        out["ratio_like/32-true"] = round(
            out["lstmkit_like/32-true"]["samples_per_s"] / out["plain/32-true"]["samples_per_s"], 4)
    return out


def twins(make_kit: Callable[[], SequenceModel], make_plain: Callable[[], torch.nn.Module]
          ) -> tuple[SequenceModel, torch.nn.Module, torch.optim.Optimizer]:
    """The lstmkit model, the plain one started from its weights (on the device) and the plain optimiser."""
    torch.manual_seed(0)
    kit, plain = make_kit(), make_plain()
    bs.copy_weights(kit, plain)
    plain.to(DEVICE)
    return kit, plain, bs.plain_optimizer(plain)


def host_syncs(kit: Callable[[list[L.Callback]], Any], plain: Callable[[], Any], steps: int) -> dict[str, float]:
    """Host-device synchronisations per float32 training step on each side (lstmkit.syncs), after the timing.

    On CUDA these are the real waits; the CPU dry run counts lstmkit.syncs' stand-ins.
    """
    audit = SyncAudit(start=1, steps=max(1, min(5, steps - 2)), proxy=DEVICE == "cpu")
    kit([audit])
    with HostSyncCounter(proxy=DEVICE == "cpu") as counter:
        plain()
    return {"lstmkit": round(audit.per_step, 2), "plain": round(counter.total / steps, 2)}


def compare(size: Any, work: bs.Workload, datamodule: L.LightningDataModule, make_kit: Callable[..., SequenceModel],
            make_plain: Callable[[], torch.nn.Module], plain_run: Callable[..., Callable[[], bs.Timing]],
            warmup: int, repeats: int, root: str) -> dict[str, Any]:
    """lstmkit against the plain loop in both precisions (ABBA), then each side's host syncs per float32 step.

    ``plain_run(model, optimizer, precision)`` makes the plain side's epoch runner; ``make_kit(like=True)``
    the lstmkit model on the plain loop's code paths (unfused AdamW and loss, packing), timed in
    float32 beside the defaults: their ratio to the plain loop is what the framework itself costs.
    """
    runners: dict[str, Callable[[], bs.Timing]] = {}
    models = {}
    for precision in PRECISIONS:
        kit, plain, optimizer = models[precision] = twins(make_kit, make_plain)
        runners[f"lstmkit/{precision}"] = lambda m=kit, p=precision: kit_epoch(m, datamodule, root, p)
        # a new plain optimiser per timed epoch, as each lstmkit fit builds one (bench_speed.plain_optimizer)
        runners[f"plain/{precision}"] = lambda m=plain, p=precision: plain_run(m, bs.plain_optimizer(m), p)()
    torch.manual_seed(0)
    like = make_kit(like=True)
    runners["lstmkit_like/32-true"] = lambda: kit_epoch(like, datamodule, root, "32-true")
    out = {"size": asdict(size), **measure(runners, work, warmup, repeats)}
    kit, plain, optimizer = models["32-true"]
    out["host_syncs_per_step"] = host_syncs(lambda extra: kit_epoch(kit, datamodule, root, "32-true", extra),
                                            plain_run(plain, optimizer, "32-true"), work.steps)
    return out


def lm_workload(size: bs.LMSize, warmup: int, repeats: int, root: str) -> dict[str, Any]:
    data = bs.synthetic_lm(size, seed=0)
    # on the host, as lstmkit's datamodule holds them: the plain loop copies each window to the device
    # as lstmkit's dataloader does (it used to slice a stream already on the GPU, skipping that copy)
    streams = data.streams.pin_memory() if DEVICE == "cuda" else data.streams
    steps = -(-(data.streams.shape[1] - 1) // size.bptt)
    work = bs.Workload(samples=steps * size.batch, tokens=steps * size.batch * size.bptt, steps=steps)
    return compare(size, work, bs.BenchStreams(data, size), lambda like=False: bs.lstmkit_lm(data, size, like=like),
                   lambda: bs.PlainLM(size),
                   lambda m, o, p: partial(bs.plain_lm_epoch, m, o, streams, size.bptt, p, DEVICE), warmup, repeats,
                   root)


def cls_workload(size: bs.ClsSize, warmup: int, repeats: int, root: str) -> dict[str, Any]:
    data = bs.synthetic_cls(size, seed=0)
    generators: dict[str, torch.Generator] = {}
    return compare(size, bs.cls_workload(data, size), bs.BenchSentences(data, size, bucketing=False),
                   lambda like=False: bs.lstmkit_classifier(data, size, like=like), lambda: bs.PlainClassifier(size),
                   # each runner shuffles with its own generator, epoch after epoch (one per precision,
                   # made once: plain_run is called again for every timed epoch)
                   lambda m, o, p: partial(bs.plain_cls_epoch, m, o, data, size.batch,
                                           generators.setdefault(p, torch.Generator().manual_seed(0)),
                                           device=DEVICE, precision=p),
                   warmup, repeats, root)


# ---------------------------------------------------------------------------------------------
# --profile: where the extra milliseconds of lstmkit's step go (run it where the GPU is)
# ---------------------------------------------------------------------------------------------
# counted per step on each side: host reads of a tensor's value, waits for the device, copies between
# host and device, and kernel launches
COUNTED = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
           "cudaLaunchKernel")


def activities() -> list[torch.profiler.ProfilerActivity]:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


class DeviceStepProfiler(bs.StepProfiler):
    """bench_speed's step profiler, recording the device's kernels too."""

    def __init__(self, first: int, count: int) -> None:
        super().__init__(first, count)
        self.profiler = torch.profiler.profile(activities=activities())


def profile_lm(size: bs.LMSize, root: str, steps: int, top: int = 15) -> tuple[str, dict[str, Any]]:
    """Profile ``steps`` float32 training steps of the LM on each side, after a warm-up epoch each.

    lstmkit's profile starts at the third step of its epoch (each ``fit`` builds a fresh optimiser,
    whose state the first step allocates); the plain loop's optimiser is warm from its first epoch.
    """
    data = bs.synthetic_lm(replace(size, steps=steps + 2), seed=0)
    datamodule = bs.BenchStreams(data, size)
    streams = data.streams.to(DEVICE)
    kit, plain, optimizer = twins(lambda: bs.lstmkit_lm(data, size), lambda: bs.PlainLM(size))
    kit_epoch(kit, datamodule, root, "32-true")
    bs.plain_lm_epoch(plain, optimizer, streams, size.bptt)
    recorder = DeviceStepProfiler(first=2, count=steps)
    kit_epoch(kit, datamodule, root, "32-true", extra=[recorder])
    with torch.profiler.profile(activities=activities()) as plain_prof:
        bs.plain_lm_epoch(plain, optimizer, streams[:, : steps * size.bptt + 1], size.bptt)
    text, summary = [], {}
    for side, prof in (("lstmkit", recorder.profiler), ("plain", plain_prof)):
        events = prof.key_averages()
        by = {e.key: e for e in events}
        summary[side] = {op: round(by[op].count / steps, 2) for op in COUNTED if op in by}
        sort = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
        text += [f"## {side}: {steps} steps, top {top} by self CPU time", "",
                 events.table(sort_by="self_cpu_time_total", row_limit=top), ""]
        if DEVICE == "cuda":
            text += [f"## {side}: top {top} by self CUDA time", "", events.table(sort_by=sort, row_limit=top), ""]
        text += [f"calls per step: {summary[side]}", ""]
    return "\n".join(text), summary


def machine() -> dict[str, Any]:
    info = bs.machine_info()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# GPU training throughput: lstmkit vs a plain PyTorch loop ({m.get('gpu', DEVICE)})", "",
             (f"torch {m.get('torch')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, lightning {m.get('lightning')}; "
             f"{m['cpu']}; commit {str(result['git'].get('commit'))[:7]}. Median of {result['repeats']} epochs "
             f"after {result['warmup']} warm-up, lstmkit and plain alternating (ABBA)."), "",
             ("| workload | precision | lstmkit samples/s | plain samples/s | lstmkit ms/step | plain ms/step "
             "| lstmkit / plain | peak CUDA MB (lstmkit / plain) | host syncs per step (lstmkit / plain) |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    if result.get("device") == "cpu":
        lines[2] += (" CPU dry run: the host-sync counts are lstmkit.syncs' CPU stand-ins, which also count "
                     "host-only reads (the optimiser's step counters, data preparation).")
    for name, w in result["workloads"].items():
        for precision in PRECISIONS:
            kit, plain = w.get(f"lstmkit/{precision}"), w.get(f"plain/{precision}")
            if not (kit and plain):
                continue
            lines.append(f"| {name} | {precision} | {kit['samples_per_s']:,.0f} | {plain['samples_per_s']:,.0f} | "
                         f"{kit['step_ms']:.2f} | {plain['step_ms']:.2f} | **{w[f'ratio/{precision}']:.3f}** | "
                         f"{bs._f(kit.get('peak_cuda_mb'), 0)} / {bs._f(plain.get('peak_cuda_mb'), 0)} | "
                         f"{_syncs(w, precision)} |")
        like = w.get("lstmkit_like/32-true")
        if like:
            lines.append(f"| {name} | 32-true, lstmkit on the plain loop's code paths | {like['samples_per_s']:,.0f} | "
                         f"{w['plain/32-true']['samples_per_s']:,.0f} | {like['step_ms']:.2f} | "
                         f"{w['plain/32-true']['step_ms']:.2f} | **{w['ratio_like/32-true']:.3f}** | — | — |")
    lines += ["", ("lstmkit's defaults use fused AdamW and (for the LM) a fused output layer and loss, which the plain "
                   "loop does not; the row on the plain loop's code paths (torch's default AdamW, the two-call loss, "
                   "packing) measures what the framework itself costs.")]
    return "\n".join(lines) + "\n"


def _syncs(workload: dict[str, Any], precision: str) -> str:
    counts = workload.get("host_syncs_per_step") if precision == "32-true" else None
    return f"{counts['lstmkit']:g} / {counts['plain']:g}" if counts else "—"


def main(argv: list[str] | None = None) -> int:
    global DEVICE, PRECISIONS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each (smoke check)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lm-steps", type=int, default=150, help="bptt windows per timed LM epoch")
    parser.add_argument("--examples", type=int, default=4096, help="sentences per timed classifier epoch")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: bench/results on a GPU; a CPU dry run: the system's temp folder)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS float32 steps of the 2x200 LM on each side (torch profiler)")
    args = parser.parse_args(argv)
    DEVICE = args.device
    skipped = bs.bf16_skipped() if DEVICE == "cpu" else None
    if skipped:  # an AVX2-only CPU: the plain loop's LSTM refuses bf16 autocast (lstmkit's runs it in float32)
        PRECISIONS = ("32-true",)
        print(f"bench_gpu: {skipped}")
    if args.out is None:  # a dry run's figures are not results: they stay out of the repository
        args.out = bs.REPO / "bench" / "results" if DEVICE == "cuda" else bs.quick_folder("bench_gpu")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA GPU is visible (torch.cuda.is_available() is False); use --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on both sides (cuBLAS
    torch.backends.cudnn.allow_tf32 = False        # and cuDNN, whose LSTM would otherwise use TF32)
    warmup, repeats = (0, 1) if args.quick else (args.warmup, args.repeats)
    small = bs.LMSize(steps=3 if args.quick else args.lm_steps)
    sizes = {
        "word LM 2×200 (PTB-small), batch 20, bptt 35": small,
        "word LM 2×650 (PTB-medium), batch 20, bptt 35": replace(small, emb=650, hidden=650),
    }
    cls = bs.ClsSize(examples=128 if args.quick else args.examples)
    result: dict[str, Any] = {"machine": machine(), "git": bs.git_info(), "device": DEVICE,
                              "warmup": warmup, "repeats": repeats, "workloads": {},
                              "skipped_precisions": {"bf16-mixed": skipped} if skipped else {}}
    if not result["git"].get("commit"):  # a copied working tree without .git (a lent GPU machine)
        result["git"]["commit"] = os.environ.get("BENCH_COMMIT")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if DEVICE == "cuda" else "_cpu"

    def save() -> str:
        """Write what is measured so far (a run stopped by a time limit keeps its finished workloads)."""
        table = render(result)
        (args.out / f"speed_gpu{suffix}.json").write_text(json_text(result, indent=2) + "\n")
        (args.out / f"speed_gpu{suffix}.md").write_text(table)
        return table

    workloads: dict[str, Callable[[str], dict[str, Any]]] = {
        name: (lambda root, size=size: lm_workload(size, warmup, repeats, root)) for name, size in sizes.items()}
    workloads[f"bi-LSTM classifier, batch {cls.batch}, lengths {cls.min_len}-{cls.max_len}"] = (
        lambda root: cls_workload(cls, warmup, repeats, root))
    with tempfile.TemporaryDirectory() as root:
        for name, measure in workloads.items():
            result["workloads"][name] = measure(root)
            print(name, json.dumps({k: v for k, v in result["workloads"][name].items() if k.startswith("ratio")}),
                  flush=True)
            save()
        if args.profile:
            text, result["profile_calls_per_step"] = profile_lm(small, root, args.profile)
            print(text)
            (args.out / f"profile_gpu{suffix}.txt").write_text(text)
    print(save())
    print(f"written: {args.out / f'speed_gpu{suffix}.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
