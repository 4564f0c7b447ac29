"""Heads: the post-processing layer that turns LSTM outputs into a decision.

A head owns its loss, its metrics (torchmetrics, synced across processes) and its decoding
(e.g. softmax -> argmax -> class name). ``pooling`` says whether it reads every step
(``"none"``) or a summary of the sequence (``"last"``, ``"mean"``, ``"max"``); ``monitor`` and
``mode`` name the validation metric that checkpointing, early stopping and sweeps optimise.
"""

from lstmkit.heads.base import Head
from lstmkit.heads.classification import ClassificationHead

__all__ = ["ClassificationHead", "Head"]
