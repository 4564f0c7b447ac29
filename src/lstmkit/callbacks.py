"""Lightning callbacks lstmkit adds to every run."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from lstmkit.errors import LstmkitError


class DivergedError(LstmkitError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN / inf training loss, naming the step and what to try.

    The run ends before anything is saved for the diverged step, so the checkpoints on disk
    (``last.ckpt``, ``best.ckpt``) are the last good ones. In a sweep the trial is reported as
    failed and the sweep goes on.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not math.isfinite(float(loss.detach())):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise DivergedError(
                f"training loss became {float(loss)} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}, batch {batch_idx} (learning rate {lr:.3g}). Try a lower "
                "optimizer.lr, trainer.gradient_clip_val=1.0, or trainer.precision=32-true; the last "
                "good checkpoints are kept"
            )


class ReseedEachEpoch(L.Callback):
    """Reseed every random generator at the start of each training epoch from ``(seed, epoch)``.

    Why: a run resumed from an end-of-epoch checkpoint must replay the next epochs exactly as
    the uninterrupted run would have. Lightning restores weights, optimiser, schedulers and
    loop counters, but not the global RNG, and on resume it creates the data iterator at a
    different moment than in an ongoing run. Making each epoch's randomness (shuffling,
    bucketing, dropout, SpecAugment) a function of the seed and the epoch number alone removes
    that history dependence, so a killed-and-resumed run reaches bit-identical metrics.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + 100_003 * trainer.current_epoch, workers=True, verbose=False)
