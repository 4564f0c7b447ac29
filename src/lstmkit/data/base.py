"""Shared data plumbing: per-batch padding, length bucketing, the base datamodule.

Every pipeline's datamodule subclasses :class:`SequenceDataModule`: it implements
``build()`` (read or generate the splits, fit vocabulary/normaliser on the train split only,
return the :class:`~lstmkit.types.DataSpec`) and ``make_predict_batch()`` (raw user input ->
:class:`~lstmkit.types.Batch` with the stored spec). Loading, batching and bucketing live here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from lstmkit.errors import ConfigError, DataError
from lstmkit.types import Batch, DataSpec

Example = tuple[torch.Tensor, torch.Tensor]


def path_not_found(path: Any) -> DataError:
    """``data.path`` names nothing: say where relative paths and the real-data recipes look."""
    return DataError("data.path does not exist (a relative path is read from the directory lstmkit runs in; the "
                     "experiment=*_real configs read paths.data_root: LSTMKIT_DATA_ROOT, or ../shared/data)",
                     path=path)


def as_list(value: Any) -> list[Any]:
    """A config value (``data.holdout_speakers=theo``, ``init_from.include=encoder``) that should be a list: ``None`` -> ``[]``, a single string -> ``[string]``."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check_fractions(val: Any, test: Any) -> tuple[float, float]:
    """``data.val_fraction`` / ``data.test_fraction`` as numbers in [0, 1) that leave a training part.

    Why: a negative fraction became a negative slice index (val and train then shared rows) and one
    above 1 emptied train; both ran on, or failed far from the option that caused it.
    """
    try:
        val_f, test_f = float(val), float(test)
    except (TypeError, ValueError):
        raise ConfigError(f"data.val_fraction={val!r} / data.test_fraction={test!r}: expected numbers in "
                          "[0, 1)") from None
    if not (0 <= val_f < 1 and 0 <= test_f < 1 and val_f + test_f < 1):
        raise ConfigError(f"data.val_fraction={val_f:g} / data.test_fraction={test_f:g}: each must be in [0, 1) "
                          "and their sum below 1 (the rest is the training split)")
    return val_f, test_f


SPLIT_NAMES = {"train": {"train"}, "val": {"valid", "val", "dev", "validation"}, "test": {"test"}}
# a data folder's notes, not data: not read, and not worth a warning
_DOCUMENTS = {"readme", "source", "license", "licence", "notice", "changelog", "citation"}
log = logging.getLogger(__name__)


