"""What a run watches: the monitored metric's direction, the sweep's direction, the validation loss's
average, a schedule without a run length, and decision values that only fitting may learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from lstmkit.checkpoints import read_checkpoint
from lstmkit.commands.evaluate import evaluate
from lstmkit.commands.train import build_model, check_monitor, check_sweep_direction, monitor_mode, train
from lstmkit.errors import ConfigError, SweepError

from .conftest import QUICK

TINY = ["data.batch_size=16", "model.hidden_size=8", "logger=csv", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]


def _epochs(root: Path, key: str) -> list[float]:
    (metrics,) = root.glob("**/metrics.csv")
    return [float(row[key]) for row in csv.DictReader(metrics.open()) if row.get(key)]


@pytest.mark.parametrize(("task", "monitor", "mode"), [
    ("sentiment", "val/loss", "min"),  # the head's mode is max (val/acc): a loss is still minimised
    ("sentiment", "val/f1", "max"),
    ("ecg", "val/loss", "min"),
    ("next_word", "val/acc", "max"),  # the head's mode is min (val/perplexity)
    ("stock", "val/rmse", "min"),
    ("speech", "val/wer", "min"),
    ("speech", "val/nonsense", "min"),  # not a metric: the head's mode; Lightning names the logged ones
])
def test_the_mode_follows_the_monitored_metric(make_cfg, task: str, monitor: str, mode: str) -> None:
    cfg = make_cfg([f"task={task}"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    assert monitor_mode(monitor, build_model(cfg, datamodule)) == mode


@pytest.mark.parametrize("task", ["sentiment", "next_word", "stock", "speech", "ecg", "ecg_unsupervised"])
def test_a_monitor_the_model_does_not_log_is_refused_before_training(make_cfg, task: str) -> None:
    """monitor=val/accuracy trained a whole epoch (in a sweep: every trial did) before Lightning said it was
    not logged (found by a tester). Every head's own monitor and val/loss pass."""
    cfg = make_cfg([f"task={task}"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    for fine in (model.head.monitor, "val/loss", "train/loss", "train/anything"):
        check_monitor(fine, model)
    # <metric>_best is written to metrics.json after training, never logged during it: refused too
    for unknown in ("val/accuracy", f"{model.head.monitor}_best"):
        with pytest.raises(SweepError, match=rf"monitor={unknown} is not a metric this model logs; its validation "
                                              r"metrics are val/loss, "):
            check_monitor(unknown, model)


def test_monitor_val_loss_keeps_the_lowest_loss(make_cfg, tmp_path: Path) -> None:
    """Before, a classifier run with monitor=val/loss kept (and tested) its highest-loss epoch."""
    cfg = make_cfg(["data.num_examples=600", "encoder.dim=8", *TINY, "trainer.max_epochs=3", "monitor=val/loss", "optimizer.lr=0.01",
                    "test=false", "callbacks.early_stopping.patience=10"])
    best = train(cfg)
    losses = _epochs(tmp_path, "val/loss")
    assert len(losses) == 3 and losses[0] != min(losses)  # the first epoch is not the best: the test can fail
    assert best == pytest.approx(min(losses))
    assert read_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["epoch"] == losses.index(min(losses))


def test_a_sweep_direction_against_the_metric_is_refused(make_cfg) -> None:
    cfg = make_cfg(["monitor=val/loss", "monitor_mode=min"])

    def sweep(direction: str) -> None:
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweeper = {"direction": direction}
        HydraConfig.instance().set_config(cfg)

    sweep("maximize")
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.direction=maximize, but monitor=val/loss is to be "
                                          r"minimized .*set hydra\.sweeper\.direction=minimize"):
        check_sweep_direction(cfg)
    sweep("minimize")
    check_sweep_direction(cfg)


def test_an_unbounded_run_with_a_length_schedule_says_what_to_do(make_cfg) -> None:
    cfg = make_cfg(["data.num_examples=100", "encoder.dim=8", *TINY, "trainer.max_epochs=-1",
                    "trainer.max_time=00:00:00:30"])
    with pytest.raises(ConfigError, match=r"scheduler cosine_with_warmup spreads its schedule over the run's "
                                          r"length.*trainer\.max_epochs=-1.*scheduler=plateau, scheduler=step or scheduler=none"):
        train(cfg)


def test_the_language_models_val_loss_is_its_token_weighted_cross_entropy(make_cfg, tmp_path: Path) -> None:
    """The stream's last batch is short; a mean per batch weighted by rows differs from ``ce``."""
    cfg = make_cfg(["task=next_word", "data.num_tokens=6000", "data.batch_size=8", "data.eval_batch_size=8",
                    "data.bptt=30", *TINY, "encoder.dim=8", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                    "test=false"])
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/loss"] == pytest.approx(metrics["val/ce"], rel=1e-5)


def test_eval_on_val_scores_the_stored_threshold(make_cfg, tmp_path: Path) -> None:
    """Only fitting chooses the anomaly threshold; ``eval split=val`` on other data must not re-tune
    it on the data it scores (its F1 would be optimistic)."""
    train(make_cfg(["task=ecg", "data.num_beats=300", *TINY, "test=false", *QUICK]))
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    stored = float(read_checkpoint(ckpt)["state_dict"]["head.threshold"])
    evaluate(make_cfg([f"ckpt_path={ckpt}", "split=val", "+data.seed=7", "logger=none",
                       "trainer.enable_progress_bar=false"], name="eval"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/threshold"] == pytest.approx(stored)
    assert torch.isfinite(torch.tensor(stored))
