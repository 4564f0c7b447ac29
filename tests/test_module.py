"""SequenceModel: every optimiser x schedule config builds and steps; checkpoints are pickle-free."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lstmkit.adversarial import virtual_adversarial_loss, worst_direction
from lstmkit.checkpoints import load_model, read_checkpoint
from lstmkit.cli import config_dir
from lstmkit.commands.train import build_model, train
from lstmkit.core import summarise
from lstmkit.data.sentiment import SentimentDataModule
from lstmkit.errors import CheckpointError, ConfigError
from lstmkit.heads.base import Head
from lstmkit.module import SequenceModel
from lstmkit.types import Batch, DataSpec

from .conftest import QUICK, shared_data

CONF = Path(config_dir())
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))

TINY_DATA = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8"]


@pytest.fixture(scope="module")
def tiny_datamodule() -> SentimentDataModule:
    dm = SentimentDataModule(num_examples=120, batch_size=16)
    dm.setup()
    return dm


def _step_trainer() -> L.Trainer:
    """A Trainer for a couple of optimiser steps, without logs, checkpoints or sanity checks."""
    return L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=1)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_optimizer_and_scheduler_combinations_take_a_step(make_cfg, tiny_datamodule, optimizer, scheduler) -> None:
    cfg = make_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}", *TINY_DATA])
    model = build_model(cfg, tiny_datamodule)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _step_trainer()
    trainer.fit(model, datamodule=tiny_datamodule)
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("variant", [
    ["model.bidirectional=true", "head.pooling=mean"],
    ["model.num_layers=2", "model.dropout=0.2", "model.proj_size=4", "head.pooling=max", "head.hidden=8"],
    ["model.layer_norm=true", "head.label_smoothing=0.1", "l1=1e-4"],
])
def test_core_and_head_variants_train(make_cfg, tiny_datamodule, variant) -> None:
    cfg = make_cfg([*TINY_DATA, *variant])
    model = build_model(cfg, tiny_datamodule)
    trainer = _step_trainer()
    trainer.fit(model, datamodule=tiny_datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_predict_step_called_from_python_runs_without_gradients(make_cfg, tiny_datamodule) -> None:
    """Called outside Lightning's loop (a notebook, a script), torch warned "Consider using tensor.detach()"
    as the head rounded its probabilities (found by a tester)."""
    import warnings

    model = build_model(make_cfg([*TINY_DATA]), tiny_datamodule).eval()
    batch = SentimentDataModule.make_predict_batch(tiny_datamodule.spec, ["a fine film", "a dull one"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = model.predict_step(batch, 0)
    assert len(results) == 2 and not [w for w in caught if "detach" in str(w.message)], [str(w.message) for w in caught]


def test_l1_penalty_is_added_to_the_loss(make_cfg, tiny_datamodule) -> None:
    torch.manual_seed(0)
    plain = build_model(make_cfg([*TINY_DATA]), tiny_datamodule)
    torch.manual_seed(0)
    penalised = build_model(make_cfg([*TINY_DATA, "l1=0.01"]), tiny_datamodule)
    penalised.log = plain.log = lambda *a, **k: None  # no trainer attached
    batch = next(iter(tiny_datamodule.train_dataloader()))
    plain.eval(), penalised.eval()
    l1 = sum(p.abs().sum() for p in plain.parameters() if p.dim() > 1)
    diff = penalised.training_step(batch, 0) - plain.training_step(batch, 0)
    torch.testing.assert_close(diff, 0.01 * l1)
    # a frozen part's matrices are left out (they would only add a constant to the logged loss)
    torch.manual_seed(0)
    frozen = build_model(make_cfg([*TINY_DATA, "l1=0.01", "lr_scale.encoder=0"]), tiny_datamodule)
    frozen.log = lambda *a, **k: None
    frozen.eval()
    trained = sum(p.abs().sum() for name, p in plain.named_parameters() if p.dim() > 1 and not name.startswith("encoder."))
    assert trained < l1
    torch.testing.assert_close(frozen.training_step(batch, 0) - plain.training_step(batch, 0), 0.01 * trained)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_preset_runs_end_to_end(make_cfg, task, tmp_path) -> None:
    cfg = make_cfg([f"task={task}", "debug=fdr", "logger=none", "callbacks=none"])
    train(cfg)  # raises on any failure
    assert_tested(tmp_path)


def assert_tested(run_dir: Path) -> None:
    """The run was tested and its loss is a number: ``train`` returns None for a NaN monitor (and an
    ECG batch of one class gives a NaN AUROC), so its return alone would pass a broken run."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/loss"]), metrics


