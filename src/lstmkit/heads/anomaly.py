"""Anomaly detection heads: a score per sequence, and a threshold chosen on the validation split.

Two ways to score a sequence (an ECG beat, a sensor window):

* :class:`AnomalyHead` (supervised): a summary of the sequence -> dense(1) -> sigmoid = the
  probability that the sequence is anomalous; trained with binary cross-entropy.
* :class:`ReconstructionHead` (unsupervised): trained on normal sequences only, it predicts each
  next sample (forecast) or rebuilds the whole sequence from its summary (autoencoder); the
  score is the mean squared error, large where the model has never seen such a shape.

Both then compare the score with a threshold. The threshold is *chosen on the validation
split* (never on test) at the end of every validation epoch — maximising F1, or a quantile of the
normal beats' scores — and kept in a buffer, so it is saved in the checkpoint with the weights it
belongs to and test, eval and predict use it unchanged. Metrics (positive class = anomaly):
AUROC and AUPRC, which do not depend on the threshold, and F1 / precision / recall at it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_roc,
)
from torchmetrics.utilities import dim_zero_cat

from lstmkit.core import dropout_layer, lstm_precision
from lstmkit.errors import ConfigError
from lstmkit.heads.base import Head, dense_layers, summary_pooling
from lstmkit.types import Batch, DataSpec

THRESHOLD_RULES = ("f1", "quantile")
STATS = ("auroc", "auprc", "f1", "precision", "recall", "threshold")


# -- choosing the threshold ---------------------------------------------------------------------------
def f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The threshold that maximises F1 (flag ``score >= threshold``), midway between two scores.

    Sorting once gives TP and FP for every cut; F1 = 2 TP / (TP + FP + P). Ties in F1 go to the
    higher threshold (fewer false alarms); cutting midway generalises better than at a score.
    The cut is a value of the scores' own dtype strictly above the lower score: the stored
    threshold has that dtype, and a midpoint of two adjacent float32 scores (a saturated
    sigmoid's 0.99999988 and 0.99999994) rounds down onto the lower one, which would then be
    flagged after all.
    """
    order = scores.argsort(descending=True)
    ranked = scores[order]
    if ranked.dtype not in (torch.float32, torch.float64):  # half / bf16 scores: a float32 threshold
        ranked = ranked.float()
    s, y = ranked.double(), labels[order].double()
    tp, fp = y.cumsum(0), (1 - y).cumsum(0)
    f1 = 2 * tp / (tp + fp + y.sum())
    distinct = torch.ones_like(s, dtype=torch.bool)
    distinct[:-1] = s[1:] < s[:-1]  # only cut between different scores
    k = int(torch.where(distinct, f1, torch.full_like(f1, -1.0)).argmax())
    if k == len(s) - 1:
        return float(ranked[k])
    low, high = ranked[k + 1], ranked[k]
    cut = ((s[k] + s[k + 1]) / 2).to(ranked.dtype)
    return float(torch.maximum(cut, torch.nextafter(low, high)))


def select_threshold(
    scores: torch.Tensor, labels: torch.Tensor, rule: str = "f1", quantile: float = 0.99
) -> float | None:
    """Choose a threshold from validation scores (``labels``: 1 = anomaly).

    ``f1``: maximise F1; ``quantile``: that quantile of the *normal* scores, i.e. a target
    false-alarm rate of ``1 - quantile`` that needs no anomalous examples. ``f1`` without any
    anomaly falls back to ``quantile``; ``None`` when nothing can be chosen.
    """
    if scores.numel() == 0:
        return None
    if rule == "f1" and bool((labels == 1).any()):
        return f1_threshold(scores, labels)
    normal = scores[labels == 0].double()
    return float(torch.quantile(normal, quantile)) if normal.numel() else None


def score_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores mapped to [0, 1] by dense rank (ties kept): same AUROC/AUPRC, no saturation.

    torchmetrics passes scores outside [0, 1] through a sigmoid, where large errors tie at 1.0.
    """
    unique, inverse = torch.unique(scores, return_inverse=True)
    return inverse.float() / max(len(unique) - 1, 1)


# -- metrics ----------------------------------------------------------------------------------------
class ScoreCollector(Metric):
    """All (score, label) pairs of an epoch, gathered across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().float().flatten())
        self.labels.append(labels.detach().long().flatten())

    def compute(self) -> Any:
        return dim_zero_cat(self.scores), dim_zero_cat(self.labels)


