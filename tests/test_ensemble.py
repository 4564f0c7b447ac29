"""Ensembles: several checkpoints evaluated and served as one model (``ckpt_path=[a,b]`` or a glob)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lstmkit.checkpoints import checkpoint_paths, load_models
from lstmkit.commands.evaluate import check_members_split, evaluate
from lstmkit.commands.export import export
from lstmkit.commands.predict import predict
from lstmkit.commands.train import build_model, train
from lstmkit.data.sentiment import SentimentDataModule
from lstmkit.ensemble import SequenceEnsemble
from lstmkit.errors import CheckpointError, ConfigError
from lstmkit.module import SequenceModel

from .conftest import QUICK, split_accuracy

TINY = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8", "logger=none"]


def _members(make_cfg, task: str, overrides: list[str], seeds: tuple[int, ...] = (1, 2)) -> tuple[list, object]:
    """Untrained models of one task from different seeds, and a set-up datamodule to feed them."""
    cfg = make_cfg([f"task={task}", *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(cfg, datamodule).eval())
    return models, datamodule


def _batch(datamodule):
    return next(iter(datamodule.val_dataloader()))


@pytest.mark.parametrize(("task", "overrides"), [
    ("sentiment", ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8"]),
    ("next_word", ["data.batch_size=4", "data.bptt=8", "model.hidden_size=8", "encoder.dim=8"]),
    ("speech", ["data.batch_size=4", "model.hidden_size=8"]),
])
def test_the_ensemble_answers_with_the_members_mean_distribution(make_cfg, task: str, overrides: list[str]) -> None:
    members, datamodule = _members(make_cfg, task, overrides)
    ensemble = SequenceEnsemble(members).eval()
    batch = _batch(datamodule)
    with torch.no_grad():
        outputs, lengths = ensemble(batch.inputs, batch.lengths, host_lengths=batch.host_lengths)
        each = [m(batch.inputs, batch.lengths, host_lengths=batch.host_lengths) for m in members]
    mean = sum(o.float().softmax(-1) for o, _ in each) / len(each)
    torch.testing.assert_close(outputs.exp(), mean)
    assert torch.equal(lengths, each[0][1])
    # the mean distribution's loss is at most the members' mean loss (Jensen), and below the worst
    with torch.no_grad():
        loss = float(ensemble.head.loss(outputs, lengths, batch))
        member_losses = [float(m.head.loss(o, ln, batch)) for m, (o, ln) in zip(members, each)]
    assert loss <= sum(member_losses) / len(member_losses) + 1e-5
    assert ensemble.predict_step(batch, 0)  # decodes through the first member's head


def test_a_forecast_ensemble_averages_the_forecasts(make_cfg) -> None:
    members, datamodule = _members(make_cfg, "stock", ["data.batch_size=16", "model.hidden_size=8"], seeds=(1, 2, 3))
    ensemble = SequenceEnsemble(members).eval()
    batch = _batch(datamodule)
    with torch.no_grad():
        outputs, _ = ensemble(batch.inputs, batch.lengths)
        each = [m(batch.inputs, batch.lengths)[0] for m in members]
    torch.testing.assert_close(outputs, sum(each) / 3)
    rows = ensemble.predict_step(batch, 0)
    assert len(rows) == len(batch)


def test_anomaly_models_and_mismatched_members_are_refused(make_cfg) -> None:
    ecg, _ = _members(make_cfg, "ecg", ["data.num_beats=240", "data.batch_size=16", "model.hidden_size=8"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        SequenceEnsemble(ecg)
    small, _ = _members(make_cfg, "sentiment", ["data.num_examples=120", *TINY[1:4]], seeds=(1,))
    large, _ = _members(make_cfg, "sentiment", TINY[:4], seeds=(1,))
    with pytest.raises(ConfigError, match=r"trained on other data.*'vocab'.*data\.num_examples: 120 vs 200"):
        SequenceEnsemble([small[0], large[0]], names=["small.ckpt", "large.ckpt"])
    stock, _ = _members(make_cfg, "stock", ["data.batch_size=16", "model.hidden_size=8"], seeds=(1,))
    with pytest.raises(ConfigError, match="is a model of task 'stock'"):
        SequenceEnsemble([large[0], stock[0]])
    with pytest.raises(ConfigError, match="train its members one by one"):
        SequenceEnsemble(large).training_step(None, 0)
    with pytest.raises(ConfigError, match="the same model object is given more than once"):
        SequenceEnsemble([large[0], large[0]])


def test_eval_and_predict_take_several_checkpoints(make_cfg, tmp_path: Path) -> None:
    for seed in (1, 2):  # data.seed fixed: the generated corpus and its split are the same
        shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)  # else Lightning writes best-v1.ckpt
        train(make_cfg([*TINY, *QUICK, f"seed={seed}", "data.seed=0"]))
        shutil.copy(tmp_path / "checkpoints" / "best.ckpt", tmp_path / f"member{seed}.ckpt")
    pattern = str(tmp_path / "member*.ckpt")
    assert checkpoint_paths(pattern) == [str(tmp_path / "member1.ckpt"), str(tmp_path / "member2.ckpt")]
    ensemble = load_models(pattern)
    assert isinstance(ensemble, SequenceEnsemble) and len(ensemble.members) == 2
    assert load_models(pattern, map_location="meta").device.type == "meta"  # predict sends batches there
    first, second = (m.state_dict() for m in ensemble.members)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # two models, not one twice


    # eval: the accuracy of the mean distribution over the whole test split
    value = evaluate(make_cfg([f"ckpt_path={pattern}", "trainer.enable_progress_bar=false", "logger=none"],
                              name="eval"))
    data = {k: v for k, v in ensemble.hparams["data"].items() if k != "_target_"}
    datamodule = SentimentDataModule(**data, spec=ensemble.hparams["spec"])
    datamodule.setup("test")
    correct, total = split_accuracy(ensemble, datamodule)
    assert value == pytest.approx(correct / total)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == pytest.approx(correct / total)

    # predict: the ensemble's probability for a sentence
    rows = predict(make_cfg([f"ckpt_path=[{tmp_path}/member1.ckpt,{tmp_path}/member2.ckpt]",
                             "input=what a wonderful film"], name="predict"))
    single = [predict(make_cfg([f"ckpt_path={tmp_path}/member{s}.ckpt", "input=what a wonderful film"],
                               name="predict"))[0] for s in (1, 2)]
    for label in ("negative", "positive"):
        expected = sum(r["probabilities"][label] for r in single) / 2
        assert math.isclose(rows[0]["probabilities"][label], expected, abs_tol=2e-4)

    with pytest.raises(ConfigError, match="export writes one model"):
        export(make_cfg([f"ckpt_path={pattern}"], name="export"))
    with pytest.raises(CheckpointError, match="no checkpoint matches"):
        checkpoint_paths(str(tmp_path / "nothing*.ckpt"))
    with pytest.raises(ConfigError, match="listed twice"):
        checkpoint_paths([str(tmp_path / "member1.ckpt")] * 2)
    with pytest.raises(ConfigError, match="listed twice"):  # one file, spelled two ways
        checkpoint_paths([str(tmp_path / "member1.ckpt"), str(tmp_path / "checkpoints" / ".." / "member1.ckpt")])


def test_members_whose_seed_moved_the_split_are_refused(make_cfg) -> None:
    """Seeds are the usual members, and data.seed also splits generated data (or a single file): a
    member would have trained on utterances that the others are scored on."""
    speech = ["data.batch_size=4", "model.hidden_size=8"]
    (first,), _ = _members(make_cfg, "speech", [*speech, "data.seed=1"], seeds=(1,))
    (same,), _ = _members(make_cfg, "speech", [*speech, "data.seed=1", "data.batch_size=8"], seeds=(2,))
    (moved,), _ = _members(make_cfg, "speech", [*speech, "data.seed=2"], seeds=(3,))
    check_members_split(SequenceEnsemble([first, same]), ["a.ckpt", "b.ckpt"], "test")  # batching only
    with pytest.raises(ConfigError, match=r"c\.ckpt and a\.ckpt .*\(seed\) that put other examples in the test"):
        check_members_split(SequenceEnsemble([first, moved]), ["a.ckpt", "c.ckpt"], "test")


def test_members_on_a_fixed_split_pass_whatever_their_seed_and_batching(make_cfg, tmp_path: Path) -> None:
    """Train / valid / test files: the test split is the same for every seed and batch size."""
    for split, lines in {"train": ["a gorgeous film .", "dull and long ."] * 30,
                         "valid": ["a film ."] * 10, "test": ["long dull film .", "a film ."] * 10}.items():
        (tmp_path / f"text.{split}.txt").write_text("\n".join(lines) + "\n")
    common = [f"data.path={tmp_path}", "data.tokenizer=whitespace", "model.hidden_size=8", "encoder.dim=8"]
    (one,), _ = _members(make_cfg, "next_word", [*common, "data.seed=1", "data.batch_size=2", "data.bptt=3"], seeds=(1,))
    (two,), _ = _members(make_cfg, "next_word", [*common, "data.seed=2", "data.batch_size=4", "data.bptt=3"], seeds=(2,))
    check_members_split(SequenceEnsemble([one, two]), ["one.ckpt", "two.ckpt"], "test")  # no error


def test_speech_members_that_cut_steps_differently_are_refused(make_cfg) -> None:
    """Silence trimming shifts each utterance's frames: averaging frame t of a trimmed and an untrimmed
    member would mix two instants (the padded output shapes still agree)."""
    plain, _ = _members(make_cfg, "speech", ["data.batch_size=4", "model.hidden_size=8"], seeds=(1,))
    trimmed, _ = _members(make_cfg, "speech", ["data.batch_size=4", "model.hidden_size=8", "encoder.trim_db=30"],
                          seeds=(1,))
    with pytest.raises(ConfigError, match=r"cut the input into steps differently \(encoder\.trim_db: None vs 30"):
        SequenceEnsemble([plain[0], trimmed[0]], names=["plain.ckpt", "trimmed.ckpt"])
    masked, _ = _members(make_cfg, "speech", ["data.batch_size=4", "model.hidden_size=8", "encoder.freq_mask=2"],
                         seeds=(1,))
    SequenceEnsemble([plain[0], masked[0]])  # training-only augmentation may differ


def test_a_checkpoint_in_a_sweep_folder_with_brackets_is_taken_as_it_is(tmp_path: Path) -> None:
    """A Hydra sweep's folder (optimizer.lr=[0.1]) read as a glob pattern: its [0.1] is a character
    class, so the existing file was refused with "no checkpoint matches this pattern"."""
    folder = tmp_path / "optimizer.lr=[0.1]" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"")
    assert checkpoint_paths(str(folder / "best.ckpt")) == [str(folder / "best.ckpt")]
    escaped = str(tmp_path / "optimizer.lr=[[]0.1]" / "checkpoints" / "b*.ckpt")
    assert checkpoint_paths(escaped) == [str(folder / "best.ckpt")]  # a pattern still globs
    with pytest.raises(CheckpointError, match=r"no checkpoint matches this pattern \(in a pattern, \[\.\.\.\] is"):
        checkpoint_paths(str(folder / "b*.ckpt"))


def test_members_that_differ_only_in_batching_are_combined(make_cfg, tmp_path: Path) -> None:
    """Specs that differ in extra.bptt or tokenizer.max_length (batching, which a resume may change too)
    were refused as "trained on other data"; eval reads the data with the first member's spec, and the
    split check compares the members' examples cut alike."""
    lm = ["task=next_word", "data.num_tokens=6000", "data.batch_size=4", "model.hidden_size=8", "encoder.dim=8"]
    (short,), _ = _members(make_cfg, "next_word", [*lm, "data.bptt=5"], seeds=(1,))
    (long,), _ = _members(make_cfg, "next_word", [*lm, "data.bptt=9"], seeds=(2,))
    assert short.spec.extra["bptt"] != long.spec.extra["bptt"]
    check_members_split(SequenceEnsemble([short, long]), ["a.ckpt", "b.ckpt"], "test")
    # short training texts (the same vocabulary whatever the cut), long test texts (cut differently)
    for split, texts in {"train": ["good film", "bad film"] * 20, "dev": ["good film", "bad film"] * 4,
                         "test": [" ".join(["good film"] * 8), " ".join(["bad film"] * 8)] * 4}.items():
        rows = "".join(f"{text},{'positive' if text.startswith('good') else 'negative'}\n" for text in texts)
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows)
    reviews = [f"data.path={tmp_path}", *TINY[1:4]]
    (cut,), _ = _members(make_cfg, "sentiment", [*reviews, "data.max_length=5"], seeds=(1,))
    (whole,), _ = _members(make_cfg, "sentiment", [*reviews, "data.max_length=50"], seeds=(2,))
    ensemble = SequenceEnsemble([cut, whole])
    check_members_split(ensemble, ["cut.ckpt", "whole.ckpt"], "test")  # the same examples, cut alike
    (reverse,), _ = _members(make_cfg, "next_word", [*lm, "data.bptt=5", "data.reverse=true"], seeds=(3,))
    with pytest.raises(ConfigError, match=r"their data specs differ in \['extra\.reverse'\]"):
        SequenceEnsemble([short, reverse])  # an identity field is still compared