def test_checkpoint_round_trip_without_pickle(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg([*TINY_DATA, *QUICK, "logger=none"])
    train(cfg)
    path = tmp_path / "checkpoints" / "last.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickle globals needed
    assert raw["hyper_parameters"]["spec"]["vocab"][:2] == ["<pad>", "<unk>"]
    model = load_model(path)
    again = SequenceModel.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    dm = SentimentDataModule(num_examples=200, batch_size=16, spec=raw["hyper_parameters"]["spec"])
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    out_a, _ = model(batch.inputs, batch.lengths)
    out_b, _ = again(batch.inputs, batch.lengths)
    torch.testing.assert_close(out_a, out_b)
    assert model.spec.vocab == dm.spec.vocab
    # a checkpoint from an incompatible version (renamed / missing weights) gets a clear error
    raw["state_dict"] = {k.replace("core.", "rnn."): v for k, v in raw["state_dict"].items()}
    torch.save(raw, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"old\.ckpt: checkpoint does not match this lstmkit version"):
        load_model(tmp_path / "old.ckpt")


def test_bad_checkpoints_get_clear_errors(tmp_path: Path) -> None:
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: expected a zip archive"):
        read_checkpoint(not_ckpt)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"spec": Path("x")}}, pickled)  # needs pickle to load
    with pytest.raises(CheckpointError, match=r"pickled\.ckpt: not a readable lstmkit checkpoint \(Weights only"):
        read_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, other)
    with pytest.raises(CheckpointError, match="not written by lstmkit"):
        read_checkpoint(other)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"spec": {"input_kind": "tokens"}, "core": {},
                "encoder": {"_target_": "os.system", "command": "echo pwned"}, "head": {}}}, evil)
    with pytest.raises(CheckpointError, match="refusing to build 'os.system'"):
        load_model(evil)
    # exported models given where a checkpoint goes: said so, not torch's "weights_only" advice
    scripted = tmp_path / "model.ts.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(CheckpointError, match=r"model\.ts\.pt: an exported TorchScript model, not a checkpoint"):
        read_checkpoint(scripted)
    onnx = tmp_path / "best.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(onnx), dynamo=False)
    with pytest.raises(CheckpointError, match=r"best\.onnx: an exported ONNX model, not a checkpoint"):
        read_checkpoint(onnx)


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_recipe_runs_end_to_end(make_cfg, experiment, tmp_path) -> None:
    root = shared_data("")  # the recipes read the real datasets
    cfg = make_cfg([f"experiment={experiment}", f"paths.data_root={root}", "debug=fdr", "logger=none",
                    "callbacks=none"])
    train(cfg)
    assert_tested(tmp_path)



def test_lr_scale_gives_each_part_its_learning_rate_and_zero_freezes(make_cfg, tiny_datamodule) -> None:
    cfg = make_cfg([*TINY_DATA, "optimizer.lr=0.01", "lr_scale.encoder=0", "lr_scale.core=0.1"])
    model = build_model(cfg, tiny_datamodule)
    frozen = [p.detach().clone() for p in model.encoder.parameters()]
    core = [p.detach().clone() for p in model.core.parameters()]
    trainer = _step_trainer()
    trainer.fit(model, datamodule=tiny_datamodule)
    groups = trainer.optimizers[0].param_groups
    lrs = {id(p): g["initial_lr"] for g in groups for p in g["params"]}
    assert all(id(p) not in lrs for p in model.encoder.parameters())  # frozen: not optimised at all
    core_lrs = [lrs[id(p)] for p in model.core.parameters()]
    head_lrs = [lrs[id(p)] for p in model.head.parameters()]
    assert core_lrs == pytest.approx([0.001] * len(core_lrs)) and head_lrs == pytest.approx([0.01] * len(head_lrs))
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.encoder.parameters()))
    assert all(p.grad is None for p in model.encoder.parameters())  # not even computed
    assert any(not torch.equal(a, b) for a, b in zip(core, model.core.parameters()))
    assert [g["name"] for g in groups] == ["core/decay", "core/no_decay", "head/decay", "head/no_decay"]


