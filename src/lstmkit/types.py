"""The contract between datamodule, encoder, LSTM core and head.

Two small types travel through every pipeline:

* :class:`Batch` — what a dataloader yields: padded inputs plus their true lengths, so that
  padding never reaches the recurrence, the loss or the metrics.
* :class:`DataSpec` — what a datamodule knows about its data once it is set up (vocabulary,
  feature count, class names, normaliser statistics...). Encoder and head are built from it,
  so a config never repeats a number the data already knows, and it is stored in every
  checkpoint as plain types so a model can be rebuilt (and fed raw input) without the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch


@dataclass
class Batch:
    """A padded mini-batch.

    Attributes:
        inputs: padded inputs, ``(B, T)`` token ids or ``(B, T, F)`` features / ``(B, S)`` samples.
        lengths: ``(B,)`` number of valid steps of each row of ``inputs``.
        targets: class ids ``(B,)``, regression targets ``(B, H)``, token ids ``(B, T)`` or
            padded label sequences ``(B, L)`` (CTC), depending on the head.
        target_lengths: ``(B,)`` valid length of each target row, for sequence targets.
        host_lengths: ``lengths`` as Python ints, taken when the batch is made on the host and
            kept there when it moves to an accelerator, so that the LSTM core can decide about
            packing, and pack, without waiting for the device. Derived from ``lengths`` when
            the batch is made; code that changes ``lengths`` afterwards must set both (or set
            this to ``None``).
        sources: where each row came from (a file, a manifest row), when the dataset knows, so
            that an error found only once the batch is encoded (a CTC utterance too short for its
            transcript) can name the file. Not moved to the device.
    """

    inputs: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None
    host_lengths: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)
    sources: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # derived, so not an __init__ field: Lightning's batch transfer then keeps it as it is
        # instead of walking the tuple element by element (~0.2 ms per batch of 64)
        self.host_lengths = tuple(self.lengths.tolist()) if self.lengths.device.type == "cpu" else None

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned host memory (what ``DataLoader(pin_memory=True)``
        calls), so that the copy to a GPU can run without the host waiting for it."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        pinned = Batch(pin(self.inputs), pin(self.lengths), pin(self.targets), pin(self.target_lengths))
        pinned.sources = self.sources
        return pinned

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class DataSpec:
    """Everything the model must know about the data, in plain (checkpoint-safe) types.

    Attributes:
        input_kind: ``"tokens"`` (integer ids), ``"features"`` (float vectors per step) or
            ``"waveform"`` (raw audio samples).
        datamodule: import path of the datamodule class; it turns raw user input into a
            :class:`Batch` at predict time (``make_predict_batch``), so predict needs no config.
        vocab: token strings for ``tokens`` inputs (index = id).
        num_features: size of each input step for ``features`` inputs.
        classes: output class names (classification) or output alphabet (CTC).
        pad_id: id used to pad token inputs.
        blank_id: CTC blank index into ``classes``.
        target_names: names of regression outputs.
        normaliser: fitted statistics (train split only), e.g. ``{"mean": [...], "std": [...]}``.
        sample_rate: audio sample rate the model expects.
        tokenizer: settings needed to tokenize raw text exactly as at training time
            (:func:`lstmkit.data.text.tokenize`'s arguments); its ``version`` is the tokenizer's,
            and a spec without one (written before versions) is version 1.
        extra: anything else a pipeline needs at predict time (window length, horizon...).
    """

    input_kind: str
    datamodule: str = ""
    vocab: list[str] | None = None
    num_features: int | None = None
    classes: list[str] | None = None
    pad_id: int = 0
    blank_id: int | None = None
    target_names: list[str] | None = None
    normaliser: dict[str, Any] | None = None
    sample_rate: int | None = None
    tokenizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        if not self.vocab:
            raise ValueError(f"this DataSpec has no vocabulary (input_kind={self.input_kind!r})")
        return len(self.vocab)

    @property
    def num_classes(self) -> int:
        if not self.classes:
            raise ValueError("this DataSpec has no class names")
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DataSpec fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


# what maps the data onto the weights; batching (bptt, max_length) and file-reading options may change.
# Checkpoints compare these to resume a run (lstmkit.checkpoints) and ensemble members to be combined.
IDENTITY = ("datamodule", "input_kind", "vocab", "num_features", "classes", "pad_id", "blank_id", "target_names",
            "normaliser", "sample_rate")
IDENTITY_TOKENIZER = ("level", "lowercase", "subwords", "version")
# what a stored tokenizer lacking a field means: one written before tokenizer versions is version 1
TOKENIZER_DEFAULTS = {"version": 1}
IDENTITY_EXTRA = ("features", "target", "horizon", "normal_labels", "anomaly_labels", "reverse", "samples_per_beat",
                  "label_column", "train_counts")


def spec_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec's identity fields (``IDENTITY``...), flat: ``vocab``, ``tokenizer.level``,
    ``extra.reverse``... (``None`` where the spec lacks one)."""
    identity = {key: spec.get(key) for key in IDENTITY}
    for part, keys in (("tokenizer", IDENTITY_TOKENIZER), ("extra", IDENTITY_EXTRA)):
        stored = stored_part(spec, part)
        identity.update({f"{part}.{key}": stored.get(key) for key in keys})
    return identity


def stored_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A run's stored data config (``data.*``) with what a run from before a setting existed lacks filled in:
    a text datamodule's (one with a ``tokenizer``) ``tokenizer_version`` is 1 (``TOKENIZER_DEFAULTS``)."""
    settings = dict(data)
    if "tokenizer" in settings and "tokenizer_version" not in settings:
        settings["tokenizer_version"] = TOKENIZER_DEFAULTS["version"]
    return settings


def stored_part(spec: dict[str, Any], part: str) -> dict[str, Any]:
    """``spec[part]`` (``{}`` if absent), a tokenizer with the fields older specs lack filled in
    (``TOKENIZER_DEFAULTS``: a spec from before tokenizer versions is version 1)."""
    stored = dict(spec.get(part) or {})
    return {**TOKENIZER_DEFAULTS, **stored} if part == "tokenizer" and stored else stored
