"""SequenceEnsemble: several trained models of one task evaluated and used as one.

Why: models trained from different seeds make different mistakes, and the mean of their predictive
distributions is more accurate and better calibrated than any one of them (Dietterich 2000;
Lakshminarayanan et al. 2017). ``lstmkit eval`` and ``lstmkit predict`` take several checkpoints
(``ckpt_path=[a.ckpt,b.ckpt]`` or a glob) and build one of these; every metric, figure and decoded
prediction is then the ensemble's, computed by the same head code as a single model's.

The members must share their data (the identity fields of their :class:`~lstmkit.types.DataSpec`,
:func:`~lstmkit.types.spec_identity`: vocabulary, classes, normaliser, tokenizer; batching such as a
language model's ``bptt`` or a classifier's ``max_length`` may differ) and their head type; the first
member's head turns the combined outputs into the loss, metrics and predictions (its decoder settings, threshold and label smoothing are the ones used).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lstmkit.errors import ConfigError
from lstmkit.heads.base import Head
from lstmkit.module import SequenceModel
from lstmkit.types import spec_identity, stored_data

log = logging.getLogger("lstmkit")

# datamodule settings that change how a split is batched, never which examples it holds (bptt: the
# windows a language model's stream is read in)
LOADER_KEYS = frozenset({"batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers",
                         "bucketing", "bptt"})


def _differences(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(first) | set(other) if first.get(key) != other.get(key))


def setting_differences(first: SequenceModel, other: SequenceModel) -> dict[str, tuple[Any, Any]]:
    """The data settings (``data.*`` of the two runs, batching aside) in which two members differ."""
    # a member from before tokenizer versions is version 1 (it differed as None from one of version 1 or 2)
    a, b = stored_data(first.hparams.get("data") or {}), stored_data(other.hparams.get("data") or {})
    return {k: (a.get(k), b.get(k)) for k in _differences(a, b) if k not in LOADER_KEYS}


def run_folder(path: str | Path) -> str | None:
    """The run folder of a checkpoint in lstmkit's layout (``<run>/checkpoints/<name>.ckpt``), else ``None``."""
    parent = Path(os.path.realpath(os.path.expanduser(str(path)))).parent
    return str(parent.parent) if parent.name == "checkpoints" else None


