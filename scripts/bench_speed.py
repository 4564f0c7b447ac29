#!/usr/bin/env python
"""Speed benchmark (issue #6, "Speed"): what does lstmkit cost over a hand-written PyTorch loop?

lstmkit adds Lightning, a datamodule, an LSTM wrapper that packs by lengths and a head with its
own loss around ``nn.LSTM``. This script measures, in one run, on the same data, model size and
batch size:

1. Training throughput of a word language model of PTB-small size (vocab 10k, 2 x 200 LSTM,
   bptt 35, 20 streams, stateful): lstmkit's ``SequenceModel`` under a real ``lightning.Trainer``
   (configured as ``lstmkit train`` does, with progress bar, loggers and checkpoints off) against
   a plain PyTorch loop over the same embedding -> ``nn.LSTM`` -> linear model, the same AdamW
   and the same gradient clipping. The ratio lstmkit / plain should be >= 0.97.
2. The same for an SST-2-size bidirectional sentence classifier (vocab 15k, emb 128, hidden
   128, batch 64, lengths 5-50; both sides pack by length).
3. Variable lengths: bucketing with lstmkit's default kernel (exact masking on CPU), no
   bucketing, plain padding without packing (inexact), and bucketing with ``model.kernel=packed``
   (pack_padded_sequence); and the check that
   packing makes padding irrelevant: per-example losses over the same examples batched two ways
   agree within 1e-5.
4. Inference: latency p50/p99 of one sample and batch throughput, eager vs the TorchScript and
   ONNX (onnxruntime) exports of ``lstmkit.export``.
5. Peak resident memory of each measurement (``VmHWM`` reset through ``/proc/self/clear_refs``).
6. Optionally Keras 3 on its tensorflow and torch backends (``pip install -e .[bench]``), each in
   its own process (``scripts/bench_keras.py``), because ``KERAS_BACKEND`` is fixed at import.

Every throughput is measured ``--repeats`` times after ``--warmup`` epochs and the median is
reported; lstmkit and plain runs alternate (ABBA) so that load from other processes hits both
alike. Each timed epoch is a ``fit`` on the lstmkit side, so each plain epoch gets a new optimiser too. Results: a Markdown table on stdout, ``<out>/speed.json`` and ``<out>/speed.md``.

    OMP_NUM_THREADS=1 python scripts/bench_speed.py                  # full run (several minutes)
    OMP_NUM_THREADS=1 python scripts/bench_speed.py --quick          # smoke check, every measurement once
    python scripts/bench_speed.py --data-root ../shared/data         # PTB and SST-2 instead of generated tokens
    python scripts/bench_speed.py --profile --sections training      # top ops of one lstmkit LM step
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import clip_grad_norm_
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import quick_folder  # stdlib only: where --quick runs write

import lstmkit.callbacks
from lstmkit.callbacks import StopOnNonFiniteLoss
from lstmkit.cli import config_dir
from lstmkit.data.base import BucketBatchSampler, PadCollate, SequenceDataModule, SequenceDataset
from lstmkit.data.language_model import NextWordDataModule, TokenStream
from lstmkit.export import export as export_model
from lstmkit.files import json_text
from lstmkit.module import SequenceModel
from lstmkit.types import DataSpec

REPO = Path(__file__).resolve().parents[1]

SECTIONS = ("training", "variable_length", "inference", "keras")
# lstmkit's default optimiser, as `lstmkit train` composes it (conf/optimizer/adamw.yaml)
OPTIMIZER: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "optimizer" / "adamw.yaml")))
LOSS_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LMSize:
    """Word LM: PTB-small (Zaremba et al. 2014) by default; ``steps`` windows per timed epoch."""

    vocab: int = 10_000
    emb: int = 200
    hidden: int = 200
    layers: int = 2
    bptt: int = 35
    batch: int = 20
    steps: int = 30


@dataclass(frozen=True)
class ClsSize:
    """Bidirectional sentence classifier of SST-2 size; ``examples`` per timed epoch."""

    vocab: int = 15_000
    emb: int = 128
    hidden: int = 128
    batch: int = 64
    examples: int = 1_280
    min_len: int = 5
    max_len: int = 50


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full benchmark, or ``--quick`` (one tiny run of each)."""

    lm: LMSize
    cls: ClsSize
    warmup: int
    repeats: int
    latency_calls: int
    batch_calls: int


FULL = Plan(LMSize(), ClsSize(), warmup=1, repeats=7, latency_calls=300, batch_calls=20)
QUICK = Plan(LMSize(vocab=500, emb=16, hidden=16, bptt=10, batch=4, steps=3),
             ClsSize(vocab=300, emb=16, hidden=16, batch=8, examples=32),
             warmup=0, repeats=1, latency_calls=5, batch_calls=2)


# ---------------------------------------------------------------------------------------------
# Data: generated (default) or PTB / SST-2 from --data-root
# ---------------------------------------------------------------------------------------------
@dataclass
class LMData:
    streams: torch.Tensor  # (B, steps * bptt + 1): row b is one contiguous stream
    vocab: list[str]
    source: str


@dataclass
class ClsData:
    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    vocab: list[str]
    classes: list[str]
    source: str

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.inputs)