def test_plateau_floor_scales_with_each_part(make_cfg, tiny_datamodule) -> None:
    """``scheduler.min_lr`` is the floor at optimizer.lr; a part at lr_scale 0.1 gets a tenth of it."""
    cfg = make_cfg([*TINY_DATA, "optimizer.lr=0.01", "lr_scale.core=0.1", "scheduler=plateau",
                    "scheduler.min_lr=1e-4"])
    model = build_model(cfg, tiny_datamodule)
    trainer = _step_trainer()
    trainer.fit(model, datamodule=tiny_datamodule)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["encoder+head/decay", "encoder+head/no_decay", "core/decay",
                                           "core/no_decay"]
    assert scheduler.min_lrs == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])


def test_lr_scale_counts_tied_weights_once(make_cfg) -> None:
    from lstmkit.data.language_model import NextWordDataModule

    dm = NextWordDataModule(num_tokens=3000, batch_size=4, bptt=8)
    dm.setup()
    cfg = make_cfg(["task=next_word", "model.hidden_size=8", "encoder.dim=8", "head.tie_weights=true",
                    "lr_scale.head=2"])
    model = build_model(cfg, dm)
    params = [p for g in model.param_groups(1.0) for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))


def test_default_lr_scale_keeps_the_two_groups_older_checkpoints_resume_into(make_cfg, tiny_datamodule) -> None:
    model = build_model(make_cfg([*TINY_DATA]), tiny_datamodule)
    groups = model.param_groups(1e-3)
    assert [len(g["params"]) for g in groups] == [
        sum(p.dim() > 1 for p in model.parameters()), sum(p.dim() <= 1 for p in model.parameters())]
    assert [p for g in groups for p in g["params"] if p.dim() > 1] == [p for p in model.parameters() if p.dim() > 1]
    assert [g["name"] for g in groups] == ["decay", "no_decay"]  # LearningRateMonitor: lr-AdamW/decay


@pytest.mark.parametrize("bad", ["+lr_scale.decoder=0.5", "lr_scale.core=-1"])
def test_bad_lr_scale_is_a_config_error(make_cfg, tiny_datamodule, bad) -> None:
    with pytest.raises(ConfigError, match="lr_scale"):
        build_model(make_cfg([*TINY_DATA, bad]), tiny_datamodule)


def _model_without_dropout(make_cfg, tiny_datamodule, override: str) -> tuple[SequenceModel, Batch]:
    """A tiny model with ``override``, no trainer, in eval mode (no dropout: every pass sees the same
    network), and a training batch: the (virtual) adversarial losses can then be recomputed by hand."""
    model = build_model(make_cfg([*TINY_DATA, override, "encoder.dropout=0", "head.dropout=0"]), tiny_datamodule)
    model.log = lambda *a, **k: None  # no trainer attached
    model.eval()
    return model, next(iter(tiny_datamodule.train_dataloader()))


def test_adversarial_loss_is_clean_loss_plus_loss_at_the_worst_nearby_input(make_cfg, tiny_datamodule) -> None:
    torch.manual_seed(0)
    model, batch = _model_without_dropout(make_cfg, tiny_datamodule, "adversarial=0.5")

    def loss_at(x: torch.Tensor) -> torch.Tensor:
        outputs, _ = model.core(x, batch.lengths)
        pooled = summarise(outputs, batch.lengths, model.head.pooling, model.core.num_directions)
        return model.head.training_loss(pooled, batch.lengths, batch)

    # the reference: the perturbation is a constant; every weight, the embedding included, gets the
    # gradient of both losses
    x, _ = model.encoder(batch.inputs, batch.lengths)
    (grad,) = torch.autograd.grad(loss_at(x), x, retain_graph=True)
    worst = (grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1) * 0.5).detach()
    expected = loss_at(x) + loss_at(x + worst)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    loss = model.training_step(batch, 0)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, list(model.parameters())), expected_grads):
        torch.testing.assert_close(got, want)
    assert any(p is model.encoder.embedding.weight for p in model.parameters())
    # the gradient direction is the harmful one: worse than a random direction of the same size
    noise = torch.randn_like(x)
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1) * 0.5
    with torch.no_grad():
        assert loss_at(x + worst) > loss_at(x + noise) > 0


