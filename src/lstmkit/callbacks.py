"""Lightning callbacks lstmkit adds to every run."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lstmkit.errors import LstmkitError

log = logging.getLogger("lstmkit")


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
    """The run's learning rate now, ``optimizer.lr`` as scheduled (NaN before the optimiser exists).

    The first parameter group's rate, over its ``lr_scale`` (``SequenceModel.param_groups``): with
    ``lr_scale.encoder=0.1`` that group is the encoder's, and the divergence advice "a lower
    optimizer.lr" quoted a rate ten times below the one the setting names."""
    if not trainer.optimizers:
        return float("nan")
    group = trainer.optimizers[0].param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale") or 1.0)


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
        checkpoints = getattr(trainer, "checkpoint_callback", None)
        saved = getattr(checkpoints, "best_model_path", "") or getattr(checkpoints, "last_model_path", "")
        kept = ("the last good checkpoints are kept" if saved else
                "no checkpoint had been saved yet (it diverged before the first one)")
        # what is left to try: clipping and full precision only where they are not already set
        clip = getattr(trainer, "gradient_clip_val", None)
        by_value = getattr(trainer, "gradient_clip_algorithm", "norm") == "value"
        precision = str(getattr(getattr(trainer, "precision_plugin", None), "precision", "32-true"))
        full = precision in ("32-true", "64-true", "32", "64")
        clipping = ([] if clip and not by_value else  # value clipping: the gradient's norm is still unbounded
                    ["trainer.gradient_clip_algorithm=norm"] if clip else ["trainer.gradient_clip_val=1.0"])
        tries = ["a lower optimizer.lr", *clipping, *([] if full else ["trainer.precision=32-true"])]
        advice = (f"(learning rate {lr:.3g}). Try {', or '.join(tries)}; {kept}")
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

    def state_dict(self) -> dict[str, Any]:
        """The run's seed, in its checkpoints: a ``seed=null`` run resumes with the seed it drew."""
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: ``train`` reads the seed from the checkpoint before the run is built."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # modulo 2**32, the generators' range: a valid large seed (4294900000) plus 100003 per epoch was out
        # of it after the first epoch (ValueError); seeds that stayed in range get the seeds they had
        L.seed_everything((self.seed + 100_003 * trainer.current_epoch) % 2**32, workers=True, verbose=False)


# Lightning's warning on resuming a checkpoint written under RunEarlyStopping's old key alone: that state
# is read (_legacy_state_key), so "please add the following callbacks" would send the user looking
_OLD_KEY_WARNING = (r"(?s)Be aware that when using `ckpt_path`.*Please add the following callbacks: "
                    r"\[[\"']RunEarlyStopping\{[^\]]*\}[\"']\]\.")


class RunEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping whose ``patience`` is the run's config, also after a resume.

    Why: Lightning restores ``patience`` with the rest of the callback's state, so
    ``callbacks.early_stopping.patience=10 resume=true`` (give a stopped run more epochs) was silently
    run with the checkpoint's patience and stopped again at once. The count of epochs without
    improvement and the best score are still restored.

    Its state is stored under Lightning's own key (``EarlyStopping{...}``), as :class:`RunCheckpoint`'s:
    under a key of its own, a checkpoint written with a plain ``EarlyStopping`` resumed with the count
    and the best score silently reset. A checkpoint written under the old ``RunEarlyStopping{...}`` key
    is still read (:attr:`_legacy_state_key`).
    """

    @property
    def state_key(self) -> str:
        """Lightning's own key, so checkpoints stay interchangeable with a plain ``EarlyStopping``."""
        return super().state_key.replace(type(self).__qualname__, EarlyStopping.__qualname__, 1)

    @property
    def _legacy_state_key(self) -> str:  # type: ignore[override]
        """The key lstmkit wrote before (``RunEarlyStopping{...}``): Lightning reads it when ``state_key``
        is not in the checkpoint (its own legacy key, the class, is of checkpoints before Lightning 1.5)."""
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # here, not at import: Lightning restores a checkpoint after setup, and a filter added at import
        # is gone once a warnings.catch_warnings block around the import has ended
        warnings.filterwarnings("ignore", message=_OLD_KEY_WARNING)
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        if self.patience != patience:
            log.info("early stopping: patience %d (this run's), not the checkpoint's %d", patience, self.patience)
        self.patience = patience


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, whose best checkpoint and score survive a resume.

    Why: a resumed run writes into a new run directory, and ``ModelCheckpoint`` only restores its
    ``best_model_score`` and ``best_k_models`` when the checkpoint folder is the same. Otherwise the
    first epoch after the resume becomes "best" however bad it is: ``best.ckpt``, ``val/*_best``
    and the test metrics (measured on the best checkpoint) then differ from those of a run that
    was never interrupted. Here the earlier run's checkpoint files are copied into the new folder
    (their names kept; the earlier run's folder is left as it was) and the state is restored
    under the new paths, so the run continues as one.
    """

    @property
    def state_key(self) -> str:
        """Lightning's own key, so checkpoints stay interchangeable with a plain ``ModelCheckpoint``."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if self.dirpath and old and old != self.dirpath:
            state_dict = self._moved(state_dict, Path(old), Path(self.dirpath))
        super().load_state_dict(state_dict)

    def _moved(self, state: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
        def move(path: str) -> str:
            if not path or Path(path).parent != old:
                return path
            target = new / Path(path).name
            if rank_zero_only.rank == 0 and not target.exists():
                new.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            return str(target)

        files = [p for p in (state.get("best_k_models") or {}) if p]
        lost = [p for p in files if not Path(p).is_file()]
        if lost:  # the earlier run's folder was moved or cleaned: Lightning's own behaviour (start afresh)
            log.warning("resuming: the earlier checkpoint(s) %s are gone; the best checkpoint starts afresh", lost)
            return state
        moved = dict(state, dirpath=str(new))
        moved["best_k_models"] = {move(p): score for p, score in (state.get("best_k_models") or {}).items()}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if state.get(key):
                moved[key] = move(state[key]) if Path(state[key]).is_file() else state[key]
        return moved