def zipf_ids(count: int, vocab: int, first: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids with Zipfian frequencies, as in text (embedding gradients touch few rows often)."""
    weights = 1.0 / torch.arange(1, vocab - first + 1, dtype=torch.float64)
    return torch.multinomial(weights, count, replacement=True, generator=generator) + first


def synthetic_lm(size: LMSize, seed: int) -> LMData:
    g = torch.Generator().manual_seed(seed)
    ids = zipf_ids(size.batch * (size.steps * size.bptt + 1), size.vocab, first=1, generator=g)
    vocab = ["<pad>", *(f"w{i}" for i in range(1, size.vocab))]
    return LMData(ids.view(size.batch, -1), vocab, f"generated (seed {seed})")


def synthetic_cls(size: ClsSize, seed: int) -> ClsData:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(size.min_len, size.max_len + 1, (size.examples,), generator=g).tolist()
    ids = zipf_ids(sum(lengths), size.vocab, first=2, generator=g)
    inputs = list(torch.split(ids, lengths))
    targets = list(torch.randint(0, 2, (size.examples,), generator=g).unbind())
    vocab = ["<pad>", "<unk>", *(f"w{i}" for i in range(2, size.vocab))]
    return ClsData(inputs, targets, vocab, ["negative", "positive"], f"generated (seed {seed})")


def real_lm(root: Path, size: LMSize) -> LMData:
    """The first ``batch x (steps x bptt + 1)`` tokens of PTB's train split, lstmkit-tokenized."""
    dm = NextWordDataModule(path=str(root / "lm"), tokenizer="whitespace", batch_size=size.batch, bptt=size.bptt)
    dm.setup()
    ids = dm.splits["train"].ids  # type: ignore[attr-defined]
    need = size.batch * (size.steps * size.bptt + 1)
    if len(ids) < need:
        raise SystemExit(f"{root / 'lm'}: {len(ids)} tokens, the benchmark needs {need}")
    return LMData(ids[:need].view(size.batch, -1), list(dm.spec.vocab or []), str(root / "lm"))


def real_cls(root: Path, size: ClsSize) -> ClsData:
    """The first ``examples`` sentences of SST-2's train split, lstmkit-tokenized."""
    dm = sst2_datamodule(str(root / "sentiment"))
    dm.setup()
    train = dm.splits["train"]
    assert isinstance(train, SequenceDataset)
    n = min(size.examples, len(train))
    return ClsData(train.inputs[:n], train.targets[:n], list(dm.spec.vocab or []), list(dm.spec.classes or []),
                   str(root / "sentiment"))


def sst2_datamodule(path: str) -> SequenceDataModule:
    """SST-2 read exactly as ``experiment=sentiment_sst2`` reads it."""
    from lstmkit.data.sentiment import SentimentDataModule

    return SentimentDataModule(path=path, tokenizer="whitespace", label_names={"0": "negative", "1": "positive"})


# ---------------------------------------------------------------------------------------------
# lstmkit side: datamodules over the benchmark tensors, SequenceModel, Trainer
# ---------------------------------------------------------------------------------------------
class BenchStreams(NextWordDataModule):
    """lstmkit's own stream loader (batchify -> StreamWindows) over the benchmark's streams."""

    def __init__(self, data: LMData, size: LMSize) -> None:
        super().__init__(batch_size=size.batch, bptt=size.bptt)
        self.bench = data

    def build(self) -> DataSpec:
        stream = TokenStream(self.bench.streams.reshape(-1), self.bench.source)
        self.splits.update(train=stream, val=stream)
        return DataSpec(input_kind="tokens", vocab=self.bench.vocab, pad_id=0, extra={"bptt": self.bptt})


class BenchSentences(SequenceDataModule):
    """lstmkit's own loader (RandomSampler or BucketBatchSampler -> PadCollate) over the sentences."""

    def __init__(self, data: ClsData, size: ClsSize, bucketing: bool) -> None:
        super().__init__(batch_size=size.batch, bucketing=bucketing)
        self.bench = data
        self.collate = PadCollate(pad_value=0)

    def build(self) -> DataSpec:
        dataset = SequenceDataset(self.bench.inputs, self.bench.targets)
        self.splits.update(train=dataset, val=dataset)
        return DataSpec(input_kind="tokens", vocab=self.bench.vocab, classes=self.bench.classes, pad_id=0)


# lstmkit with the plain loop's code paths (``like=True``): torch's default AdamW instead of the fused
# one, the two-call cross-entropy instead of the fused output layer, packing instead of the masked
# kernel. Then both sides run the same kernels, and their ratio is what the framework itself costs.
UNFUSED_OPTIMIZER: dict[str, Any] = {**OPTIMIZER, "fused": False}


def lstmkit_lm(data: LMData, size: LMSize, optimizer: dict[str, Any] = OPTIMIZER, like: bool = False,
               fused_loss: bool = True) -> SequenceModel:
    """The ``task=next_word`` model at PTB-small size: untied, no dropout (as the plain model);
    ``fused_loss=False``: ``head.fused_loss=false`` (implied by ``like``)."""
    spec = DataSpec(input_kind="tokens", vocab=data.vocab, pad_id=0, extra={"bptt": size.bptt, "streams": True})
    return SequenceModel(
        spec=spec.to_dict(),
        encoder={"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": size.emb, "dropout": 0.0},
        core={"hidden_size": size.hidden, "num_layers": size.layers, "stateful": True},
        head={"_target_": "lstmkit.heads.language_model.LanguageModelHead", "tie_weights": False,
              **({"fused_loss": False} if like or not fused_loss else {})},
        optimizer=UNFUSED_OPTIMIZER if like else optimizer, task="next_word",
    )


def lstmkit_classifier(data: ClsData, size: ClsSize, kernel: str = "auto", like: bool = False) -> SequenceModel:
    """The ``task=sentiment`` model: embedding -> bi-LSTM over variable lengths -> last state -> linear.

    ``kernel`` is ``model.kernel``: ``auto`` (the default: exact masking on CPU) or ``packed``;
    ``like=True``: packed, with torch's default AdamW (the plain loop's code paths).
    """
    kernel = "packed" if like else kernel
    spec = DataSpec(input_kind="tokens", vocab=data.vocab, classes=data.classes, pad_id=0)
    return SequenceModel(
        spec=spec.to_dict(),
        encoder={"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": size.emb, "dropout": 0.0},
        core={"hidden_size": size.hidden, "bidirectional": True, "kernel": kernel},
        head={"_target_": "lstmkit.heads.ClassificationHead", "pooling": "last", "dropout": 0.0},
        optimizer=UNFUSED_OPTIMIZER if like else OPTIMIZER, task="sentiment",
    )


class EpochTimer(L.Callback):
    """Wall time of the training epoch alone (fit() also sets up the loop and the optimiser)."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def trainer_config(root: str) -> DictConfig:
    """``conf/trainer/default.yaml``, read from the package so that the benchmark follows it.

    Only what the benchmark must switch off is overridden: one epoch per ``fit``, no validation,
    no checkpoints, progress bar or model summary (loggers are off in ``make_trainer``).
    """
    cfg = OmegaConf.load(Path(config_dir()) / "trainer" / "default.yaml")
    assert isinstance(cfg, DictConfig)
    return OmegaConf.merge(cfg, {
        "default_root_dir": root, "accelerator": "cpu", "devices": 1, "max_epochs": 1, "max_steps": -1,
        "max_time": None, "num_sanity_val_steps": 0, "limit_train_batches": None, "limit_val_batches": 0,
        "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
    })  # type: ignore[return-value]


def clip_norm() -> float | None:
    """The gradient clipping of ``lstmkit train`` (``trainer.gradient_clip_val``), for the plain loop too."""
    value = trainer_config(".").get("gradient_clip_val")
    return float(value) if value else None


def lstmkit_callbacks() -> list[L.Callback]:
    """The callbacks ``lstmkit train`` always adds (checkpoint, early-stopping and bar callbacks are off)."""
    callbacks: list[L.Callback] = [StopOnNonFiniteLoss()]
    reseed = getattr(lstmkit.callbacks, "ReseedEachEpoch", None)  # newer lstmkit: seeded runs reseed per epoch
    if reseed is not None:
        callbacks.append(reseed(0))
    return callbacks


def make_trainer(root: str, callbacks: list[L.Callback], precision: str | None = None) -> L.Trainer:
    """The Trainer ``lstmkit train`` instantiates from the config, without loggers."""
    options = {"precision": precision} if precision else {}
    return instantiate(trainer_config(root), callbacks=[*lstmkit_callbacks(), *callbacks], logger=False, **options)


@dataclass
class Timing:
    seconds: float  # the timed epoch
    overhead_s: float = 0.0  # around it (Trainer construction, fit setup and teardown)


def lstmkit_epoch(model: SequenceModel, datamodule: L.LightningDataModule, root: str,
                  precision: str | None = None) -> Timing:
    """One training epoch through ``Trainer.fit``, as ``lstmkit train`` runs it."""
    timer = EpochTimer()
    start = time.perf_counter()
    make_trainer(root, [timer], precision).fit(model, datamodule=datamodule)
    total = time.perf_counter() - start
    # Let go of the Trainer (and its optimiser state) now, not when the next fit replaces it, so the
    # next memory probe starts from the same baseline as the plain loop's.
    model.trainer = None  # type: ignore[assignment]
    datamodule.trainer = None
    return Timing(timer.seconds, total - timer.seconds)


# ---------------------------------------------------------------------------------------------
# Plain PyTorch side: the same model written by hand
# ---------------------------------------------------------------------------------------------
CLIP_NORM = clip_norm()


class PlainLM(nn.Module):
    """What one writes by hand: embedding -> nn.LSTM -> linear over the vocabulary, state passed in and out."""

    def __init__(self, size: LMSize) -> None:
        super().__init__()
        self.emb = nn.Embedding(size.vocab, size.emb, padding_idx=0)
        self.lstm = nn.LSTM(size.emb, size.hidden, num_layers=size.layers, batch_first=True)
        self.fc = nn.Linear(size.hidden, size.vocab)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.lstm(self.emb(x), state)
        return self.fc(out), state


class PlainClassifier(nn.Module):
    """What one writes by hand: embedding -> packed bidirectional nn.LSTM -> both final states -> linear."""

    def __init__(self, size: ClsSize) -> None:
        super().__init__()
        self.emb = nn.Embedding(size.vocab, size.emb, padding_idx=0)
        self.lstm = nn.LSTM(size.emb, size.hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * size.hidden, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Packed: each direction's final state is that of the sequence's own last token."""
        packed = pack_padded_sequence(self.emb(x), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(torch.cat([h[-2], h[-1]], dim=-1))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Unpacked, as naive code does it: the final states have read the padding too."""
        _, (h, _) = self.lstm(self.emb(x))
        return self.fc(torch.cat([h[-2], h[-1]], dim=-1))


def plain_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with lstmkit's parameter groups (no weight decay on biases).

    Each timed plain epoch gets a new one, built before its clock starts: every timed lstmkit epoch is
    a ``fit`` whose Trainer builds its optimiser (outside the timed epoch) and allocates its state on
    the first step (inside it). A plain optimiser kept across epochs would allocate its state once, in
    the warm-up, and skip that first-step cost which the lstmkit side pays in every timed epoch.
    """
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    # what one writes by hand: torch's default (foreach) AdamW, not lstmkit's fused default
    options = {k: v for k, v in OPTIMIZER.items() if not k.startswith("_") and k != "fused"}
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **options)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Start the plain model from the lstmkit model's weights (same parameter order by construction)."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for src, dst in pairs:
            assert src.shape == dst.shape, (src.shape, dst.shape)
            dst.copy_(src)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """What Lightning's automatic optimisation does per batch: zero, backward, clip the norm, step, read the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if CLIP_NORM:
        clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    return loss.item()


def plain_lm_epoch(model: PlainLM, optimizer: torch.optim.Optimizer, streams: torch.Tensor, bptt: int,
                   precision: str = "32-true", device: str | None = None) -> Timing:
    """Truncated BPTT over contiguous streams, state detached between windows.

    ``device``: where the model is, when the streams are on the host: each window is then copied there
    (from pinned memory, without waiting), as lstmkit's dataloader hands over each batch; the plain loop
    must not skip the copy that lstmkit pays (``scripts/bench_gpu.py``). Under ``bf16-mixed`` autocast
    wraps the forward pass and the loss, as Lightning's plugin wraps ``training_step``.
    """
    device = device or streams.device.type
    copy = streams.device.type != device
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.train()
    state = None
    for i in range(0, streams.shape[1] - 1, bptt):
        x, y = streams[:, i : i + bptt], streams[:, i + 1 : i + 1 + bptt]
        if copy:
            x, y = x.contiguous().to(device, non_blocking=True), y.contiguous().to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        state = (state[0].detach(), state[1].detach())
        train_step(model, optimizer, loss)  # its .item() waits for the step
    return Timing(time.perf_counter() - start)


def padded_batch(data: ClsData, index: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs padded to the batch's longest row, lengths and targets: PadCollate's work, by hand."""
    rows = [data.inputs[i] for i in index]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return pad_sequence(rows, batch_first=True), lengths, torch.stack([data.targets[i] for i in index])


def plain_cls_epoch(
    model: PlainClassifier, optimizer: torch.optim.Optimizer, data: ClsData, batch: int,
    generator: torch.Generator, packed: bool = True, device: str = "cpu", precision: str = "32-true",
) -> Timing:
    """Shuffled batches padded to their longest row; packed (default) or not.

    On a GPU each padded batch is copied to it (the lengths stay on the host for packing), and
    under ``bf16-mixed`` autocast wraps the forward pass and the loss.
    """
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(data.inputs), generator=generator).tolist()
    for i in range(0, len(order), batch):
        x, lengths, y = padded_batch(data, order[i : i + batch])
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(x, lengths) if packed else model.forward_padded(x)
            loss = F.cross_entropy(logits.float(), y)
        train_step(model, optimizer, loss)
    return Timing(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Memory: peak resident set of one measurement
# ---------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is this measurement's own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def _trim_heap() -> None:
    """Give freed heap back to the OS, so the baseline RSS is live memory, not glibc's cache."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ru_maxrss_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


@contextlib.contextmanager
def memory_probe() -> Iterator[dict[str, float]]:
    """Peak RSS during the block and its rise over the RSS at the start (``peak_delta_mb``).

    Without /proc (not Linux), ``ru_maxrss`` is the process's lifetime peak: the delta is then
    only the amount by which this block raised it (a lower bound).
    """
    gc.collect()
    _trim_heap()
    exact = _reset_peak()
    before = _status_mb("VmRSS") if exact else _ru_maxrss_mb()
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        peak = _status_mb("VmHWM") if exact else _ru_maxrss_mb()
        result.update(peak_rss_mb=round(peak or 0.0, 1), peak_delta_mb=round(max(0.0, (peak or 0.0) - before), 1))


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    samples: int  # per epoch
    tokens: int  # real (non-padding) tokens per epoch
    steps: int  # optimiser steps per epoch


@dataclass
class Runs:
    timings: list[Timing]  # the timed (non-warm-up) runs
    memory: dict[str, float]  # the median over the timed runs of each run's own peak


def interleave(
    runners: dict[str, Callable[[], Timing]], warmup: int, repeats: int,
    probe: Callable[[], contextlib.AbstractContextManager[dict[str, float]]] = memory_probe,
) -> dict[str, Runs]:
    """Run each runner warmup + repeats times, alternating the order (ABBA), with a memory probe each.

    Memory is the median of the timed runs' own peaks (``probe``: the process's peak RSS by default),
    as time is: the highest over every run, warm-up included, measured whichever runner first used a
    code path in the process (its one-off allocations) and so depended on the order, not on the runner.
    """
    names = list(runners)
    out = {name: Runs([], {}) for name in names}
    probed: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            with probe() as memory:
                timing = runners[name]()
            if r >= warmup:
                out[name].timings.append(timing)
                probed[name].append(dict(memory))
    for name in names:
        keys = {k for m in probed[name] for k in m}
        out[name].memory = {k: statistics.median(m[k] for m in probed[name] if k in m) for k in sorted(keys)}
    return out


def summarise_runs(runs: Runs, work: Workload) -> dict[str, Any]:
    """Median throughput over the timed runs, the runs themselves, and the peak memory."""
    seconds = [t.seconds for t in runs.timings]
    median = statistics.median(seconds)
    summary: dict[str, Any] = {
        "samples_per_s": round(work.samples / median, 2),
        "tokens_per_s": round(work.tokens / median, 1),
        "step_ms": round(1000 * median / work.steps, 3),
        "epoch_s_runs": [round(s, 4) for s in seconds],
        **runs.memory,
    }
    overheads = [t.overhead_s for t in runs.timings if t.overhead_s]
    if overheads:
        summary["fit_overhead_s"] = round(statistics.median(overheads), 4)
    return summary


def compare(runs: dict[str, Runs], work: Workload) -> dict[str, Any]:
    """lstmkit vs plain: both summaries, the ratio of medians and the median of paired ratios."""
    out: dict[str, Any] = {name: summarise_runs(r, work) for name, r in runs.items()}
    out["ratio"] = round(out["lstmkit"]["samples_per_s"] / out["plain"]["samples_per_s"], 4)
    pairs = zip(runs["lstmkit"].timings, runs["plain"].timings, strict=True)
    out["ratio_paired"] = round(statistics.median(p.seconds / k.seconds for k, p in pairs), 4)
    if "lstmkit_like" in runs:  # the framework's own cost: both sides on the same kernels
        out["ratio_like"] = round(out["lstmkit_like"]["samples_per_s"] / out["plain"]["samples_per_s"], 4)
    out["workload"] = asdict(work)
    return out


def bf16_skipped() -> str | None:
    """Why the bf16 rows are not measured on this CPU, or ``None`` when they are: without bf16
    instructions (an AVX2-only CPU) oneDNN's LSTM refuses bf16 autocast, and the plain loop, which
    has no fallback, stops there (lstmkit runs its LSTM in float32 instead: no bf16 to compare)."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 instructions for oneDNN's LSTM: "
            "bf16-mixed is not measured")