@pytest.mark.parametrize("task", TASKS)
def test_adversarial_training_runs_on_every_task(make_cfg, task, tmp_path) -> None:
    extra = ["model.stateful=false"] if task == "next_word" else []  # its preset carries state
    cfg = make_cfg([f"task={task}", "debug=fdr", "logger=none", "callbacks=none", "adversarial=0.5", *extra])
    train(cfg)  # raises on any failure (the reconstruction head once did: it consumed its signal)
    assert_tested(tmp_path)


def test_adversarial_training_runs_and_refuses_carried_state(make_cfg, tiny_datamodule) -> None:
    model = build_model(make_cfg([*TINY_DATA, "adversarial=1.0"]), tiny_datamodule)
    trainer = _step_trainer()
    checked = []
    model.head.check = lambda lengths, batch: checked.append(len(batch))  # type: ignore[method-assign]
    trainer.fit(model, datamodule=tiny_datamodule)
    assert trainer.callback_metrics["train/adversarial_loss"] > 0
    assert len(checked) == 2  # once per training step, though each step computes two losses
    with pytest.raises(ConfigError, match="stateful"):
        build_model(make_cfg([*TINY_DATA, "adversarial=1.0", "model.stateful=true"]), tiny_datamodule)
    with pytest.raises(ConfigError, match="adversarial"):
        build_model(make_cfg([*TINY_DATA, "adversarial=-1"]), tiny_datamodule)


def test_virtual_adversarial_loss_is_the_divergence_at_the_direction_that_moves_the_prediction_most(
        make_cfg, tiny_datamodule) -> None:
    model, batch = _model_without_dropout(make_cfg, tiny_datamodule, "virtual_adversarial=2.0")

    def outputs_at(x: torch.Tensor) -> torch.Tensor:
        outputs, _ = model.core(x, batch.lengths)
        return model.head(summarise(outputs, batch.lengths, model.head.pooling, model.core.num_directions),
                          batch.lengths)

    def kl(reference: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        p = reference.softmax(-1)
        return (p * (reference.log_softmax(-1) - outputs.log_softmax(-1))).sum(-1).mean()

    # the reference, from the same random start: one power iteration, then the divergence there (the clean
    # prediction a constant); the labels are not read
    x, _ = model.encoder(batch.inputs, batch.lengths)
    reference = outputs_at(x).detach()
    torch.manual_seed(0)
    valid = (torch.arange(x.shape[1])[None, :] < batch.lengths[:, None]).float()[..., None]
    start = torch.randn_like(x) * valid
    probe = (start / start.flatten(1).norm(dim=1).view(-1, 1, 1) * 0.2).requires_grad_()
    (grad,) = torch.autograd.grad(kl(reference, outputs_at(x.detach() + probe)), probe)
    assert grad[valid.expand_as(grad) == 0].abs().max() == 0  # padded steps are not read, so not moved
    worst = (grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1) * 2.0).detach()
    clean = model.head.training_loss(summarise(model.core(x, batch.lengths)[0], batch.lengths, model.head.pooling,
                                               model.core.num_directions), batch.lengths, batch)
    expected = clean + kl(reference, outputs_at(x + worst))
    torch.manual_seed(0)
    loss = model.training_step(batch, 0)
    torch.testing.assert_close(loss, expected)
    # the direction moves the prediction more than a random one of the same size
    noise = start / start.flatten(1).norm(dim=1).view(-1, 1, 1) * 2.0
    with torch.no_grad():
        assert kl(reference, outputs_at(x + worst)) > kl(reference, outputs_at(x + noise)) > 0
    # labels play no part: scrambled targets change the clean loss only
    scrambled = copy.copy(batch)
    scrambled.targets = 1 - batch.targets
    torch.manual_seed(0)
    assert torch.isclose(model.training_step(scrambled, 0) - model.head.training_loss(
        summarise(model.core(x, batch.lengths)[0], batch.lengths, model.head.pooling, model.core.num_directions),
        batch.lengths, scrambled), expected - clean)


