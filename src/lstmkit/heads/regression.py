"""Forecasting head: a summary of the window -> dense(horizon) -> the next values of one input feature.

Trained in normalised space, evaluated in the data's own units. The target is one of the
input features (a stock's close), so the head can always compare itself with the naive
*persistence* forecast (the next value = the last value of the window) on exactly the same
targets: a forecaster that does not beat persistence has learnt nothing, whatever its MAE.
MASE (mean absolute scaled error, Hyndman & Koehler 2006) is the ratio of the two mean absolute
errors, and the monitored metric. Each window's errors count as fractions of its last value, so
that the ratio is scale free: pooled in dollars, a $1,000 ticker's errors would outweigh a $10
one's a hundred times (on 20 S&P 500 tickers, two of them made 63 % of persistence's error).

Batches carry raw values (the encoder normalises, see :mod:`lstmkit.encoders.features`):
``inputs (B, T, F)`` and ``targets (B, H)`` = the next ``H`` values of feature
``normaliser["target"]["feature"]``. The target is normalised as
``(g(y) - shift[h]) / scale[h]`` with ``g(y) = log(y / last)`` (``relative``: log-returns
from the last value of the window) or ``g(y) = y``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import CatMetric, Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError

from lstmkit.errors import ConfigError
from lstmkit.heads.base import Head, dense_layers, summary_pooling
from lstmkit.plots import plt  # the headless (Agg) pyplot
from lstmkit.types import Batch, DataSpec

LOSSES = ("mse", "huber", "mae")


def to_target_space(levels: torch.Tensor, last: torch.Tensor, relative: bool) -> torch.Tensor:
    """``g(y)`` before scaling: log-returns from ``last`` ``(B,)`` if ``relative``, else ``y``. ``(B, H)``."""
    return torch.log(levels / last[:, None]) if relative else levels


def from_target_space(values: torch.Tensor, last: torch.Tensor, relative: bool) -> torch.Tensor:
    """Inverse of :func:`to_target_space`. ``(B, H)``."""
    return last[:, None] * torch.exp(values) if relative else values


class MeanAbsoluteScaledError(Metric):
    """MAE of the forecast divided by MAE of a baseline forecast on the same targets.

    ``update(preds, baseline, target, level=None)``; < 1 means the model beats the baseline.
    ``level`` ``(B,)`` (the window's last value) divides each row's errors, so that series of
    different scales count alike; for one series whose level changes little over the period
    scored, the ratio is the usual one. Sums are synchronised across processes before the
    ratio is taken (never a mean of batch ratios).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("model_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("baseline_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor,
               level: torch.Tensor | None = None) -> None:
        weight = 1.0 if level is None else 1.0 / level.double().abs().clamp(min=1e-12).reshape(-1, *[1] * (target.dim() - 1))
        self.model_error += ((preds - target).abs().double() * weight).sum()
        self.baseline_error += ((baseline - target).abs().double() * weight).sum()

    def compute(self) -> torch.Tensor:
        return (self.model_error / self.baseline_error.clamp(min=1e-12)).float()


class RegressionHead(Head):
    """Dense(horizon) forecaster of one input feature, with a persistence baseline beside it.

    Args:
        spec: ``normaliser["target"]`` gives the forecast feature (index into the inputs),
            whether targets are ``relative`` (log-returns) and the per-horizon ``shift`` /
            ``scale``; ``target_names`` names the outputs.
        in_features: size of the LSTM summary.
        pooling: ``last`` (the state after the last day of the window), ``mean`` or ``max``.
        hidden: optional hidden dense layer (0 = a single linear layer).
        dropout: dropout before each dense layer.
        loss: ``mse``, ``huber`` (robust to the fat tails of returns) or ``mae`` (L1: the forecast is
            the conditional median, the minimiser of the MAE that MASE scores), in normalised space.
        huber_delta: Huber's threshold, in normalised units.
        plot_points: most test points drawn in the forecast-vs-actual plot.
        zero_init: start the output layer at zero, so that the untrained model forecasts the normaliser's
            ``shift``: persistence with drift for log-return targets (:meth:`drift`). Why: a randomly
            initialised output layer starts from drift plus a random function of the window, which on
            near-random-walk prices is noise the model must first unlearn; from zero, training departs
            from the naive forecast only as far as the data supports (gradients still reach every layer
            once the output weights move, as with the zero-initialised last layer of residual nets).

    Metrics, in the data's units: ``mae``, ``rmse``, ``mape`` (a fraction: 0.012 = 1.2 %),
    the same three for the persistence forecast (``naive_*``), and ``mase``: the two mean
    absolute errors' ratio with each window's errors relative to its last value (scale free
    across tickers; see :class:`MeanAbsoluteScaledError`). With ``relative`` targets also
    ``drift_mase``: the same ratio for persistence with drift (:meth:`drift`).
    """

    monitor = "val/mase"
    mode = "min"

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        pooling: str = "last",
        hidden: int = 0,
        dropout: float = 0.0,
        loss: str = "mse",
        huber_delta: float = 1.0,
        plot_points: int = 250,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        target = (spec.normaliser or {}).get("target")
        if not target:
            raise ConfigError(
                "RegressionHead forecasts future values of an input feature: the DataSpec's "
                "normaliser needs a 'target' entry {feature, relative, shift, scale} (see data/stock.py)"
            )
        if loss not in LOSSES:
            raise ConfigError(f"head.loss={loss!r}: expected one of {LOSSES}")
        if huber_delta <= 0:
            raise ConfigError(f"head.huber_delta={huber_delta}: expected a positive delta (in scaled target units)")
        self.pooling = summary_pooling(pooling)
        self.feature = int(target["feature"])
        self.relative = bool(target.get("relative", False))
        shift = torch.tensor(target["shift"], dtype=torch.float32)
        self.horizon = int(shift.numel())
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", torch.tensor(target["scale"], dtype=torch.float32), persistent=False)
        # the values as the data computed them (float64), for the serving record: the float32 buffers'
        # rounding made spec.json hold two shifts that differed in the ninth digit (a tester asked which to use)
        self._serving_shift = [float(v) for v in torch.tensor(target["shift"], dtype=torch.float64).flatten()]
        self._serving_scale = [float(v) for v in torch.tensor(target["scale"], dtype=torch.float64).flatten()]
        self.target_name = str(target.get("name", "value"))
        self.names = list(spec.target_names or [f"{self.target_name}_t+{h + 1}" for h in range(self.horizon)])
        self.net = dense_layers(in_features, self.horizon, hidden, dropout)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.loss_name, self.huber_delta = loss, huber_delta
        self.plot_points = plot_points
        self._encoder: nn.Module | None = None

    def bind(self, encoder: nn.Module) -> None:
        # A plain reference (not a submodule): decode reads the raw inputs the encoder saw.
        object.__setattr__(self, "_encoder", encoder)

    def serving(self) -> dict[str, Any]:
        """The outputs are normalised: the forecast in data units needs the window's last value."""
        space = "last * exp(v)" if self.relative else "v"
        return {**super().serving(), "outputs": f"(batch, {self.horizon}) normalised forecasts, {self.names}",
                "forecast": f"{space} with v = outputs * scale + shift; last = the window's last raw value of "
                            f"input feature {self.feature} ({self.target_name}, the raw inputs, last valid step)",
                "feature": self.feature, "relative": self.relative,
                "shift": self._serving_shift, "scale": self._serving_scale}

    # -- model ----------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # (B, H) normalised forecast

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The members' mean forecast (in the normalised target space they share)."""
        return torch.stack(outputs).mean(dim=0)

    def last_values(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The raw forecast feature on the last valid step of each window ``(B,)``."""
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        return inputs[rows, lengths.to(inputs.device) - 1, self.feature].double()

    def normalise(self, levels: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return ((to_target_space(levels.double(), last, self.relative) - self.shift) / self.scale).float()

    def denormalise(self, outputs: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        values = outputs.double() * self.scale.double() + self.shift.double()
        return from_target_space(values, last, self.relative)  # (B, H) in data units

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = self.normalise(batch.targets, self.last_values(batch.inputs, batch.lengths))
        if self.loss_name == "huber":
            return F.huber_loss(outputs, target, delta=self.huber_delta)
        if self.loss_name == "mae":
            return F.l1_loss(outputs, target)
        return F.mse_loss(outputs, target)

    # -- metrics --------------------------------------------------------------------------
    def metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mape": MeanAbsolutePercentageError(),
            "naive_mae": MeanAbsoluteError(),
            "naive_rmse": MeanSquaredError(squared=False),
            "naive_mape": MeanAbsolutePercentageError(),
            "mase": MeanAbsoluteScaledError(),
        }
        if self.relative:  # persistence with drift: the MASE a model that had learnt only the mean return gets
            metrics["drift_mase"] = MeanAbsoluteScaledError()
        # members get different inputs; shared state would mix them
        return MetricCollection(metrics, compute_groups=False)

    def drift(self, last: torch.Tensor) -> torch.Tensor:
        """Persistence with drift ``(B, H)``: the last value grown, for step ``h``, by the train windows'
        mean ``h``-step log-return (the target normaliser's ``shift[h]``, pooled over every series of the
        train split), i.e. this head's forecast for an output of zero.

        Why: the random-walk-with-drift forecast is the field's second naive baseline (Hyndman &
        Athanasopoulos, *Forecasting: Principles and Practice*, 5.2; theirs takes each series' own
        drift, this one the train split's, as the model does). In a rising market it beats
        persistence without forecasting anything; a model that does not beat it has learnt no more
        than the mean return. Only for ``relative`` targets: for levels, a zero output is the mean level.
        """
        return self.denormalise(torch.zeros(last.shape[0], self.horizon, device=last.device), last)

    def loss_differential(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Each window's MASE loss differential against persistence ``(B,)``, in float64: the forecast's
        absolute error minus persistence's, relative to the window's last value, averaged over the horizon.

        Why: :class:`MeanAbsoluteScaledError` sums exactly these terms, so a test of whether the model's
        errors differ from persistence's by more than chance (Diebold-Mariano, ``scripts/bench_quality.py``)
        tests the figure that is reported; < 0 on average: the model's errors are the smaller.
        """
        last = self.last_values(batch.inputs, batch.lengths)
        forecast, actual = self.denormalise(outputs.detach(), last), batch.targets.double()
        return (((forecast - actual).abs() - (last[:, None] - actual).abs()) / last[:, None].abs()).mean(dim=1)

    def figure_metrics(self) -> MetricCollection:
        return MetricCollection(
            {"forecast": CatMetric(), "naive": CatMetric(), "actual": CatMetric()}, compute_groups=False
        )

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        last = self.last_values(batch.inputs, batch.lengths)
        forecast = self.denormalise(outputs.detach(), last).float()  # (B, H)
        actual = batch.targets.float()
        naive = last.float()[:, None].expand_as(actual)  # persistence: every step = last value
        arguments = {
            "forecast": (forecast,), "naive": (naive,), "actual": (actual,),
            "mase": (forecast, naive, actual, last),
        }
        if self.relative:
            arguments["drift_mase"] = (self.drift(last).float(), naive, actual, last)
        for name, metric in metrics.items(keep_base=True, copy_state=False):
            if name in arguments:
                metric.update(*arguments[name])
            elif name.startswith("naive_"):
                metric.update(naive.flatten(), actual.flatten())
            else:
                metric.update(forecast.flatten(), actual.flatten())

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        values = {name: metric.compute() for name, metric in figure_metrics.items(keep_base=True)}
        if not all(isinstance(v, torch.Tensor) and v.numel() for v in values.values()):
            return {}
        forecast, naive, actual = (values[k].reshape(-1, self.horizon).cpu() for k in ("forecast", "naive", "actual"))
        mase = MeanAbsoluteScaledError()  # the title quotes the logged test/mase: scale free, every step
        mase.update(forecast, naive, actual, naive[:, 0])
        return {"forecast": forecast_figure(forecast[:, 0], naive[:, 0], actual[:, 0], self.names[0],
                                            self.plot_points, float(mase.compute()), self.figure_split)}

    # -- predict --------------------------------------------------------------------------
    def decode(
        self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch | None = None
    ) -> list[dict[str, Any]]:
        if batch is not None:
            inputs, raw_lengths = batch.inputs, batch.lengths
        elif self._encoder is not None and getattr(self._encoder, "last_inputs", None) is not None:
            inputs, raw_lengths = self._encoder.last_inputs
        else:
            raise RuntimeError("RegressionHead.decode needs the raw inputs: pass the batch, or bind an "
                               "encoder that records them (FeatureEncoder)")
        last = self.last_values(inputs, raw_lengths)
        prices = self.denormalise(outputs.detach(), last)
        return [
            {f"last_{self.target_name}": _rounded(float(v)),
             "forecast": {n: _rounded(float(p)) for n, p in zip(self.names, row)}}
            for v, row in zip(last, prices)
        ]


def _rounded(value: float) -> float:
    """4 decimals (cents and below), or 6 significant digits for values under 1: a penny stock's or a
    token's 0.00001234 would otherwise print as 0.0."""
    return round(value, 4) if abs(value) >= 1 else float(f"{value:.6g}")


def contiguous_prefix(naive: torch.Tensor, actual: torch.Tensor) -> int:
    """Length of the leading run of consecutive windows of one series.

    Test windows come in time order per series; within a run, window ``i+1``'s last value is
    window ``i``'s first target, so the first mismatch marks where the next series starts.
    """
    if len(actual) < 2:
        return len(actual)
    same = torch.isclose(naive[1:], actual[:-1], rtol=1e-5, atol=1e-6)
    breaks = (~same).nonzero()
    return int(breaks[0]) + 1 if len(breaks) else len(actual)


def forecast_figure(
    forecast: torch.Tensor, naive: torch.Tensor, actual: torch.Tensor, name: str, max_points: int,
    mase: float | None = None, split: str = "test",
) -> Any:
    """Forecast vs actual (first series of the ``split`` split) and the change scatter (all of it).

    The title gives the next step's MAE (in the target's units, pooled over every test window) and
    ``mase`` as logged (each window's errors relative to its last value, every horizon step): a
    ratio of the pooled MAEs, as the title once said, weighs expensive series most.
    """
    fig, (ax_line, ax_scatter) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    n = min(contiguous_prefix(naive, actual), max_points)
    steps = range(n)
    ax_line.plot(steps, actual[:n], color="black", lw=1.4, label="actual")
    ax_line.plot(steps, forecast[:n], color="tab:blue", lw=1.1, label="LSTM forecast")
    ax_line.plot(steps, naive[:n], color="tab:orange", lw=1.0, ls="--", label="persistence (last value)")
    ax_line.set_xlabel(f"{split} window (first series, in time order)")
    ax_line.set_ylabel(name)
    ax_line.legend(loc="best", fontsize=8)
    model_mae = float((forecast - actual).abs().mean())
    naive_mae = float((naive - actual).abs().mean())
    ratio = "" if mase is None else f"; MASE {mase:.3f}"
    ax_line.set_title(f"{name}: next-step MAE {model_mae:.4g} vs persistence {naive_mae:.4g} "
                      f"(all {split} windows{ratio})")
    predicted = 100 * (forecast / naive - 1)
    realised = 100 * (actual / naive - 1)
    ax_scatter.scatter(predicted, realised, s=4, alpha=0.35, color="tab:blue")
    ax_scatter.axhline(0, color="grey", lw=0.6)
    ax_scatter.axvline(0, color="grey", lw=0.6)
    hit = float(((predicted > 0) == (realised > 0)).float().mean())
    ax_scatter.set_title(f"predicted vs realised change (%), direction right {hit:.1%}")
    ax_scatter.set_xlabel("predicted change from last value (%)")
    ax_scatter.set_ylabel("realised change (%)")
    fig.tight_layout()
    return fig
