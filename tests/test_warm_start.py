"""Warm start (``init_from``): weights copied by name and shape, vocabulary rows by token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lstmkit.errors import ConfigError
from lstmkit.module import SequenceModel
from lstmkit.types import DataSpec
from lstmkit.warm_start import init_from_checkpoint

from .conftest import QUICK, run_here

EMBED = "lstmkit.encoders.EmbeddingEncoder"
LM_HEAD = "lstmkit.heads.language_model.LanguageModelHead"
CLS_HEAD = "lstmkit.heads.classification.ClassificationHead"


def language_model(vocab: list[str], dim: int = 6, hidden: int = 5) -> SequenceModel:
    torch.manual_seed(1)
    spec = DataSpec(input_kind="tokens", vocab=vocab, classes=vocab)
    return SequenceModel(spec.to_dict(), {"_target_": EMBED, "dim": dim}, {"hidden_size": hidden},
                         {"_target_": LM_HEAD})


def classifier(vocab: list[str], dim: int = 6, hidden: int = 5, **core: object) -> SequenceModel:
    torch.manual_seed(2)
    spec = DataSpec(input_kind="tokens", vocab=vocab, classes=["negative", "positive"])
    return SequenceModel(spec.to_dict(), {"_target_": EMBED, "dim": dim},
                         {"hidden_size": hidden, "bidirectional": True, **core}, {"_target_": CLS_HEAD})


def save(model: SequenceModel, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_rows_follow_tokens_and_only_fitting_tensors_are_copied(tmp_path: Path) -> None:
    source = language_model(["<pad>", "<unk>", "<eos>", "good", "bad", "film"])
    with torch.no_grad():
        source.encoder.embedding.weight[0] = 1.0  # a <pad> row that training moved (a tied LM's does)
    ckpt = save(source, tmp_path / "lm.ckpt")
    target = classifier(["<pad>", "<unk>", "film", "bad", "dull", "good"])  # another order, one new word
    before = {k: v.clone() for k, v in target.state_dict().items()}
    result = init_from_checkpoint(target, ckpt)

    emb, src_emb = target.encoder.embedding.weight, source.encoder.embedding.weight
    assert torch.equal(emb[0], torch.zeros(6))  # the target's <pad> row stays zero
    for token, row in {"<unk>": 1, "film": 2, "bad": 3, "good": 5}.items():
        assert torch.equal(emb[row], src_emb[source.spec.vocab.index(token)]), token
    assert torch.equal(emb[4], before["encoder.embedding.weight"][4])  # "dull": not in the LM, kept
    assert result.by_token["encoder.embedding.weight"] == (5, 6)  # <pad> is found, then zeroed
    # the forward direction comes from the unidirectional LM, the reverse one keeps its init
    state = target.state_dict()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        key = f"core.lstm.{name}"
        assert torch.equal(state[key], source.state_dict()[key])
        assert torch.equal(state[f"{key}_reverse"], before[f"{key}_reverse"])
        assert f"{key}_reverse" in result.kept
    # the head is not included by default: untouched
    assert all(torch.equal(state[k], before[k]) for k in state if k.startswith("head."))
    assert "kept at their initial values" in result.summary()


def test_vocabulary_rows_are_told_by_module_not_by_size(tmp_path: Path) -> None:
    """A 20-token vocabulary and an LSTM with 4 x 5 = 20 gate rows: only the embedding is remapped."""
    words = [f"w{i}" for i in range(18)]
    source = language_model(["<pad>", "<unk>", *words])
    target = classifier(["<pad>", "<unk>", *reversed(words)])
    init_from_checkpoint(target, save(source, tmp_path / "lm.ckpt"))
    assert torch.equal(target.state_dict()["core.lstm.weight_ih_l0"], source.state_dict()["core.lstm.weight_ih_l0"])
    assert torch.equal(target.encoder.embedding.weight[2], source.encoder.embedding.weight[19])


def test_mismatched_shapes_and_bad_include_are_clear_errors(tmp_path: Path) -> None:
    ckpt = save(language_model(["<pad>", "<unk>", "a"]), tmp_path / "lm.ckpt")
    with pytest.raises(ConfigError, match=r"core.lstm.weight_ih_l0 has shape \(20, 6\) in the checkpoint but \(28, 6\) in this model"):
        init_from_checkpoint(classifier(["<pad>", "<unk>", "a"], hidden=7), ckpt)
    with pytest.raises(ConfigError, match="init_from.include"):
        init_from_checkpoint(classifier(["<pad>", "<unk>", "a"]), ckpt, include=["decoder"])
    with pytest.raises(ConfigError, match="head's outputs differ"):
        init_from_checkpoint(classifier(["<pad>", "<unk>", "a"]), ckpt, include=["head"])
    lm = language_model(["<pad>", "<unk>", "a"])
    torch.save({"state_dict": {}, "hyper_parameters": dict(lm.hparams)}, tmp_path / "empty.ckpt")
    with pytest.raises(ConfigError, match="no tensor"):
        init_from_checkpoint(classifier(["<pad>", "<unk>", "a"]), tmp_path / "empty.ckpt")


def test_cli_language_model_then_classifier(tmp_path: Path) -> None:
    """The documented two-step recipe on the generated data: train an LM, warm-start a classifier."""
    lm = run_here("train", "task=next_word", "encoder.dim=16", "model.hidden_size=16", "head.tie_weights=false",
                 "test=false", *QUICK, f"paths.log_dir={tmp_path}/logs", cwd=tmp_path)
    best = next((tmp_path / "logs").glob("next_word/**/checkpoints/best.ckpt"))
    cls = run_here("train", "task=sentiment", "encoder.dim=16", "model.hidden_size=16", f"init_from.ckpt_path={best}",
                  "test=false", *QUICK, f"paths.log_dir={tmp_path}/logs", cwd=tmp_path)
    text = cls.stdout + cls.stderr
    assert "init_from" in text and "tensors copied" in text and "tokens found" in text, text[-2000:]
    one_part = run_here("train", "task=sentiment", "encoder.dim=16", "model.hidden_size=16", f"init_from.ckpt_path={best}",
                       "init_from.include=encoder", "test=false", *QUICK, f"paths.log_dir={tmp_path}/logs", cwd=tmp_path)
    assert "1 tensors copied" in one_part.stdout + one_part.stderr  # the embedding: a part, not its letters
    assert lm.returncode == 0
    missing = run_here("train", "task=sentiment", f"init_from.ckpt_path={tmp_path}/none.ckpt", *QUICK,
                      f"paths.log_dir={tmp_path}/logs", cwd=tmp_path, check=False)
    assert missing.returncode != 0 and "init_from.ckpt_path" in missing.stderr + missing.stdout


def test_tied_weights_copied_once_head_only_with_same_outputs(tmp_path: Path) -> None:
    vocab = ["<pad>", "<unk>", "<eos>", "good", "bad"]
    source = language_model(vocab)  # untied: its output layer differs from its embedding
    torch.manual_seed(3)
    tied = SequenceModel(source.spec.to_dict(), {"_target_": EMBED, "dim": 5, "init_std": 0.1}, {"hidden_size": 5},
                         {"_target_": LM_HEAD, "tie_weights": True})
    source5 = language_model(vocab, dim=5)
    ckpt = save(source5, tmp_path / "lm5.ckpt")
    result = init_from_checkpoint(tied, ckpt, include=["encoder", "core", "head"])
    assert tied.head.decoder.weight is tied.encoder.embedding.weight
    assert torch.equal(tied.encoder.embedding.weight[1:], source5.encoder.embedding.weight[1:])  # not the decoder's
    assert "head.decoder.weight" not in result.copied and "head.decoder.bias" in result.copied
    other = classifier(["<pad>", "<unk>", "good"])
    with pytest.raises(ConfigError, match="head's outputs differ|vocabularies must be the same"):
        init_from_checkpoint(other, save(source, tmp_path / "lm.ckpt"), include=["encoder", "head"])
    with pytest.raises(ConfigError, match="none of this model's"):
        init_from_checkpoint(classifier(["<PAD>", "<UNK>", "GOOD"]), tmp_path / "lm.ckpt")


def test_buffers_follow_the_new_config(tmp_path: Path) -> None:
    """Only parameters are copied: a front end's Mel filter bank (a buffer) is the new model's."""
    spec = DataSpec(input_kind="waveform", sample_rate=8000, classes=["<blank>", " ", "a"], blank_id=0)

    def speech(f_max: float | None) -> SequenceModel:
        torch.manual_seed(4)
        return SequenceModel(spec.to_dict(), {"_target_": "lstmkit.encoders.spectrogram.SpectrogramEncoder",
                                              "features": "mfcc", "f_max": f_max}, {"hidden_size": 5},
                             {"_target_": "lstmkit.heads.ctc.CTCHead"})

    source, target = speech(None), speech(3000.0)
    with torch.no_grad():
        for p in source.core.parameters():
            p.add_(1.0)
    buffers = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    assert any(not torch.equal(v, source.encoder.state_dict()[k]) for k, v in buffers.items())  # they differ
    result = init_from_checkpoint(target, save(source, tmp_path / "speech.ckpt"))
    assert all(torch.equal(v, target.encoder.state_dict()[k]) for k, v in buffers.items())
    assert result.copied and all(n.startswith("core.") for n in result.copied)
    assert torch.equal(target.core.lstm.weight_ih_l0, source.core.lstm.weight_ih_l0)


def test_a_backward_language_model_fills_the_reverse_direction(tmp_path: Path) -> None:
    from lstmkit.warm_start import init_reverse_from_checkpoint

    vocab = ["<pad>", "<unk>", "<eos>", "good", "bad", "film"]
    forward, backward = language_model(vocab), language_model(vocab)
    backward.spec.extra["reverse"] = True  # as data.reverse=true records it
    backward.hparams.spec = backward.spec.to_dict()
    target = classifier(vocab)
    init_from_checkpoint(target, save(forward, tmp_path / "fwd.ckpt"))
    result = init_reverse_from_checkpoint(target, save(backward, tmp_path / "bwd.ckpt"))
    state = target.state_dict()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(state[f"core.lstm.{name}"], forward.state_dict()[f"core.lstm.{name}"])
        assert torch.equal(state[f"core.lstm.{name}_reverse"], backward.state_dict()[f"core.lstm.{name}"])
    assert len(result.copied) == 4
    with pytest.raises(ConfigError, match="did not read its text backwards.*data.reverse=true"):
        init_reverse_from_checkpoint(target, tmp_path / "fwd.ckpt")
    one_way = SequenceModel(**{**dict(target.hparams), "core": {"hidden_size": 5}})
    with pytest.raises(ConfigError, match="model.bidirectional=true"):
        init_reverse_from_checkpoint(one_way, tmp_path / "bwd.ckpt")
    wider = classifier(vocab, hidden=7)
    with pytest.raises(ConfigError, match=r"shape \(20, 6\) there but .* \(28, 6\)"):
        init_reverse_from_checkpoint(wider, tmp_path / "bwd.ckpt")


def test_both_directions_log_what_they_filled_and_embedding_sizes_are_named(tmp_path: Path, caplog) -> None:
    import logging

    from lstmkit.commands.train import warm_start

    vocab = ["<pad>", "<unk>", "<eos>", "good", "bad", "film"]
    forward, backward = language_model(vocab), language_model(vocab)
    backward.spec.extra["reverse"] = True
    backward.hparams.spec = backward.spec.to_dict()
    paths = {"ckpt_path": str(save(forward, tmp_path / "fwd.ckpt")),
             "reverse_ckpt_path": str(save(backward, tmp_path / "bwd.ckpt"))}
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        warm_start(classifier(vocab), {**paths, "include": ["encoder", "core"]}, None)
    assert "kept at their initial values" not in caplog.text  # the reverse direction was filled first
    # a ckpt_path that has reverse weights of its own (a bi-LSTM) does not overwrite the backward LM's
    bi = save(classifier(vocab), tmp_path / "bi.ckpt")
    model = classifier(vocab)
    warm_start(model, {"ckpt_path": str(bi), "reverse_ckpt_path": paths["reverse_ckpt_path"],
                       "include": ["encoder", "core"]}, None)
    assert torch.equal(model.state_dict()["core.lstm.weight_ih_l0_reverse"],
                       backward.state_dict()["core.lstm.weight_ih_l0"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        warm_start(classifier(vocab), {"reverse_ckpt_path": paths["reverse_ckpt_path"]}, None)
    assert "without init_from.ckpt_path" in caplog.text
    with pytest.raises(ConfigError, match=r"6-dim vectors in the checkpoint but 8-dim .* encoder\.dim=6"):
        init_from_checkpoint(classifier(vocab[:5], dim=8), paths["ckpt_path"], ["encoder"])


def test_a_forecast_head_is_not_copied_onto_another_target(tmp_path: Path) -> None:
    """A stock model forecasting close must not hand its output layer to one forecasting volume."""
    from lstmkit.data.stock import StockDataModule

    def stock(target: str) -> SequenceModel:
        data = StockDataModule(num_tickers=2, num_days=200, window=8, target=target)
        data.setup("fit")
        return SequenceModel(data.spec.to_dict(), {"_target_": "lstmkit.encoders.features.FeatureEncoder"},
                             {"hidden_size": 4}, {"_target_": "lstmkit.heads.regression.RegressionHead"})

    ckpt = save(stock("close"), tmp_path / "close.ckpt")
    with pytest.raises(ConfigError, match=r"the head forecasts another target .*'close'.*'volume'"):
        init_from_checkpoint(stock("volume"), ckpt, include=["encoder", "core", "head"])
    init_from_checkpoint(stock("volume"), ckpt, include=["core"])  # the LSTM alone still warm-starts


def test_a_classifier_head_is_copied_across_vocabularies(tmp_path: Path) -> None:
    """Its rows are classes: another vocabulary (other data, other order) does not stop it."""
    source = classifier(["<pad>", "<unk>", "good", "bad"])
    with torch.no_grad():
        for p in source.head.parameters():
            p.add_(1.0)
    target = classifier(["<pad>", "<unk>", "bad", "dull", "good"])
    result = init_from_checkpoint(target, save(source, tmp_path / "cls.ckpt"), include=["encoder", "core", "head"])
    assert {"head.net.0.weight", "head.net.0.bias"} <= set(result.copied)
    assert torch.equal(target.head.net[0].weight, source.head.net[0].weight)
    assert torch.equal(target.encoder.embedding.weight[4], source.encoder.embedding.weight[2])  # by token


def test_features_in_another_order_are_refused(tmp_path: Path) -> None:
    """The LSTM's input columns are per feature: copied onto another order they would read the wrong price."""
    from lstmkit.data.stock import StockDataModule

    def stock(features: list[str], project: int = 0) -> SequenceModel:
        data = StockDataModule(num_tickers=2, num_days=200, window=8, features=features)
        data.setup("fit")
        return SequenceModel(data.spec.to_dict(), {"_target_": "lstmkit.encoders.features.FeatureEncoder",
                                                   "project": project},
                             {"hidden_size": 4}, {"_target_": "lstmkit.heads.regression.RegressionHead"})

    ckpt = save(stock(["open", "close"]), tmp_path / "oc.ckpt")
    with pytest.raises(ConfigError, match=r"reads the features open, close, this one close, open.*"
                                          r"data\.features=\[open,close\]"):
        init_from_checkpoint(stock(["close", "open"]), ckpt, include=["core"])
    init_from_checkpoint(stock(["open", "close"]), ckpt, include=["core"])  # the same order: copied
    projected = save(stock(["open", "close"], project=3), tmp_path / "proj.ckpt")
    # behind a projection the LSTM reads the projection's outputs, not the features: it may be copied
    init_from_checkpoint(stock(["close", "open"], project=3), projected, include=["core"])
    with pytest.raises(ConfigError, match="reads the features"):
        init_from_checkpoint(stock(["close", "open"], project=3), projected, include=["encoder", "core"])