def test_virtual_adversarial_training_runs_and_refuses_what_it_cannot_do(make_cfg, tiny_datamodule) -> None:
    model = build_model(make_cfg([*TINY_DATA, "virtual_adversarial=1.0", "adversarial=0.5"]), tiny_datamodule)
    trainer = _step_trainer()
    trainer.fit(model, datamodule=tiny_datamodule)
    assert trainer.callback_metrics["train/virtual_adversarial_loss"] > 0
    assert trainer.callback_metrics["train/adversarial_loss"] > 0
    with pytest.raises(ConfigError, match="stateful"):
        build_model(make_cfg([*TINY_DATA, "virtual_adversarial=1.0", "model.stateful=true"]), tiny_datamodule)
    with pytest.raises(ConfigError, match="virtual_adversarial must be >= 0"):
        build_model(make_cfg([*TINY_DATA, "virtual_adversarial=-1"]), tiny_datamodule)
    with pytest.raises(ConfigError, match="RegressionHead measures no divergence"):
        train(make_cfg(["task=stock", "debug=fdr", "logger=none", "callbacks=none", "virtual_adversarial=1.0"]))


def test_an_optimizer_without_lr_uses_its_own_default(make_cfg, tiny_datamodule) -> None:
    import inspect

    model = build_model(make_cfg(TINY_DATA), tiny_datamodule)
    model.hparams.scheduler = None  # a schedule needs a trainer; the optimiser alone does not
    model.hparams.optimizer = {"_target_": "torch.optim.SGD", "_partial_": True}
    optimizer = model.configure_optimizers()
    assert {g["lr"] for g in optimizer.param_groups} == {inspect.signature(torch.optim.SGD).parameters["lr"].default}


def _lm_spec() -> dict:
    from lstmkit.types import DataSpec
    return DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>", "<eos>", "a", "b", "c"],
                    extra={"bptt": 4, "streams": True}).to_dict()


def test_a_next_step_head_refuses_a_bidirectional_core() -> None:
    """Its backward direction reads step t + 1, the value step t predicts: the figures would be a leak."""
    from lstmkit.module import SequenceModel
    from lstmkit.types import DataSpec

    embedding = {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4}
    lm = {"_target_": "lstmkit.heads.language_model.LanguageModelHead"}
    with pytest.raises(ConfigError, match="bidirectional=true cannot be combined with LanguageModelHead"):
        SequenceModel(_lm_spec(), embedding, {"hidden_size": 5, "bidirectional": True}, lm)
    SequenceModel(_lm_spec(), embedding, {"hidden_size": 5}, lm)  # one direction: fine
    features = DataSpec(input_kind="features", num_features=1).to_dict()
    encoder = {"_target_": "lstmkit.encoders.features.FeatureEncoder"}
    recon = {"_target_": "lstmkit.heads.anomaly.ReconstructionHead"}
    with pytest.raises(ConfigError, match="bidirectional=true cannot be combined with ReconstructionHead"):
        SequenceModel(features, encoder, {"hidden_size": 5, "bidirectional": True}, {**recon, "target": "next"})
    SequenceModel(features, encoder, {"hidden_size": 5, "bidirectional": True}, {**recon, "target": "same"})


def test_carried_state_is_refused_for_independent_examples(make_cfg, tiny_datamodule) -> None:
    """Shuffled, independent examples (here sentiment's) would pass their state on to unrelated ones."""
    from lstmkit.module import SequenceModel

    with pytest.raises(ConfigError, match="stateful=true needs data of contiguous streams"):
        build_model(make_cfg([*TINY_DATA, "model.stateful=true", "model.bidirectional=false"]), tiny_datamodule)
    head = {"_target_": "lstmkit.heads.language_model.LanguageModelHead"}
    embedding = {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4}
    SequenceModel(_lm_spec(), embedding, {"hidden_size": 5, "stateful": True}, head)  # streams: fine
    older = {**_lm_spec(), "extra": {"bptt": 4}}  # a checkpoint from before the streams mark
    SequenceModel(older, embedding, {"hidden_size": 5, "stateful": True}, head)