def lm_training(data: LMData, size: LMSize, plan: Plan, root: str) -> dict[str, Any]:
    """Workload 1: the stateful word LM, lstmkit vs plain."""
    torch.manual_seed(0)
    model = lstmkit_lm(data, size)
    plain = PlainLM(size)
    copy_weights(model, plain)
    x, y = data.streams[:, : size.bptt], data.streams[:, 1 : size.bptt + 1]
    with torch.no_grad():
        kit_loss = F.cross_entropy(model(x, torch.full((size.batch,), size.bptt))[0].flatten(0, 1), y.flatten())
        plain_loss = F.cross_entropy(plain(x, None)[0].flatten(0, 1), y.flatten())
    datamodule = BenchStreams(data, size)
    like = lstmkit_lm(data, size, like=True)
    like.load_state_dict(model.state_dict())
    runners: dict[str, Callable[[], Timing]] = {
        "lstmkit": lambda: lstmkit_epoch(model, datamodule, root),
        "plain": lambda: plain_lm_epoch(plain, plain_optimizer(plain), data.streams, size.bptt),
        "lstmkit_like": lambda: lstmkit_epoch(like, datamodule, root),
    }
    skipped = bf16_skipped()
    if not skipped:
        bf16 = lstmkit_lm(data, size)  # the same model under trainer.precision=bf16-mixed (an option)
        bf16.load_state_dict(model.state_dict())
        # and with the output layer and loss as autocast's two calls (lstmkit's bf16 path before the fused
        # node ran under autocast)
        bf16_two_calls = lstmkit_lm(data, size, fused_loss=False)
        bf16_two_calls.load_state_dict(model.state_dict())
        plain_bf16 = PlainLM(size)  # and the plain loop under the same autocast, against which it is compared
        copy_weights(model, plain_bf16)
        runners.update({
            "lstmkit_bf16": lambda: lstmkit_epoch(bf16, datamodule, root, precision="bf16-mixed"),
            "lstmkit_bf16_two_calls": lambda: lstmkit_epoch(bf16_two_calls, datamodule, root, precision="bf16-mixed"),
            "plain_bf16": lambda: plain_lm_epoch(plain_bf16, plain_optimizer(plain_bf16), data.streams, size.bptt,
                                                 "bf16-mixed"),
        })
    runs = interleave(runners, plan.warmup, plan.repeats)
    steps = math.ceil((data.streams.shape[1] - 1) / size.bptt)
    result = compare(runs, Workload(samples=steps * size.batch, tokens=steps * size.batch * size.bptt, steps=steps))
    if skipped:
        result["bf16_skipped"] = skipped
    else:
        result["ratio_bf16"] = round(result["lstmkit_bf16"]["samples_per_s"]
                                     / result["plain_bf16"]["samples_per_s"], 4)  # both under bf16-mixed
        result["ratio_bf16_two_calls"] = round(result["lstmkit_bf16_two_calls"]["samples_per_s"]
                                               / result["plain_bf16"]["samples_per_s"], 4)
    result["same_model_loss_diff"] = float((kit_loss - plain_loss).abs())
    result["size"] = asdict(size)
    return result