def test_a_bidirectional_lstm_of_two_layers_starts_from_unidirectional_language_models(tmp_path: Path) -> None:
    """From its second layer on a bi-LSTM's layer reads both directions (input twice as wide as the LM's):
    the LM's columns fill the half that reads the same direction, the other half is zero, so each
    direction's stack starts out computing exactly what its language model computed (it was a shape error
    whose advice, to make the sizes match, no setting could follow)."""
    from lstmkit.warm_start import init_reverse_from_checkpoint

    vocab = ["<pad>", "<unk>", "<eos>", "good", "bad", "film"]
    for core in ({"num_layers": 2}, {"num_layers": 3, "proj_size": 3}):
        torch.manual_seed(5)
        spec = DataSpec(input_kind="tokens", vocab=vocab)
        forward = SequenceModel(spec.to_dict(), {"_target_": EMBED, "dim": 6}, {"hidden_size": 5, **core},
                                {"_target_": LM_HEAD})
        backward = SequenceModel({**spec.to_dict(), "extra": {"reverse": True}}, {"_target_": EMBED, "dim": 6},
                                 {"hidden_size": 5, **core}, {"_target_": LM_HEAD})
        target = classifier(vocab, **core).eval()
        layers = core["num_layers"]
        reverse = init_reverse_from_checkpoint(target, save(backward, tmp_path / "bwd.ckpt"))
        result = init_from_checkpoint(target, save(forward, tmp_path / "fwd.ckpt"), filled=reverse.copied)
        assert result.halves == [f"core.lstm.weight_ih_l{k}" for k in range(1, layers)]
        assert reverse.halves == [f"core.lstm.weight_ih_l{k}_reverse" for k in range(1, layers)]
        assert not result.kept and "reads its own direction" in result.summary()
        width = core.get("proj_size") or 5
        for k in range(1, layers):  # the columns that read the other direction start at zero
            assert not target.core.lstm.get_parameter(f"weight_ih_l{k}")[:, width:].any()
            assert not target.core.lstm.get_parameter(f"weight_ih_l{k}_reverse")[:, :width].any()
        x = torch.randn(3, 7, 6)
        with torch.no_grad():
            both, _ = target.core.lstm(x)
            ahead, _ = forward.core.lstm(x)
            behind, _ = backward.core.lstm(x.flip(1))
        torch.testing.assert_close(both[..., :width], ahead)  # the forward stack is the forward LM
        torch.testing.assert_close(both[..., width:], behind.flip(1))  # the reverse stack, the backward LM