def split_files(folder: Path, example: str, require_train: bool = True) -> dict[str, Path]:
    """The train / val / test files of a folder, by a whole part of their names (``ptb.train.txt``,
    ``train_reviews.csv``, ``stsa.binary.dev``; not ``pretrain.csv``); several candidates for a
    split, or none for train (when ``require_train``: not for an eval, whose vocabulary and classes
    are the checkpoint's), are refused rather than one picked silently."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    found: dict[str, list[Path]] = {split: [] for split in SPLIT_NAMES}
    for file in files:
        parts = set(re.split(r"[._\-\s]+", file.name.lower()))
        for split, names in SPLIT_NAMES.items():
            if parts & names:
                found[split].append(file)
    for split, matches in found.items():
        if len(matches) > 1:
            raise DataError(f"several files look like the {split} split: {[m.name for m in matches]}; "
                            "keep one, or point data.path at a single file", path=folder)
    if not found["train"] and (require_train or not (found["val"] or found["test"])):
        raise DataError(f"folder has no training file; expected file names with a train / valid|val|dev / test "
                        f"part (e.g. {example}), found {[f.name for f in files]}", path=folder)
    matched = {m for matches in found.values() for m in matches}
    unread = [f.name for f in files if f not in matched and not f.name.startswith(".")
              and f.name.split(".")[0].lower() not in _DOCUMENTS]
    if unread:  # pretrain_notes.tsv beside train.tsv was passed over without a word
        log.warning("%s: %d file(s) not read, having no train / valid|val|dev / test part in their names: %s",
                    folder, len(unread), ", ".join(unread[:5]) + (", ..." if len(unread) > 5 else ""))
    return {split: matches[0] for split, matches in found.items() if matches}


class SequenceDataset(Dataset[Example]):
    """A list of ``(input, target)`` tensor pairs; ``lengths`` is precomputed for bucketing.

    With ``sources`` (one description per example: its file, its manifest row), an item is
    ``(input, target, source)`` and :class:`PadCollate` puts the sources on the batch. ``groups``
    (one key per example, e.g. its speaker) lets ``data.group_batches`` build batches of one group.
    """

    def __init__(self, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 sources: Sequence[str] | None = None, groups: Sequence[str] | None = None) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs for {len(targets)} targets")
        if sources is not None and len(sources) != len(inputs):
            raise ValueError(f"{len(sources)} sources for {len(inputs)} inputs")
        if groups is not None and len(groups) != len(inputs):
            raise ValueError(f"{len(groups)} groups for {len(inputs)} inputs")
        self.inputs = list(inputs)
        self.targets = list(targets)
        self.sources = None if sources is None else list(sources)
        self.groups = None if groups is None else list(groups)
        self.lengths = [int(x.shape[0]) for x in self.inputs]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Example:
        if self.sources is not None:
            return self.inputs[index], self.targets[index], self.sources[index]  # type: ignore[return-value]
        return self.inputs[index], self.targets[index]


class PadCollate:
    """Pad a list of examples to the longest in the batch (never to a global maximum).

    Inputs are padded with ``pad_value``; targets are stacked when they all have one shape,
    otherwise padded with ``target_pad`` and returned with ``target_lengths`` (CTC labels).
    A class (not a closure) so that it pickles into dataloader worker processes.
    """

    def __init__(self, pad_value: float = 0.0, target_pad: float = 0.0, sequence_targets: bool = False) -> None:
        self.pad_value = pad_value
        self.target_pad = target_pad
        self.sequence_targets = sequence_targets

    def __call__(self, examples: list[Example]) -> Batch:
        inputs = [example[0] for example in examples]
        targets = [example[1] for example in examples]
        lengths = torch.tensor([x.shape[0] for x in inputs], dtype=torch.int64)
        padded = pad_sequence(inputs, batch_first=True, padding_value=self.pad_value)
        if self.sequence_targets:
            target_lengths = torch.tensor([y.shape[0] for y in targets], dtype=torch.int64)
            stacked = pad_sequence(targets, batch_first=True, padding_value=self.target_pad)
            batch = Batch(padded, lengths, stacked, target_lengths)
        else:
            batch = Batch(padded, lengths, torch.stack(targets))
        if examples and len(examples[0]) > 2:  # (input, target, source): see SequenceDataset
            batch.sources = tuple(str(example[2]) for example in examples)  # type: ignore[misc]
        return batch


class BucketBatchSampler(BatchSampler):
    """Batches of similar length, to cut padding (and wasted LSTM steps) on variable-length data.

    It draws indices from ``sampler`` (random, sequential or Lightning's DistributedSampler,
    which Lightning substitutes under DDP through the ``sampler`` argument), sorts each pool of
    ``batch_size * pool_factor`` indices by length, cuts it into batches and shuffles the batch
    order, so batches stay random while padding shrinks. With ``groups`` (one key per index, e.g.
    the speaker) every batch holds one group only, so that batch statistics are that group's
    (per-speaker normalisation in training, ``encoder.batch_stats``): the epoch's indices are
    split by group first, then each group is pooled, sorted and cut as above; under DDP each group
    is dealt out evenly over the ranks (:func:`_group_shard`), so that every rank takes as many steps.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int] = (),
        pool_factor: int = 50,
        shuffle_batches: bool = True,
        groups: Sequence[Hashable] = (),
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = list(lengths)
        self.pool_factor = pool_factor
        self.shuffle_batches = shuffle_batches
        self.groups = list(groups)

    def __iter__(self) -> Iterator[list[int]]:
        if self.groups:
            yield from self._shuffled([batch for part in self._parts(self._group_indices()) for batch in self._cut(part)])
            return
        pool: list[int] = []
        for index in self.sampler:
            pool.append(index)
            if len(pool) == self.batch_size * self.pool_factor:
                yield from self._shuffled(self._cut(pool))
                pool = []
        if pool:
            yield from self._shuffled(self._cut(pool))

    def __len__(self) -> int:
        """With groups, the batches of every epoch: Lightning reads the length once, so it must not change
        from epoch to epoch (nor, under DDP, from rank to rank: see :func:`_group_shard`)."""
        if not self.groups:
            return super().__len__()
        return self._count(self._group_indices(drawn=False))

    def _count(self, indices: Iterable[int]) -> int:
        """The one-group batches ``indices`` make."""
        return sum(len(self._cut(part)) for part in self._parts(indices))

    def _group_indices(self, drawn: bool = True) -> Iterable[int]:
        """This epoch's indices (this rank's, under DDP). ``drawn=False`` counts without drawing: a random
        sampler's batches depend on which indices it yields, not on their order, so every index once."""
        sampler = self.sampler
        if isinstance(sampler, DistributedSampler):  # the same count on every rank and epoch; no RNG drawn
            return _group_shard(sampler, self.groups)
        every_index_once = isinstance(sampler, (Sequence, SequentialSampler)) or (
            isinstance(sampler, RandomSampler) and not sampler.replacement
            and sampler.num_samples == len(sampler.data_source))  # type: ignore[arg-type]
        if not every_index_once:
            raise TypeError(f"BucketBatchSampler with groups needs a sequential, random (without replacement) or "
                            f"distributed sampler, whose batches per epoch are known; got {type(sampler).__name__}")
        return sampler if drawn or not isinstance(sampler, RandomSampler) else range(len(self.groups))

    def _parts(self, indices: Iterable[int]) -> list[list[int]]:
        """The indices split by group (in their drawn order), each group cut into pools."""
        size = self.batch_size * self.pool_factor
        return [part[i : i + size] for part in _by_group(indices, self.groups) for i in range(0, len(part), size)]

    def _cut(self, pool: list[int]) -> list[list[int]]:
        """One pool sorted by length and cut into batches."""
        pool = sorted(pool, key=lambda i: self.lengths[i]) if self.lengths else list(pool)
        batches = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _shuffled(self, batches: list[list[int]]) -> Iterator[list[int]]:
        order = torch.randperm(len(batches)).tolist() if self.shuffle_batches else range(len(batches))
        for k in order:
            yield batches[k]


