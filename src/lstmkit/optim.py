"""Learning-rate schedules with one signature: ``factory(optimizer, total_steps, **options)``,
and what keeps them right when a run resumes.

The scheduler configs (``conf/scheduler/*.yaml``) name one of these as a Hydra partial; the
module calls it with the optimiser and the number of optimiser steps Lightning estimates for
the run, so warmup and decay lengths can be given as fractions of the run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from lstmkit.errors import ConfigError

log = logging.getLogger("lstmkit")

# the schedules spread over the run's length (``total_steps``): a run without one cannot use them
SPREAD_OVER_RUN = frozenset({"lstmkit.optim.cosine_with_warmup", "lstmkit.optim.one_cycle"})


def _check(name: str, value: float, low: float, high: float | None = None, *, open_low: bool = False,
           open_high: bool = True) -> None:
    """``scheduler.<name>`` within its range: torch refuses some values with a traceback mid-setup, and
    takes others (``step_size=0``) until the first step divides by them."""
    above = value > low if open_low else value >= low
    below = high is None or (value < high if open_high else value <= high)
    if not (above and below):
        left, right = "(" if open_low else "[", ")" if open_high or high is None else "]"
        span = f"{left}{low:g}, {'inf' if high is None else format(high, 'g')}{right}"
        raise ConfigError(f"scheduler.{name}={value!r}: expected a value in {span}")


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.01
) -> sched.LRScheduler:
    """Linear warmup over ``warmup_ratio`` of the run, then cosine decay to ``min_lr_ratio``."""
    _check("warmup_ratio", warmup_ratio, 0.0, 1.0)
    _check("min_lr_ratio", min_lr_ratio, 0.0, 1.0, open_high=False)
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return sched.LambdaLR(optimizer, factor)


def one_cycle(
    optimizer: Optimizer, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1e4, cycle_momentum: bool = False, base_momentum: float | None = None,
) -> sched.LRScheduler:
    """Smith's one-cycle policy, peaking at the optimiser's configured learning rate.

    ``cycle_momentum``: also cycle the momentum (SGD's ``momentum``, Adam's first beta) inversely to
    the learning rate, from the optimiser's configured value down to ``base_momentum`` (default:
    0.1 below it) and back, as Smith does. Off by default: torch's ``OneCycleLR`` would otherwise
    replace the configured momentum / betas with its own 0.85-0.95 without a word (SGD's
    ``momentum=0`` became 0.95).
    """
    _check("pct_start", pct_start, 0.0, 1.0, open_low=True)
    _check("div_factor", div_factor, 0.0, open_low=True)
    _check("final_div_factor", final_div_factor, 0.0, open_low=True)
    max_lr = [group["lr"] for group in optimizer.param_groups]
    extra: dict[str, object] = {"cycle_momentum": bool(cycle_momentum)}
    if cycle_momentum:
        group = optimizer.param_groups[0]
        top = group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
        if not top:
            raise ConfigError("scheduler.cycle_momentum=true cycles the optimiser's momentum, which is 0 here; set "
                              "optimizer.momentum (SGD), or scheduler.cycle_momentum=false")
        bottom = max(0.0, top - 0.1) if base_momentum is None else base_momentum
        _check("base_momentum", bottom, 0.0, top, open_high=False)
        extra.update(max_momentum=top, base_momentum=bottom)
    return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps), pct_start=pct_start,
                            div_factor=div_factor, final_div_factor=final_div_factor, **extra)


def step(optimizer: Optimizer, total_steps: int, step_size: int = 10, gamma: float = 0.5) -> sched.LRScheduler:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (interval: epoch)."""
    _check("step_size", step_size, 1)
    _check("gamma", gamma, 0.0, open_low=True)
    return sched.StepLR(optimizer, step_size=step_size, gamma=gamma)


def plateau(
    optimizer: Optimizer, total_steps: int, mode: str = "min", factor: float = 0.5, patience: int = 2,
    min_lr: float = 0.0,
) -> sched.ReduceLROnPlateau:
    """Cut the learning rate when the monitored validation metric stops improving.

    ``min_lr`` is the floor at ``optimizer.lr``; a parameter group trained at ``lr_scale`` x that
    rate (``SequenceModel.param_groups``) gets a floor scaled alike, so the parts keep their ratio.
    """
    _check("factor", factor, 0.0, 1.0, open_low=True)
    _check("patience", patience, 0)
    _check("min_lr", min_lr, 0.0)
    floors = [min_lr * float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    return sched.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=floors)


