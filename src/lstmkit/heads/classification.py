"""Dense -> softmax -> pick class."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from lstmkit.errors import ConfigError, check_probability
from lstmkit.heads.base import Head, dense_layers, mean_probabilities, summary_pooling
from lstmkit.types import Batch, DataSpec


class ClassificationHead(Head):
    """Sequence classification: a summary of the sequence -> class probabilities.

    Args:
        spec: gives the class names.
        in_features: size of the LSTM output.
        pooling: ``last`` (final state of each direction), ``mean`` or ``max`` over valid steps.
        hidden: optional hidden dense layer size (0 = a single linear layer).
        dropout: dropout before each dense layer.
        label_smoothing: cross-entropy label smoothing.
        class_weights: optional per-class loss weights (imbalanced data).
    """

    monitor = "val/acc"
    mode = "max"

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        pooling: str = "last",
        hidden: int = 0,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.classes = list(spec.classes or [])
        num_classes = spec.num_classes
        self.pooling = summary_pooling(pooling)
        self.net = dense_layers(in_features, num_classes, hidden, dropout)
        self.label_smoothing = check_probability(label_smoothing, "head.label_smoothing")
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if weights is not None and len(weights) != num_classes:
            raise ConfigError(f"head.class_weights has {len(weights)} values for {num_classes} classes "
                              f"({self.classes})")
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # (B, C) logits

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The members' mean class probabilities, as log-probabilities (logits to the softmax)."""
        return mean_probabilities(outputs)

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(
            outputs, batch.targets, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def divergence(self, reference: torch.Tensor, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """KL(reference || outputs) of the class distributions, averaged over the examples."""
        return F.kl_div(outputs.float().log_softmax(-1), reference.float().log_softmax(-1), log_target=True,
                        reduction="batchmean")

    def loss_weight(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor | int:
        # with class weights, cross_entropy's mean divides by the targets' summed weights
        return len(batch) if self.class_weights is None else self.class_weights[batch.targets].sum()

    def metrics(self) -> MetricCollection:
        n = len(self.classes)
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=n, average="micro"),
                "f1": MulticlassF1Score(num_classes=n, average="macro"),
            }
        )

    def figure_metrics(self) -> MetricCollection:
        return MetricCollection({"confusion": MulticlassConfusionMatrix(num_classes=len(self.classes))})

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        metric = next(iter(figure_metrics.values()))
        fig, _ = metric.plot(labels=self.classes)
        return {"confusion_matrix": fig}

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        metrics.update(outputs.detach(), batch.targets)

    def serving(self) -> dict[str, Any]:
        return {**super().serving(), "outputs": "(batch, classes) logits, in the order of spec.classes",
                "label": "spec.classes[argmax(outputs)]; probabilities = softmax(outputs)"}

    def decode(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
        probs = outputs.float().softmax(dim=-1)
        best = probs.argmax(dim=-1)
        return [
            {
                "label": self.classes[int(k)],
                "probability": round(float(p[k]), 4),
                "probabilities": {c: round(float(v), 4) for c, v in zip(self.classes, p)},
            }
            for k, p in zip(best, probs)
        ]