def test_lstm_shape_errors_give_advice_that_works_and_unused_layers_are_reported(tmp_path: Path) -> None:
    vocab = ["<pad>", "<unk>", "good"]
    deeper = save(SequenceModel(DataSpec(input_kind="tokens", vocab=vocab).to_dict(), {"_target_": EMBED, "dim": 6},
                                {"hidden_size": 5, "num_layers": 3}, {"_target_": LM_HEAD}), tmp_path / "deep.ckpt")
    result = init_from_checkpoint(classifier(vocab, num_layers=2), deeper)
    assert result.unused == [f"core.lstm.{n}_l2" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert "4 of the checkpoint not used" in result.summary()
    with pytest.raises(ConfigError, match=r"weight_ih_l0 has shape \(20, 6\) in the checkpoint but \(28, 6\) in this "
                                          r"model; set model\.hidden_size=5 as the checkpoint's LSTM has, or leave core"):
        init_from_checkpoint(classifier(vocab, hidden=7, num_layers=2), deeper)
    bi = save(classifier(vocab, num_layers=2), tmp_path / "bi.ckpt")
    one_way = SequenceModel(**{**dict(classifier(vocab).hparams), "core": {"hidden_size": 5, "num_layers": 2}})
    with pytest.raises(ConfigError, match=r"weight_ih_l1 has shape \(20, 10\) .* \(20, 5\) in this model; the "
                                          r"checkpoint's LSTM is bidirectional.*model\.bidirectional=true, or "
                                          r"model\.num_layers=1"):
        init_from_checkpoint(one_way, bi)
    # the advice works: one layer copies the checkpoint's first, and says what it left
    single = SequenceModel(**{**dict(classifier(vocab).hparams), "core": {"hidden_size": 5}})
    assert "core.lstm.weight_ih_l1_reverse" in init_from_checkpoint(single, bi).unused


def test_the_lstm_input_size_advice_names_the_encoders_own_setting(tmp_path: Path) -> None:
    """The LSTM's input size was always advised as ``encoder.dim=``: a stock model's feature encoder has no
    such setting (its size is ``encoder.project``), so the advice could not be followed."""
    from lstmkit.data.stock import StockDataModule

    def stock(project: int) -> SequenceModel:
        data = StockDataModule(num_tickers=2, num_days=200, window=8, features=["open", "close"])
        data.setup("fit")
        return SequenceModel(data.spec.to_dict(), {"_target_": "lstmkit.encoders.features.FeatureEncoder",
                                                   "project": project},
                             {"hidden_size": 4}, {"_target_": "lstmkit.heads.regression.RegressionHead"})

    projected = save(stock(3), tmp_path / "proj.ckpt")
    with pytest.raises(ConfigError, match=r"\(16, 3\) in the checkpoint but \(16, 2\) in this model; set "
                                          r"encoder\.project=3 \(the LSTM's input size: 3 there, 2 here\)"):
        init_from_checkpoint(stock(0), projected, include=["core"])
    init_from_checkpoint(stock(3), projected, include=["core"])  # the advice followed: copied
    # an embedding's vectors are the LSTM's inputs: encoder.dim, as before
    vocab = ["<pad>", "<unk>", "good"]
    with pytest.raises(ConfigError, match=r"set encoder\.dim=6 \(the LSTM's input size: 6 there, 8 here\)"):
        init_from_checkpoint(classifier(vocab, dim=8), save(classifier(vocab), tmp_path / "c.ckpt"), include=["core"])


def test_a_checkpoint_of_another_tokenizer_version_is_noted(tmp_path: Path, caplog) -> None:
    """Rows are matched by token: a version-1 vocabulary's "'twist'" has no match in a version-2 one."""
    import logging

    vocab = ["<pad>", "<unk>", "<eos>", "'twist'", "twist", "film"]
    spec = DataSpec(input_kind="tokens", vocab=vocab, tokenizer={"level": "word", "lowercase": True})  # before versions
    old = SequenceModel(spec.to_dict(), {"_target_": EMBED, "dim": 6}, {"hidden_size": 5}, {"_target_": LM_HEAD})
    ckpt = save(old, tmp_path / "v1.ckpt")
    new_spec = DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>", "'", "twist", "film"], classes=["a", "b"],
                        tokenizer={"level": "word", "lowercase": True, "version": 2})
    target = SequenceModel(new_spec.to_dict(), {"_target_": EMBED, "dim": 6}, {"hidden_size": 5}, {"_target_": CLS_HEAD})
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        result = init_from_checkpoint(target, ckpt)
    assert "tokenized by tokenizer version 1, this run's by 2" in caplog.text
    assert result.by_token["encoder.embedding.weight"] == (4, 5)  # all but "'"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        init_from_checkpoint(target, save(target, tmp_path / "v2.ckpt"))
    assert "tokenizer version" not in caplog.text