def classifier_training(data: ClsData, size: ClsSize, plan: Plan, root: str) -> dict[str, Any]:
    """Workload 2: the bidirectional classifier, both sides packed, shuffled, not bucketed."""
    torch.manual_seed(0)
    model = lstmkit_classifier(data, size)
    plain = PlainClassifier(size)
    copy_weights(model, plain)
    x, lengths, y = padded_batch(data, list(range(min(size.batch, len(data.inputs)))))
    with torch.no_grad():
        loss_diff = float((F.cross_entropy(model(x, lengths)[0], y) - F.cross_entropy(plain(x, lengths), y)).abs())
    datamodule = BenchSentences(data, size, bucketing=False)
    generator = torch.Generator().manual_seed(0)
    like = lstmkit_classifier(data, size, like=True)
    like.load_state_dict(model.state_dict())
    runs = interleave({
        "lstmkit": lambda: lstmkit_epoch(model, datamodule, root),
        "plain": lambda: plain_cls_epoch(plain, plain_optimizer(plain), data, size.batch, generator),
        "lstmkit_like": lambda: lstmkit_epoch(like, datamodule, root),
    }, plan.warmup, plan.repeats)
    result = compare(runs, cls_workload(data, size))
    result["same_model_loss_diff"] = loss_diff
    result["size"] = asdict(size)
    return result


