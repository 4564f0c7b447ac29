"""Stock forecasting: generator, CSV loaders and their errors, chronological splits, encoder, head, CLI, notebook."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from lstmkit.commands.predict import predict
from lstmkit.data.stock import StockDataModule, generate_ohlcv, read_ohlcv
from lstmkit.encoders.features import FeatureEncoder, fit_feature_normaliser
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.regression import RegressionHead
from lstmkit.module import SequenceModel
from lstmkit.types import Batch, DataSpec

from .conftest import run_here, run_notebook

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "stocks" / "sp500_5yr"
FEATURES = ["open", "high", "low", "close", "volume"]


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def one_ticker(days: int = 80, seed: int = 1) -> pd.DataFrame:
    return generate_ohlcv(1, days, seed=seed).drop(columns="Name")


def tiny_module(path: Path | None = None, **options) -> StockDataModule:
    settings = {"window": 8, "horizon": 1, "num_tickers": 2, "num_days": 120, "batch_size": 16, **options}
    dm = StockDataModule(path=str(path) if path else None, **settings)
    dm.setup()
    return dm


# -- generator ---------------------------------------------------------------------------------
def test_generator_is_deterministic_and_realistic() -> None:
    a, b = generate_ohlcv(3, 150, seed=5), generate_ohlcv(3, 150, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not generate_ohlcv(3, 150, seed=6)["close"].equals(a["close"])
    assert sorted(a["Name"].unique()) == ["SYNA", "SYNB", "SYNC"]
    assert (a["low"] <= a[["open", "close"]].min(axis=1)).all()
    assert (a["high"] >= a[["open", "close"]].max(axis=1)).all()
    assert (a["volume"] > 0).all() and (a[["open", "high", "low", "close"]] > 0).all().all()
    returns = np.log(a[a["Name"] == "SYNA"]["close"]).diff().dropna()
    assert 0.003 < returns.std() < 0.05  # daily volatility of a stock, not of a toy
    # the planted overreaction signal: next-day returns revert (negative lag-1 autocorrelation)
    assert returns.autocorr(1) < -0.1


# -- loaders -------------------------------------------------------------------------------------
def test_yahoo_style_file_with_adj_close_reads_case_insensitively(tmp_path: Path) -> None:
    frame = one_ticker(40)
    frame.columns = ["Date", "Open", "High", "Low", "Close", "Volume"]
    frame.insert(5, "Adj Close", frame["Close"] * 0.98)
    path = write_csv(tmp_path / "ACME.csv", frame)
    (series,) = read_ohlcv(path, [*FEATURES, "adj_close"])
    assert series.ticker == "ACME" and len(series) == 40
    np.testing.assert_allclose(series.values[:, 5], frame["Adj Close"].to_numpy())
    assert str(series.dates[0]) == frame["Date"].iloc[0]


def test_many_tickers_in_one_file_and_one_file_per_ticker_agree(tmp_path: Path) -> None:
    frame = generate_ohlcv(3, 60, seed=2)
    write_csv(tmp_path / "all.csv", frame)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, part in frame.groupby("Name"):
        write_csv(folder / f"{name}.csv", part.drop(columns="Name"))
    together = read_ohlcv(tmp_path / "all.csv", FEATURES)
    apart = read_ohlcv(folder, FEATURES)
    assert [s.ticker for s in together] == [s.ticker for s in apart] == ["SYNA", "SYNB", "SYNC"]
    for x, y in zip(together, apart):
        np.testing.assert_array_equal(x.values, y.values)


def test_unsorted_dates_are_sorted_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = one_ticker(30)
    path = write_csv(tmp_path / "rev.csv", frame.iloc[::-1])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        (series,) = read_ohlcv(path, FEATURES)
    assert "not in date order" in caplog.text
    assert (np.diff(series.dates).astype(int) > 0).all()
    np.testing.assert_allclose(series.values[:, 3], frame["close"].to_numpy())


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        ("close", 5, "abc", "expected a finite number, found 'abc'"),
        ("volume", 7, "nan", "expected a finite number, found 'nan'"),
        ("open", 4, "inf", "expected a finite number, found 'inf'"),
        ("high", 9, "", "expected a finite number, found an empty value"),
        ("low", 3, "-1.5", "expected a positive price, found '-1.5'"),
        ("date", 6, "yesterday", ("expected a date (YYYY-MM-DD, or one format for the whole file such as DD/MM/YYYY; "
                                  "data.date_format sets it), found 'yesterday'")),
    ],
)
def test_bad_values_name_file_row_and_column(tmp_path: Path, column: str, row: int, value: str, message: str) -> None:
    frame = one_ticker(20).astype(str)
    frame.loc[row - 2, column] = value  # row = line number, the header is line 1
    path = write_csv(tmp_path / "bad.csv", frame)
    with pytest.raises(DataError) as err:
        read_ohlcv(path, FEATURES)
    assert str(err.value) == f"{path}, row {row}, field {column!r}: {message}"


def test_high_below_low_is_refused(tmp_path: Path) -> None:
    """Swapped high/low columns (a header written the wrong way round) were read as ranges inside out."""
    frame = one_ticker(20)
    swapped = frame.rename(columns={"high": "low", "low": "high"})
    path = write_csv(tmp_path / "swapped.csv", swapped)
    with pytest.raises(DataError, match=r"swapped\.csv, row 2, field 'high': high '?[\d.]+'? is below low "
                                        r"'?[\d.]+'? \(20 row\(s\) so; are the high and low columns swapped\?\)"):
        read_ohlcv(path, FEATURES)
    frame.loc[3, "high"] = frame.loc[3, "low"]  # a day that did not move is a day
    assert len(read_ohlcv(write_csv(tmp_path / "flat.csv", frame), FEATURES)[0].values) == 20


def test_duplicate_dates_and_missing_columns_are_errors(tmp_path: Path) -> None:
    frame = one_ticker(20)
    frame.loc[6, "date"] = frame.loc[5, "date"]
    path = write_csv(tmp_path / "dup.csv", frame)
    with pytest.raises(DataError, match=r"dup\.csv, row 8, field 'date': duplicate date .* \(also on row 7\)"):
        read_ohlcv(path, FEATURES)
    path = write_csv(tmp_path / "novol.csv", one_ticker(20).drop(columns="volume"))
    with pytest.raises(DataError, match=r"novol\.csv, field 'volume': missing column\(s\) \['volume'\].*"
                                        r"set data\.features=\[open,high,low,close\]"):
        read_ohlcv(path, FEATURES)
    # a close-only export is a setting away; a 'Datum' header gets the names a date column may have
    path = write_csv(tmp_path / "close.csv", one_ticker(20)[["date", "close"]].rename(columns={"date": "Datum"}))
    with pytest.raises(DataError, match=r"missing column\(s\) \['date', 'open', 'high', 'low', 'volume'\].*'Date', "
                                        r"'Datetime' or 'Timestamp' for date") as refused:
        read_ohlcv(path, FEATURES)
    assert "data.features" not in str(refused.value)  # no date column: the features are not the whole story
    assert [len(s) for s in read_ohlcv(write_csv(tmp_path / "c.csv", one_ticker(20)[["date", "close"]]), ["close"])] == [20]
    with pytest.raises(DataError, match="empty file"):
        read_ohlcv(write_csv(tmp_path / "empty.csv", pd.DataFrame()), FEATURES)
    with pytest.raises(DataError, match="file or folder not found"):
        read_ohlcv(tmp_path / "nope.csv", FEATURES)
    # a Latin-1 byte on line 4: the row and offset, not pandas' "position 1"
    text = write_csv(tmp_path / "ok.csv", one_ticker(20)).read_text().splitlines()
    text[3] = text[3].replace(",", ",\xe9", 1)
    (tmp_path / "latin.csv").write_bytes("\n".join(text).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv, row 4: not valid UTF-8 \(byte 0xe9 at offset \d+, 'é' in "
                                        r"Windows-1252 / Latin-1\): a text saved in another encoding") as err:
        read_ohlcv(tmp_path / "latin.csv", FEATURES)
    assert err.value.readable  # a text file of the right kind: predict adds no "a model of another task?"



def test_blank_lines_and_trailing_commas_keep_rows_and_columns(tmp_path: Path) -> None:
    """Rows are the file's lines (blank lines counted); a trailing comma on every row is dropped, not
    read as a shift of every column; a non-empty extra field is an error, never silently lost."""
    lines = one_ticker(30).astype(str).to_csv(index=False).splitlines()
    clean = read_ohlcv(write_csv(tmp_path / "clean.csv", one_ticker(30)), FEATURES)[0]
    spaced = lines[:11] + ["", "   "] + lines[11:]
    (tmp_path / "spaced.csv").write_text("\n".join(spaced) + "\n")
    trailing = [lines[0]] + [line + "," for line in lines[1:]]
    (tmp_path / "trailing.csv").write_text("\n".join(trailing) + "\n")
    for name in ("spaced.csv", "trailing.csv"):
        (series,) = read_ohlcv(tmp_path / name, FEATURES)
        assert np.array_equal(series.values, clean.values) and np.array_equal(series.dates, clean.dates)
    spaced[20] = spaced[20].split(",", 1)[0] + ",abc," + spaced[20].split(",", 2)[2]  # line 21: open
    (tmp_path / "spaced.csv").write_text("\n".join(spaced) + "\n")
    with pytest.raises(DataError, match=r"spaced\.csv, row 21, field 'open': expected a finite number, found 'abc'"):
        read_ohlcv(tmp_path / "spaced.csv", FEATURES)
    trailing[5] += "7"
    (tmp_path / "trailing.csv").write_text("\n".join(trailing) + "\n")
    with pytest.raises(DataError, match=r"trailing\.csv, row 6: 7 fields, but the header has 6"):
        read_ohlcv(tmp_path / "trailing.csv", FEATURES)

def test_too_short_series_names_ticker_rows_and_window(tmp_path: Path) -> None:
    frame = generate_ohlcv(2, 200, seed=3)
    frame = frame[(frame["Name"] == "SYNA") | (frame.index % 200 < 25)]  # SYNB keeps 25 days
    path = write_csv(tmp_path / "short.csv", frame)
    with pytest.raises(DataError, match=r"short\.csv: ticker 'SYNB' is too short: 25 rows .*window of 30 days"):
        tiny_module(path, window=30)



def test_one_ticker_twice_is_refused_in_any_case(tmp_path: Path) -> None:
    """AAPL.csv and aapl in a Name column, or two files of one ticker: one ticker trained as two (its days
    in both), which only the leakage warning hinted at."""
    frame = generate_ohlcv(1, 40, seed=3)
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "SYNA.csv", frame.drop(columns="Name"))
    write_csv(tmp_path / "data" / "more.csv", frame.assign(Name="syna"))
    with pytest.raises(DataError, match=r"more\.csv, field 'ticker': tickers 'SYNA' and 'syna' differ only in case"):
        read_ohlcv(tmp_path / "data", FEATURES)
    write_csv(tmp_path / "data" / "more.csv", frame.assign(Name="SYNA"))
    with pytest.raises(DataError, match=r"ticker 'SYNA' appears in two files \(\S*SYNA\.csv and this one\)"):
        read_ohlcv(tmp_path / "data", FEATURES)

# -- splits and normaliser -------------------------------------------------------------------------
def test_splits_are_chronological_and_the_normaliser_sees_train_days_only(tmp_path: Path) -> None:
    frame = generate_ohlcv(2, 120, seed=4)
    dm = tiny_module(write_csv(tmp_path / "a.csv", frame))
    assert set(dm.splits) == {"train", "val", "test"}
    n_train, val_end = 84, 102  # 70 % / 15 % of 120 days per ticker
    for split, (low, high) in {"train": (0, n_train), "val": (n_train, val_end), "test": (val_end, 120)}.items():
        ds = dm.splits[split]
        targets_at = ds.anchors[:, 1] + 1
        assert targets_at.min() >= low and targets_at.max() < high, split
        assert (ds.anchors[:, 1] - dm.window + 1 >= 0).all()
        if split == "train":
            assert (ds.anchors[:, 1] < n_train).all()  # train inputs never read later days
    assert int(dm.splits["val"].anchors[:, 1].min()) == n_train - 1  # val may read train history
    # the 8-day window of the first val example ends on the last train day, its target is the first val day
    x, y = dm.splits["val"][0]
    np.testing.assert_allclose(x[-1].numpy(), dm.series[0].values[n_train - 1], rtol=1e-6)
    assert float(y[0]) == pytest.approx(dm.series[0].values[n_train, 3], rel=1e-6)

    # wild values in val/test days must not move the fitted statistics
    changed = frame.copy()
    later = changed.groupby("Name").cumcount() >= n_train
    changed.loc[later, ["open", "high", "low", "close"]] *= 50.0
    for kind in ("log_returns", "zscore", "minmax"):
        a = tiny_module(write_csv(tmp_path / "a.csv", frame), normalise=kind).spec.normaliser
        b = tiny_module(write_csv(tmp_path / "b.csv", changed), normalise=kind).spec.normaliser
        assert a == b, kind


def test_date_boundaries_split_by_date(tmp_path: Path) -> None:
    frame = generate_ohlcv(1, 100, seed=1, start="2020-01-01")
    dm = tiny_module(write_csv(tmp_path / "d.csv", frame), val_start="2020-03-02", test_start="2020-04-01")
    dates = dm.series[0].dates
    for split, (low, high) in {"train": ("2020-01-01", "2020-03-02"), "val": ("2020-03-02", "2020-04-01"),
                               "test": ("2020-04-01", "2100-01-01")}.items():
        first_target = dates[dm.splits[split].anchors[:, 1] + 1]
        assert (first_target >= np.datetime64(low)).all() and (first_target < np.datetime64(high)).all()


def test_fixed_spec_reuses_the_stored_settings() -> None:
    trained = tiny_module(window=10, horizon=2)
    again = StockDataModule(num_tickers=2, num_days=120, window=99, spec=trained.spec.to_dict())
    again.setup()
    assert again.window == 10 and again.horizon == 2
    assert again.spec.normaliser == trained.spec.normaliser
    assert len(again.splits["test"]) == len(trained.splits["test"])


@pytest.mark.skipif(not REAL.exists(), reason=f"real data not found at {REAL} (clone beside shared/)")
def test_real_sp500_files_load_and_split_by_date() -> None:
    series = read_ohlcv(REAL, FEATURES)
    assert len(series) == 20 and {len(s) for s in series} == {1259}
    assert "AAPL" in {s.ticker for s in series}
    dm = tiny_module(REAL, window=30, val_start="2017-01-01", test_start="2017-09-01", tickers=["AAPL", "KO"])
    assert dm.spec.extra["tickers"] == ["AAPL", "KO"]
    test_days = sum(int((s.dates >= np.datetime64("2017-09-01")).sum()) for s in dm.series)
    assert len(dm.splits["test"]) == test_days == 2 * 109  # trading days 2017-09-01 .. 2018-02-07
    normaliser = dm.spec.normaliser
    assert normaliser["kind"] == "log_returns" and 0.005 < normaliser["target"]["scale"][0] < 0.03


# -- encoder and head ---------------------------------------------------------------------------------
def test_feature_encoder_shapes_for_every_normaliser() -> None:
    x = torch.rand(3, 12, 5) + 1.0
    lengths = torch.full((3,), 12)
    for kind, steps in (("log_returns", 11), ("zscore", 12), ("minmax", 12)):
        stats = fit_feature_normaliser(kind, [x[0], x[1]], base=[3, 3, 3, 3, 4], offset=[0, 0, 0, 0, 1])
        spec = DataSpec(input_kind="features", num_features=5, normaliser=stats)
        out, out_lengths = FeatureEncoder(spec)(x, lengths)
        assert out.shape == (3, steps, 5) and out_lengths.tolist() == [steps] * 3
        projected, _ = FeatureEncoder(spec, project=7, dropout=0.1)(x, lengths)
        assert projected.shape == (3, steps, 7)
    # a plain {"mean", "std"} normaliser (other float-feature tasks) is a z-score
    spec = DataSpec(input_kind="features", num_features=5, normaliser={"mean": [1.0] * 5, "std": [2.0] * 5})
    out, _ = FeatureEncoder(spec)(torch.full((1, 4, 5), 3.0), torch.tensor([4]))
    torch.testing.assert_close(out, torch.ones(1, 4, 5))
    out, _ = FeatureEncoder(DataSpec(input_kind="features", num_features=5))(x, lengths)
    torch.testing.assert_close(out, x)


def test_head_losses_score_the_normalised_target_and_mae_fits_the_median() -> None:
    """Each ``head.loss`` is its torch definition on the normalised target; ``mae`` (what MASE scores)
    pulls a constant forecast to the targets' median, ``mse`` to their mean (a skewed batch tells them apart)."""
    dm = tiny_module(normalise="log_returns", horizon=1)
    batch = next(iter(dm.val_dataloader()))
    target = RegressionHead(dm.spec, in_features=4).normalise(batch.targets, RegressionHead(
        dm.spec, in_features=4).last_values(batch.inputs, batch.lengths))
    target = target + torch.where(target > target.median(), 5.0, 0.0)  # skew: mean far above median
    heads = {name: RegressionHead(dm.spec, in_features=4, loss=name) for name in ("mse", "huber", "mae")}
    last = heads["mse"].last_values(batch.inputs, batch.lengths)
    skewed = Batch(inputs=batch.inputs, lengths=batch.lengths, targets=heads["mse"].denormalise(target, last).float())
    zeros = torch.zeros_like(target)
    expected = {"mse": F.mse_loss(zeros, target), "huber": F.huber_loss(zeros, target), "mae": F.l1_loss(zeros, target)}
    for name, head in heads.items():
        torch.testing.assert_close(head.loss(zeros, batch.lengths, skewed), expected[name], rtol=1e-3, atol=1e-4)
    fitted = {}
    for name in ("mse", "mae"):
        value = torch.zeros(1, requires_grad=True)
        optimiser = torch.optim.Adam([value], lr=0.05)
        for _ in range(600):
            optimiser.zero_grad()
            heads[name].loss(value.expand_as(target), batch.lengths, skewed).backward()
            optimiser.step()
        fitted[name] = float(value.detach())
    assert fitted["mae"] == pytest.approx(float(target.median()), abs=0.3)
    assert fitted["mse"] == pytest.approx(float(target.mean()), abs=0.1)
    with pytest.raises(ConfigError, match="head.loss='l2'"):
        RegressionHead(dm.spec, in_features=4, loss="l2")