def _by_group(indices: Iterable[int], groups: Sequence[Hashable]) -> list[list[int]]:
    """``indices`` split by their group, each keeping the indices' order; groups as they first appear."""
    parts: dict[Hashable, list[int]] = {}
    for index in indices:
        parts.setdefault(groups[index], []).append(index)
    return list(parts.values())


def _group_shard(sampler: DistributedSampler[Any], groups: Sequence[Hashable]) -> list[int]:
    """This rank's indices for one-group batches under DDP: every group split evenly over the ranks.

    DistributedSampler's shards split each group unevenly, so ranks would cut different numbers of
    one-group batches, and a rank that runs out first leaves the others waiting in their gradient sync.
    Here each group's indices (in the order of the sampler's seeded permutation for this epoch) are
    padded by repeating a few to a multiple of the ranks, as DistributedSampler pads its shards (or
    cut, with its ``drop_last``), and dealt out: every rank holds as many of every group, in every
    epoch, so all cut as many batches.
    """
    size, ranks = len(groups), sampler.num_replicas
    if sampler.shuffle:
        generator = torch.Generator()
        generator.manual_seed(sampler.seed + sampler.epoch)
        order = torch.randperm(size, generator=generator).tolist()
    else:
        order = list(range(size))
    shard: list[int] = []
    for part in _by_group(order, groups):  # groups in the order they first appear: the same on every rank
        if sampler.drop_last:
            part = part[: len(part) - len(part) % ranks]
        else:
            part = part + (part * ranks)[: -len(part) % ranks]
        shard += part[sampler.rank :: ranks]
    return shard