def test_an_overflowing_loss_scale_gives_no_nan_direction(tiny_datamodule, make_cfg) -> None:
    """Under 16-mixed the GradScaler raises its scale until fp16 overflows; the direction stays finite."""
    from types import SimpleNamespace

    model = build_model(make_cfg([*TINY_DATA, "adversarial=0.5"]), tiny_datamodule).train()
    batch = next(iter(tiny_datamodule.train_dataloader()))
    model._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=SimpleNamespace(
        scale=lambda loss: loss * float("inf"))))  # what an overflowing scale does to the gradient
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        features, lengths, _ = model.encode(batch.inputs, batch.lengths)
        loss = model.head.training_loss(model.pool(features, lengths), lengths, batch)
        direction = worst_direction(loss, features, model._grad_scaler())
    finally:
        model._trainer = None
    assert torch.isfinite(direction).all()


def test_the_virtual_adversarial_power_iteration_takes_the_gradient_of_the_scaled_divergence(
        tiny_datamodule, make_cfg) -> None:
    """Under 16-mixed its second-order gradient (~1e-10) underflows fp16 unless scaled, as the adversarial
    gradient is; the scale must not change the direction, and an overflowing one gives no NaN."""
    from types import SimpleNamespace

    model, batch = _model_without_dropout(make_cfg, tiny_datamodule, "virtual_adversarial=2.0")
    features, lengths, _ = model.encode(batch.inputs, batch.lengths)
    reference = model.head(model.pool(features, lengths), lengths).detach()

    def vat_loss(scale: float | None) -> torch.Tensor:
        scaled = []
        if scale is not None:
            model._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=SimpleNamespace(
                scale=lambda value: scaled.append(value) or value * scale)))
        torch.manual_seed(0)  # the same random start
        try:
            loss = virtual_adversarial_loss(model, features, lengths, None, reference, 2.0, model._grad_scaler())
        finally:
            model._trainer = None
        assert len(scaled) == (scale is not None)
        return loss

    plain = vat_loss(None)
    assert plain > 0
    torch.testing.assert_close(vat_loss(2.0 ** 16), plain)
    assert torch.isfinite(vat_loss(float("inf")))


@pytest.mark.parametrize("bad", ["virtual_adversarial=abc", "adversarial=null", "l1=[1]"])
def test_a_penalty_that_is_not_a_number_is_refused_by_name(make_cfg, tiny_datamodule, bad) -> None:
    with pytest.raises(ConfigError, match=rf"{bad.split('=')[0]}=.*expected a number"):
        build_model(make_cfg([*TINY_DATA, bad]), tiny_datamodule)


def test_reviewed_config_mistakes_are_one_line_errors(make_cfg, tiny_datamodule, tmp_path: Path) -> None:
    """Each of these trained on with a setting ignored, or failed with a traceback from deep inside."""
    from lstmkit.commands.train import train

    with pytest.raises(ConfigError, match=r"head\.pooling='none': this head reads one summary"):
        build_model(make_cfg([*TINY_DATA, "head.pooling=none"]), tiny_datamodule)
    with pytest.raises(ConfigError, match=r"l1 must be >= 0"):
        build_model(make_cfg([*TINY_DATA, "l1=-0.5"]), tiny_datamodule)
    with pytest.raises(ConfigError, match=r"encoder\.sparse=true .* AdamW cannot take them"):
        build_model(make_cfg([*TINY_DATA, "encoder.sparse=true"]), tiny_datamodule)
    with pytest.raises(ConfigError, match=r"weight_decay=0\.1 cannot apply to them"):
        build_model(make_cfg([*TINY_DATA, "encoder.sparse=true", "optimizer=sgd", "optimizer.weight_decay=0.1"]),
                    tiny_datamodule)
    sparse = build_model(make_cfg([*TINY_DATA, "encoder.sparse=true", "optimizer=sgd"]), tiny_datamodule)
    _step_trainer().fit(sparse, datamodule=tiny_datamodule)  # the combination that works, works
    for override, message in (("scheduler=plateau scheduler.factor=1.5", r"scheduler\.factor=1\.5: expected a value"),
                              ("scheduler=step scheduler.step_size=0", r"scheduler\.step_size=0: expected"),
                              ("scheduler=onecycle scheduler.pct_start=1.5", r"scheduler\.pct_start=1\.5"),
                              ("scheduler.warmup_ratio=abc", r"scheduler\.warmup_ratio='abc': expected a number")):
        with pytest.raises(ConfigError, match=message):
            train(make_cfg([*TINY_DATA, *QUICK, "logger=none", *override.split()]))
    with pytest.raises(ConfigError, match=r"train=false with ckpt_path=.*lstmkit eval ckpt_path"):
        train(make_cfg([*TINY_DATA, *QUICK, "logger=none", "train=false", f"ckpt_path={tmp_path / 'x.ckpt'}"]))