class _HeadRef:
    """The head that owns the threshold, shared by all clones of a metric.

    ``MetricCollection.clone`` deep-copies its metrics; a val/test clone must still read and
    write the *model's* threshold, so copying keeps the reference (unless the head itself is
    being copied, as when the whole model is). It pickles with the model (``ddp_spawn``).
    """

    def __init__(self, head: ScoreHead) -> None:
        self.head = head

    def __deepcopy__(self, memo: dict[int, Any]) -> _HeadRef:
        return _HeadRef(memo.get(id(self.head), self.head))


class DetectionStat(ScoreCollector):
    """One detection statistic of an epoch: ``auroc``, ``auprc``, or at the threshold
    ``f1`` / ``precision`` / ``recall`` / ``threshold`` itself.

    With ``choose`` set (the validation collection; see :meth:`ScoreHead.update_metrics`) the
    threshold is chosen from this epoch's scores and stored in the head first; otherwise the
    stored one is used. Every statistic of the collection derives the same threshold from the
    same (shared) state, so the order in which Lightning computes them does not matter.
    """

    def __init__(self, stat: str, owner: _HeadRef, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r}; expected one of {STATS}")
        self.stat = stat
        self.owner = owner
        self.choose = False

    def compute(self) -> torch.Tensor:
        scores, labels = super().compute()
        if self.stat in ("auroc", "auprc"):
            rank = binary_auroc if self.stat == "auroc" else binary_average_precision
            value = rank(score_ranks(scores), labels)
            # one kind of beat only (an eval of other data): undefined, NaN, not torchmetrics' 0.0,
            # which reads as a perfectly wrong ranking (no host read: the choice stays on the device)
            undefined = torch.full_like(value, float("nan"))
            return undefined if labels.numel() == 0 else torch.where(labels.min() == labels.max(), undefined, value)
        threshold = self.owner.head.resolve_threshold(scores, labels, choose=self.choose)
        if self.stat == "threshold":
            return torch.tensor(threshold, device=scores.device)
        flagged = (scores >= threshold).long()
        stat_fn = {"f1": binary_f1_score, "precision": binary_precision, "recall": binary_recall}[self.stat]
        return stat_fn(flagged, labels, zero_division=0)