def cls_workload(data: ClsData, size: ClsSize) -> Workload:
    return Workload(samples=len(data.inputs), tokens=data.tokens, steps=math.ceil(len(data.inputs) / size.batch))


# ---------------------------------------------------------------------------------------------
# Variable lengths: bucketing + packing vs padding, and the loss identity
# ---------------------------------------------------------------------------------------------
def padding_fraction(data: ClsData, batches: list[list[int]], pad_to: int | None = None) -> float:
    """Share of the padded (B, T) slots that are padding."""
    slots = sum(len(b) * (pad_to or max(len(data.inputs[i]) for i in b)) for b in batches)
    return 1.0 - data.tokens / slots


def bucketed_batches(data: ClsData, batch: int) -> list[list[int]]:
    lengths = [len(x) for x in data.inputs]
    sampler = torch.utils.data.SequentialSampler(range(len(lengths)))
    return list(BucketBatchSampler(sampler, batch, False, lengths=lengths, shuffle_batches=False))


def random_batches(data: ClsData, batch: int, seed: int = 1) -> list[list[int]]:
    order = torch.randperm(len(data.inputs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def per_example_losses(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: ClsData, batches: list[list[int]],
    pad_to: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of every example (in example order) when fed in these batches."""
    losses = torch.empty(len(data.inputs), dtype=torch.float64)
    with torch.inference_mode():
        for index in batches:
            x, lengths, y = padded_batch(data, index)
            if pad_to is not None:
                x = F.pad(x, (0, pad_to - x.shape[1]))
            losses[index] = F.cross_entropy(forward(x, lengths), y, reduction="none").double()
    return losses


def packed_classifier(data: ClsData, size: ClsSize, source: SequenceModel) -> SequenceModel:
    """The same classifier (same weights) with ``model.kernel=packed``: ``pack_padded_sequence``."""
    model = lstmkit_classifier(data, size, kernel="packed")
    model.load_state_dict(source.state_dict())
    return model


def loss_identity(model: SequenceModel, data: ClsData, size: ClsSize) -> dict[str, Any]:
    """Per-example losses: tight bucketed batches vs random batches padded to the longest example.

    With lstmkit's default kernel (exact masking on CPU) the two agree to float rounding, and so
    does ``model.kernel=packed``; the same weights run naively over the padded tensor
    (``nn.LSTM``'s final states) disagree, because the final states have read the padding.
    """
    model.eval()
    exact = packed_classifier(data, size, model).eval()
    longest = max(len(x) for x in data.inputs)
    bucketed, padded = bucketed_batches(data, size.batch), random_batches(data, size.batch)

    def packed(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model(x, lengths)[0]

    def unpacked(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, (h, _) = model.core.lstm(model.encoder(x, lengths)[0])
        return model.head(torch.cat([h[-2], h[-1]], dim=-1), lengths)

    a = per_example_losses(packed, data, bucketed)
    b = per_example_losses(packed, data, padded, pad_to=longest)
    c = per_example_losses(unpacked, data, bucketed)
    d = per_example_losses(unpacked, data, padded, pad_to=longest)
    e = per_example_losses(lambda x, lengths: exact(x, lengths)[0], data, padded, pad_to=longest)
    model.train()
    diff = float((a - b).abs().max())
    return {
        "examples": len(data.inputs),
        "mean_loss_bucketed": float(a.mean()), "mean_loss_padded": float(b.mean()),
        "max_abs_diff": diff, "mean_loss_diff": float((a.mean() - b.mean()).abs()),
        "tolerance": LOSS_TOLERANCE, "passed": bool(diff <= LOSS_TOLERANCE),
        "unpacked_max_abs_diff": float((c - d).abs().max()),
        "packed_kernel_max_abs_diff": float((a - e).abs().max()),
        "padding_fraction_bucketed": round(padding_fraction(data, bucketed), 4),
        "padding_fraction_padded_to_longest": round(padding_fraction(data, padded, pad_to=longest), 4),
    }


def variable_length(data: ClsData, size: ClsSize, plan: Plan, root: str) -> dict[str, Any]:
    """Workload 3: the loss identity, then training throughput of four ways to batch variable lengths."""
    torch.manual_seed(0)
    model = lstmkit_classifier(data, size)
    identity = loss_identity(model, data, size)  # before training: losses near log(2), not near 0
    exact = packed_classifier(data, size, model)
    plain = PlainClassifier(size)
    copy_weights(model, plain)
    generator = torch.Generator().manual_seed(0)
    bucketed, unbucketed = BenchSentences(data, size, True), BenchSentences(data, size, False)
    runs = interleave({
        "bucketed": lambda: lstmkit_epoch(model, bucketed, root),
        "unbucketed": lambda: lstmkit_epoch(model, unbucketed, root),
        "naive_padded": lambda: plain_cls_epoch(plain, plain_optimizer(plain), data, size.batch, generator,
                                                packed=False),
        "bucketed_packed_kernel": lambda: lstmkit_epoch(exact, bucketed, root),
    }, plan.warmup, plan.repeats)
    work = cls_workload(data, size)
    result: dict[str, Any] = {name: summarise_runs(r, work) for name, r in runs.items()}
    tight, loose = padding_fraction(data, bucketed_batches(data, size.batch)), padding_fraction(
        data, random_batches(data, size.batch))
    result["padding_fraction"] = {"bucketed": round(tight, 4), "unbucketed": round(loose, 4),
                                  "naive_padded": round(loose, 4), "bucketed_packed_kernel": round(tight, 4)}
    result["bucketing_speedup"] = round(
        result["bucketed"]["samples_per_s"] / result["unbucketed"]["samples_per_s"], 4)
    result["loss_identity"] = identity
    result["workload"] = asdict(work)
    return result


# ---------------------------------------------------------------------------------------------
# Inference: eager vs TorchScript vs ONNX
# ---------------------------------------------------------------------------------------------
def call_times_ms(fn: Callable[[], Any], calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return times


Runtime = Callable[[torch.Tensor, torch.Tensor], Any]


def runtimes(model: SequenceModel, folder: Path) -> dict[str, tuple[Callable[[], Runtime], dict[str, Any]]]:
    """Factories of callables ``(inputs, lengths) -> outputs`` per runtime, with export facts."""
    model = model.eval()

    def eager() -> Runtime:
        def run(x: torch.Tensor, lengths: torch.Tensor) -> Any:
            with torch.inference_mode():
                return model(x, lengths)[0]
        return run

    out: dict[str, tuple[Callable[[], Runtime], dict[str, Any]]] = {"eager": (eager, {})}
    ts_path, onnx_path = folder / "model.ts.pt", folder / "model.onnx"
    ts_info = export_model(model, ts_path, fmt="torchscript")

    def torchscript() -> Runtime:
        scripted = torch.jit.load(str(ts_path))

        def run(x: torch.Tensor, lengths: torch.Tensor) -> Any:
            with torch.inference_mode():
                return scripted(x, lengths)
        return run

    out["torchscript"] = (torchscript, {"max_abs_diff": ts_info["max_abs_diff"]})
    try:
        onnx_info = export_model(model, onnx_path, fmt="onnx")
    except Exception as err:  # noqa: BLE001 - a format lstmkit cannot export is reported, not fatal
        out["onnx"] = (lambda: None, {"skipped": str(err)})  # type: ignore[dict-item]
        return out

    def onnx() -> Runtime:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor, lengths: torch.Tensor) -> Any:
            return session.run(None, {"inputs": x.numpy(), "lengths": lengths.numpy()})[0]
        return run

    out["onnx"] = (onnx, {"max_abs_diff": onnx_info["max_abs_diff"]})
    return out


def measure_inference(
    model: SequenceModel, one: tuple[torch.Tensor, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor],
    plan: Plan, folder: Path,
) -> dict[str, Any]:
    """Latency of one sample (p50/p99) and throughput of a batch, per runtime."""
    results: dict[str, Any] = {}
    for name, (factory, facts) in runtimes(model, folder).items():
        if "skipped" in facts:
            results[name] = facts
            continue
        with memory_probe() as memory:
            results[name] = time_runtime(factory(), one, batch, plan)
        results[name].update(**facts, **memory)
    results["shapes"] = {"one": list(one[0].shape), "batch": list(batch[0].shape),
                         "batch_tokens": int(batch[1].sum())}
    return results


def time_runtime(
    run: Runtime, one: tuple[torch.Tensor, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor], plan: Plan
) -> dict[str, Any]:
    """p50/p99 of single-sample calls (what a served request waits) and batch throughput (offline scoring)."""
    single = call_times_ms(lambda: run(*one), plan.latency_calls, warmup=max(2, plan.latency_calls // 10))
    seconds = statistics.median(call_times_ms(lambda: run(*batch), plan.batch_calls, warmup=2)) / 1000
    return {
        "p50_ms": round(float(np.percentile(single, 50)), 4),
        "p99_ms": round(float(np.percentile(single, 99)), 4),
        "batch_samples_per_s": round(len(batch[1]) / seconds, 2),
        "batch_tokens_per_s": round(int(batch[1].sum()) / seconds, 1),
        "batch_ms": round(1000 * seconds, 3),
    }


def inference(lm: LMData, cls: ClsData, plan: Plan) -> dict[str, Any]:
    """Workload 4, on freshly initialised models of the benchmark sizes (speed does not depend on weights)."""
    torch.manual_seed(0)
    bptt = plan.lm.bptt
    lm_batch = (lm.streams[:, :bptt].contiguous(), torch.full((plan.lm.batch,), bptt))
    lm_one = (lm_batch[0][:1].contiguous(), lm_batch[1][:1])
    cls_x, cls_lengths, _ = padded_batch(cls, list(range(min(plan.cls.batch, len(cls.inputs)))))
    middle = sorted(cls.inputs, key=len)[len(cls.inputs) // 2]
    cls_one = (middle[None, :], torch.tensor([len(middle)]))
    with tempfile.TemporaryDirectory() as folder:
        return {
            "lm": measure_inference(lstmkit_lm(lm, plan.lm), lm_one, lm_batch, plan, Path(folder)),
            "classifier": measure_inference(lstmkit_classifier(cls, plan.cls), cls_one, (cls_x, cls_lengths),
                                            plan, Path(folder)),
        }


# ---------------------------------------------------------------------------------------------
# Keras 3 (optional): each backend in its own process
# ---------------------------------------------------------------------------------------------
KERAS_MISSING = "keras not installed (pip install -e .[bench])"
BACKEND_MODULES = {"tensorflow": "tensorflow", "torch": "torch"}


def keras_section(lm: LMData, cls: ClsData, plan: Plan, threads: int) -> dict[str, Any]:
    """Run scripts/bench_keras.py once per backend on the same arrays; skip what is not installed."""
    if importlib.util.find_spec("keras") is None:
        print(KERAS_MISSING)
        return {"status": "skipped", "reason": KERAS_MISSING}
    results: dict[str, Any] = {"status": "ran", "keras": importlib.metadata.version("keras")}
    with tempfile.TemporaryDirectory() as folder:
        arrays = Path(folder) / "data.npz"
        longest = max(len(x) for x in cls.inputs)
        np.savez(arrays, streams=lm.streams.numpy(),
                 cls_inputs=pad_sequence(cls.inputs, batch_first=True).numpy()[:, :longest],
                 cls_lengths=np.array([len(x) for x in cls.inputs]), cls_targets=torch.stack(cls.targets).numpy())
        config = {"lm": asdict(plan.lm), "cls": asdict(plan.cls), "warmup": plan.warmup, "repeats": plan.repeats,
                  "threads": threads, "vocab_lm": len(lm.vocab), "vocab_cls": len(cls.vocab)}
        for backend, module in BACKEND_MODULES.items():
            if importlib.util.find_spec(module) is None:
                results[backend] = {"status": "skipped", "reason": f"{module} not installed"}
                print(f"keras[{backend}]: {module} not installed, skipped")
                continue
            results[backend] = run_keras_worker(backend, arrays, config, threads)
    return results


def run_keras_worker(backend: str, arrays: Path, config: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, "KERAS_BACKEND": backend, "OMP_NUM_THREADS": str(threads),
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, str(Path(__file__).with_name("bench_keras.py")), "--data", str(arrays),
               "--config", json.dumps(config)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": "timed out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"keras[{backend}] failed: {' | '.join(tail)}")
        return {"status": "failed", "reason": " | ".join(tail)}
    return {"status": "ran", **json.loads(lines[-1])}


# ---------------------------------------------------------------------------------------------
# Profile of one lstmkit LM step
# ---------------------------------------------------------------------------------------------
class StepProfiler(L.Callback):
    """Profile optimiser steps ``first .. first + count - 1`` (forward, backward, clip, AdamW, hooks)."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.last = first, first + count - 1
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.wall = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.first:
            self.profiler.start()
        if self.first <= idx <= self.last:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.first <= idx <= self.last:
            self.wall += time.perf_counter() - self._start
        if idx == self.last:
            self.profiler.stop()


def profile_lm_step(data: LMData, size: LMSize, root: str, top: int = 12) -> dict[str, Any]:
    """Where one lstmkit LM training step spends its time: the top ops by self CPU time."""
    torch.manual_seed(0)
    model = lstmkit_lm(data, size)
    count = max(1, min(3, size.steps - 2))
    profiler = StepProfiler(first=min(2, size.steps - 1), count=count)
    make_trainer(root, [profiler]).fit(model, datamodule=BenchStreams(data, size))
    events = profiler.profiler.key_averages()
    print(f"\n### Profile: {count} lstmkit LM training step(s), top {top} ops by self CPU time\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "steps": count,
        "step_ms": round(1000 * profiler.wall / count, 3),
        "profiled_ops_ms_per_step": round(total_us / 1000 / count, 3),
        "top_ops": [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / count, 3),
                     "share": round(e.self_cpu_time_total / total_us, 4), "calls_per_step": e.count / count}
                    for e in ops],
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    versions = {}
    for package in ("torch", "lightning", "onnxruntime", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _f(value: Any, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "—"


def workload_name(key: str, size: dict[str, Any]) -> str:
    if key == "lm":
        return (f"word LM, vocab {size['vocab']:,}, {size['layers']}×{size['hidden']} stateful, "
                f"bptt {size['bptt']}, batch {size['batch']}")
    return (f"bi-LSTM classifier, vocab {size['vocab']:,}, emb {size['emb']}, hidden {size['hidden']}, "
            f"batch {size['batch']}, variable lengths")


def render_training(training: dict[str, Any]) -> list[str]:
    lines = ["## Training throughput (median)", "",
             "| workload | implementation | samples/s | tokens/s | ms/step | peak ΔRSS MB | lstmkit / plain |",
             "|---|---|---:|---:|---:|---:|---:|"]
    names = {key: workload_name(key, training[key]["size"]) for key in ("lm", "classifier") if key in training}
    for key, result in training.items():
        if key not in names:
            continue
        for impl in ("lstmkit", "plain", "lstmkit_like", "lstmkit_bf16", "lstmkit_bf16_two_calls", "plain_bf16"):
            if impl not in result:
                continue
            r = result[impl]
            ratio = {"lstmkit": f"**{result['ratio']:.3f}** (paired {result['ratio_paired']:.3f})",
                     "lstmkit_like": f"**{result.get('ratio_like', 0):.3f}** (framework cost)",
                     "lstmkit_bf16": f"{result.get('ratio_bf16', 0):.3f} (against plain_bf16)",
                     "lstmkit_bf16_two_calls": f"{result.get('ratio_bf16_two_calls', 0):.3f} (against plain_bf16)",
                     }.get(impl, "")
            label = {"lstmkit": "lstmkit (defaults)",
                     "lstmkit_like": "lstmkit, the plain loop's code paths (unfused AdamW and loss, packed)",
                     "lstmkit_bf16": "lstmkit + `trainer.precision=bf16-mixed` (option)",
                     "lstmkit_bf16_two_calls": "the same with `head.fused_loss=false` (autocast's two calls)",
                     "plain_bf16": "plain under the same bf16 autocast"}.get(impl, impl)
            lines.append(f"| {names[key]} | {label} | {_f(r['samples_per_s'])} | {_f(r['tokens_per_s'], 0)} | "
                         f"{_f(r['step_ms'], 2)} | {_f(r['peak_delta_mb'])} | {ratio} |")
    lines += [f"\n{result['bf16_skipped']}." for result in training.values()
              if isinstance(result, dict) and result.get("bf16_skipped")]
    lines += ["", "The defaults' ratio includes lstmkit's speed work (fused AdamW, the fused output layer and loss, the "
              "masked kernel on CPU), which the plain loop does not have; the framework-cost ratio runs lstmkit on "
              "the plain loop's code paths. A LM sample is one bptt window of one stream; tokens are real "
              "(non-padding) tokens. Every timed epoch of either side starts with a new optimiser (each lstmkit epoch "
              "is a `fit`), whose state its first step allocates. "
              "lstmkit's `fit()` costs a further "
              + ", ".join(f"{k}: {_f(v['lstmkit'].get('fit_overhead_s'), 2)} s" for k, v in training.items()
                          if k in names)
              + " per call outside the timed epoch (Trainer set-up)."]
    return lines


def render_profile(prof: dict[str, Any]) -> list[str]:
    lines = [(f"## Profile: lstmkit LM training step ({prof['step_ms']:.1f} ms/step wall, "
             f"{prof['profiled_ops_ms_per_step']:.1f} ms in profiled ops, {prof['steps']} steps)"), "",
             "| op | self ms/step | share | calls/step |", "|---|---:|---:|---:|"]
    for op in prof["top_ops"]:
        lines.append(f"| `{op['op']}` | {op['self_ms_per_step']:.2f} | {100 * op['share']:.1f}% | "
                     f"{op['calls_per_step']:g} |")
    return [*lines, "", ("`Optimizer.step#AdamW.step` self time is Python time inside `optimizer.step(closure)`: "
            "Lightning runs the closure (training_step, backward, clipping, hooks) inside it.")]


def render_variable(var: dict[str, Any]) -> list[str]:
    rows = {"bucketed": "lstmkit, bucketing (default kernel: exact masking on CPU)",
            "unbucketed": "lstmkit, no bucketing (default kernel)",
            "naive_padded": "plain, padding, no packing (inexact)",
            "bucketed_packed_kernel": "lstmkit, bucketing, `model.kernel=packed`"}
    lines = ["## Variable lengths (bi-LSTM classifier, median)", "",
             "| batching | padding share | samples/s | tokens/s | ms/step | peak ΔRSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for key, name in rows.items():
        r = var[key]
        lines.append(f"| {name} | {100 * var['padding_fraction'][key]:.1f}% | {_f(r['samples_per_s'])} | "
                     f"{_f(r['tokens_per_s'], 0)} | {_f(r['step_ms'], 2)} | {_f(r['peak_delta_mb'])} |")
    ident = var["loss_identity"]
    verdict = "PASSED" if ident["passed"] else "FAILED"
    lines += ["", (f"Loss identity over {ident['examples']} examples, bucketed batches "
              f"({100 * ident['padding_fraction_bucketed']:.1f}% padding) vs random batches padded to the longest "
              f"example ({100 * ident['padding_fraction_padded_to_longest']:.1f}% padding): max per-example "
              f"|Δloss| = {ident['max_abs_diff']:.2e}, mean loss {ident['mean_loss_bucketed']:.6f} vs "
              f"{ident['mean_loss_padded']:.6f} — **{verdict}** (tolerance {ident['tolerance']:.0e}). "
              f"The same weights without packing: max |Δloss| = {ident['unpacked_max_abs_diff']:.2e}; with the exact "
              f"`model.kernel=packed` (pack_padded_sequence): {ident['packed_kernel_max_abs_diff']:.2e}.")]
    return lines


def render_inference(inf: dict[str, Any]) -> list[str]:
    header = "| model | runtime | 1 sample p50 ms | p99 ms | batch samples/s | batch tokens/s | peak ΔRSS MB |"
    lines = ["## Inference", "", header, "|---|---|---:|---:|---:|---:|---:|"]
    for model, result in inf.items():
        for runtime in ("eager", "torchscript", "onnx"):
            r = result.get(runtime, {})
            if "skipped" in r:
                lines.append(f"| {model} | {runtime} | skipped: {r['skipped'][:60]} | | | | |")
                continue
            lines.append(f"| {model} | {runtime} | {_f(r.get('p50_ms'), 3)} | {_f(r.get('p99_ms'), 3)} | "
                         f"{_f(r.get('batch_samples_per_s'))} | {_f(r.get('batch_tokens_per_s'), 0)} | "
                         f"{_f(r.get('peak_delta_mb'))} |")
    shapes = {m: r["shapes"] for m, r in inf.items()}
    lines += ["", "Shapes: " + "; ".join(f"{m}: one {s['one']}, batch {s['batch']}" for m, s in shapes.items())
              + ". ΔRSS includes loading the exported model."]
    return lines


def render_keras(keras: dict[str, Any], training: dict[str, Any] | None) -> list[str]:
    lines = ["## Keras 3", ""]
    if keras.get("status") != "ran":
        return [*lines, f"Skipped: {keras.get('reason')}."]
    lines += ["| workload | backend | samples/s | tokens/s | vs lstmkit |", "|---|---|---:|---:|---:|"]
    for backend in BACKEND_MODULES:
        r = keras.get(backend, {})
        if r.get("status") != "ran":
            lines.append(f"| all | {backend} | {r.get('status')}: {r.get('reason')} | | |")
            continue
        for workload in ("lm", "classifier"):
            k = r[workload]
            base = (training or {}).get(workload, {}).get("lstmkit", {}).get("samples_per_s")
            versus = f"{k['samples_per_s'] / base:.3f}" if base else "—"
            lines.append(f"| {workload} | {backend} | {_f(k['samples_per_s'])} | {_f(k['tokens_per_s'], 0)} | "
                         f"{versus} |")
    notes = [f"{b} {w}: {keras[b][w]['note']}" for b in BACKEND_MODULES for w in ("lm", "classifier")
             if keras.get(b, {}).get("status") == "ran" and "note" in keras[b][w]]
    return [*lines, "", "Keras pads the classifier's inputs to the longest example and masks them (no packing, "
            "no bucketing)." + "".join(f" {n}." for n in notes)]


def render(results: dict[str, Any]) -> str:
    meta, plan = results["meta"], results["plan"]
    git = meta["git"]
    lines = ["# lstmkit speed benchmark", "",
             (f"{meta['machine']['cpu']}, {meta['machine']['usable_cores']} cores, torch {meta['machine'].get('torch')} "
             f"({meta['machine']['torch_threads']} threads), lightning {meta['machine'].get('lightning')}; "
             f"commit {str(git['commit'])[:12]}{' (dirty)' if git['dirty'] else ''}; data: {meta['data']}; "
             f"{'quick' if meta['quick'] else 'full'} run, median of {plan['repeats']} after {plan['warmup']} warm-up; "
             f"load average {meta['machine']['loadavg_start']} → {meta['loadavg_end']}."), ""]
    if "training" in results:
        lines += [*render_training(results["training"]), ""]
    if "profile" in results:
        lines += [*render_profile(results["profile"]), ""]
    if "variable_length" in results:
        lines += [*render_variable(results["variable_length"]), ""]
    if "inference" in results:
        lines += [*render_inference(results["inference"]), ""]
    if "keras" in results:
        lines += [*render_keras(results["keras"], results.get("training")), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every measurement once (smoke check)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for speed.json/.md (default: bench/results; with --quick a temporary folder, "
                             "so a smoke check never replaces the committed report)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="use PTB (<root>/lm) and SST-2 (<root>/sentiment) instead of generated tokens")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {SECTIONS} (empty: none, e.g. with --profile)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up epochs before them")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of lstmkit LM training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


def quiet() -> None:
    """Lightning's info lines and data-loader hints would drown the tables."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def failed_checks(results: dict[str, Any], tolerance: float = 1e-6) -> list[str]:
    """The correctness checks a report's figures rest on that did not hold: the same loss for bucketed
    and padded batches, and lstmkit and the plain loop starting from the same model."""
    problems = []
    identity = (results.get("variable_length") or {}).get("loss_identity")
    if isinstance(identity, dict) and not identity.get("passed", True):
        problems.append(f"bucketed and padded losses differ by {identity.get('max_abs_diff')} "
                        f"(tolerance {identity.get('tolerance')})")
    for workload, result in (results.get("training") or {}).items():
        diff = result.get("same_model_loss_diff")
        if diff is not None and not diff <= tolerance:
            problems.append(f"{workload}: lstmkit's and the plain loop's models give losses {diff:g} apart on the "
                            "same batch (not the same model)")
    return problems


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    plan = Plan(base.lm, base.cls, warmup=base.warmup if args.warmup is None else args.warmup,
                repeats=base.repeats if args.repeats is None else max(1, args.repeats),
                latency_calls=base.latency_calls, batch_calls=base.batch_calls)
    sections = args.sections
    if args.data_root:
        lm, cls = real_lm(args.data_root, plan.lm), real_cls(args.data_root, plan.cls)
        plan = Plan(LMSize(**{**asdict(plan.lm), "vocab": len(lm.vocab)}),
                    ClsSize(**{**asdict(plan.cls), "vocab": len(cls.vocab), "examples": len(cls.inputs)}),
                    plan.warmup, plan.repeats, plan.latency_calls, plan.batch_calls)
    else:
        lm, cls = synthetic_lm(plan.lm, args.seed), synthetic_cls(plan.cls, args.seed)
    results: dict[str, Any] = {"meta": {"machine": machine_info(), "git": git_info(), "quick": args.quick,
                                        "data": f"LM {lm.source}; classifier {cls.source}", "argv": sys.argv[1:]},
                               "plan": asdict(plan)}
    trainer = OmegaConf.to_container(trainer_config("<tmp>"))
    results["meta"]["lstmkit_trainer"] = {**trainer, "callbacks": [type(c).__name__ for c in lstmkit_callbacks()],
                                          "logger": False}  # type: ignore[dict-item]
    results["meta"]["plain_clip_norm"] = CLIP_NORM
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        if "training" in sections:
            results["training"] = {"lm": lm_training(lm, plan.lm, plan, root),
                                   "classifier": classifier_training(cls, plan.cls, plan, root)}
        if args.profile:
            results["profile"] = profile_lm_step(lm, plan.lm, root)
        if "variable_length" in sections:
            results["variable_length"] = variable_length(cls, plan.cls, plan, root)
    if "inference" in sections:
        results["inference"] = inference(lm, cls, plan)
    if "keras" in sections:
        results["keras"] = keras_section(lm, cls, plan, torch.get_num_threads())
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    markdown = render(results)
    print(markdown)
    if args.out is None:
        args.out = quick_folder("bench_speed") if args.quick else REPO / "bench" / "results"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json_text(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "speed.md").write_text(markdown, encoding="utf-8")
    print(f"wrote {args.out / 'speed.json'} and {args.out / 'speed.md'} in {results['meta']['seconds']} s")
    results["failed_checks"] = failed_checks(results)
    for problem in results["failed_checks"]:
        print(f"bench_speed: check FAILED: {problem}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["failed_checks"] else 0)