@pytest.mark.parametrize("kind", ["log_returns", "zscore", "minmax"])
def test_head_round_trip_loss_and_persistence_metrics(kind: str) -> None:
    dm = tiny_module(normalise=kind, horizon=3)
    head = RegressionHead(dm.spec, in_features=4, loss="huber")
    batch = next(iter(dm.val_dataloader()))
    last = head.last_values(batch.inputs, batch.lengths)
    normalised = head.normalise(batch.targets, last)
    torch.testing.assert_close(head.denormalise(normalised, last).float(), batch.targets, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(head.loss(normalised, batch.lengths, batch)) and head.loss(normalised, None, batch) < 1e-8

    def scores(levels: torch.Tensor) -> dict[str, float]:
        metrics = head.metrics()
        head.update_metrics(metrics, head.normalise(levels, last), batch.lengths, batch)
        return {k: float(v) for k, v in metrics.compute().items()}

    naive = scores(last[:, None].expand_as(batch.targets).float())
    assert naive["mase"] == pytest.approx(1.0) and naive["mae"] == pytest.approx(naive["naive_mae"], rel=1e-5)
    perfect = scores(batch.targets)
    assert perfect["mase"] < 1e-4 and perfect["naive_mae"] == pytest.approx(naive["naive_mae"])
    # the per-window terms a Diebold-Mariano test sums are MASE's own: mean(d) * H = (model - naive error) / n
    guess = batch.targets * (1 + 0.01 * torch.randn_like(batch.targets))
    differential = head.loss_differential(head.normalise(guess, last), batch)
    relative = lambda levels: float(((levels - batch.targets).abs() / last[:, None].abs()).double().sum())
    assert differential.shape == (len(batch),) and differential.dtype == torch.float64
    assert float(differential.sum()) * head.horizon == pytest.approx(
        relative(guess) - relative(last[:, None].expand_as(guess)), rel=1e-4)
    assert scores(guess)["mase"] == pytest.approx(1 + float(differential.sum()) * head.horizon / relative(
        last[:, None].expand_as(guess)), rel=1e-4)
    expected_mape = float(((last[:, None] - batch.targets).abs() / batch.targets).mean())
    assert naive["naive_mape"] == pytest.approx(expected_mape, rel=1e-4)
    # persistence with drift (log-returns only): the forecast of a zero output, each step the mean return more
    assert ("drift_mase" in naive) == (kind == "log_returns")
    if kind == "log_returns":
        grown = last[:, None] * torch.exp(head.shift.double())
        torch.testing.assert_close(head.drift(last), grown)
        drift = scores(grown.float())
        assert drift["mase"] == pytest.approx(drift["drift_mase"], rel=1e-5)
        assert naive["drift_mase"] == pytest.approx(drift["mase"], rel=1e-5)
        assert drift["drift_mase"] != pytest.approx(1.0)  # a drift was learnt from the train days


def test_a_zero_initialised_head_starts_at_persistence_with_drift_and_still_learns() -> None:
    """``head.zero_init=true``: before training the forecast is the drift forecast exactly (whatever the
    window), and one optimiser step moves the output layer, so training is not stuck at zero."""
    dm = tiny_module(horizon=2)
    batch = next(iter(dm.train_dataloader()))
    head = RegressionHead(dm.spec, in_features=4, zero_init=True)
    features = torch.randn(len(batch), 4)
    last = head.last_values(batch.inputs, batch.lengths)
    torch.testing.assert_close(head.denormalise(head(features, batch.lengths), last), head.drift(last))
    assert not torch.equal(RegressionHead(dm.spec, in_features=4).net[-1].weight, head.net[-1].weight)  # default init
    optimiser = torch.optim.SGD(head.parameters(), lr=0.1)
    head.loss(head(features, batch.lengths), batch.lengths, batch).backward()
    optimiser.step()
    assert head.net[-1].weight.abs().sum() > 0


def test_mase_is_scale_free_across_tickers() -> None:
    """Pooled in dollars, a $1,000 ticker's errors outweighed a $10 one's: its own MASE 1.2 and the
    other's 0.1 gave 1.19 overall. Relative to each window's last value, both count alike."""
    from lstmkit.heads.regression import MeanAbsoluteScaledError

    mase = MeanAbsoluteScaledError()
    # (forecast, persistence = the last value, actual, the last value)
    mase.update(torch.tensor([[1012.0]]), torch.tensor([[990.0]]), torch.tensor([[1000.0]]), torch.tensor([990.0]))
    mase.update(torch.tensor([[10.01]]), torch.tensor([[9.9]]), torch.tensor([[10.0]]), torch.tensor([9.9]))
    assert float(mase.compute()) == pytest.approx((12 / 990 + 0.01 / 9.9) / (10 / 990 + 0.1 / 9.9), rel=1e-4)
    assert 0.6 < float(mase.compute()) < 0.7  # between the two tickers' own 1.2 and 0.1 (1.19 pooled in dollars)
    # one series at one level: the usual ratio of the two mean absolute errors
    one = MeanAbsoluteScaledError()
    one.update(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]), torch.tensor([[1.5, 2.5]]), torch.tensor([2.0]))
    assert float(one.compute()) == pytest.approx((0.5 + 0.5) / (0.5 + 0.5))