# -- heads ------------------------------------------------------------------------------------------
class ScoreHead(Head):
    """Shared by anomaly heads: a score per sequence, the threshold buffer, metrics, plots, decode.

    Subclasses implement ``forward``, ``loss`` and :meth:`scores` (raw outputs -> ``(B,)``).

    Args:
        threshold: rule used on the validation split: ``f1`` or ``quantile``.
        quantile: quantile of the normal validation scores for ``threshold=quantile``.
        initial_threshold: used until the first validation epoch chooses one.
    """

    monitor = "val/auroc"
    mode = "max"
    score_name = "anomaly score"
    log_scale = False

    def __init__(self, threshold: str = "f1", quantile: float = 0.99, initial_threshold: float = 0.5) -> None:
        super().__init__()
        if threshold not in THRESHOLD_RULES:
            raise ConfigError(f"head.threshold={threshold!r}: expected one of {THRESHOLD_RULES}")
        if not 0.0 < quantile < 1.0:
            raise ConfigError(f"head.quantile={quantile}: expected a value in (0, 1)")
        self.rule = threshold
        self.quantile = quantile
        self.register_buffer("threshold", torch.tensor(float(initial_threshold)))  # saved in checkpoints

    def scores(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Raw head outputs -> one anomaly score per sequence ``(B,)``; higher = more anomalous."""
        raise NotImplementedError

    score_formula = ""  # how :meth:`scores` reads the raw outputs, for a served copy of the export

    def serving(self) -> dict[str, Any]:
        threshold = float(self.threshold)
        return {**super().serving(), "score": self.score_formula, "anomaly": "score >= threshold",
                "threshold": threshold if math.isfinite(threshold) else None, "threshold_rule": self.rule}

    def resolve_threshold(self, scores: torch.Tensor, labels: torch.Tensor, choose: bool) -> float:
        """Choose (validation) and store, or read the stored threshold."""
        if choose:
            value = select_threshold(scores, labels, self.rule, self.quantile)
            if value is not None:
                with torch.no_grad():
                    self.threshold.fill_(value)
        return float(self.threshold)

    def metrics(self) -> MetricCollection:
        owner = _HeadRef(self)
        return MetricCollection({stat: DetectionStat(stat, owner) for stat in STATS})

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        # The module clones one collection per split ("val/", "test/"); only validation while
        # fitting chooses (not lstmkit eval split=val, which scores the stored threshold).
        choose = str(metrics.prefix or "").startswith("val") and self.fitting
        for metric in metrics.values(copy_state=False):
            if isinstance(metric, DetectionStat):
                metric.choose = choose
        metrics.update(self.scores(outputs, lengths).detach(), batch.targets)

    def figure_metrics(self) -> MetricCollection:
        return MetricCollection({"scores": ScoreCollector()})

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        import matplotlib.pyplot as plt

        scores, labels = next(iter(figure_metrics.values())).compute()
        scores, labels = scores.cpu().double(), labels.cpu()
        threshold = float(self.threshold)
        figures: dict[str, Any] = {}

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        positive = scores[scores > 0]
        if self.log_scale and positive.numel():
            low, high = float(positive.min()), float(max(positive.max(), threshold if math.isfinite(threshold) else 0))
            bins: Any = torch.logspace(math.log10(low), math.log10(high * 1.01), 40).tolist()
            ax.set_xscale("log")
            scores = scores.clamp(min=low)
        else:
            bins = 40
        for value, name, colour in ((0, "normal", "tab:blue"), (1, "anomaly", "tab:red")):
            chosen = scores[labels == value]
            if chosen.numel():
                ax.hist(chosen.numpy(), bins=bins, alpha=0.6, color=colour, label=f"{name} ({chosen.numel()})")
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.set_xlabel(self.score_name)
        ax.set_ylabel(f"{self.figure_split} beats")
        ax.set_title(f"{self.figure_split.capitalize()} scores: normal vs anomalous")
        ax.legend()
        figures["score_histogram"] = fig

        if labels.unique().numel() == 2:
            ranks = score_ranks(scores.float())
            fpr, tpr, _ = binary_roc(ranks, labels)
            auroc = float(binary_auroc(ranks, labels))
            fig, ax = plt.subplots(figsize=(4.8, 4.8))
            ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {auroc:.3f}")
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
            flagged = scores >= threshold
            ax.plot(float(flagged[labels == 0].double().mean()), float(flagged[labels == 1].double().mean()),
                    "ko", label="at threshold")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(f"ROC ({self.figure_split})")
            ax.legend(loc="lower right")
            figures["roc_curve"] = fig
        return figures

    def decode(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
        threshold = float(self.threshold)
        known = math.isfinite(threshold)
        return [
            {
                "score": round(float(score), 6),
                "anomaly": bool(known and float(score) >= threshold),
                "threshold": round(threshold, 6) if known else None,
            }
            for score in self.scores(outputs, lengths).detach().float()
        ]


class AnomalyHead(ScoreHead):
    """Supervised: summary of the sequence -> dense(1) -> sigmoid score -> threshold.

    Args:
        spec: the data description (``extra.train_counts`` for ``pos_weight=auto``).
        in_features: size of the LSTM output.
        pooling: ``last`` (final state), ``mean`` or ``max`` over valid steps.
        hidden: optional hidden dense layer size (0 = a single linear layer).
        dropout: dropout before each dense layer.
        pos_weight: weight of the anomaly class in the BCE loss: ``None``, a number, or
            ``auto`` (= normal / anomaly count of the train split), for rare anomalies.
        threshold / quantile: how the validation split chooses the threshold (see :class:`ScoreHead`).
    """

    score_name = "anomaly probability"

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        pooling: str = "last",
        hidden: int = 0,
        dropout: float = 0.0,
        pos_weight: float | str | None = None,
        threshold: str = "f1",
        quantile: float = 0.99,
    ) -> None:
        super().__init__(threshold, quantile, initial_threshold=0.5)
        self.pooling = summary_pooling(pooling)
        self.net = dense_layers(in_features, 1, hidden, dropout)
        self._one_kind = self._one_kind_message(spec)  # refused when training starts (a checkpoint still loads)
        weight = self._pos_weight(pos_weight, spec)
        self.register_buffer("pos_weight", weight, persistent=False)

    @staticmethod
    def _one_kind_message(spec: DataSpec) -> str | None:
        """Why training must refuse a train split of one kind of beat (whatever ``pos_weight`` is), or None.

        Why: a classifier that sees only normal beats (``data.train_on=normal``) learns a constant,
        and its scores rank anomalies by chance (val AUROC 0.08 once) without any error. Learning
        from normal beats only is what the reconstruction head (``task=ecg_unsupervised``) does.
        Refused at the first training step, not here: a checkpoint trained so before this check
        still loads for eval. A spec without ``train_counts`` (another datamodule) is not checked.
        """
        counts = spec.extra.get("train_counts")
        if not counts:
            return None
        normal, anomaly = counts.get("normal", 0), counts.get("anomaly", 0)
        if normal and anomaly:
            return None
        missing = "anomalous" if not anomaly else "normal"
        return (
            f"the supervised AnomalyHead needs normal and anomalous beats to learn from, and the train split "
            f"has no {missing} beats (train counts {dict(counts)}"
            + (", as data.train_on=normal drops them" if not anomaly else "") + "); "
            "to learn from normal beats only use task=ecg_unsupervised (the reconstruction head), "
            "else data.train_on=all"
        )

    @staticmethod
    def _pos_weight(pos_weight: float | str | None, spec: DataSpec) -> torch.Tensor | None:
        if pos_weight is None:
            return None
        if pos_weight == "auto":
            counts = spec.extra.get("train_counts") or {}
            normal, anomaly = counts.get("normal", 0), counts.get("anomaly", 0)
            if not anomaly:
                raise ConfigError("head.pos_weight=auto: the train split has no anomalies to weight "
                                  f"(train counts {counts}); use the reconstruction head or data.train_on=all")
            return torch.tensor(normal / anomaly)
        try:
            return torch.tensor(float(pos_weight))
        except (TypeError, ValueError):
            raise ConfigError(f"head.pos_weight={pos_weight!r}: expected null, a number or auto") from None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # (B,) logits

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, batch.targets.float(), pos_weight=self.pos_weight)

    def training_loss(self, features: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self._one_kind is not None:
            raise ConfigError(self._one_kind)
        return super().training_loss(features, lengths, batch)

    score_formula = "sigmoid(outputs): outputs are one logit per sequence, (batch,)"

    def scores(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()


class ReconstructionHead(ScoreHead):
    """Unsupervised: predict the encoder's signal step by step; score = mean squared error.

    ``target=next`` (forecast): a dense layer on every LSTM step predicts the *next* sample,
    which the LSTM has not read yet. ``target=same`` (autoencoder, Malhotra et al. 2016): the
    LSTM's summary of the whole sequence (``pooling``) is the bottleneck; a decoder LSTM unrolls
    it over the sequence length and a dense layer rebuilds every sample. (Predicting the sample
    the LSTM has just read would be the identity and detect nothing.)

    The target is the encoder's output (its first ``signal_channels`` channels, e.g. the
    normalised beat of :class:`~lstmkit.encoders.beat.BeatEncoder`), captured by a forward hook
    registered in :meth:`bind`. The head's output carries prediction and target side by side,
    ``(B, T, 2C)``, so loss, metrics and decoding need nothing else.

    Args:
        spec: the data description (unused; the encoder gives the channels).
        in_features: size of the LSTM output.
        target: ``next`` or ``same``.
        pooling: summary for ``target=same`` (``last``, ``mean``, ``max``); ``next`` reads every step.
        decoder_size: hidden size of the decoder LSTM (``target=same``).
        positions: ``target=same``: feed the decoder where it is in the sequence (``t / L`` and
            this many sine/cosine pairs), so it need not count steps from a constant input.
        dropout: dropout before the output layer.
        threshold / quantile: how the validation split chooses the threshold (see :class:`ScoreHead`).
    """

    log_scale = True

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        target: str = "same",
        pooling: str = "last",
        decoder_size: int = 64,
        positions: int = 8,
        dropout: float = 0.0,
        threshold: str = "quantile",
        quantile: float = 0.99,
    ) -> None:
        super().__init__(threshold, quantile, initial_threshold=math.inf)
        if target not in ("next", "same"):
            raise ConfigError(f"head.target={target!r}: expected next or same")
        self.target = target
        self.causal = target == "next"  # step t forecasts x[t + 1]: not with a bidirectional core
        self.pooling = "none" if target == "next" else summary_pooling(pooling)
        self.score_name = "forecast error (MSE)" if target == "next" else "reconstruction error (MSE)"
        self.positions = positions
        decoder_in = in_features + (2 * positions + 1 if positions else 0)
        self.decoder = nn.LSTM(decoder_in, decoder_size, batch_first=True) if target == "same" else None
        self.dropout = dropout_layer(dropout, "head.dropout")
        self.out_size = decoder_size if target == "same" else in_features
        self.channels = 0
        self.proj: nn.Module = nn.Identity()
        self._signal: torch.Tensor | None = None

    def bind(self, encoder: nn.Module) -> None:
        """Size the output layer to the encoder's signal and capture that signal on every call."""
        self.channels = int(getattr(encoder, "signal_channels", encoder.out_features))
        self.proj = nn.Linear(self.out_size, self.channels)
        encoder.register_forward_hook(self._capture_signal)

    def _capture_signal(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._signal = output[0][..., : self.channels]  # (B, T, C)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # kept, not consumed: adversarial training calls the head twice per encoder call, and the
        # perturbed pass must reconstruct the clean signal
        signal = self._signal
        if signal is None or not self.channels:
            raise RuntimeError("ReconstructionHead needs its encoder's output: build it through SequenceModel")
        if self.decoder is not None:
            steps = signal.shape[1]
            inputs = features.unsqueeze(1).expand(-1, steps, -1)  # (B, D) -> (B, T, D)
            if self.positions:
                inputs = torch.cat([inputs, self._clock(signal, lengths)], dim=-1)  # (B, T, D + 2P + 1)
            inputs, _, precision = lstm_precision(inputs)  # (float32 where the CPU's autocast lacks an LSTM)
            with precision:
                hidden, _ = self.decoder(inputs)  # (B, T, decoder_size)
            goal = signal
        else:
            hidden = features  # (B, T, D)
            goal = torch.cat([signal[:, 1:], torch.zeros_like(signal[:, :1])], dim=1)  # x[t+1]
        prediction = self.proj(self.dropout(hidden))  # (B, T, C)
        return torch.cat([prediction, goal], dim=-1)  # (B, T, 2C)

    def _clock(self, signal: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Where each step lies in its sequence: ``t / L`` and ``sin, cos(2 pi k t / L)``, k = 1..P."""
        steps = torch.arange(signal.shape[1], device=signal.device, dtype=signal.dtype)
        phase = steps[None, :] / lengths.to(signal.device, signal.dtype).clamp(min=1)[:, None]  # (B, T)
        angles = 2 * math.pi * phase.unsqueeze(-1) * torch.arange(
            1, self.positions + 1, device=signal.device, dtype=signal.dtype)  # (B, T, P)
        return torch.cat([phase.unsqueeze(-1), angles.sin(), angles.cos()], dim=-1)

    def _squared_errors(self, outputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step squared errors ``(B, T)`` summed over channels, and the valid-step mask ``(B, T)``."""
        prediction, goal = outputs.float().split(self.channels, dim=-1)
        valid = lengths.to(outputs.device) - (1 if self.target == "next" else 0)  # no x[T] to forecast
        mask = torch.arange(outputs.shape[1], device=outputs.device)[None, :] < valid[:, None]
        return ((prediction - goal) ** 2).sum(-1) * mask, mask

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        errors, mask = self._squared_errors(outputs, lengths)
        return errors.sum() / (mask.sum() * self.channels).clamp(min=1)

    def serving(self) -> dict[str, Any]:
        steps = "lengths - 1 (the last step has no next sample)" if self.target == "next" else "lengths"
        return {**super().serving(), "channels": self.channels, "target": self.target,
                "valid_steps": steps}

    score_formula = ("mean over the first valid_steps steps and the channels of (outputs[..., :channels] - "
                     "outputs[..., channels:]) ** 2: outputs are (batch, time, 2 * channels), prediction then target")

    def scores(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        errors, mask = self._squared_errors(outputs, lengths)
        return errors.sum(1) / (mask.sum(1) * self.channels).clamp(min=1)  # (B,)