# -- resuming a schedule ------------------------------------------------------------------------
def check_schedule_length(name: str, total: float, old: int | None, trainer: Any) -> int:
    """The steps a schedule spread over the run's length covers (``total``), checked against the
    ``old`` count a resumed checkpoint saved.

    A run without a length (``trainer.max_epochs=-1``: until early stopping or ``max_time``) is
    refused. A resumed run whose length changed (``trainer.max_epochs=20 resume=true`` after 10
    epochs) rebuilds the schedule over the new length while its step count continues, so the
    learning rate jumps to where the longer schedule is (cosine: said in a warning, by rank zero only);
    one-cycle, whose length is part of its saved state, cannot step past its old end (refused before
    training).
    """
    if not math.isfinite(total) or total < 1:
        raise ConfigError(f"scheduler {name} spreads its schedule over the run's length, but the run has none "
                          f"(trainer.max_epochs={trainer.max_epochs}, trainer.max_steps={trainer.max_steps}); give "
                          "trainer.max_epochs or trainer.max_steps, or use scheduler=plateau, scheduler=step or "
                          "scheduler=none")
    steps = int(total)
    if old is None or old == steps:
        return steps
    if name == "one_cycle":
        raise ConfigError(f"scheduler=onecycle cannot change its length when a run resumes: it was spread over "
                          f"{old} steps, the run now has {steps} (trainer.max_epochs / max_steps changed). Resume "
                          "with the run's length, or start a new run from its weights (init_from.ckpt_path=)")
    if trainer.is_global_zero:  # said once, not once per DDP rank
        log.warning("resuming: the %s schedule covered %d steps and now covers %d (trainer.max_epochs / max_steps "
                    "changed); it continues from the same step of the new schedule, so the learning rate jumps "
                    "there (for a smooth continuation, resume with the run's length)", name, old, steps)
    return steps


def continue_rebuilt_schedules(trainer: Any, old: int | None, new: int | None) -> None:
    """After a resume whose schedule length changed (``old`` steps, now ``new``), set the learning
    rates to the new schedule's at the restored step.

    Why: Lightning restores the optimiser's state (its learning rates: the old schedule's, set at
    its last step) and the scheduler's step count, but nothing recomputes the rates from them
    until the scheduler next steps; the first step after ``trainer.max_epochs=20 resume=true``
    trained at the old schedule's last rate (cosine: its floor), the next ones on the new
    schedule. Only ``LambdaLR`` schedules (``cosine_with_warmup``) are rebuilt over a new length
    (one-cycle is refused, the epoch schedules do not depend on it); an unchanged length is left
    alone, so a resume stays bit-identical.
    """
    if old is None or new is None or old == new:
        return
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, sched.LambdaLR):
            continue
        # step() moves on to last_epoch + 1 and sets the rates of that step (the optimiser's, and what
        # get_last_lr() reports) from the rebuilt lambdas: one step back first, to set the restored one's
        scheduler.last_epoch -= 1
        scheduler.step()


def save_plateau_as_stepped(trainer: Any, checkpoint: dict[str, Any]) -> None:
    """Save a plateau schedule as it will be once this epoch's metric has stepped it.

    Why: Lightning steps ``ReduceLROnPlateau`` after the epoch's checkpoints are written and,
    resuming, skips that step (the metric is gone): every resume lost one epoch of the schedule,
    so a cut the uninterrupted run made never came. The step is replayed on a stand-in over the
    same learning rates, and the saved schedule and optimiser learning rates are its result.
    """
    if (not trainer.training or "lr_schedulers" not in checkpoint
            or not trainer.fit_loop.epoch_loop.done):  # mid-epoch: the schedule steps at the epoch's end
        return
    for index, config in enumerate(trainer.lr_scheduler_configs):
        scheduler = config.scheduler
        value = trainer.callback_metrics.get(config.monitor or "")
        if not isinstance(scheduler, sched.ReduceLROnPlateau) or value is None:
            continue
        groups = scheduler.optimizer.param_groups
        stand_in = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]} for g in groups])
        stepped = sched.ReduceLROnPlateau(stand_in)
        stepped.load_state_dict(scheduler.state_dict())
        stepped.step(float(value))
        checkpoint["lr_schedulers"][index] = stepped.state_dict()
        saved = checkpoint["optimizer_states"][trainer.optimizers.index(scheduler.optimizer)]["param_groups"]
        for group, new in zip(saved, stand_in.param_groups):
            group["lr"] = new["lr"]
