"""Test-time adaptation: before a loop scores a split, the model adapts to it from its inputs alone.

``adapt=true`` re-estimates the encoders' normalisation statistics on the split's inputs (a new
speaker's voice and microphone); ``self_train.*`` then fine-tunes the model on its own surest
transcripts of them (:mod:`lstmkit.self_train`). Neither reads a label, so the score stays honest.

Why a callback: this is work around a loop (eval's, or the test after training), not part of the
model; Lightning runs a callback's ``on_test_start`` / ``on_validation_start`` before the loop's
first batch, which is the moment it needs. The model says what can adapt (``encoders()``,
``trained_models()``: an ensemble's members, ``check_adaptable()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from lstmkit.self_train import SelfTraining, across_ranks, confidence_cut, fine_tune, pseudo_labelled
from lstmkit.types import Batch

log = logging.getLogger("lstmkit")


def scored_batches(loaders: Any, limits: Sequence[float]) -> Iterator[Batch]:
    """The batches the loop will score (``limit_*_batches``), on the host.

    The loop's own loaders are not iterated: Lightning already holds their iterator, which a loader
    with persistent workers hands out again, so reading it here left the loop nothing to score.
    Loaders of the same dataset, sampler (DDP's shard) and collate are read instead, in this process.
    """
    from torch.utils.data import DataLoader

    for loader, limit in zip(loaders if isinstance(loaders, (list, tuple)) else [loaders], limits):
        batching = ({"batch_sampler": loader.batch_sampler} if loader.batch_sampler is not None
                    else {"batch_size": None})  # a dataset of whole batches (next-word's stream windows)
        own = DataLoader(loader.dataset, collate_fn=loader.collate_fn, **batching)
        for number, batch in enumerate(own):
            if number >= limit:
                break
            yield batch


class AdaptToScoredData(L.Callback):
    """``adapt`` and ``self_train``: the model adapts to the split a test (or eval's val) loop scores."""

    def __init__(self, adapt: bool = False, self_training: SelfTraining | None = None) -> None:
        self.adapt = adapt
        self.self_training = self_training

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # eval split=val, not fitting's
            self._adapt_to(trainer, pl_module, trainer.val_dataloaders, trainer.num_val_batches, "val")

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._adapt_to(trainer, pl_module, trainer.test_dataloaders, trainer.num_test_batches, pl_module.test_name)

    def _adapt_to(self, trainer: L.Trainer, model: Any, loaders: Any, limits: Sequence[float], split: str) -> None:
        reads = int(self.adapt) * len(model.encoders()) + int(self.self_training is not None)
        if not reads:
            return
        if reads > 1:  # read and collated once, not once per encoder and again for self-training
            held = list(scored_batches(loaders, limits))
            scored: Callable[[], Iterable[Batch]] = lambda: held
        else:
            scored = lambda: scored_batches(loaders, limits)
        if self.adapt:
            self._adapt(trainer, model, scored, split)
        if self.self_training is not None:
            self._self_train(trainer, model, scored(), split)

    @staticmethod
    def _adapt(trainer: L.Trainer, model: Any, scored: Callable[[], Iterable[Batch]], split: str) -> None:
        """Re-estimate every encoder's statistics on the batches the loop will score (``scored()``)."""
        device, convert = model.device, trainer.precision_plugin.convert_input  # the loop's precision (*-true)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for batch in scored():
                yield convert(batch.inputs.to(device)), batch.lengths.to(device)

        def total(value: torch.Tensor) -> torch.Tensor:  # every rank's shard of the split (DDP)
            return trainer.strategy.reduce(value, reduce_op="sum")

        encoders = model.encoders()
        for number, encoder in enumerate(encoders):
            frames = encoder.adapt_normalisation(batches(), reduce=total)
            if trainer.is_global_zero:
                member = f" (member {number + 1} of {len(encoders)})" if len(encoders) > 1 else ""
                log.info("adapt=true: the encoder's normalisation statistics%s re-estimated on the %d frames of "
                         "the %s split's inputs (no labels read)", member, frames, split)

    def _self_train(self, trainer: L.Trainer, model: Any, scored: Iterable[Batch], split: str) -> None:
        """Label the scored batches with the model's own transcripts, then fine-tune on the surest share."""
        settings = self.self_training
        assert settings is not None
        strategy, world = trainer.strategy, trainer.world_size
        precision = trainer.precision_plugin  # bf16-true / 16-true: the inputs and the passes as the weights
        convert, context = precision.convert_input, precision.forward_context
        reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None
        # the test loop runs in inference mode, whose tensors autograd refuses
        with torch.inference_mode(False), torch.enable_grad():
            labelled = pseudo_labelled(model, scored, model.device, convert, context)
            confidences = torch.cat([c for _, c in labelled]) if labelled else torch.zeros(0)
            steps = len(labelled)
            if world > 1:  # every rank's shard: one cut for all, and as many steps on each
                confidences, steps, reduce = across_ranks(strategy, confidences, steps, model.device)
            cut = confidence_cut(confidences, settings.keep)
            kept = int((confidences >= cut).sum())
            taken = [fine_tune(member, labelled, cut, settings, model.device, steps, reduce, convert, context)
                     for member in model.trained_models()] if kept else [0]
        if not trainer.is_global_zero:
            return
        if not kept:
            log.warning("self_train: the model decoded none of the %d utterances of the %s split to a transcript, "
                        "so there is nothing to train on: scored as it is", len(confidences), split)
            return
        log.info("self_train: fine-tuned %d epoch(s), %d optimiser step(s), at lr %g on %d of the %d utterances of the "
                 "%s split (the surest %.0f %%, self_train.keep=%g), labelled with the model's own transcripts; no "
                 "reference transcript read", settings.epochs, max(taken), settings.lr, kept, len(confidences), split,
                 100 * kept / max(1, len(confidences)), settings.keep)
