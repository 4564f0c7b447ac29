"""Self-training on the scored data: unsupervised adaptation to an unseen speaker (``self_train.*``).

A model trained on five speakers meets a sixth whose voice and microphone it has never heard, and its
errors there are systematic (one speaker's "two" heard as "four" 42 times in 50). ``adapt=true`` moves
the input normalisation to the new speaker; this goes one step further, as unsupervised speaker
adaptation does in ASR (first-pass transcripts, then a model adapted on them: Kaldi's fMLLR, and
noisy-student self-training, Xie et al. 2020, Park et al. 2020):

1. decode every utterance of the scored split with the model as it scores (an ensemble: the members'
   combined outputs), and rate each transcript by the model's own CTC loss of it per label;
2. keep the most confident share (``keep``) of them: the rest are likelier to be wrong;
3. fine-tune the model (each member of an ensemble) on the kept utterances with those transcripts as
   targets, for ``epochs`` passes, in training mode: dropout and the encoder's augmentation on, so the
   model learns the transcripts from perturbed inputs rather than copying its own outputs.

Only the inputs are read, never a reference transcript, so scoring afterwards stays honest. The
recipe's settings were chosen on inner folds that leave each test fold's speaker out (README, Benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from lstmkit.errors import ConfigError
from lstmkit.types import Batch

log = logging.getLogger("lstmkit")


@dataclass(frozen=True)
class SelfTraining:
    """``self_train.*``: how many passes over the kept utterances, which share is kept, at what rate."""

    epochs: int = 0
    keep: float = 0.7
    lr: float = 1e-3

    @classmethod
    def from_config(cls, node: Any) -> SelfTraining | None:
        """The settings of a ``self_train`` node (``None``, or ``epochs: 0``: off), checked."""
        if node is None:
            return None
        if not isinstance(node, Mapping):
            raise ConfigError(f"self_train={node!r}: expected its settings, e.g. self_train.epochs=10 (self_train takes "
                              f"{', '.join(SETTINGS)})")
        values = dict(node)
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"self_train.{unknown[0]}: no such setting; self_train takes {', '.join(SETTINGS)}")
        epochs, keep, lr = values.get("epochs", 0), values.get("keep", cls.keep), values.get("lr", cls.lr)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"self_train.epochs={epochs!r}: expected a whole number of passes >= 0 (0 = off)")
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
            raise ConfigError(f"self_train.keep={keep!r}: expected the share of utterances kept, in (0, 1]")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"self_train.lr={lr!r}: expected a learning rate > 0")
        return cls(int(epochs), float(keep), float(lr)) if epochs else None


SETTINGS = tuple(field.name for field in fields(SelfTraining))  # what self_train.* takes

Convert = Callable[[torch.Tensor], torch.Tensor]
Reduce = Callable[[torch.Tensor, str], torch.Tensor]
# the precision plugin's forward_context: the default dtype of bf16-true / 16-true (which the encoder's output
# follows) or the autocast of the *-mixed precisions, as the loop's own forward passes run in
Context = Callable[[], contextlib.AbstractContextManager[Any]]


def _on_device(batch: Batch, device: torch.device, convert: Convert | None) -> Batch:
    """``batch`` on ``device`` with its host lengths kept (the LSTM packs without a device sync) and its
    inputs in the run's precision (``convert``: the precision plugin's, e.g. bf16 under ``bf16-true``)."""
    inputs = batch.inputs.to(device)
    moved = Batch(convert(inputs) if convert is not None else inputs, batch.lengths.to(device),
                  None if batch.targets is None else batch.targets.to(device),
                  None if batch.target_lengths is None else batch.target_lengths.to(device))
    moved.host_lengths, moved.sources = batch.host_lengths, batch.sources
    return moved


def pseudo_labelled(model: nn.Module, batches: Iterable[Batch], device: torch.device, convert: Convert | None = None,
                    context: Context = contextlib.nullcontext) -> list[tuple[Batch, torch.Tensor]]:
    """Each batch (on the host) with the model's own transcripts as targets, and each utterance's confidence.

    The confidence is minus the model's CTC loss of its transcript per label (higher: surer); an
    utterance decoded to nothing gets ``-inf`` and is never kept.
    """
    head = model.head
    labelled = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            scored = _on_device(batch, device, convert)
            with context():
                outputs, lengths = model(scored.inputs, scored.lengths, host_lengths=scored.host_lengths)
            targets, target_lengths, confidence = head.pseudo_labels(outputs, lengths)
            own = Batch(batch.inputs, batch.lengths, targets.cpu(), target_lengths.cpu())  # never batch.targets
            own.sources = batch.sources
            labelled.append((own, confidence.float().cpu()))
    return labelled


def across_ranks(strategy: Any, confidences: torch.Tensor, steps: int, device: torch.device
                 ) -> tuple[torch.Tensor, int, Reduce]:
    """Under DDP, every rank's confidences (one cut for all), the most steps any rank has (each takes as many),
    and the strategy's reduction for :func:`fine_tune`'s gradients. The shards differ in size, so each is
    padded with NaN to the largest before the gather and the padding dropped after."""
    import torch.distributed as dist

    size = strategy.reduce(torch.tensor([len(confidences), steps], device=device), reduce_op=dist.ReduceOp.MAX)
    padded = torch.full((int(size[0]),), float("nan"), device=device)
    padded[: len(confidences)] = confidences.to(device)
    gathered = strategy.all_gather(padded).flatten().cpu()

    def reduce(value: torch.Tensor, op: str) -> torch.Tensor:
        return strategy.reduce(value, reduce_op=op)

    return gathered[~torch.isnan(gathered)], int(size[1]), reduce


def confidence_cut(confidences: torch.Tensor, keep: float) -> float:
    """The confidence above which the ``keep`` share of the utterances lies (the finite ones)."""
    finite = confidences[torch.isfinite(confidences)]
    if finite.numel() == 0:
        return float("inf")
    return float(torch.quantile(finite.double(), 1.0 - keep)) if keep < 1.0 else float(finite.min())


def fine_tune(member: nn.Module, labelled: Sequence[tuple[Batch, torch.Tensor]], cut: float, settings: SelfTraining,
              device: torch.device, steps: int, reduce: Reduce | None = None, convert: Convert | None = None,
              context: Context = contextlib.nullcontext) -> int:
    """``settings.epochs`` passes of AdamW over the utterances at or above ``cut``; returns the steps taken.

    ``steps`` batches a pass; under DDP (``reduce``: a sum or mean over processes) every process takes
    as many, the gradients are averaged, and a step that no process has an utterance for is skipped on
    all of them, as it is alone (Adam's momentum would still move the weights on a zero gradient).
    Each part learns at ``settings.lr`` times the run's ``lr_scale`` for it, as in training (a part
    warm-started and slowed stays slow; frozen parts stay frozen), without weight decay. The encoder's buffers (``adapt=true``'s statistics) are put back afterwards:
    training mode would move them.
    """
    params = [p for p in member.parameters() if p.requires_grad]
    if not params:
        return 0
    saved = {name: buffer.clone() for name, buffer in member.encoder.named_buffers()}
    groups = member.param_groups(settings.lr) if hasattr(member, "param_groups") else [{"params": params}]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=0.0)  # the groups' decay: none given
    taken = 0
    member.train()
    try:
        for _ in range(settings.epochs):
            for index in range(steps):
                optimizer.zero_grad(set_to_none=False)
                rows = torch.zeros(0, dtype=torch.long)
                if index < len(labelled):
                    batch, confidence = labelled[index]
                    rows = (confidence >= cut).nonzero().squeeze(1)
                if rows.numel():
                    kept = _on_device(Batch(batch.inputs[rows], batch.lengths[rows], batch.targets[rows],
                                            batch.target_lengths[rows]), device, convert)
                    with context():
                        features, lengths, host = member.encode(kept.inputs, kept.lengths, kept.host_lengths)
                        loss = member.head.training_loss(member.pool(features, lengths, host_lengths=host), lengths,
                                                         kept)
                    loss.backward()
                count = torch.tensor(float(rows.numel()), device=device)
                if int(reduce(count, "sum") if reduce is not None else count) == 0:
                    continue  # no utterance kept at this step on any process: no step
                for param in params:
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    if reduce is not None:
                        param.grad = reduce(param.grad, "mean")
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                taken += 1
    finally:
        member.eval()
        with torch.no_grad():
            for name, buffer in member.encoder.named_buffers():
                buffer.copy_(saved[name])
    return taken
