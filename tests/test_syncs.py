"""A training step never makes the host wait for the device (between logging steps).

On a GPU each host read of a device value (``loss.item()``, ``bool(mask.any())``, boolean
indexing, a device-to-host copy) stops Python from queueing the next kernels while the GPU works.
These tests count those operations on CPU with :class:`~lstmkit.syncs.HostSyncCounter`, whose
CPU mode counts the same data-dependent operations as a stand-in for a GPU run.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import open_dict
from torch.optim import SGD

from lstmkit.callbacks import DivergedError, LossProgressBar, StopOnNonFiniteLoss
from lstmkit.commands.common import instantiate_group
from lstmkit.commands.train import build_model
from lstmkit.core import LSTMCore
from lstmkit.syncs import HostSyncCounter, SyncAudit


def test_the_counter_sees_host_reads_and_nothing_else() -> None:
    x = torch.randn(6)
    with HostSyncCounter(proxy=True) as counter:
        y = (x * 2).exp().sum(0)  # queued device work: no wait
    assert counter.total == 0
    with HostSyncCounter(proxy=True) as counter:
        y.item()
        bool((x > 0).any())
        x[x > 0]  # boolean indexing: output size depends on the data
        (x > 0).nonzero()
    assert counter.counts == {"_local_scalar_dense": 2, "index(bool)": 1, "nonzero": 1}
    with HostSyncCounter(proxy=False) as counter:  # host tensors on a GPU machine: nothing waits
        y.item()
    assert counter.total == 0


TASKS = {
    "next_word": ["data.batch_size=4", "data.bptt=8", "model.hidden_size=8", "encoder.dim=8"],
    "sentiment": ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8",
                  "adversarial=0.5"],
    "stock": ["data.batch_size=16", "model.hidden_size=8"],
    "ecg": ["data.num_beats=240", "data.batch_size=16", "model.hidden_size=8"],
    # two reads: the core copies the frame counts, which the spectrogram's silence trimming makes on
    # the device, and the CTC head reads whether any utterance is too short for its transcript
    "speech": ["data.batch_size=4", "model.hidden_size=8"],
}
ALLOWED = {"speech": 2}


def _audited_fit(make_cfg, tmp_path, task: str, *extra_callbacks) -> SyncAudit:
    """Fit a tiny run as ``lstmkit train`` composes it (its callbacks, a CSV logger) and audit steps 2-6."""
    cfg = make_cfg([f"task={task}", *TASKS[task], "trainer.max_epochs=1", "trainer.limit_train_batches=8",
                    "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=10",
                    "trainer.enable_model_summary=false", "test=false"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    with open_dict(cfg):
        cfg.monitor, cfg.monitor_mode = model.head.monitor, model.head.mode
    audit = SyncAudit(start=2, steps=5, proxy=True)
    callbacks = [*instantiate_group(cfg.callbacks), *extra_callbacks, audit]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=CSVLogger(tmp_path / "csv"))
    trainer.fit(model, datamodule=datamodule)
    assert audit.seen == 5
    return audit


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_training_step_never_waits_for_the_device(make_cfg, tmp_path, task: str) -> None:
    audit = _audited_fit(make_cfg, tmp_path, task, StopOnNonFiniteLoss())
    assert audit.per_step <= ALLOWED.get(task, 0), dict(audit.counter.counts)


def test_the_audit_catches_a_callback_that_reads_the_loss_every_step(make_cfg, tmp_path) -> None:
    audit = _audited_fit(make_cfg, tmp_path, "sentiment", StopOnNonFiniteLoss(check_every_n_steps=1))
    assert audit.per_step == 1 and audit.counter.counts == {"_local_scalar_dense": 5}


def test_packing_uses_the_host_lengths_and_never_reads_the_device_ones() -> None:
    torch.manual_seed(0)
    core = LSTMCore(input_size=3, hidden_size=4, kernel="packed").eval()
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    expected, _ = core(x, lengths)
    # lengths on the meta device hold no values: any read of them would raise
    outputs, _ = core(x, lengths.to("meta"), host_lengths=(5, 2, 4))
    torch.testing.assert_close(outputs, expected)


def _trainer(step: int, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=2, global_step=step, optimizers=[SGD([torch.zeros(1)], lr=0.5)],
                           log_every_n_steps=50, **extra)


def test_divergence_is_recorded_on_the_device_and_reported_at_the_next_check() -> None:
    callback = StopOnNonFiniteLoss(check_every_n_steps=4)
    callback.on_train_batch_end(_trainer(1), None, {"loss": torch.tensor(1.0)}, None, 0)
    callback.on_train_batch_end(_trainer(2), None, {"loss": torch.tensor(float("inf"))}, None, 1)
    callback.on_train_batch_end(_trainer(3), None, {"loss": torch.tensor(float("nan"))}, None, 2)  # not the first
    with pytest.raises(DivergedError, match=r"loss became inf at epoch 2, step 2, batch 1 \(learning rate 0.5\)"):
        callback.on_train_batch_end(_trainer(4), None, {"loss": torch.tensor(float("nan"))}, None, 3)


def test_under_ddp_a_divergence_on_another_process_stops_this_one_too() -> None:
    decisions = []

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # Lightning's signature
        decisions.append((decision, all))
        return True  # another rank saw a non-finite loss

    trainer = _trainer(7, world_size=2, strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision))
    callback = StopOnNonFiniteLoss(check_every_n_steps=50)
    callback.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 6)  # finite here
    with pytest.raises(DivergedError, match="non-finite on another process by epoch 2, step 7"):
        callback.on_save_checkpoint(trainer, None, {})
    assert decisions == [(False, False)]  # this rank's own record, combined with any-of


def test_a_diverged_state_is_never_written_to_a_checkpoint() -> None:
    callback = StopOnNonFiniteLoss(check_every_n_steps=50)
    callback.on_train_batch_end(_trainer(7), None, torch.tensor(float("nan")), None, 6)  # recorded, not read yet
    with pytest.raises(DivergedError, match="step 7, batch 6"):
        callback.on_save_checkpoint(_trainer(7), None, {})


def test_the_progress_bar_shows_the_mean_loss_since_its_last_read() -> None:
    bar = LossProgressBar(loss_every_n_steps=2)
    shown = []
    for step, loss in enumerate([4.0, 2.0, 1.0, 5.0, 7.0, 9.0], start=1):
        bar.add_loss(SimpleNamespace(callback_metrics={"train/loss": torch.tensor(loss)}, global_step=step))
        shown.append(bar._shown)
    assert shown == [4.0, 2.0, 2.0, 3.0, 3.0, 8.0]  # the first step at once, then at every second step
    # gradient accumulation: the optimiser step (and so global_step) repeats; one read per step
    bar.add_loss(SimpleNamespace(callback_metrics={"train/loss": torch.tensor(1.0)}, global_step=6))
    assert bar._shown == 8.0 and bar._count == 1


def test_batches_are_pinned_when_the_trainer_runs_on_a_cuda_device(monkeypatch) -> None:
    from torch.utils.data._utils.pin_memory import pin_memory

    from lstmkit.data.sentiment import SentimentDataModule
    from lstmkit.types import Batch

    datamodule = SentimentDataModule(num_examples=40, batch_size=8)
    datamodule.setup()
    assert datamodule.train_dataloader().pin_memory is False  # no trainer: nothing to copy to
    datamodule.pin_memory = True
    assert datamodule.pins_memory is torch.cuda.is_available()  # pinning needs the CUDA driver
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    datamodule.pin_memory = None
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
                                         world_size=1, global_rank=0)
    assert datamodule.pins_memory
    datamodule.pin_memory = False  # an explicit setting wins
    assert not datamodule.pins_memory
    # the DataLoader's pinning thread calls Batch.pin_memory: every tensor pinned, the host lengths kept
    pinned: list[torch.Tensor] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a: pinned.append(t) or t.clone())
    batch = next(iter(datamodule.train_dataloader()))
    out = pin_memory(batch)
    assert isinstance(out, Batch) and len(pinned) == 3 and out.host_lengths == batch.host_lengths
    assert torch.equal(out.inputs, batch.inputs) and out.inputs is not batch.inputs


def test_the_divergence_names_the_step_and_learning_rate_its_batch_ran_at() -> None:
    trainer = _trainer(3)
    callback = StopOnNonFiniteLoss(check_every_n_steps=50)
    callback.on_train_batch_start(trainer, None, None, 2)  # the step runs at lr 0.5
    trainer.optimizers[0].param_groups[0]["lr"] = 0.01  # a step-interval schedule moves it before batch end
    trainer.global_step = 4  # and the optimiser step has been counted
    callback.on_train_batch_end(trainer, None, torch.tensor(float("nan")), None, 2)
    with pytest.raises(DivergedError, match=r"step 3, batch 2 \(learning rate 0.5\)"):
        callback.on_train_epoch_end(trainer, None)
    callback.on_fit_start(trainer, None)  # a new fit with the same callback starts clean
    callback.on_train_epoch_end(trainer, None)


def test_the_progress_bar_shows_what_it_added_up_at_epoch_end() -> None:
    bar = LossProgressBar(loss_every_n_steps=0)  # never between boundaries
    for step, loss in enumerate([4.0, 2.0, 8.0], start=1):
        bar.add_loss(SimpleNamespace(callback_metrics={"train/loss": torch.tensor(loss)}, global_step=step))
    assert bar._shown == 4.0  # the first step only
    bar._read()  # what on_train_epoch_end and on_validation_start do
    assert bar._shown == 5.0 and bar._count == 0  # (2 + 8) / 2
