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
