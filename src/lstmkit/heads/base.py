"""The head interface shared by every task."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection

from lstmkit.core import dropout_layers
from lstmkit.errors import ConfigError
from lstmkit.types import Batch


def dense_layers(in_features: int, out_features: int, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """The heads' output network: dropout, then ``Linear(out_features)``, with an optional hidden
    ``Linear(hidden)`` + GELU + dropout before it (``head.hidden``, ``head.dropout``).

    One definition, so that the classification, CTC, forecasting and anomaly heads keep the same layer
    numbering (``net.0``, ``net.1``...), which their checkpoints' weights are stored under.
    """
    layers = dropout_layers(dropout, "head.dropout")
    if hidden:
        layers += [nn.Linear(in_features, hidden), nn.GELU(), *dropout_layers(dropout, "head.dropout")]
        in_features = hidden
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)



def mean_probabilities(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Log of the members' mean class probabilities (logits or log-probabilities in, over the last dim).

    Why probabilities and not logits: averaging logits lets one over-confident model outvote the
    others; the mean of the distributions is the ensemble's predictive distribution (Lakshminarayanan
    et al. 2017), and its log is a valid input to the softmax, cross-entropy and CTC of the head.
    """
    stacked = torch.stack([o.float().log_softmax(dim=-1) for o in outputs])
    return torch.logsumexp(stacked, dim=0) - math.log(len(outputs))


SUMMARIES = ("last", "mean", "max")


def summary_pooling(pooling: str) -> str:
    """``head.pooling`` of a head that reads one summary of the sequence, checked: ``none`` (every
    step, the CTC and language-model heads' own) would reach its loss as a sequence and fail there."""
    if pooling not in SUMMARIES:
        raise ConfigError(f"head.pooling={pooling!r}: this head reads one summary of the sequence; expected "
                          f"one of {', '.join(SUMMARIES)}")
    return pooling


class Head(nn.Module):
    """Base class of all heads.

    Subclasses set ``pooling``, ``monitor`` (a key logged by :meth:`metrics`, prefixed with
    ``val/``) and ``mode`` (``"max"`` or ``"min"``), and implement the methods below.
    """

    pooling: str = "none"
    monitor: str = "val/loss"
    fitting: bool = True  # False when a trained model is only evaluated: decision values stay as stored
    figure_split: str = "test"  # the split the figures show, named in their titles (test, val, all)
    mode: str = "min"
    # True when step t predicts a later input (the next token or sample): the LSTM must not have read it
    causal: bool = False

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, lengths: torch.Tensor, batch: Batch) -> None:
        """Inspect a batch once, before its losses, given the encoder's output ``lengths``.

        The model calls it once per batch, while adversarial training computes the loss twice: a
        head that must refuse or report examples it cannot learn from does it here, so the loss
        stays free of side effects. Default: nothing to check.
        """

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, features: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss straight from the core's (pooled) features.

        Equal to ``loss(self(features, lengths), lengths, batch)``, which is what it does unless a
        head can do better without its outputs (the language-model head fuses its output layer
        with the cross-entropy). Validation and test keep the outputs for their metrics.
        """
        return self.loss(self(features, lengths), lengths, batch)

    def divergence(self, reference: torch.Tensor, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """How far ``outputs`` are from ``reference`` (both this head's outputs for the same examples),
        as one number to minimise, for ``virtual_adversarial``. Heads that cannot say leave it;
        :meth:`check_divergence` says so before any work."""
        raise NotImplementedError

    def check_divergence(self) -> None:
        """A ConfigError unless this head measures :meth:`divergence` (``virtual_adversarial`` > 0)."""
        if type(self).divergence is Head.divergence:
            raise ConfigError(f"virtual_adversarial: the {type(self).__name__} measures no divergence between "
                              "two of its predictions; virtual adversarial training needs a classifier's")

    def pseudo_labels(self, outputs: torch.Tensor, lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's own decisions as training targets, and a confidence per example (higher: surer):
        ``(targets, target_lengths, confidence)`` for :mod:`lstmkit.self_train`. Heads that cannot
        (most) leave it; :meth:`check_self_trainable` says so before any work."""
        raise NotImplementedError

    def check_self_trainable(self) -> None:
        """A ConfigError unless this head gives :meth:`pseudo_labels` (``self_train.epochs`` > 0)."""
        if type(self).pseudo_labels is Head.pseudo_labels:
            raise ConfigError(f"self_train: the {type(self).__name__} cannot label the scored data itself; "
                              "self-training adapts CTC (speech) models to an unseen speaker")

    def loss_weight(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor | int:
        """How much of :meth:`loss`'s mean this batch holds, to average it over an epoch: the
        number of examples, unless the loss is a mean over something else (tokens, kept
        utterances, class weights), which the head then counts. A tensor stays on the device."""
        return len(batch)

    def metrics(self) -> MetricCollection:
        """A fresh metric collection; the module clones it per split with a ``val/`` prefix."""
        raise NotImplementedError

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        """Update ``metrics`` (from :meth:`metrics` or :meth:`figure_metrics`) with a batch."""
        raise NotImplementedError

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """One output from the outputs of several models with this head (an ensemble:
        ``lstmkit eval ckpt_path=[a,b,c]``), shaped as :meth:`forward`'s, so that loss, metrics and
        decode read it unchanged. Heads whose outputs can be averaged override it."""
        raise ConfigError(f"{type(self).__name__} outputs cannot be combined into an ensemble")

    def figure_metrics(self) -> MetricCollection | None:
        """Optional non-scalar metrics (confusion matrix, collected predictions) for test plots."""
        return None

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        """Matplotlib figures (name -> Figure) made from :meth:`figure_metrics` at test end (and at the
        end of ``lstmkit eval split=val``); titles name the split as :attr:`figure_split`.

        The module saves them as PNG under ``<run dir>/plots/`` and logs them to the loggers.
        """
        return {}

    def decode(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
        """Post-process raw outputs into one plain-typed prediction per sample."""
        raise ConfigError(f"the head {type(self).__name__} implements no decode(): it has no predictions to give "
                          "(lstmkit predict calls it)")

    def serving(self) -> dict[str, Any]:
        """What a served copy of the exported graph needs beyond the data spec to turn its
        ``outputs`` into :meth:`decode`'s predictions (plain JSON, written beside the export).
        Heads whose decisions use learnt values (an alarm threshold) add them."""
        return {"type": type(self).__name__}

    def bind(self, encoder: nn.Module) -> None:
        """Called once after construction with the encoder (e.g. to tie weights)."""