@pytest.mark.parametrize("override, message", [
    ("encoder.dropout=-0.1", r"encoder\.dropout=-0\.1: expected a probability in \[0, 1\)"),
    ("head.dropout=-0.3", r"head\.dropout=-0\.3: expected a probability"),
    ("model.dropout=-0.2", r"model\.dropout=-0\.2: expected a probability"),
    ("head.label_smoothing=2", r"head\.label_smoothing=2: expected a probability"),
    ("head.class_weights=[1.0]", r"head\.class_weights has 1 values for 2 classes"),
])
def test_out_of_range_rates_are_refused_when_the_model_is_built(make_cfg, tiny_datamodule, override, message) -> None:
    """A negative dropout trained silently without dropout (the layers are added only when p > 0), and
    label smoothing above 1 failed at the first step with torch's traceback (a review found both)."""
    with pytest.raises(ConfigError, match=message):
        build_model(make_cfg([*TINY_DATA, override]), tiny_datamodule)


def test_head_options_checked_only_by_torch_are_refused_up_front() -> None:
    from lstmkit.heads.ctc import CTCHead
    from lstmkit.heads.regression import RegressionHead

    target = {"feature": 0, "shift": [0.0], "scale": [1.0]}
    with pytest.raises(ConfigError, match=r"head\.huber_delta=0: expected a positive delta"):
        RegressionHead(DataSpec(input_kind="features", num_features=1, normaliser={"target": target}),
                       in_features=4, loss="huber", huber_delta=0)
    spec = DataSpec(input_kind="waveform", sample_rate=8000, classes=["<blank>", "a", "b"], blank_id=0)
    for beam in (0, -1):  # 0 fell back to 8 silently; -1 decoded every utterance to nothing
        with pytest.raises(ConfigError, match=rf"head\.beam_size={beam}: expected at least 1"):
            CTCHead(spec, in_features=4, decoder="beam", beam_size=beam)


def test_one_cycle_keeps_the_optimizers_momentum_unless_asked_to_cycle_it() -> None:
    """torch's OneCycleLR cycles momentum by default: SGD's momentum 0 became 0.95, Adam's betas (0.95, ...)."""
    from lstmkit.optim import one_cycle

    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.0)
    one_cycle(sgd, 10)
    assert sgd.param_groups[0]["momentum"] == 0.0
    adam = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0, betas=(0.9, 0.999))
    one_cycle(adam, 10)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    cycled = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0, betas=(0.9, 0.999))
    one_cycle(cycled, 10, cycle_momentum=True)  # from the configured 0.9 down to 0.8 at the peak
    assert cycled.param_groups[0]["betas"][0] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match=r"cycle_momentum=true .* momentum, which is 0"):
        one_cycle(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 10, cycle_momentum=True)


def test_a_model_with_pretrained_vectors_loads_without_their_file(make_cfg, tmp_path: Path) -> None:
    """The vectors are in the checkpoint; loading re-read the file and failed once it had moved.
    encoder.freeze=true held only with a file: a rebuilt model's embedding trained again."""
    dm = SentimentDataModule(num_examples=200, batch_size=16)
    dm.setup()
    vectors = tmp_path / "vectors.txt"  # GloVe's text format: words missing from it keep their random vectors
    vectors.write_text("".join(f"{word} {' '.join(['0.5'] * 8)}\n" for word in dm.spec.vocab[2:30]))
    train(make_cfg([*TINY_DATA, *QUICK, "logger=none", f"encoder.pretrained={vectors}", "encoder.freeze=true"]))
    vectors.unlink()
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert model.hparams["encoder"]["pretrained"] == str(vectors)  # the record of where they came from
    assert not model.encoder.embedding.weight.requires_grad  # still frozen


