"""Encoders: the pre-processing layer between raw batches and the LSTM.

Every encoder is an ``nn.Module`` built from the :class:`~lstmkit.types.DataSpec` plus its own
options, with ``forward(inputs, lengths) -> (features (B, T', F), lengths')`` and an
``out_features`` attribute the LSTM core is sized from.
"""

from lstmkit.encoders.embedding import EmbeddingEncoder

__all__ = ["EmbeddingEncoder"]
