"""Float-feature encoder: raw ``(B, T, F)`` features -> normalised, optionally projected features.

Normalisation lives *in the model*, as a non-trainable layer built from the stored
``DataSpec.normaliser``, rather than in the datamodule. Why: batches then carry raw values
(prices, sensor readings) end to end, so

* ``predict`` and an exported model take raw input — nobody has to re-apply statistics by hand;
* a head that reports metrics in the data's own units (a forecaster's MAE in dollars) and
  needs the raw last value of a window (to invert log-returns) finds it in ``batch.inputs``;
* the statistics travel in the checkpoint with the weights that were trained on them.

The statistics themselves are fitted on the train split only, by the datamodule, with
:func:`fit_feature_normaliser` (the same transform the layer applies, so they cannot drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lstmkit.core import dropout_layer
from lstmkit.errors import ConfigError
from lstmkit.types import DataSpec

KINDS = ("zscore", "minmax", "log_returns")
_TINY = 1e-12


def log_returns(x: torch.Tensor, base: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``log((x[t, f] + offset[f]) / (x[t-1, base[f]] + offset[base[f]]))`` for ``t >= 1``.

    ``x`` is ``(B, T, F)``; the result is ``(B, T-1, F)``. ``base`` lets a feature be taken
    relative to another one of the previous step (a stock's open/high/low relative to the
    previous close: gap and intraday range in one scale-free number); ``offset`` keeps
    zero-valued counts (volume) finite.
    """
    logs = torch.log((x + offset).clamp(min=_TINY))  # (B, T, F)
    return logs[:, 1:, :] - logs[:, :-1, :].index_select(-1, base)  # (B, T-1, F)


class FeatureNormaliser(nn.Module):
    """Non-trainable ``(B, T, F)`` -> ``(B, T', F)`` transform from a stored normaliser dict.

    Accepted dicts (plain lists, as stored in checkpoints):

    * ``{"kind": "zscore", "mean": [...], "std": [...]}`` (``kind`` may be omitted);
    * ``{"kind": "minmax", "min": [...], "max": [...]}`` -> values in [0, 1] on the train split;
    * ``{"kind": "log_returns", "base": [...], "offset": [...], "mean": [...], "std": [...]}``
      -> :func:`log_returns`, then z-scored; one step shorter (``T' = T - 1``).

    Other keys (e.g. a forecasting head's ``target``) are ignored here.
    """

    def __init__(self, normaliser: dict[str, Any], num_features: int) -> None:
        super().__init__()
        self.kind = str(normaliser.get("kind", "zscore"))
        if self.kind not in KINDS:
            raise ConfigError(f"unknown normaliser kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "minmax":
            low = _vector(normaliser, "min", num_features)
            shift, scale = low, _vector(normaliser, "max", num_features) - low
        else:
            shift, scale = _vector(normaliser, "mean", num_features), _vector(normaliser, "std", num_features)
        scale = torch.where(scale.abs() > _TINY, scale, torch.ones_like(scale))
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        base = normaliser.get("base") or list(range(num_features))
        offset = normaliser.get("offset") or [0.0] * num_features
        self.register_buffer("base", torch.tensor(base, dtype=torch.int64), persistent=False)
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32), persistent=False)

    @property
    def steps_removed(self) -> int:
        return 1 if self.kind == "log_returns" else 0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "log_returns":
            x = log_returns(x, self.base, self.offset)  # (B, T-1, F)
            lengths = (lengths - self.steps_removed).clamp(min=1)
        return (x - self.shift) / self.scale, lengths

    def host_lengths(self, lengths: Sequence[int]) -> list[int]:
        """:meth:`forward`'s output lengths from host ints."""
        return [max(n - self.steps_removed, 1) for n in lengths]


