"""Token embedding encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lstmkit.core import dropout_layer
from lstmkit.data.text import UNK
from lstmkit.errors import ConfigError, DataError
from lstmkit.types import DataSpec


class EmbeddingEncoder(nn.Module):
    """Token ids ``(B, T)`` -> embeddings ``(B, T, dim)``; lengths unchanged.

    Args:
        spec: gives the vocabulary size and the padding id (whose vector stays zero).
        dim: embedding size.
        dropout: dropout on the embeddings (Zaremba et al. 2014 apply it to the LSTM input).
        pretrained: optional path to a ``.pt`` tensor ``(vocab_size, dim)`` or a word-vector
            text file (``word v1 v2 ...`` per line, GloVe/word2vec text format); words missing
            from it keep their random initialisation.
        freeze: keep the embedding matrix fixed (the pretrained vectors, or the random ones).
        sparse: sparse gradients (cheaper for large vocabularies with SGD / SparseAdam).
        word_dropout: in training, replace each (non-padding) token by ``<unk>`` with this
            probability (Iyyer et al. 2015; Bowman et al. 2016). Unlike ``dropout``, which thins
            every vector, it hides whole words, so a classifier cannot lean on a few memorised
            ones, and ``<unk>`` learns to stand in for words it will meet only at test time.
        init_std: initialise the vectors from ``N(0, init_std)`` instead of PyTorch's ``N(0, 1)``.
            A matrix tied to a language model's output layer wants a small scale (Zaremba et al.
            and AWD-LSTM use ``U(-0.1, 0.1)``, std 0.058): with ``N(0, 1)`` the initial logits
            are large and Adam needs hundreds of steps to shrink them.
    """

    def __init__(
        self,
        spec: DataSpec,
        dim: int = 128,
        dropout: float = 0.0,
        pretrained: str | None = None,
        freeze: bool = False,
        sparse: bool = False,
        word_dropout: float = 0.0,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= word_dropout < 1.0:
            raise ConfigError(f"encoder.word_dropout must be in [0, 1), got {word_dropout}")
        vocab = list(spec.vocab or [])
        if word_dropout > 0 and UNK not in vocab:
            raise ConfigError(f"encoder.word_dropout needs an {UNK} token in the vocabulary (this data has none)")
        self.word_dropout = word_dropout
        self.unk_id = vocab.index(UNK) if UNK in vocab else -1
        self.pad_id = spec.pad_id
        self.embedding = nn.Embedding(spec.vocab_size, dim, padding_idx=spec.pad_id, sparse=sparse)
        if init_std is not None:
            if init_std <= 0:
                raise ConfigError(f"encoder.init_std must be > 0, got {init_std}")
            with torch.no_grad():
                self.embedding.weight.normal_(0.0, init_std)
                if spec.pad_id is not None:
                    self.embedding.weight[spec.pad_id].zero_()
        if pretrained:
            self._load_pretrained(Path(pretrained), spec)
        # without a file too: fixed random vectors are a model of their own, and a rebuilt trained model
        # (its vectors from the checkpoint, its file not read again) must stay frozen
        self.embedding.weight.requires_grad_(not freeze)
        self.dropout = dropout_layer(dropout, "encoder.dropout")
        self.out_features = dim

    @property
    def weight(self) -> torch.Tensor:
        """The embedding matrix (heads may tie their output layer to it)."""
        return self.embedding.weight

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
            inputs = inputs.masked_fill(drop & (inputs != self.pad_id), self.unk_id)
        return self.dropout(self.embedding(inputs)), lengths

    def _load_pretrained(self, path: Path, spec: DataSpec) -> None:
        if not path.exists():
            raise DataError("pretrained embedding file not found", path=path)
        weight = self.embedding.weight.data
        if path.suffix in {".pt", ".pth"}:
            matrix = torch.load(path, weights_only=True, map_location="cpu")
            if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) != tuple(weight.shape):
                raise DataError(
                    f"expected a tensor of shape {tuple(weight.shape)} (vocab_size, dim), "
                    f"found {getattr(matrix, 'shape', type(matrix).__name__)}",
                    path=path,
                )
            weight.copy_(matrix)
            return
        index = {tok: i for i, tok in enumerate(spec.vocab or [])}
        with path.open(encoding="utf-8") as fh:
            for row, line in enumerate(fh, start=1):
                parts = line.rstrip().split(" ")
                if len(parts) == 2 and row == 1:
                    continue  # word2vec header "count dim"
                if parts[0] not in index:
                    continue
                if len(parts) - 1 != weight.shape[1]:
                    raise DataError(
                        f"expected {weight.shape[1]} numbers after the word, found {len(parts) - 1}",
                        path=path, row=row,
                    )
                try:
                    weight[index[parts[0]]] = torch.tensor([float(v) for v in parts[1:]])
                except ValueError as err:
                    raise DataError(f"non-numeric vector value ({err})", path=path, row=row) from None
        weight[spec.pad_id].zero_()
