"""Learning-rate schedules with one signature: ``factory(optimizer, total_steps, **options)``.

The scheduler configs (``conf/scheduler/*.yaml``) name one of these as a Hydra partial; the
module calls it with the optimiser and the number of optimiser steps Lightning estimates for
the run, so warmup and decay lengths can be given as fractions of the run.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

# the schedules spread over the run's length (``total_steps``): a run without one cannot use them
SPREAD_OVER_RUN = frozenset({"lstmkit.optim.cosine_with_warmup", "lstmkit.optim.one_cycle"})


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.01
) -> sched.LRScheduler:
    """Linear warmup over ``warmup_ratio`` of the run, then cosine decay to ``min_lr_ratio``."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return sched.LambdaLR(optimizer, factor)


def one_cycle(
    optimizer: Optimizer, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> sched.LRScheduler:
    """Smith's one-cycle policy, peaking at the optimiser's configured learning rate."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps), pct_start=pct_start,
                            div_factor=div_factor, final_div_factor=final_div_factor)


def step(optimizer: Optimizer, total_steps: int, step_size: int = 10, gamma: float = 0.5) -> sched.LRScheduler:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (interval: epoch)."""
    return sched.StepLR(optimizer, step_size=step_size, gamma=gamma)


def plateau(
    optimizer: Optimizer, total_steps: int, mode: str = "min", factor: float = 0.5, patience: int = 2,
    min_lr: float = 0.0,
) -> sched.ReduceLROnPlateau:
    """Cut the learning rate when the monitored validation metric stops improving.

    ``min_lr`` is the floor at ``optimizer.lr``; a parameter group trained at ``lr_scale`` x that
    rate (``SequenceModel.param_groups``) gets a floor scaled alike, so the parts keep their ratio.
    """
    floors = [min_lr * float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    return sched.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=floors)
