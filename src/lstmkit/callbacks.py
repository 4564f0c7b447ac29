"""Lightning callbacks lstmkit adds to every run."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

from lstmkit.errors import LstmkitError


class DivergedError(LstmkitError):
    """The training loss became NaN or infinite."""


def is_read_step(trainer: L.Trainer, every: int | None, last: int | None) -> bool:
    """Whether a callback reads its device value on the host at this step.

    Every ``every`` optimiser steps; by default the trainer's ``log_every_n_steps``, where
    Lightning reads its logged values anyway, so the read adds no wait for the GPU (in between,
    the host runs ahead of the device). Once per step under gradient accumulation (``last``:
    the step of the previous read); ``0`` reads only at the boundaries the callback names.
    """
    n = every if every is not None else getattr(trainer, "log_every_n_steps", 1)
    step = trainer.global_step
    return bool(n) and step % n == 0 and step != last


def current_lr(trainer: L.Trainer) -> float:
    """The first parameter group's learning rate now (NaN before the optimiser exists)."""
    return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN / inf training loss, naming the batch where it happened and what to try.

    The check itself stays on the device: each step only records (without a host read) the
    first batch whose loss was not finite; the host looks at the record every
    ``check_every_n_steps`` steps (default: the trainer's ``log_every_n_steps``), at validation
    and epoch boundaries, and before any checkpoint is written. So a GPU step is never made to
    wait for the loss, and the run still ends before anything is saved after the diverged step:
    the checkpoints on disk (``last.ckpt``, ``best.ckpt``) are the last good ones. Under DDP
    the processes agree at each check (a loss that diverged on one of them stops them all,
    before rank 0 saves the weights the gradient all-reduce spread). In a sweep the trial is
    reported as failed and the sweep goes on.

    Args:
        check_every_n_steps: steps between host reads of the record (1 = every step, 0 = only at
            the boundaries and saves).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        # (batch, global step, loss, learning rate) of the first bad batch, on the device; batch -1: none
        self._first: torch.Tensor | None = None
        self._read_at: int | None = None
        self._step: tuple[int, float] | None = None  # (global step, learning rate) of the running batch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first, self._read_at, self._step = None, None, None  # nothing carried over from another fit

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)
        self._first = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # the step and rate this batch runs at (by batch end the step has advanced and a step-interval
        # schedule has moved the rate)
        self._step = (trainer.global_step, current_lr(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().double()
        step, lr = self._step or (trainer.global_step, current_lr(trainer))  # (without on_train_batch_start)
        self._step = None
        if self._first is None:
            self._first = torch.full((4,), -1.0, dtype=torch.float64, device=loss.device)
        # python numbers enter as kernel arguments: no host-to-device copy, no wait
        here = torch.stack([torch.full_like(loss, batch_idx), torch.full_like(loss, step), loss,
                            torch.full_like(loss, lr)])
        newly = (self._first[0] < 0) & ~torch.isfinite(loss)
        self._first = torch.where(newly, here, self._first)
        if is_read_step(trainer, self.check_every_n_steps, self._read_at):
            self._read_at = trainer.global_step
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._check(trainer)  # raising here keeps a diverged state off the disk (every rank gets here)

    def _check(self, trainer: L.Trainer) -> None:
        here = self._first is not None and bool(self._first[0] >= 0)  # the one host read of a check
        anywhere = here
        if getattr(trainer, "world_size", 1) > 1:  # a collective: every rank checks at the same points
            anywhere = trainer.strategy.reduce_boolean_decision(here, all=False)
        if not anywhere:
            return
        lr = current_lr(trainer)
        if here:
            assert self._first is not None
            batch, step, value, lr = self._first.tolist()  # the rate the diverged step ran at
        advice = (f"(learning rate {lr:.3g}). Try a lower optimizer.lr, trainer.gradient_clip_val=1.0, "
                  "or trainer.precision=32-true; the last good checkpoints are kept")
        if not here:
            raise DivergedError(f"training loss became non-finite on another process by epoch "
                                f"{trainer.current_epoch}, step {trainer.global_step} {advice}")
        raise DivergedError(f"training loss became {value} at epoch {trainer.current_epoch}, step {int(step)}, "
                            f"batch {int(batch)} {advice}")


class LossProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the training loss averaged on the device.

    Lightning turns every value logged with ``prog_bar=True`` into a Python number after every
    batch, which on a GPU makes the host wait for each step to finish. The model therefore logs
    ``train/loss`` without ``prog_bar``; this bar adds it up on the device each step and shows
    the mean since its previous read, read every ``loss_every_n_steps`` optimiser steps (default:
    the trainer's ``log_every_n_steps``, where Lightning reads its logged values anyway), at the
    first step, when validation starts and at the end of each epoch. Takes ``RichProgressBar``'s
    arguments besides.
    """

    def __init__(self, *args: Any, loss_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_every_n_steps = loss_every_n_steps
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._shown: float | None = None
        self._read_at: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._count, self._shown, self._read_at = None, 0, None, None
        super().on_fit_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.add_loss(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read()  # validation and the epoch's end are boundaries: show what has been added up
        super().on_validation_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read()
        super().on_train_epoch_end(trainer, pl_module)

    def _read(self) -> None:
        if self._sum is not None:
            self._shown = float(self._sum) / self._count
            self._sum, self._count = None, 0

    def add_loss(self, trainer: L.Trainer) -> None:
        """Add this step's ``train/loss`` on the device; read the mean at a read step."""
        loss = trainer.callback_metrics.get("train/loss")
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float()
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        if self._shown is None or is_read_step(trainer, self.loss_every_n_steps, self._read_at):
            self._read()
            self._read_at = trainer.global_step

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        if self._shown is not None:
            items["train/loss"] = self._shown
        return items


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