def fit_feature_normaliser(
    kind: str,
    segments: Sequence[torch.Tensor],
    base: Sequence[int] | None = None,
    offset: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Fit the statistics of :class:`FeatureNormaliser` on train-split segments ``(T_i, F)``.

    Each segment is one contiguous stretch (a ticker's train rows), so ``log_returns`` never
    pairs the last row of one series with the first row of the next.
    """
    if kind not in KINDS:
        raise ConfigError(f"normalise={kind!r}: expected one of {KINDS}")
    num_features = int(segments[0].shape[-1])
    out: dict[str, Any] = {"kind": kind}
    if kind == "log_returns":
        out["base"] = list(base) if base is not None else list(range(num_features))
        out["offset"] = [float(v) for v in offset] if offset is not None else [0.0] * num_features
        base_t = torch.tensor(out["base"], dtype=torch.int64)
        offset_t = torch.tensor(out["offset"], dtype=torch.float64)
        values = torch.cat([log_returns(s.double()[None], base_t, offset_t)[0] for s in segments])
    else:
        values = torch.cat([s.double() for s in segments])  # (N, F)
    if kind == "minmax":
        out["min"] = values.amin(dim=0).tolist()
        out["max"] = values.amax(dim=0).tolist()
    else:
        out["mean"] = values.mean(dim=0).tolist()
        out["std"] = values.std(dim=0).tolist() if len(values) > 1 else [1.0] * num_features
    return out


class FeatureEncoder(nn.Module):
    """Float features ``(B, T, F)`` -> normalised (-> projected) features ``(B, T', D)``.

    Generic for any float-feature task: the normalisation comes from ``spec.normaliser``
    (none if the spec has none), the projection is an optional ``Linear`` (+ GELU) that lets
    the LSTM see a learnt mix of the features.

    Args:
        spec: gives ``num_features`` and the fitted ``normaliser``.
        project: size of a linear projection after normalising (0 = none: ``D = F``).
        dropout: dropout on the encoder output.
        normalise: apply ``spec.normaliser`` (turn off when the data is already normalised).

    The raw inputs of the latest call are kept in :attr:`last_inputs` (a reference, no copy):
    the head's ``decode`` receives only the model outputs, and a forecaster needs the last raw
    value of each window to turn a predicted return back into a price.
    """

    def __init__(self, spec: DataSpec, project: int = 0, dropout: float = 0.0, normalise: bool = True) -> None:
        super().__init__()
        if not spec.num_features:
            raise ConfigError("FeatureEncoder needs a DataSpec with num_features (float-feature data)")
        self.normaliser = (
            FeatureNormaliser(spec.normaliser, spec.num_features) if normalise and spec.normaliser else None
        )
        self.projection = (
            nn.Sequential(nn.Linear(spec.num_features, project), nn.GELU()) if project else nn.Identity()
        )
        self.dropout = dropout_layer(dropout, "encoder.dropout")
        self.out_features = project or spec.num_features
        self.last_inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def host_lengths(self, lengths: Sequence[int]) -> list[int]:
        """The lengths :meth:`forward` returns, computed from host ints (the core then packs without a GPU wait)."""
        return self.normaliser.host_lengths(lengths) if self.normaliser is not None else list(lengths)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._remember(inputs, lengths)
        x = inputs.to(torch.get_default_dtype())  # (B, T, F) raw; float64 under trainer.precision=64-true
        if self.normaliser is not None:
            x, lengths = self.normaliser(x, lengths)  # (B, T', F)
        return self.dropout(self.projection(x)), lengths  # (B, T', D)

    @torch.jit.unused
    def _remember(self, inputs: torch.Tensor, lengths: torch.Tensor) -> None:
        self.last_inputs = (inputs.detach(), lengths.detach())


def _vector(normaliser: dict[str, Any], key: str, size: int) -> torch.Tensor:
    if key not in normaliser:
        raise ConfigError(f"normaliser of kind {normaliser.get('kind', 'zscore')!r} has no {key!r} statistics")
    values = torch.tensor(normaliser[key], dtype=torch.float32).flatten()
    if values.numel() == 1:
        values = values.expand(size).clone()
    if values.numel() != size:
        raise ConfigError(f"normaliser {key!r} has {values.numel()} values for {size} features")
    return values