def test_forecast_figure_quotes_the_logged_mase(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plot's title gave the ratio of the pooled next-step MAEs, labelled MASE, which is not the
    logged test/mase (a review: 0.238 in the title against 0.867 logged for a $1,000 and a $10
    ticker). It now quotes the metric as computed for logging."""
    from lstmkit.heads import regression

    spec = DataSpec(input_kind="features", num_features=1,
                    normaliser={"target": {"feature": 0, "shift": [0.0], "scale": [1.0], "name": "close"}})
    head = RegressionHead(spec, in_features=4)
    metrics = head.figure_metrics()
    forecast, naive, actual = [[1012.0], [996.0], [10.01], [9.8]], [[990.0], [1000.0], [9.9], [10.0]], \
        [[1000.0], [1001.0], [10.0], [9.9]]
    for name, values in (("forecast", forecast), ("naive", naive), ("actual", actual)):
        metrics[name].update(torch.tensor(values))
    logged = regression.MeanAbsoluteScaledError()
    logged.update(torch.tensor(forecast), torch.tensor(naive), torch.tensor(actual), torch.tensor(naive)[:, 0])
    titles = []
    original = regression.forecast_figure
    monkeypatch.setattr(regression, "forecast_figure",
                        lambda *a: titles.append(original(*a).axes[0].get_title()) or "fig")
    assert head.figures(metrics) == {"forecast": "fig"}
    assert f"MASE {float(logged.compute()):.3f}" in titles[0]
    pooled = (12 + 5 + 0.01 + 0.1) / (10 + 1 + 0.1 + 0.1)
    assert f"{pooled:.3f}" not in titles[0]


def test_forecasts_of_a_penny_stock_keep_their_digits() -> None:
    from lstmkit.heads.regression import _rounded

    assert _rounded(0.00001234567) == pytest.approx(0.0000123457) and _rounded(170.131249) == 170.1312
    assert _rounded(-0.5) == -0.5


def test_model_decodes_prices_from_raw_windows() -> None:
    dm = tiny_module(horizon=2)
    model = SequenceModel(spec=dm.spec.to_dict(), encoder={"_target_": "lstmkit.encoders.features.FeatureEncoder"},
                          core={"hidden_size": 8}, head={"_target_": "lstmkit.heads.regression.RegressionHead"}).eval()
    batch = next(iter(dm.test_dataloader()))
    rows = model.predict_step(batch, 0)
    assert len(rows) == len(batch)
    assert rows[0]["last_close"] == pytest.approx(float(batch.inputs[0, -1, 3]), rel=1e-5)
    assert list(rows[0]["forecast"]) == ["close_t+1", "close_t+2"]
    # an untrained model stays near the last close: forecasts are prices, not normalised values
    assert all(abs(r["forecast"]["close_t+1"] / r["last_close"] - 1) < 0.2 for r in rows)
    outputs, lengths = model(batch.inputs, batch.lengths)
    explicit = model.head.decode(outputs, lengths, Batch(batch.inputs, batch.lengths))
    assert explicit == rows


def test_predict_batch_takes_the_last_window_of_every_ticker(tmp_path: Path) -> None:
    dm = tiny_module()
    path = write_csv(tmp_path / "two.csv", generate_ohlcv(2, 30, seed=8))
    inputs: list = [str(path)]
    batch = StockDataModule.make_predict_batch(dm.spec, inputs)
    assert batch.inputs.shape == (2, 8, 5)
    assert [i["ticker"] for i in inputs] == ["SYNA", "SYNB"] and inputs[0]["last_date"] == "2016-02-12"
    with pytest.raises(DataError, match=r"ticker 'short' has 5 rows; the model reads windows of 8 days"):
        StockDataModule.make_predict_batch(dm.spec, [str(write_csv(tmp_path / "short.csv", one_ticker(5)))])


# -- end to end ------------------------------------------------------------------------------------------
def test_cli_train_plots_then_predict(tmp_path: Path) -> None:
    tiny = ["task=stock", "data.num_days=160", "data.window=10", "data.horizon=2", "model.hidden_size=8",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    run = run_here("train", *tiny, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (ckpt,) = (tmp_path / "logs" / "stock" / "runs").glob("*/checkpoints/last.ckpt")
    run_dir = ckpt.parents[1]
    assert (run_dir / "plots" / "forecast.png").stat().st_size > 10_000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/mae", "test/naive_mae", "test/mase", "test/rmse", "test/mape"} <= set(metrics)
    assert 0 < metrics["test/mase"] < 10  # scale free, so not exactly mae / naive_mae over several tickers

    write_csv(tmp_path / "AAPL.csv", one_ticker(40).rename(columns=str.capitalize))
    run = run_here("predict", f"ckpt_path={ckpt}", "input=AAPL.csv", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert row["input"] == {"file": "AAPL.csv", "ticker": "AAPL", "last_date": "2016-02-26"}
    assert row["last_close"] == pytest.approx(one_ticker(40)["close"].iloc[-1])
    assert set(row["forecast"]) == {"close_t+1", "close_t+2"} and all(v > 0 for v in row["forecast"].values())
    config = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(tmp_path / "missing.csv"), "batch_size": 8})
    with pytest.raises(DataError, match="missing.csv: file or folder not found"):
        predict(config)


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_notebook("stock", tmp_path, monkeypatch)
    assert list(tmp_path.glob("logs/stock/runs/*/plots/forecast.png"))


def test_split_dates_outside_the_data_name_the_dates() -> None:
    from lstmkit.data.stock import StockDataModule

    module = StockDataModule(num_tickers=1, num_days=300, val_start="2099-01-01", test_start="2099-06-01")
    with pytest.raises(DataError, match=r"data\.val_start=2099-01-01 / data\.test_start=2099-06-01 leave 300 train / "
                                        r"0 val / 0 test rows of its dates \d{4}-\d\d-\d\d to "):
        module.setup("fit")


def test_day_first_dates_are_read_with_one_format_per_file(tmp_path: Path) -> None:
    """A parser guessing row by row read 29/11/2016 day-first but 05/10/2017 month-first: a scrambled series."""
    import pandas as pd

    from lstmkit.data.stock import StockDataModule, generate_ohlcv
    from lstmkit.errors import DataError

    frame = generate_ohlcv(1, 120, seed=3).drop(columns="Name")
    iso = frame["date"].copy()
    frame["date"] = pd.to_datetime(iso).dt.strftime("%d/%m/%Y")
    frame.to_csv(tmp_path / "acme.csv", index=False)
    dm = StockDataModule(path=str(tmp_path / "acme.csv"), window=8)
    dm.setup()
    assert [str(d) for d in dm.series[0].dates] == list(pd.to_datetime(iso).dt.strftime("%Y-%m-%d"))
    early = frame[pd.to_datetime(iso).dt.day <= 12]  # month-first reads every row too: refused, then told
    early.to_csv(tmp_path / "early.csv", index=False)
    with pytest.raises(DataError, match=r"early\.csv, row 2, field 'date': .*set data\.date_format"):
        StockDataModule(path=str(tmp_path / "early.csv"), window=8).setup()
    told = StockDataModule(path=str(tmp_path / "early.csv"), window=8, date_format="%d/%m/%Y")
    told.setup()
    assert [str(d) for d in told.series[0].dates] == list(pd.to_datetime(iso[early.index]).dt.strftime("%Y-%m-%d"))
    assert told.spec.extra["date_format"] == "%d/%m/%Y"  # predict reads new files with it
    with pytest.raises(DataError, match=r"row 2, field 'date': expected a date in data\.date_format='%Y-%m-%d', found '\d\d/"):
        StockDataModule(path=str(tmp_path / "early.csv"), window=8, date_format="%Y-%m-%d").setup()
    # ISO, then day-first after an edit: the row where the format changes is named, not row 2 (a valid ISO date,
    # when the day-first part is the longer)
    mixed = frame.copy()
    mixed["date"] = [d if i < 40 else pd.Timestamp(d).strftime("%d/%m/%Y") for i, d in enumerate(iso)]
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(DataError, match=r"mixed\.csv, row 42, field 'date': the dates are written in two formats: "
                                        r"'%Y-%m-%d' from row 2 \('\d{4}-\d\d-\d\d'\), then '%d/%m/%Y' from here"):
        StockDataModule(path=str(tmp_path / "mixed.csv"), window=8).setup()


# -- decimal commas, UTC offsets, compressed files ---------------------------------------------------------
def european(price: float) -> str:
    """67.7142 -> '67,7142', 101.0 -> '101,0' (as a spreadsheet in a European locale shows them)."""
    digits = f"{price:.4f}".rstrip("0")
    return (digits + "0" if digits.endswith(".") else digits).replace(".", ",")


def european_csv(frame: pd.DataFrame) -> str:
    """A spreadsheet export in a European locale: quoted fields, decimal commas, '.' between thousands."""
    rows = ['"Date","Open","High","Low","Close","Volume"']
    for r in frame.itertuples():
        prices = [european(v) for v in (r.open, r.high, r.low, r.close)]
        volume = f"{int(r.volume):,}".replace(",", ".")
        rows.append(",".join(f'"{v}"' for v in (r.date, *prices, volume)))
    return "\n".join(rows) + "\n"


def test_decimal_commas_are_refused_by_default_and_read_with_data_decimal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """67,7142 was read as 677142 and 101,0 as 1010 (every comma stripped as a thousands separator)."""
    frame = one_ticker(40)
    frame.loc[0, "open"] = 101.0  # "101,0" was read as 1010 and "67,7142" as 677142: the scale changed by row
    path = tmp_path / "eu.csv"
    path.write_text(european_csv(frame))
    with pytest.raises(DataError) as err:
        read_ohlcv(path, FEATURES)
    assert str(err.value) == (f"{path}, row 2, field 'Open': expected a number with '.' as the decimal point and ',' "
                              "only between groups of three digits (1,234.56), found '101,0' (is ',' the decimal "
                              """point? then set 'data.decimal=","')""")
    (series,) = read_ohlcv(path, FEATURES, decimal=",")
    np.testing.assert_allclose(series.values, frame[FEATURES].to_numpy(), rtol=1e-12)
    assert series.values[0, 0] == 101.0 and series.values[0, 4] == frame["volume"].iloc[0] > 1e5
    # the same locale's other habit: ';' between fields (found from the header), decimal commas unquoted
    semicolons = tmp_path / "eu_semicolon.csv"
    semicolons.write_text(european_csv(frame).replace('","', ";").replace('"', ""))
    (series,) = read_ohlcv(semicolons, FEATURES, decimal=",")
    np.testing.assert_allclose(series.values, frame[FEATURES].to_numpy(), rtol=1e-12)
    # a tab-separated export named .csv was one column ("missing columns")
    tabs = tmp_path / "tabs.csv"
    frame.to_csv(tabs, sep="\t", index=False)
    (series,) = read_ohlcv(tabs, FEATURES)
    np.testing.assert_allclose(series.values, frame[FEATURES].to_numpy(), rtol=1e-12)
    # three decimals everywhere ("67,714"): in a ';' file that is a decimal comma, not 67714 with a warning
    three = frame.assign(**{c: frame[c].round(3).clip(lower=10.0, upper=999.0) for c in ("open", "high", "low", "close")})
    rows = ["Date;Open;High;Low;Close;Volume"] + [
        ";".join([r.date, *(f"{getattr(r, c):.3f}".replace(".", ",") for c in ("open", "high", "low", "close")),
                  str(int(r.volume))]) for r in three.itertuples()]
    (tmp_path / "eu3.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"eu3\.csv, row 2, field 'Open': '[\d,]+' could be \d+ .* or [\d.]+ \(a decimal "
                                        r"comma\), and this ';'-separated file"):
        read_ohlcv(tmp_path / "eu3.csv", FEATURES)
    (series,) = read_ohlcv(tmp_path / "eu3.csv", FEATURES, decimal=",")
    np.testing.assert_allclose(series.values[:, :4], three[FEATURES[:4]].to_numpy(), rtol=1e-9)
    with pytest.raises(DataError, match=r"us\.csv, row 2, field 'open': expected a number with ',' as the "
                                        r"decimal point .*found '.*\..*' \(is '\.' the decimal point\? then set "
                                        r"data\.decimal=\.\)"):
        read_ohlcv(write_csv(tmp_path / "us.csv", frame), FEATURES, decimal=",")
    # commas between thousands (and '.' decimals) still read as before; "1.234,56" is refused, not 1.23456
    us = frame.astype(str)
    us.loc[3, "close"], us.loc[4, "volume"] = "1,234.5", "6,784,877"
    (series,) = read_ohlcv(write_csv(tmp_path / "us.csv", us), FEATURES)
    assert series.values[3, 3] == 1234.5 and series.values[4, 4] == 6784877
    us.loc[3, "close"] = "1.234,56"
    with pytest.raises(DataError, match=r"us\.csv, row 5, field 'close': .*found '1\.234,56' \(is ','"):
        read_ohlcv(write_csv(tmp_path / "us.csv", us), FEATURES)
    # "1,234" reads both ways: a price column without any decimal point is read as thousands, with a warning
    whole = frame.astype(str)
    whole["close"] = [f"{1000 + i:,}" for i in range(len(whole))]
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        (series,) = read_ohlcv(write_csv(tmp_path / "yen.csv", whole), FEATURES)
    assert series.values[0, 3] == 1000.0
    assert """row 2, field 'close': '1,000' is read as 1000 (',' as a thousands separator)""" in caplog.text
    # ... but not when that makes one row ~1000x its neighbours: "47.000" among decimal commas, "100,410" among
    # '.' decimals (tester-2: read as 47000 with a warning, or silently)
    mixed = frame.astype(str)
    for c in ("open", "high", "low", "close"):
        mixed[c] = [f"{v:.1f}".replace(".", ",") for v in frame[c]]
    mixed.loc[5, "close"] = f"{int(frame['close'].iloc[5])}.000"
    with pytest.raises(DataError, match=rf"mixed\.csv, row 7, field 'close': '{int(frame['close'].iloc[5])}\.000' is read "
                                        r"as \d+ \('\.' between thousands, the decimal point being ','\), \d+ times the "
                                        r"price of the row beside it"):
        read_ohlcv(write_csv(tmp_path / "mixed.csv", mixed), FEATURES, decimal=",")
    quoted = frame.astype(str)
    quoted.loc[5, "close"] = "100,410"
    quoted.loc[4, "close"] = "100.3"
    with pytest.raises(DataError, match=r"quoted\.csv, row 7, field 'close': '100,410' is read as 100410"):
        read_ohlcv(write_csv(tmp_path / "quoted.csv", quoted), FEATURES)
    with pytest.raises(ConfigError, match=r"""data\.decimal=';': expected '\.' \(1,234\.56\) or ','"""):
        StockDataModule(path=str(path), decimal=";").setup()


def test_a_model_trained_with_decimal_commas_reads_its_predict_files_with_them(tmp_path: Path) -> None:
    frame = one_ticker(80)
    path = tmp_path / "eu.csv"
    path.write_text(european_csv(frame))
    dm = tiny_module(path, decimal=",")
    assert dm.spec.extra["decimal"] == ","  # stored in the checkpoint's spec
    inputs: list = [str(path)]
    batch = StockDataModule.make_predict_batch(dm.spec, inputs)
    np.testing.assert_allclose(batch.inputs[0].numpy(), frame[FEATURES].to_numpy()[-8:], rtol=1e-6)
    old = DataSpec.from_dict({**dm.spec.to_dict(), "extra": {**dm.spec.extra, "decimal": None}})
    old.extra.pop("decimal")  # a checkpoint from before data.decimal: '.' as before
    with pytest.raises(DataError) as err:
        StockDataModule.make_predict_batch(old, [str(path)])
    assert str(err.value).startswith(f"{path}, row 2, field 'Open': expected a number with '.' as the decimal point")
    assert str(err.value).endswith("""then set 'data.decimal=","')""")
    # and `lstmkit predict ... 'data.decimal=","'` does what the error says (the model's own settings stay)
    from lstmkit.commands.predict import reading_spec

    told = reading_spec(old, StockDataModule, {"decimal": ",", "date_format": None})
    assert told.extra["decimal"] == "," and "decimal" not in old.extra and told.extra["window"] == old.extra["window"]
    batch = StockDataModule.make_predict_batch(told, [str(path)])
    np.testing.assert_allclose(batch.inputs[0].numpy(), frame[FEATURES].to_numpy()[-8:], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"data\.window=3: this checkpoint's data \(StockDataModule\) reads its "
                                          r"input files with data\.date_format, data\.decimal"):
        reading_spec(old, StockDataModule, {"window": 3})


def test_utc_offsets_keep_the_date_written_in_the_file(tmp_path: Path) -> None:
    """yfinance writes 2016-01-04 00:00:00-05:00 (-04:00 in summer): mixed offsets were a pandas error
    without file or row, and +09:00 (Tokyo) days were moved back one day by a conversion to UTC."""
    frame = one_ticker(70)  # 2016-01-04 .. 2016-04-08: daylight-saving time starts on 2016-03-13
    days = pd.to_datetime(frame["date"])
    new_york = frame.assign(date=[f"{d:%Y-%m-%d} 00:00:00{'-04:00' if d >= pd.Timestamp('2016-03-14') else '-05:00'}"
                                  for d in days])
    tokyo = frame.assign(date=[f"{d:%Y-%m-%d} 00:00:00+09:00" for d in days])
    utc = frame.assign(date=[f"{d:%Y-%m-%d}T00:00:00Z" for d in days])
    assert new_york["date"].str.endswith("-04:00").any() and new_york["date"].str.endswith("-05:00").any()
    expected = days.to_numpy().astype("datetime64[D]")
    for name, table in (("ny.csv", new_york), ("tokyo.csv", tokyo), ("utc.csv", utc)):
        (series,) = read_ohlcv(write_csv(tmp_path / name, table), FEATURES)
        np.testing.assert_array_equal(series.dates, expected, err_msg=name)
        (series,) = read_ohlcv(tmp_path / name, FEATURES, date_format="%Y-%m-%d %H:%M:%S%z" if name != "utc.csv"
                               else "%Y-%m-%dT%H:%M:%S%z")
        np.testing.assert_array_equal(series.dates, expected, err_msg=name)
    inputs: list = [str(tmp_path / "ny.csv")]
    StockDataModule.make_predict_batch(tiny_module().spec, inputs)  # lstmkit predict input=ny.csv
    assert inputs[0]["last_date"] == frame["date"].iloc[-1]
    bad = tokyo.copy()
    bad.loc[9, "date"] = "2016-01-18 00:00:00+09:00 Tokyo"
    with pytest.raises(DataError, match=r"tokyo\.csv, row 11, field 'date': expected a date .*found '2016-01-18 "):
        read_ohlcv(write_csv(tmp_path / "tokyo.csv", bad), FEATURES)


def test_folders_read_compressed_csvs_and_name_the_files_they_skip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of AAA.csv BBB.csv CCC.csv.gz DDD.txt trained on two tickers without a word."""
    folder = tmp_path / "prices"
    (folder / "notes").mkdir(parents=True)
    frames = {name: one_ticker(30, seed=k) for k, name in enumerate(["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"])}
    for name, suffix in zip(frames, [".csv", ".csv.gz", ".CSV.BZ2", ".csv.zip", ".csv.xz", ".txt"]):
        write_csv(folder / f"{name}{suffix}", frames[name])  # pandas compresses by the extension
    (folder / ".~lock.AAA.csv#").write_text("not data")  # hidden: skipped silently
    (folder / "._AAA.csv").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        series = read_ohlcv(folder, FEATURES)
    assert [s.ticker for s in series] == ["AAA", "BBB", "CCC", "DDD", "EEE"]
    for s in series:
        np.testing.assert_allclose(s.values, frames[s.ticker][FEATURES].to_numpy())
    assert "prices: 2 entries not read (only *.csv, *.csv.gz, *.csv.bz2, *.csv.xz, *.csv.zip are): FFF.txt, notes/" \
        in caplog.text
    assert "lock" not in caplog.text and "._AAA" not in caplog.text
    (alone,) = read_ohlcv(folder / "BBB.csv.gz", FEATURES)
    assert alone.ticker == "BBB"
    # errors inside a compressed file name its lines, as in a plain one
    lines = frames["BBB"].astype(str).to_csv(index=False).splitlines()
    lines = [lines[0]] + [line + "," for line in lines[1:]]  # a trailing comma on every row, one field not empty
    lines[5] += "7"
    (folder / "BBB.csv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(DataError, match=r"BBB\.csv\.gz, row 6: 7 fields, but the header has 6"):
        read_ohlcv(folder, FEATURES)
    (folder / "BBB.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"BBB\.csv\.gz: cannot read the file \(BadGzipFile: "):
        read_ohlcv(folder, FEATURES)
    with pytest.raises(DataError, match=r"notes: folder has no CSV files \(\*\.csv, .*per ticker\)$"):
        read_ohlcv(folder / "notes", FEATURES)
    (folder / "notes" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"notes: folder has no CSV files \(\*\.csv, .*\); it holds readme\.md$"):
        read_ohlcv(folder / "notes", FEATURES)


def test_reviewed_reading_and_splitting_edges(tmp_path: Path, caplog) -> None:
    """A blank first line, a single train window (a NaN target scale: NaN losses), a constant close
    and tickers of different periods split by fractions (one's test days inside another's train)."""
    frame = one_ticker(60)
    path = tmp_path / "blank_first.csv"
    path.write_text("\n  \n" + frame.to_csv(index=False))
    dm = tiny_module(path)
    assert sum(len(s) for s in dm.series) == 60
    with pytest.raises(DataError, match=r"blank_first\.csv, row 12\b"):  # rows stay the file's lines
        bad = frame.astype({"close": str})
        bad.loc[8, "close"] = "abc"
        path.write_text("\n  \n" + bad.to_csv(index=False))
        tiny_module(path)
    # 19 rows: 13 train rows = one window of 8 + 1 (+4 of targets beyond): refused, not a NaN scale
    with pytest.raises(DataError, match=r"too short: 19 rows.*needs at least 10 train rows \(two windows\)"):
        tiny_module(write_csv(tmp_path / "one_window.csv", one_ticker(19)), train_fraction=0.5, val_fraction=0.25)
    flat = one_ticker(60)
    flat[["open", "high", "low", "close"]] = 10.0
    with pytest.raises(DataError, match=r"flat\.csv: data\.target='close' does not vary over the train days"):
        tiny_module(write_csv(tmp_path / "flat.csv", flat), normalise="zscore")
    early, late = one_ticker(200, seed=1), one_ticker(200, seed=2)
    early["Name"], late["Name"] = "AAA", "BBB"
    late["date"] = pd.date_range("2017-01-02", periods=200, freq="B").strftime("%Y-%m-%d")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        tiny_module(write_csv(tmp_path / "periods.csv", pd.concat([early, late])))
    assert re.search(r"ticker 'AAA''s test days start 2016-\d\d-\d\d, before ticker 'BBB''s train days end 2017",
                     caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lstmkit"):  # the same dates for both: nothing to say
        tiny_module()
    assert "train days end" not in caplog.text


def test_a_quote_never_closed_is_named_at_its_row(tmp_path: Path) -> None:
    """pandas said 'EOF inside string starting at row 3' (counted from 0, under the header): the file's
    row 5, and the predict error added that the checkpoint might be of another task."""
    rows = ["Date,Open,High,Low,Close,Volume"] + [f"2020-01-{d:02d},10,11,9,10.5,1000" for d in range(1, 9)]
    rows[4] = '2020-01-04,"10,11,9,10.5,1000'
    path = tmp_path / "open.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"open\.csv, row 5: a quote opened on this row is never closed") as err:
        read_ohlcv(path, FEATURES)
    assert err.value.readable  # a CSV of the right kind, with one bad row: not "a model of another task?"


def test_french_and_swiss_thousands_and_an_excel_sep_line_are_read(tmp_path: Path) -> None:
    """'1 234,56' (a no-break space between thousands, as French spreadsheets write) was "expected a number",
    and Excel's first line 'sep=;' was read as the header: every column "missing" (tester-2)."""
    frame = one_ticker(30)
    frame["volume"] = frame["volume"].round() + 1_000_000
    rows = ["sep=;", "Date;Open;High;Low;Close;Volume"] + [
        ";".join([r.date, *(f"{getattr(r, c):.2f}".replace(".", ",") for c in ("open", "high", "low", "close")),
                  f"{int(r.volume):,}".replace(",", "\u00a0")]) for r in frame.itertuples()]
    path = tmp_path / "fr.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (series,) = read_ohlcv(path, FEATURES, decimal=",")
    np.testing.assert_allclose(series.values, frame[FEATURES].round({"open": 2, "high": 2, "low": 2, "close": 2})
                               .to_numpy(), rtol=1e-9)
    swiss = frame.astype(str)
    swiss.loc[2, "volume"] = f"{int(frame['volume'].iloc[2]):,}".replace(",", "'")
    (series,) = read_ohlcv(write_csv(tmp_path / "ch.csv", swiss), FEATURES)
    assert series.values[2, 4] == frame["volume"].iloc[2]
    # a bad row below the 'sep=' line keeps its line number in the file
    cells = rows[5].split(";")
    rows[5] = ";".join([*cells[:4], "abc", *cells[5:]])
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"fr\.csv, row 6, field 'Close': expected a finite number, found 'abc'"):
        read_ohlcv(path, FEATURES, decimal=",")


def test_thousands_are_checked_against_the_same_tickers_rows(tmp_path: Path) -> None:
    """In a file of many tickers AMZN's "2,501" follows F's 12.1: compared with the row beside it, it was
    refused as 207 times its price (reviewer). A space-grouped value is never ambiguous, and an error
    quotes the file's own value."""
    rows = ["Date,Ticker,Open,High,Low,Close,Volume"]
    rows += [f"2020-01-{d:02d},F,12.1,12.2,12.0,12.1,1000" for d in range(1, 21)]
    rows += [f'2020-01-{d:02d},AMZN,"2,501","2,510","2,490","2,501",1000' for d in range(1, 21)]
    (tmp_path / "long.csv").write_text("\n".join(rows) + "\n")
    amzn, f = sorted(read_ohlcv(tmp_path / "long.csv", FEATURES), key=lambda s: s.ticker)
    assert amzn.values[0, 3] == 2501.0 and f.values[0, 3] == 12.1
    # integer prices grouped by a space, in a ';' file: 1251, not "could be 1.251 (a decimal comma)"
    rows = ["Date;Open;High;Low;Close;Volume"] + [f"2020-01-{d:02d};1 251;1 260;1 240;1 251;1000" for d in range(1, 21)]
    (tmp_path / "spaced.csv").write_text("\n".join(rows) + "\n")
    (series,) = read_ohlcv(tmp_path / "spaced.csv", FEATURES)
    assert series.values[0, 3] == 1251.0
    rows[3] = "2020-01-03;1 251;1 260;1 240;1 25x;1000"
    (tmp_path / "spaced.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"row 4, field 'Close': expected a number .*found '1 25x'"):
        read_ohlcv(tmp_path / "spaced.csv", FEATURES)


def test_yfinance_download_csv_with_three_header_rows_is_read(tmp_path: Path) -> None:
    """yf.download(...).to_csv() writes 'Price,...' / 'Ticker,...' / 'Date,,,' above the rows: it was "missing
    column(s) ['date']" (tester-2). Read as a long table, a ticker's rows before its listing left out."""
    a, b = one_ticker(30, seed=1), one_ticker(30, seed=2)
    prices = ("close", "high", "low", "open", "volume")
    rows = ["Price," + ",".join(f"{p.capitalize()},{p.capitalize()}" for p in prices),
            "Ticker," + ",".join("AAPL,MSFT" for _ in prices), "Date" + "," * (2 * len(prices))]
    for i in range(30):
        cells = [a["date"].iloc[i]]
        for p in prices:
            cells += [f"{a[p].iloc[i]:.6f}", "" if i < 2 else f"{b[p].iloc[i]:.6f}"]  # MSFT listed on day 3
        rows.append(",".join(cells))
    path = tmp_path / "yf.csv"
    path.write_text("\n".join(rows) + "\n")
    aapl, msft = sorted(read_ohlcv(path, FEATURES), key=lambda s: s.ticker)
    np.testing.assert_allclose(aapl.values, a[FEATURES].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(msft.values, b[FEATURES].to_numpy()[2:], rtol=1e-6)
    rows[10] = rows[10].replace(rows[10].split(",")[2], "abc", 1)  # MSFT's close on the file's line 11
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"yf\.csv, row 11, field 'Close': expected a finite number, found 'abc'"):
        read_ohlcv(path, FEATURES)


def test_nasdaq_and_stooq_exports_are_read(tmp_path: Path) -> None:
    """Nasdaq.com's 'Close/Last' with '$' prices was "missing close", and Stooq's '<DATE>,<OPEN>,...' header
    every column missing (tester-2)."""
    frame = one_ticker(20)
    nasdaq = ["Date,Close/Last,Volume,Open,High,Low"] + [
        f"{pd.Timestamp(r.date):%m/%d/%Y},${r.close:.2f},{int(r.volume)},${r.open:.2f},${r.high:.2f},${r.low:.2f}"
        for r in frame.iloc[::-1].itertuples()]  # newest first, as the site writes it
    (tmp_path / "nasdaq.csv").write_text("\n".join(nasdaq) + "\n")
    (series,) = read_ohlcv(tmp_path / "nasdaq.csv", FEATURES, date_format="%m/%d/%Y")
    np.testing.assert_allclose(series.values, frame[FEATURES].to_numpy(), rtol=1e-4)  # prices to the cent
    stooq = ["<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>"] + [
        f"ACME.US,D,{pd.Timestamp(r.date):%Y%m%d},000000,{r.open},{r.high},{r.low},{r.close},{int(r.volume)},0"
        for r in frame.itertuples()]
    (tmp_path / "acme.csv").write_text("\n".join(stooq) + "\n")
    (series,) = read_ohlcv(tmp_path / "acme.csv", FEATURES)
    assert series.ticker == "ACME.US"
    np.testing.assert_allclose(series.values, frame[FEATURES].to_numpy(), rtol=1e-12)
