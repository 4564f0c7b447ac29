"""self_train.*: the model tuned to the scored split on its own surest transcripts (lstmkit.self_train)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from lstmkit import adaptation
from lstmkit.adaptation import AdaptToScoredData
from lstmkit.commands.train import build_model
from lstmkit.ensemble import SequenceEnsemble
from lstmkit.errors import ConfigError
from lstmkit.self_train import SelfTraining, confidence_cut

OPTIONS = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def test_settings_are_checked_and_zero_epochs_is_off() -> None:
    assert SelfTraining.from_config(None) is None
    assert SelfTraining.from_config({"epochs": 0, "keep": 0.5, "lr": 1e-3}) is None
    assert SelfTraining.from_config({"epochs": 3}) == SelfTraining(3, 0.7, 1e-3)
    for node, says in (({"epochs": -1}, "self_train.epochs=-1"), ({"epochs": 2.5}, "self_train.epochs=2.5"),
                       ({"epochs": 1, "keep": 0}, "self_train.keep=0"), ({"epochs": 1, "keep": 1.5}, "keep=1.5"),
                       ({"epochs": 1, "lr": 0}, "self_train.lr=0"), ({"epochs": 1, "lr": "fast"}, "lr='fast'"),
                       ({"epochs": 1, "rounds": 2}, "self_train.rounds: no such setting")):
        with pytest.raises(ConfigError, match=says):
            SelfTraining.from_config(node)


def test_the_cut_keeps_the_surest_share_and_never_an_empty_transcript() -> None:
    confidences = torch.tensor([-4.0, -1.0, -3.0, -2.0, -math.inf])
    cut = confidence_cut(confidences, 0.5)
    assert (confidences >= cut).tolist() == [False, True, False, True, False]
    assert (confidences >= confidence_cut(confidences, 1.0)).sum() == 4  # every finite one, not the -inf
    assert confidence_cut(torch.tensor([-math.inf]), 1.0) == math.inf


def test_ctc_pseudo_labels_are_the_decoded_transcripts_rated_by_their_own_loss(make_cfg) -> None:
    cfg = make_cfg(["task=speech", "data.num_examples=40", "model.hidden_size=8", "head.decoder=greedy"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    head = build_model(cfg, dm).head
    blank, classes = head.blank, len(dm.spec.classes)
    letter = next(i for i in range(classes) if i != blank)
    logits = torch.full((3, 6, classes), -5.0)
    logits[:, :, blank] = 5.0
    logits[0, 2, letter] = 10.0  # a sure spike
    logits[1, 2, letter] = 5.5  # a close call against the blank
    outputs = logits.log_softmax(-1)
    targets, target_lengths, confidence = head.pseudo_labels(outputs, torch.tensor([6, 6, 6]))
    assert target_lengths.tolist() == [1, 1, 0] and targets[:2, 0].tolist() == [letter, letter]
    assert confidence[0] > confidence[1] > -math.inf and confidence[2] == -math.inf
    targets, target_lengths, confidence = head.pseudo_labels(outputs[2:], torch.tensor([6]))  # all blank
    assert targets.shape == (1, 1) and target_lengths.tolist() == [0] and confidence.tolist() == [-math.inf]
    with pytest.raises(ConfigError, match="self_train: the ClassificationHead cannot label the scored data"):
        build_model(make_cfg(["data.num_examples=200", "model.hidden_size=8", "encoder.dim=8"]),
                    _setup(make_cfg(["data.num_examples=200"]))).head.check_self_trainable()


def _setup(cfg):
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return dm


def _trained(make_cfg, tmp_path: Path, seed: int = 0):
    cfg = make_cfg(["task=speech", "data.num_examples=40", "data.batch_size=8", "model.hidden_size=8",
                    "model.num_layers=1", "encoder.normalise=both", "head.decoder=greedy"])
    dm = _setup(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg, dm)
    trainer = L.Trainer(max_epochs=3, limit_val_batches=1, default_root_dir=tmp_path, **OPTIONS)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / f"m{seed}.ckpt"
    trainer.save_checkpoint(path)
    return model, dm, path


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_test_tunes_the_weights_from_its_inputs_never_its_transcripts(make_cfg, tmp_path: Path, caplog) -> None:
    """The loaded checkpoint is tuned in the test loop's first hook (after adapt), the checkpoint on disk is not;
    the encoder's statistics stay adapt's; scrambled reference transcripts tune the weights identically (only
    the model's own are trained on); the line says how many utterances were kept."""
    model, dm, path = _trained(make_cfg, tmp_path)
    stored = torch.load(path, weights_only=True)["state_dict"]
    both = AdaptToScoredData(adapt=True, self_training=SelfTraining(epochs=2, keep=1.0, lr=1e-2))
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        L.seed_everything(0)
        scored = L.Trainer(default_root_dir=tmp_path, callbacks=[both], **OPTIONS).test(
            model, datamodule=dm, ckpt_path=path, weights_only=True)
    assert "test/cer" in scored[0]
    tuned = _weights(model)
    assert not torch.equal(tuned["core.lstm.weight_ih_l0"], stored["core.lstm.weight_ih_l0"])
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["core.lstm.weight_ih_l0"],
                       stored["core.lstm.weight_ih_l0"])
    assert not torch.equal(tuned["encoder.running_mean"], stored["encoder.running_mean"])  # adapt's, kept
    L.Trainer(default_root_dir=tmp_path, callbacks=[AdaptToScoredData(adapt=True)], **OPTIONS).test(
        model, datamodule=dm, ckpt_path=path, weights_only=True)
    assert torch.equal(model.encoder.running_mean, tuned["encoder.running_mean"])  # what adapt alone gives
    kept = [line for line in caplog.messages if line.startswith("self_train: fine-tuned 2 epoch(s), 2 optimiser step(s), at lr 0.01 on ")]
    assert len(kept) == 1 and "of the 4 utterances of the test split" in kept[0], caplog.messages
    test = dm.splits["test"]
    test.targets = [t.flip(0) if len(t) > 1 else t + 1 for t in test.targets]  # other reference transcripts
    L.seed_everything(0)
    L.Trainer(default_root_dir=tmp_path, callbacks=[both], **OPTIONS).test(model, datamodule=dm, ckpt_path=path,
                                                                           weights_only=True)
    assert all(torch.equal(v, tuned[k]) for k, v in model.state_dict().items())