def same_run_groups(paths: Sequence[str]) -> dict[str, list[str]]:
    """Run folder -> the paths (two or more) of ``paths`` that are checkpoints of that one run."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        run = run_folder(path)
        if run is not None:
            groups.setdefault(run, []).append(path)
    return {run: members for run, members in groups.items() if len(members) > 1}


# encoder settings that decide where a step starts and how many there are: members must share them
# (features, FFT size and training-only augmentation may differ: frame t is centred on the same sample)
FRAME_TIMING = ("sample_rate", "hop", "stride", "stack", "trim_db", "trim_margin")


class SequenceEnsemble(SequenceModel):
    """The members' head outputs combined by their head (:meth:`~lstmkit.heads.base.Head.combine`).

    Args:
        members: trained models of one task on the same data.
        names: a name per member (its checkpoint path), used in error messages.

    Evaluation and prediction only: it has no optimiser, and training one raises.
    """

    def __init__(self, members: Sequence[SequenceModel], names: Sequence[str] | None = None) -> None:
        L.LightningModule.__init__(self)
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        names = list(names) if names is not None else [f"model {i}" for i in range(len(members))]
        if len({id(m) for m in members}) < len(members):
            # one object twice would weigh it double, and a stateful core (generation, truncated BPTT)
            # would carry its state from one member's call into the other's
            raise ConfigError("ensemble: the same model object is given more than once; load each member apart")
        for run, paths in same_run_groups(names).items():
            # a run's best.ckpt and last.ckpt are nearly one model: it would weigh double in the mean. Listed
            # by name this may be meant (a snapshot ensemble), so it is said, not refused (a glob that
            # matches them is refused: lstmkit.checkpoints.checkpoint_paths)
            log.warning("ensemble: %s are checkpoints of one run (%s): its model counts %d times in the mean; "
                        "give one checkpoint per run (e.g. its best.ckpt) unless that is meant",
                        ", ".join(paths), run, len(paths))
        first = members[0]
        if type(first.head).combine is Head.combine:
            raise ConfigError(f"{names[0]}: {type(first.head).__name__} outputs cannot be combined into an "
                              f"ensemble: the head does not define combine (anomaly heads do not: each model's "
                              f"threshold is calibrated to its own scores)")
        for name, member in zip(names[1:], members[1:]):
            if member.hparams.get("task") != first.hparams.get("task"):
                raise ConfigError(f"ensemble: {name} is a model of task {member.hparams.get('task')!r}, "
                                  f"{names[0]} of task {first.hparams.get('task')!r}")
            if type(member.head) is not type(first.head):
                raise ConfigError(f"ensemble: {name} has a {type(member.head).__name__}, "
                                  f"{names[0]} a {type(first.head).__name__}")
            # the fields that map data onto weights, as a resume compares them: specs that differ only in
            # batching (extra.bptt, tokenizer.max_length) were refused, though the data is read with the
            # first member's spec anyway
            differ = _differences(spec_identity(first.spec.to_dict()), spec_identity(member.spec.to_dict()))
            if differ:
                settings = "; ".join(f"data.{k}: {a!r} vs {b!r}" for k, (a, b) in setting_differences(first, member).items())
                raise ConfigError(
                    f"ensemble: {name} was trained on other data than {names[0]}: their data specs differ in "
                    f"{differ} (members must share vocabulary, classes and normaliser)"
                    + (f"; their data settings differ in {settings} (train them with the same ones: data.seed "
                       f"also draws generated data and the split of a single file)" if settings else ""))
            ours, theirs = first.hparams["encoder"], member.hparams["encoder"]
            timing = {key: (ours.get(key), theirs.get(key)) for key in FRAME_TIMING if ours.get(key) != theirs.get(key)}
            if timing:
                raise ConfigError(f"ensemble: {name} and {names[0]} cut the input into steps differently "
                                  f"({'; '.join(f'encoder.{k}: {a!r} vs {b!r}' for k, (a, b) in timing.items())}): "
                                  "step t would not be the same instant in both, and their outputs cannot be averaged")
        self.save_hyperparameters(dict(first.hparams), logger=False)
        self.spec = first.spec
        self.names = names
        self.members = nn.ModuleList(members)
        self.head = first.head
        self._add_evaluation_metrics()

    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
        host_lengths: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The combined head outputs, and the output lengths (the same for every member)."""
        results = [member(inputs, lengths, stream=stream, host_lengths=host_lengths) for member in self.members]
        shapes = {tuple(outputs.shape) for outputs, _ in results}
        if len(shapes) > 1 or any(not torch.equal(out_lengths, results[0][1]) for _, out_lengths in results[1:]):
            raise ConfigError(f"ensemble: the members' outputs differ in shape {sorted(shapes)} or in their "
                              f"lengths for the same batch ({', '.join(self.names)}); their encoders must produce "
                              "the same steps")
        return self.head.combine([outputs for outputs, _ in results]), results[0][1]

    def encoders(self) -> list[nn.Module]:
        return [member.encoder for member in self.members]

    def trained_models(self) -> list[SequenceModel]:
        """Each member, tuned on the ensemble's combined transcripts."""
        return list(self.members)

    def check_adaptable(self) -> None:
        """As a single model's, with the checkpoint that cannot adapt named."""
        for name, member in zip(self.names, self.members):
            try:
                member.check_adaptable()
            except ConfigError as err:
                raise ConfigError(f"ensemble: {name}: {err}") from None

    def reset_state(self, stream: str) -> None:
        for member in self.members:
            member.reset_state(stream)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        raise ConfigError("an ensemble is for evaluation and prediction; train its members one by one")

    def configure_optimizers(self) -> Any:
        raise ConfigError("an ensemble is for evaluation and prediction; train its members one by one")
