"""``lstmkit eval split=all``: a trained model scored on every example of a file (``data.whole``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lstmkit.checkpoints import load_models
from lstmkit.commands.evaluate import evaluate
from lstmkit.commands.train import train
from lstmkit.data.sentiment import SentimentDataModule
from lstmkit.errors import ConfigError, DataError

from .conftest import QUICK, split_accuracy


def _datamodules(make_cfg, overrides: list[str]):
    """The task's datamodule as trained (split), and the same data with ``whole`` and its spec."""
    cfg = make_cfg(overrides)
    split = instantiate(cfg.data, _convert_="all")
    split.setup("fit")
    whole = instantiate(cfg.data, _convert_="all", whole=True, spec=split.spec.to_dict())
    whole.setup("test")
    return split, whole


def _key(inputs: torch.Tensor, target: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(inputs.flatten().tolist()), tuple(torch.as_tensor(target).flatten().tolist())


@pytest.mark.parametrize("overrides", [
    ["task=sentiment", "data.num_examples=300"],
    ["task=speech", "data.num_examples=40"],
    ["task=ecg", "data.num_beats=200"],
    ["task=ecg_unsupervised", "data.num_beats=200"],  # the anomalous training beats are scored too
])
def test_whole_holds_every_example_once(make_cfg, overrides: list[str]) -> None:
    split, whole = _datamodules(make_cfg, overrides)
    assert set(whole.splits) == {"test"} or all(len(whole.splits[s]) == 0 for s in ("train", "val"))
    examples = whole.splits["test"]
    total = overrides[1].split("=")[1]
    assert len(examples) == int(total)
    # each example once: the split examples (inputs and targets) are a sub-multiset of the whole
    everything = sorted(_key(*examples[i][:2]) for i in range(len(examples)))  # speech items: + source
    parts = sorted(_key(*split.splits[s][i][:2]) for s in ("train", "val", "test") for i in range(len(split.splits[s])))
    if "ecg_unsupervised" in overrides[0]:
        assert len(parts) < len(everything)  # train_on=normal dropped the anomalous training beats
    else:
        assert parts == everything


def test_whole_next_word_is_the_stream_in_order(make_cfg) -> None:
    split, whole = _datamodules(make_cfg, ["task=next_word", "data.num_tokens=20000", "data.batch_size=4", "data.eval_batch_size=4"])
    parts = torch.cat([split.splits[s].ids for s in ("train", "val", "test")])
    assert torch.equal(whole.splits["test"].ids, parts)


def test_whole_stock_has_every_window(make_cfg) -> None:
    """Windows whose targets straddle a split boundary belong to no split; the whole file has them."""
    split, whole = _datamodules(make_cfg, ["task=stock", "data.num_tickers=2", "data.num_days=300",
                                           "data.window=10", "data.horizon=3"])
    assert len(whole.splits["test"]) == 2 * (300 - 10 - 3 + 1)
    assert len(whole.splits["test"]) > sum(len(split.splits[s]) for s in ("train", "val", "test"))


def test_whole_needs_a_trained_models_spec() -> None:
    with pytest.raises(ConfigError, match=r"data\.whole=true .*lstmkit eval ckpt_path=\.\.\. split=all"):
        SentimentDataModule(whole=True)


def test_eval_split_all_scores_every_row_of_a_new_file(make_cfg, tmp_path: Path, capsys) -> None:
    train(make_cfg(["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8",
                    "logger=none", *QUICK]))
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    rows = ["label,text"] + [("positive,a wonderful moving film" if i % 2 else "negative,a dull tedious mess")
                             + f" {i}" for i in range(37)]
    new = tmp_path / "new.csv"
    new.write_text("\n".join(rows) + "\n")
    capsys.readouterr()  # training's output
    value = evaluate(make_cfg([f"ckpt_path={ckpt}", f"data.path={new}", "split=all", "logger=csv",
                               "trainer.enable_progress_bar=false"], name="eval"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "all/acc" in metrics and not any(k.startswith("test/") for k in metrics)
    (logged,) = tmp_path.glob("csv/**/metrics.csv")  # the loggers name them so too, not test/*
    header = logged.read_text().splitlines()[0].split(",")
    assert "all/acc" in header and "all/loss" in header and not any(k.startswith("test/") for k in header)
    assert "test/acc" not in capsys.readouterr().out  # one table, named for what was scored (not Lightning's too)

    model = load_models(str(ckpt)).eval()
    data = {k: v for k, v in model.hparams["data"].items() if k != "_target_"}
    datamodule = SentimentDataModule(**{**data, "path": str(new)}, whole=True, spec=model.hparams["spec"])
    datamodule.setup("test")
    correct, total = split_accuracy(model, datamodule)
    assert total == 37  # every row, not the file's test part (4 rows at test_fraction 0.1)
    assert value == pytest.approx(correct / total) == pytest.approx(metrics["all/acc"])

    # the same rows under the file's own column names: eval takes data.text_column / data.label_column
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("\n".join(["stars,review", *rows[1:]]) + "\n")
    again = evaluate(make_cfg([f"ckpt_path={ckpt}", f"data.path={renamed}", "data.text_column=review",
                               "data.label_column=stars", "split=all", "logger=none",
                               "trainer.enable_progress_bar=false"], name="eval"))
    assert again == pytest.approx(value)

    with pytest.raises(ConfigError, match="split='train': expected one of test, val, all"):
        evaluate(make_cfg([f"ckpt_path={ckpt}", "split=train"], name="eval"))


def test_eval_split_val_writes_the_plots_of_the_val_split(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """``eval split=val`` wrote no plots/ (the figures were collected in the test loop only); it now draws
    the val split, as ``val_<name>.png`` beside the test split's unchanged ``<name>.png``, with titles that
    say val. Fitting's val loops draw nothing."""
    from lstmkit.heads import regression

    train(make_cfg(["task=stock", "data.num_tickers=1", "data.num_days=200", "data.window=8", "model.hidden_size=8",
                    "logger=none", *QUICK]))
    plots = tmp_path / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["forecast.png"]  # the test run's; no val_ plots
    test_plot = (plots / "forecast.png").read_bytes()
    titles: list[str] = []
    original = regression.forecast_figure
    monkeypatch.setattr(regression, "forecast_figure", lambda *a: titles.append(original(*a).axes[0].get_title())
                        or original(*a))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    evaluate(make_cfg([f"ckpt_path={ckpt}", "split=val", "logger=none", "trainer.enable_progress_bar=false"],
                      name="eval"))
    assert sorted(p.name for p in plots.iterdir()) == ["forecast.png", "val_forecast.png"]
    assert (plots / "val_forecast.png").stat().st_size > 10_000
    assert (plots / "forecast.png").read_bytes() == test_plot
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert titles and "(all val windows; MASE " + f"{metrics['val/mase']:.3f})" in titles[-1]
    evaluate(make_cfg([f"ckpt_path={ckpt}", "split=test", "logger=none", "trainer.enable_progress_bar=false"],
                      name="eval"))
    assert sorted(p.name for p in plots.iterdir()) == ["forecast.png", "val_forecast.png"]
    assert "(all test windows" in titles[-1]


def test_a_datamodule_that_ignores_whole_is_refused() -> None:
    """A user's datamodule that never reads ``whole`` would score its test split as ``all/...``."""
    from lstmkit.data.base import SequenceDataModule, SequenceDataset
    from lstmkit.types import DataSpec

    class Splits(SequenceDataModule):
        def build(self) -> DataSpec:
            for name in ("train", "val", "test"):
                self.splits[name] = SequenceDataset([torch.zeros(3, 1)], [torch.tensor(0)])
            return DataSpec(input_kind="features", num_features=1, classes=["a", "b"])

    module = Splits(whole=True, spec={"input_kind": "features", "num_features": 1, "classes": ["a", "b"]})
    with pytest.raises(ConfigError, match=r"Splits does not support data\.whole \(split=all\): .*kept the train, val"):
        module.setup("test")


def test_whole_stock_short_ticker_names_it_and_the_way_out(make_cfg, tmp_path: Path) -> None:
    """A ticker too short for one window is refused by name (not skipped: that would lose data
    silently), with the ``data.tickers`` list that scores the others."""
    from lstmkit.data.stock import generate_ohlcv

    frame = generate_ohlcv(num_tickers=3, num_days=200, seed=0)
    short = frame["Name"].unique()[1]
    frame = frame[(frame["Name"] != short) | (frame.groupby("Name").cumcount() < 8)]
    frame.to_csv(tmp_path / "prices.csv", index=False)
    split, _ = _datamodules(make_cfg, ["task=stock", "data.num_tickers=3", "data.num_days=200",
                                       "data.window=10", "data.horizon=3"])
    cfg = make_cfg(["task=stock", f"data.path={tmp_path / 'prices.csv'}", "data.window=10", "data.horizon=3"])
    whole = instantiate(cfg.data, _convert_="all", whole=True, spec=split.spec.to_dict())
    others = [t for t in frame["Name"].unique() if t != short]
    with pytest.raises(DataError, match=rf"ticker '{short}' has 8 rows.*data\.tickers=\[{others[0]},{others[1]}\]"):
        whole.setup("test")


@pytest.mark.parametrize(("target", "stored", "refused", "accepted"), [
    ("lstmkit.data.sentiment.SentimentDataModule", {"max_length": 3, "tokenizer": "word", "seed": 1},
     {"max_length": 1000}, {"seed": 7, "max_length": 3}),
    ("lstmkit.data.sentiment.SentimentDataModule", {"tokenizer": "word", "lowercase": True},
     {"tokenizer": "char"}, {"batch_size": 8, "tokenizer": "word"}),
    ("lstmkit.data.stock.StockDataModule", {"window": 30, "horizon": 3, "normalise": "log_returns", "path": "a"},
     {"window": 10}, {"path": "b", "window": 30}),
    ("lstmkit.data.language_model.NextWordDataModule", {"subwords": None, "bptt": 35}, {"subwords": 8000},
     {"bptt": 70}),
])
def test_eval_refuses_a_setting_the_models_spec_decides(target: str, stored: dict, refused: dict,
                                                        accepted: dict) -> None:
    """eval +data.max_length=1000 (or a stock model's +data.window=10) was ignored without a word: the
    datamodule reads the data as the model was trained, so the scores were not of what was asked."""
    from lstmkit.commands.evaluate import check_spec_settings

    stored = {"_target_": target, **stored}
    (key,) = refused
    with pytest.raises(ConfigError, match=rf"^data\.{key}=.*the model was trained with data\.{key}="):
        check_spec_settings(stored, refused)
    check_spec_settings(stored, accepted)


def test_eval_of_a_checkpoint_from_before_tokenizer_versions_knows_its_version() -> None:
    """Its stored data config has no tokenizer_version: data.tokenizer_version=1, what it was trained with, was
    refused as "the model was trained with data.tokenizer_version=None"."""
    from lstmkit.commands.evaluate import check_spec_settings

    stored = {"_target_": "lstmkit.data.sentiment.SentimentDataModule", "tokenizer": "word", "lowercase": True}
    check_spec_settings(stored, {"tokenizer_version": 1})
    with pytest.raises(ConfigError, match=r"^data\.tokenizer_version=2: the model was trained with "
                                          r"data\.tokenizer_version=1,"):
        check_spec_settings(stored, {"tokenizer_version": 2})
    check_spec_settings({**stored, "tokenizer_version": 2}, {"tokenizer_version": 2})
    with pytest.raises(ConfigError, match=r"^data\.window=10: .*eval may change path$"):  # not a text model's setting
        check_spec_settings({"_target_": "lstmkit.data.stock.StockDataModule", "window": 30, "path": "a"}, {"window": 10})


def test_split_sizes_leave_out_what_a_trained_model_never_reads(caplog) -> None:
    """eval reads no train split (the model's vocabulary is the checkpoint's), and split=all no val either:
    its log said "0/0/60 (train/val/test)", as if the data had been lost."""
    from lstmkit.data.speech import SpeechDataModule

    fitted = SpeechDataModule(num_examples=60, seed=1)
    fitted.setup()
    assert fitted.split_sizes().startswith("train ") and " / val " in fitted.split_sizes()
    spec = fitted.spec.to_dict()
    scored = SpeechDataModule(num_examples=60, seed=1, spec=spec)
    scored.setup()
    assert scored.split_sizes() == f"val {len(fitted.splits['val'])} / test {len(fitted.splits['test'])}"
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        whole = SpeechDataModule(num_examples=60, seed=1, spec=spec, whole=True)
        whole.setup()
    assert whole.split_sizes() == "all 60"  # as its metrics are named (all/cer)
    assert "speech data: all 60 utterances" in caplog.text
    fitted_text = SentimentDataModule(num_examples=100)
    fitted_text.setup()
    read = SentimentDataModule(num_examples=100, spec=fitted_text.spec.to_dict())
    read.setup()  # sentiment's eval does split its data: train is said, as it is where examples went
    assert read.split_sizes() == fitted_text.split_sizes() and "train 80" in read.split_sizes()