def test_an_ensemble_tunes_every_member_on_its_combined_transcripts(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """... with the scored split read and collated once, though adapt reads it per member and self-training again."""

    first, dm, a = _trained(make_cfg, tmp_path, seed=0)
    second, _, b = _trained(make_cfg, tmp_path, seed=1)
    before = [_weights(first), _weights(second)]
    ensemble = SequenceEnsemble([first, second], names=[str(a), str(b)])
    both = AdaptToScoredData(adapt=True, self_training=SelfTraining(epochs=1, keep=1.0, lr=1e-2))
    assert ensemble.trained_models() == [first, second]
    reads = []
    scored_batches = adaptation.scored_batches

    def counted(loaders, limits):
        for batch in scored_batches(loaders, limits):
            reads.append(len(batch))
            yield batch

    monkeypatch.setattr(adaptation, "scored_batches", counted)
    L.Trainer(default_root_dir=tmp_path, callbacks=[both], **OPTIONS).test(ensemble, datamodule=dm)
    assert sum(reads) == len(dm.splits["test"])  # once
    for member, weights in zip((first, second), before):
        assert not torch.equal(member.state_dict()["core.lstm.weight_ih_l0"], weights["core.lstm.weight_ih_l0"])


def test_nothing_decoded_is_said_and_leaves_the_weights(make_cfg, tmp_path: Path, caplog, monkeypatch) -> None:
    """Every transcript empty: no cut, no step, a warning rather than "fine-tuned ... on 0 of the 4"."""
    model, dm, path = _trained(make_cfg, tmp_path)
    stored = torch.load(path, weights_only=True)["state_dict"]

    def nothing(outputs, lengths):
        rows = outputs.shape[0]
        return torch.zeros(rows, 1, dtype=torch.long), torch.zeros(rows, dtype=torch.long), torch.full((rows,), -math.inf)

    monkeypatch.setattr(model.head, "pseudo_labels", nothing)
    tuning = AdaptToScoredData(self_training=SelfTraining(epochs=2, keep=1.0, lr=1e-2))
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        L.Trainer(default_root_dir=tmp_path, callbacks=[tuning], **OPTIONS).test(model, datamodule=dm, ckpt_path=path,
                                                                                weights_only=True)
    assert "self_train: the model decoded none of the 4 utterances of the test split" in caplog.text
    assert "fine-tuned" not in caplog.text
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


def test_inputs_take_the_runs_precision(make_cfg, tmp_path: Path) -> None:
    """bf16-true / 16-true: the weights are half, the loader's inputs float32 (a dtype error in the LSTM on a
    GPU): the precision plugin's convert_input is applied to every batch read and trained on, as Lightning
    applies it to the loop's own. The whole path under bf16-true is the test below."""
    from lstmkit.self_train import fine_tune, pseudo_labelled

    model, dm, _ = _trained(make_cfg, tmp_path)
    batches = list(dm.test_dataloader())
    seen: list[torch.Size] = []

    def convert(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs.shape)
        return inputs

    labelled = pseudo_labelled(model, batches, torch.device("cpu"), convert=convert)
    assert seen == [b.inputs.shape for b in batches]
    before = model.core.lstm.weight_ih_l0.detach().clone()
    taken = fine_tune(model, labelled, -math.inf, SelfTraining(1, 1.0, 1e-2), torch.device("cpu"), len(labelled),
                      convert=convert)
    assert taken == len(labelled) and len(seen) == 2 * len(batches)
    assert not torch.equal(before, model.core.lstm.weight_ih_l0)


def test_a_bfloat16_run_trains_adapts_and_self_trains_end_to_end(make_cfg, caplog) -> None:
    """trainer.precision=bf16-true on a speech model: the front end's FFT (no bfloat16 kernel) runs in float32,
    and self-training's passes, outside the loop's own forward, run in the precision plugin's context (the
    LSTM refused float32 features on bfloat16 weights). Both used to stop with a traceback from inside torch."""
    from lstmkit.commands.train import train

    cfg = make_cfg(["task=speech", "data.num_examples=40", "data.batch_size=8", "model.hidden_size=8",
                    "model.num_layers=1", "encoder.normalise=both", "head.decoder=greedy", "trainer.precision=bf16-true",
                    "adapt=true", "self_train.epochs=1", "self_train.keep=1.0", "logger=none", "callbacks=none",
                    "trainer.max_epochs=1", "trainer.limit_val_batches=1"])
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        value = train(cfg)
    assert "self_train: fine-tuned 1 epoch(s)" in caplog.text and "adapt=true" in caplog.text
    assert value is not None and math.isfinite(value)  # val/cer


def test_fine_tuning_keeps_the_runs_learning_rate_scale_per_part(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """A part slowed in training (lr_scale.core=0.25) is slowed in self-training too; none decays."""
    from lstmkit.self_train import fine_tune, pseudo_labelled

    model, dm, _ = _trained(make_cfg, tmp_path)
    model.lr_scale = {"core": 0.25}
    made = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, groups, **options):
            super().__init__(groups, **options)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    labelled = pseudo_labelled(model, list(dm.test_dataloader()), torch.device("cpu"))
    fine_tune(model, labelled, -math.inf, SelfTraining(1, 1.0, 1e-2), torch.device("cpu"), len(labelled))
    lrs = {id(p): (group["lr"], group["weight_decay"]) for group in made[0].param_groups for p in group["params"]}
    assert {lrs[id(p)] for p in model.core.parameters()} == {(2.5e-3, 0.0)}
    assert {lrs[id(p)] for p in model.head.parameters()} == {(1e-2, 0.0)}
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())


def test_settings_that_are_no_mapping_and_a_tuned_test_that_never_runs_are_said(make_cfg, caplog) -> None:
    from lstmkit.commands.train import train

    with pytest.raises(ConfigError, match=r"self_train=3: expected its settings, e\.g\. self_train\.epochs=10"):
        SelfTraining.from_config(3)
    cfg = make_cfg(["task=speech", "data.num_examples=40", "model.hidden_size=8", "self_train.epochs=2", "test=false",
                    "logger=none", "callbacks=none", "trainer.max_epochs=1", "trainer.limit_val_batches=1"])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        train(cfg)
    assert "self_train tunes the model to the test split after training; with test=false there is none" in caplog.text