class SequenceDataModule(L.LightningDataModule):
    """Base datamodule: splits + DataSpec + padded, optionally length-bucketed loaders.

    Args:
        batch_size: examples per batch (per process under DDP).
        num_workers: dataloader worker processes.
        bucketing: group examples of similar length into batches (train and eval).
        pin_memory: pin the batches' host memory, so that the copy to a GPU runs without the host
            waiting for it. ``None`` (default): pin when the trainer runs on a CUDA device.
        spec: a stored DataSpec (from a checkpoint): reuse its vocabulary / normaliser
            instead of fitting new ones, as ``eval`` must.
        whole: no train / val / test split: every example of the data is the ``test`` split
            (``lstmkit eval split=all``: a trained model scored on all of a new file). Needs
            ``spec``, since nothing is left to fit a vocabulary or normaliser on.
        group_batches: every training batch holds examples of one group (speech: one speaker),
            so that statistics computed over a batch (``encoder.batch_stats``) are the group's.
            Needs data whose examples name their group; val and test batches are not grouped.
    """

    predict_input = "raw inputs"  # what `lstmkit predict input=...` expects (named in errors)
    # predict's input_file=<a .csv/.tsv/.jsonl table> is one input (a manifest that predict_items expands),
    # not a list of inputs one per line
    predict_manifests: ClassVar[bool] = False
    # data settings a trained model's spec decides (its vocabulary, normaliser, window...): with
    # `spec` they are not read, so `lstmkit eval +data.<one>=` is refused rather than ignored
    spec_settings: ClassVar[tuple[str, ...]] = ()

    collate: PadCollate = PadCollate()

    @classmethod
    def predict_file_is_one_input(cls, path: Path) -> bool:
        """Whether predict's ``input_file=path`` is one input, which :meth:`predict_items` expands (a
        manifest; a file of beats, read with its header as training read it), rather than a list of
        inputs, one per line."""
        return cls.predict_manifests and path.suffix.lower() in {".csv", ".tsv", ".jsonl", ".json"}

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        bucketing: bool = False,
        pin_memory: bool | None = None,
        spec: dict[str, Any] | None = None,
        whole: bool = False,
        group_batches: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if whole and not spec:
            raise ConfigError("data.whole=true scores every example with a trained model's vocabulary / normaliser "
                              "and fits nothing: use it through `lstmkit eval ckpt_path=... split=all`")
        self.whole = bool(whole)
        self.group_batches = bool(group_batches)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.bucketing = bucketing
        self.pin_memory = pin_memory
        self.fixed_spec = DataSpec.from_dict(spec) if spec else None
        self.splits: dict[str, Dataset[Example]] = {}
        self._spec: DataSpec | None = None

    # -- to implement -------------------------------------------------------------------------
    def build(self) -> DataSpec:
        """Fill ``self.splits`` (``train``/``val``/``test``) and return the DataSpec.

        When ``self.fixed_spec`` is set, encode with it instead of fitting anything.
        """
        raise NotImplementedError

    @staticmethod
    def merged(splits: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """``data.whole``: the examples of every split (train, val, test, in that order) as ``test``."""
        return {"test": [row for name in ("train", "val", "test") for row in splits.get(name, [])]}

    @classmethod
    def make_predict_batch(cls, spec: DataSpec, inputs: list[Any]) -> Batch:
        """Turn raw user inputs (texts, file paths...) into a batch, using the stored spec."""
        raise NotImplementedError(f"{cls.__name__} does not support predict")

    @classmethod
    def predict_items(cls, spec: DataSpec, inputs: list[Any]) -> list[Any]:
        """Raw user inputs -> one item per prediction (e.g. a file of many ECG beats -> one per beat)."""
        return list(inputs)

    @classmethod
    def serving_inputs(cls, spec: DataSpec) -> dict[str, Any]:
        """How :meth:`make_predict_batch` prepares ``inputs`` and ``lengths``, for an exported model's
        ``spec.json`` (``prepare``): a server without lstmkit must feed what the model was trained on."""
        return {}

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def spec(self) -> DataSpec:
        if self._spec is None:
            raise RuntimeError("call setup() before reading the DataSpec")
        return self._spec

    def setup(self, stage: str | None = None) -> None:
        if self._spec is None:  # idempotent: train.py sets up before Lightning does again
            spec = self.build()
            name = f"{type(self).__module__}.{type(self).__qualname__}"
            if not isinstance(spec, DataSpec):
                raise ConfigError(f"{name}.build() returned {type(spec).__name__}; a datamodule's build() fills "
                                  "self.splits and returns the DataSpec of its data (README, 'Adding a task')")
            if not self.splits:
                raise ConfigError(f"{name}.build() left self.splits empty; it fills self.splits "
                                  "(train / val / test: SequenceDataset) before returning the DataSpec")
            if self.whole:
                leftover = [n for n, split in self.splits.items() if n != "test" and len(split)]  # type: ignore[arg-type]
                if leftover or "test" not in self.splits:
                    kept = f"kept the {', '.join(leftover)} split(s)" if leftover else "made no test split"
                    raise ConfigError(f"{type(self).__name__} does not support data.whole (split=all): its build() {kept}")
            spec.datamodule = name
            if self.group_batches and len(self.splits.get("train", ())):  # type: ignore[arg-type]
                self._groups(self.splits["train"])  # refused now, not after the sanity check
            self._spec = spec

    def split_sizes(self) -> str:
        """``"train 5536 / val 692 / test 692"``: each split's examples, for logs and messages. An empty
        split a trained model's data never fills (speech's train in ``eval``, val with ``split=all``) is
        left out; one that is empty by the data's fault is not. ``split=all``'s examples are ``all``, as its
        metrics are named."""
        return " / ".join(f"{'all' if self.whole and name == 'test' else name} {len(split)}"  # type: ignore[arg-type]
                          for name, split in self.splits.items()
                          if len(split) or not self._unread(name))  # type: ignore[arg-type]

    def _unread(self, split: str) -> bool:
        """A split a trained model's data leaves empty by design: train (eval fits nothing), and val with
        ``whole`` (every example is the test split)."""
        return self.fixed_spec is not None and (split == "train" or (self.whole and split == "val"))

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader("test", shuffle=False)

    @property
    def pins_memory(self) -> bool:
        """``pin_memory``, or when it is ``None``, whether the attached trainer runs on a CUDA device;
        never without CUDA."""
        if not torch.cuda.is_available():  # nothing to pin for (and pinning needs the CUDA driver)
            return False
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Batch]:
        if split not in self.splits:
            raise ConfigError(f"{type(self).__name__} has no {split!r} split")
        dataset = self.splits[split]
        common: dict[str, Any] = {
            "collate_fn": self.collate,
            "num_workers": self.num_workers,
            "pin_memory": self.pins_memory,
            "persistent_workers": self.num_workers > 0,
            # the loader's own generator seeds its workers, so creating an iterator does not
            # draw from the global RNG (which would shift dropout masks after a resume)
            "generator": torch.Generator().manual_seed(torch.initial_seed()),
        }
        sampler = self._sampler(dataset, shuffle)
        lengths = getattr(dataset, "lengths", None) if self.bucketing else None
        groups = self._groups(dataset) if split == "train" and self.group_batches else None
        if lengths is not None or groups is not None:
            batches = BucketBatchSampler(sampler, self.batch_size, False, lengths=lengths or (),
                                         shuffle_batches=shuffle, groups=groups or ())
            return DataLoader(dataset, batch_sampler=batches, **common)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, **common)

    @property
    def group_source(self) -> str:
        """What names an example's group for ``data.group_batches`` (said in its errors)."""
        return "a group"

    def _groups(self, dataset: Dataset[Example]) -> list[str]:
        """``data.group_batches``: the training examples' groups, or a ConfigError naming what is missing."""
        groups = getattr(dataset, "groups", None)
        if groups is None:
            raise ConfigError(f"data.group_batches=true: {type(self).__name__}'s training examples name no group "
                              "to batch by; only speech data has one (the speaker)")
        missing = [i for i, group in enumerate(groups) if not group]
        if missing:
            sources = getattr(dataset, "sources", None)
            first = f", e.g. {sources[missing[0]]}" if sources else ""
            raise ConfigError(f"data.group_batches=true: {len(missing)} of {len(groups)} training examples have no "
                              f"{self.group_source}{first}; give every example one, or set data.group_batches=false")
        return list(groups)

    def _sampler(self, dataset: Dataset[Example], shuffle: bool) -> Sampler[int]:
        """Samplers that shard by rank under DDP (the trainer sets ``use_distributed_sampler: false``).

        Training shards with :class:`DistributedSampler` (padded to equal shards, as gradient
        sync needs). Evaluation shards *without* padding, so no sample is counted twice and the
        synced torchmetrics equal a single-process evaluation exactly.
        """
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if world <= 1:
            return RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        rank = trainer.global_rank
        if shuffle:
            return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                      seed=torch.initial_seed() % 2**31)
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