def test_two_checkpoints_of_one_run_are_refused_from_a_glob_and_named_when_listed(tmp_path: Path, caplog) -> None:
    """runs/*/checkpoints/*.ckpt took each run's best.ckpt and last.ckpt as two members: one model counted
    twice in the mean without a word."""
    import logging

    for run in ("a", "b"):
        folder = tmp_path / "runs" / run / "checkpoints"
        folder.mkdir(parents=True)
        for name in ("best.ckpt", "last.ckpt"):
            (folder / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"matches 2 checkpoints of one run \(.*runs/a: best\.ckpt, last\.ckpt\)"):
        checkpoint_paths(str(tmp_path / "runs" / "*" / "checkpoints" / "*.ckpt"))
    best = checkpoint_paths(str(tmp_path / "runs" / "*" / "checkpoints" / "best.ckpt"))
    assert best == [str(tmp_path / "runs" / run / "checkpoints" / "best.ckpt") for run in ("a", "b")]
    listed = [str(tmp_path / "runs" / "a" / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt")]
    assert checkpoint_paths(listed) == listed  # by name: meant (a snapshot ensemble), said by the ensemble
    members = [SequenceModel({"input_kind": "tokens", "vocab": ["<pad>", "<unk>", "a"], "classes": ["n", "p"]},
                             {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4}, {"hidden_size": 4},
                             {"_target_": "lstmkit.heads.classification.ClassificationHead"}) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SequenceEnsemble(members, names=listed)
    assert "are checkpoints of one run" in caplog.text and "counts 2 times in the mean" in caplog.text


def test_members_of_a_run_from_before_tokenizer_versions_are_version_1() -> None:
    """A member whose data config predates tokenizer versions (none stored) was said to differ from a
    version-1 member in data.tokenizer_version (None vs 1), and from a version-2 one as None vs 2."""
    from lstmkit.ensemble import setting_differences
    from lstmkit.types import DataSpec

    def member(version: int | None) -> SequenceModel:
        tokenizer = {"level": "word", "lowercase": True, **({"version": version} if version else {})}
        spec = DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>", "good"], classes=["neg", "pos"],
                        tokenizer=tokenizer, datamodule="lstmkit.data.sentiment.SentimentDataModule")
        data = {"_target_": "lstmkit.data.sentiment.SentimentDataModule", "tokenizer": "word",
                **({"tokenizer_version": version} if version else {})}
        return SequenceModel(spec.to_dict(), {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4},
                             {"hidden_size": 4}, {"_target_": "lstmkit.heads.ClassificationHead"}, data=data,
                             task="sentiment")

    before = member(None)
    assert setting_differences(before, member(1)) == {}
    SequenceEnsemble([before, member(1)], ["before.ckpt", "v1.ckpt"])
    with pytest.raises(ConfigError, match=r"differ in \['tokenizer\.version'\].*data\.tokenizer_version: 1 vs 2"):
        SequenceEnsemble([before, member(2)], ["before.ckpt", "v2.ckpt"])


def test_an_ensemble_that_cannot_adapt_names_the_member(make_cfg) -> None:
    """adapt=true on an ensemble with a per-utterance member said "this model was trained with
    encoder.normalise=utterance" without saying which of the checkpoints; each adaptable member adapts."""
    members, _ = _members(make_cfg, "speech", ["data.batch_size=4", "model.hidden_size=8"])
    with pytest.raises(ConfigError, match=r"ensemble: model 0: adapt=true re-estimates the running statistics .*"
                                          r"encoder.normalise=utterance"):
        SequenceEnsemble(members, names=["model 0", "model 1"]).check_adaptable()
    adaptable, _ = _members(make_cfg, "speech", ["data.batch_size=4", "model.hidden_size=8", "encoder.normalise=both"])
    ensemble = SequenceEnsemble(adaptable, names=["a.ckpt", "b.ckpt"])
    ensemble.check_adaptable()
    assert ensemble.encoders() == [m.encoder for m in adaptable]