class _Encoder(torch.nn.Module):
    """A user's encoder that breaks the contract as ``how`` says."""

    def __init__(self, spec: DataSpec, how: str = "fine", dim: int = 4) -> None:
        super().__init__()
        self.how = how
        self.embedding = torch.nn.Embedding(len(spec.vocab), dim)
        if how != "no_out_features":
            self.out_features = dim + 5 if how == "lying" else dim

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor):
        features = self.embedding(inputs)
        if self.how == "time_first":
            return features.transpose(0, 1), lengths
        if self.how == "no_tuple":
            return features
        if self.how == "longer":
            return features, lengths * 2
        if self.how == "float_lengths":
            return features, lengths / 1
        if self.how == "zero_length":
            return features, lengths * 0
        return features, lengths

    def host_lengths(self, lengths):  # the host copy of what forward returns
        return {"longer": [2 * n for n in lengths], "zero_length": [0] * len(lengths)}.get(self.how, list(lengths))


class _PlainHead(torch.nn.Module):
    def __init__(self, spec: DataSpec, in_features: int) -> None:
        super().__init__()


class _HalfHead(Head):
    def __init__(self, spec: DataSpec, in_features: int) -> None:
        super().__init__()

    def forward(self, features, lengths):
        return features


@pytest.mark.parametrize(("how", "said"), [
    ("lying", r"returned features of shape \(16, \d+, 4\) for a batch of 16; expected \(batch 16, steps, out_features 9\)"),
    ("time_first", r"returned features of shape \(\d+, 16, 4\) for a batch of 16"),
    ("no_tuple", r"returned Tensor; an encoder returns \(features \(B, T', F\), lengths \(B,\)\)"),
    ("longer", r"returned a length of \d+ steps for features of \d+ steps"),
    ("float_lengths", r"returned lengths of dtype torch\.float32; lengths count steps, whole numbers"),
    ("zero_length", r"returned a length of 0 steps; every row needs at least one step"),
    ("no_out_features", r"has out_features=None; an encoder states the number of features it returns per step"),
])
def test_an_encoder_that_breaks_the_contract_is_named(make_cfg, tiny_datamodule, monkeypatch, how, said) -> None:
    """A user's encoder whose out_features did not match its output trained on wrong values on the CPU's fused
    kernel (which does not check the input width); (T, B, F) output or longer lengths failed deep in torch."""
    from lstmkit import build as building

    monkeypatch.setattr(building, "_TRUSTED", {"tests"})
    cfg = make_cfg(TINY_DATA)
    cfg.encoder = {"_target_": "tests.test_module._Encoder", "how": how}
    batch = next(iter(tiny_datamodule.train_dataloader()))
    with pytest.raises(ConfigError, match=r"the encoder _Encoder \(tests\.test_module\._Encoder\) " + said):
        build_model(cfg, tiny_datamodule).training_step(batch, 0)


def test_a_head_that_breaks_the_contract_is_named(make_cfg, tiny_datamodule, monkeypatch) -> None:
    from lstmkit import build as building

    monkeypatch.setattr(building, "_TRUSTED", {"tests"})
    for target, said in (("_PlainHead", r"is no lstmkit\.heads\.base\.Head: a head subclasses it"),
                         ("_HalfHead", r"does not implement loss\(\), metrics\(\), update_metrics\(\): every head")):
        cfg = make_cfg(TINY_DATA)
        cfg.head = {"_target_": f"tests.test_module.{target}"}
        with pytest.raises(ConfigError, match=rf"the head {target} \(tests\.test_module\.{target}\) {said}"):
            build_model(cfg, tiny_datamodule)


def test_a_datamodule_that_breaks_the_contract_is_named() -> None:
    """build() returning None failed as "'NoneType' object has no attribute 'datamodule'"; a build() that
    filled no splits was told "the train split is empty ( examples); give more data"."""
    class NoSpec(SentimentDataModule):
        def build(self):
            super().build()

    class NoSplits(SentimentDataModule):
        def build(self):
            spec = super().build()
            self.splits = {}
            return spec

    with pytest.raises(ConfigError, match=r"NoSpec\.build\(\) returned NoneType; a datamodule's build\(\) fills"):
        NoSpec(num_examples=40).setup()
    with pytest.raises(ConfigError, match=r"NoSplits\.build\(\) left self\.splits empty"):
        NoSplits(num_examples=40).setup()
