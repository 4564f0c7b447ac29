"""SequenceModel: the one LightningModule of every task — encoder -> LSTM core -> head.

The constructor takes plain dicts only (component specs with a ``_target_`` and the
:class:`~lstmkit.types.DataSpec` as a dict) and builds the parts itself, so
``save_hyperparameters`` stores nothing but plain types and
``SequenceModel.load_from_checkpoint(path)`` rebuilds the model — vocabulary and normaliser
included — without the original config, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric

from lstmkit.adversarial import virtual_adversarial_loss, worst_direction
from lstmkit.build import build
from lstmkit.core import POOLINGS, LSTMCore, summarise
from lstmkit.errors import ConfigError
from lstmkit.heads.base import Head
from lstmkit.optim import (
    SPREAD_OVER_RUN,
    check_schedule_length,
    continue_rebuilt_schedules,
    save_plateau_as_stepped,
)
from lstmkit.plots import save_and_log
from lstmkit.types import Batch, DataSpec

log = logging.getLogger("lstmkit")


def log_in_spawned_process() -> None:
    """Under ``ddp_spawn`` (``trainer=ddp_cpu``) the ranks are new interpreters without Hydra's logging
    configuration, so lstmkit's INFO lines written there (``adapt=true``'s, for one) went nowhere. In such
    a process, rank zero prints them to stderr in the parent's format; elsewhere logging is left alone."""
    import multiprocessing

    if multiprocessing.parent_process() is None or logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _out_features(encoder: nn.Module, spec: dict[str, Any]) -> int:
    """The encoder's ``out_features``, the LSTM's input size, checked."""
    size = getattr(encoder, "out_features", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"the encoder {type(encoder).__name__} ({spec.get('_target_')}) has out_features={size!r}; "
                          "an encoder states the number of features it returns per step as out_features, a "
                          "positive whole number (the LSTM's input size)")
    return size


HEAD_METHODS = ("forward", "loss", "metrics", "update_metrics")  # every head's own; decode too, for predict


def _check_head(head: nn.Module, spec: dict[str, Any]) -> None:
    """A head is a :class:`~lstmkit.heads.base.Head` with the methods training calls, checked when built."""
    name = f"the head {type(head).__name__} ({spec.get('_target_')})"
    if not isinstance(head, Head):
        raise ConfigError(f"{name} is no lstmkit.heads.base.Head: a head subclasses it (its pooling, monitor, "
                          f"loss, metrics and decoding: README, 'The contract between the parts')")
    missing = [m for m in HEAD_METHODS if getattr(type(head), m) is getattr(Head, m)]
    if missing:
        raise ConfigError(f"{name} does not implement {', '.join(f'{m}()' for m in missing)}: every head implements "
                          f"{', '.join(HEAD_METHODS)} (and decode, for predict)")


class SequenceModel(L.LightningModule):
    """Encoder -> LSTM -> head, trained, evaluated and used for prediction the same way for every task.

    Args:
        spec: the datamodule's DataSpec as a dict.
        encoder: encoder spec, e.g. ``{"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 128}``.
        core: :class:`~lstmkit.core.LSTMCore` options (hidden_size, num_layers, ...).
        head: head spec, e.g. ``{"_target_": "lstmkit.heads.ClassificationHead"}``.
        optimizer: optimiser spec (a partial taking the parameter groups), e.g. AdamW.
        scheduler: optional schedule spec: a factory from :mod:`lstmkit.optim` plus
            ``interval`` (``step`` / ``epoch``).
        l1: L1 penalty on weight matrices added to the loss (L2 is the optimiser's weight decay).
        adversarial: size (L2 norm per sequence) of an adversarial perturbation of the encoder's
            output, whose loss is added to the clean loss during training (Goodfellow et al.
            2015; Miyato et al. 2017, on word embeddings); 0 = off. Costs a second LSTM pass.
        virtual_adversarial: size of a *virtual* adversarial perturbation (Miyato et al. 2017):
            the direction that changes the model's own prediction most, found without labels, and
            the divergence of the prediction there from the clean one added to the loss; 0 = off.
            Costs two more LSTM passes. Needs a head that measures it (:meth:`Head.divergence`).
        lr_scale: learning-rate multipliers per part (``encoder``, ``core``, ``head``; 1.0 where
            absent): discriminative fine-tuning (Howard & Ruder 2018) of warm-started parts.
        data: the datamodule config the model was trained with (``eval`` reuses it).
        task: task name, recorded so ``predict`` can tell a checkpoint's task.
    """

    PARTS = ("encoder", "core", "head")

    def __init__(
        self,
        spec: dict[str, Any],
        encoder: dict[str, Any],
        core: dict[str, Any],
        head: dict[str, Any],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        l1: float = 0.0,
        lr_scale: dict[str, float] | None = None,
        adversarial: float = 0.0,
        virtual_adversarial: float = 0.0,
        data: dict[str, Any] | None = None,
        task: str = "",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = DataSpec.from_dict(spec)
        self.encoder: nn.Module = build(encoder, spec=self.spec)
        self.core = LSTMCore(input_size=_out_features(self.encoder, encoder), **core)
        self.head: Head = build(head, spec=self.spec, in_features=self.core.out_features)
        _check_head(self.head, head)
        if self.head.pooling not in POOLINGS:  # else it fails at the first forward pass, deep inside
            raise ConfigError(f"head.pooling={self.head.pooling!r}: expected one of {', '.join(POOLINGS[1:])}")
        if self.head.causal and self.core.num_directions == 2:
            raise ConfigError(
                f"model.bidirectional=true cannot be combined with {type(self.head).__name__}, which predicts "
                "the next step: the backward direction has already read it (the metrics would be meaningless)")
        self.head.bind(self.encoder)
        # what checkpoints, early stopping and scheduler=plateau watch: the head's metric unless the
        # run's ``monitor`` / ``monitor_mode`` say otherwise (set by the train command)
        self.monitor, self.monitor_mode = self.head.monitor, self.head.mode
        # the steps a length-spread schedule covers, saved in checkpoints: a resume compares them
        self.schedule_steps: int | None = None
        self.resumed_schedule_steps: int | None = None
        self._add_evaluation_metrics()
        if l1 < 0:
            raise ConfigError(f"l1 must be >= 0 (the weight of the L1 penalty), got {l1}")
        self.l1 = l1
        if adversarial < 0:
            raise ConfigError(f"adversarial must be >= 0 (the size of the perturbation), got {adversarial}")
        if adversarial > 0 and self.core.stateful:
            raise ConfigError("adversarial training needs independent sequences; it does not combine with "
                              "model.stateful=true (the perturbed pass would advance the carried state twice)")
        self.adversarial = float(adversarial)
        if virtual_adversarial < 0:
            raise ConfigError(f"virtual_adversarial must be >= 0 (the size of the perturbation), got {virtual_adversarial}")
        if virtual_adversarial > 0:
            if self.core.stateful:
                raise ConfigError("virtual_adversarial needs independent sequences; it does not combine with "
                                  "model.stateful=true (the perturbed passes would advance the carried state)")
            self.head.check_divergence()
        self.virtual_adversarial = float(virtual_adversarial)
        if self.core.stateful and not self.spec.extra.get("streams", "bptt" in self.spec.extra):
            raise ConfigError(
                "model.stateful=true needs data of contiguous streams (next-word prediction's); this data's "
                "examples are independent and shuffled, so one example's state would carry into another")
        self.lr_scale = {part: float(scale) for part, scale in (lr_scale or {}).items()}
        unknown = set(self.lr_scale) - set(self.PARTS)
        if unknown:
            raise ConfigError(f"lr_scale: unknown part(s) {sorted(unknown)}; the parts are {list(self.PARTS)}")
        negative = {part: scale for part, scale in self.lr_scale.items() if scale < 0}
        if negative:
            raise ConfigError(f"lr_scale: learning-rate multipliers must be >= 0, got {negative}")
        for part, params in self._parts().items():
            if self.lr_scale.get(part, 1.0) == 0:  # frozen: no gradient computed, none all-reduced
                for p in params:
                    p.requires_grad_(False)
        self._check_sparse_gradients(optimizer or {})

    def _check_sparse_gradients(self, optimizer: dict[str, Any]) -> None:
        """``encoder.sparse=true`` needs an optimiser that takes sparse gradients (SGD, Adagrad) without
        weight decay; otherwise the first step fails deep inside torch ("Adam does not support sparse
        gradients", "add(sparse, dense) is not supported")."""
        embedding = getattr(self.encoder, "embedding", None)
        if not (isinstance(embedding, nn.Embedding) and embedding.sparse and embedding.weight.requires_grad):
            return
        name = str(optimizer.get("_target_") or "torch.optim.AdamW").rsplit(".", 1)[-1]
        decay = float(optimizer.get("weight_decay") or 0.0) if name in ("SGD", "Adagrad") else None
        if name not in ("SGD", "Adagrad") or decay:
            why = f"{name} cannot take them" if decay is None else f"weight_decay={decay:g} cannot apply to them"
            raise ConfigError(f"encoder.sparse=true gives the embedding sparse gradients, and {why}: use "
                              "optimizer=sgd with optimizer.weight_decay=0 (or torch.optim.Adagrad), or "
                              "encoder.sparse=false")

    test_name = "test"  # what the test loop's metrics are called (eval split=all: "all")
    # the loop whose examples the figures collect: the test loop, or the val loop of trainer.validate (eval
    # split=val; never the val loops of fitting, which would draw every epoch)
    figure_split = "test"

    def name_test_split(self, name: str) -> None:
        """Log the test loop's loss, metrics and figures as ``<name>/...``: ``lstmkit eval split=all``
        scores every example of the data, not its test split, and its loggers must say so too."""
        self.test_name = name
        self.metrics["test"] = self.metrics["test"].clone(prefix=f"{name}/")
        if self.figure_metrics is not None:
            self.figure_metrics = self.figure_metrics.clone(prefix=f"{name}/")

    def _add_evaluation_metrics(self) -> None:
        """The head's metrics for val and test, the evaluation loss, and the test figures' metrics."""
        self.metrics = nn.ModuleDict(
            {split: self.head.metrics().clone(prefix=f"{split}/") for split in ("val", "test")}
        )
        # the evaluation loss as a metric too: weighted by batch size and exact across DDP ranks
        self.losses = nn.ModuleDict({split: MeanMetric() for split in ("val", "test")})
        figure_metrics = self.head.figure_metrics()
        self.figure_metrics = figure_metrics.clone(prefix="test/") if figure_metrics is not None else None

    # -- the pipeline -----------------------------------------------------------------------
    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
        host_lengths: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs and their lengths (the encoder may subsample time)."""
        pooled, lengths = self.features(inputs, lengths, stream=stream, host_lengths=host_lengths)
        return self.head(pooled, lengths), lengths

    def features(
        self, inputs: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
        host_lengths: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the head reads: the core's outputs pooled as the head asks, and their lengths."""
        features, out_lengths, host_lengths = self.encode(inputs, lengths, host_lengths)  # (B, T', F)
        return self.pool(features, out_lengths, stream=stream, host_lengths=host_lengths), out_lengths

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor, host_lengths: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, Sequence[int] | None]:
        """The encoder's features and output lengths, with the host copy of those lengths: the same
        when it kept them, its ``host_lengths`` mapping when it has one, else ``None`` (the core then
        reads the device's)."""
        encoded = self.encoder(inputs, lengths)
        if not (isinstance(encoded, tuple) and len(encoded) == 2):
            raise ConfigError(f"{self._encoder_name()} returned {type(encoded).__name__}; an encoder returns "
                              "(features (B, T', F), lengths (B,))")
        features, out_lengths = encoded
        if host_lengths is not None and out_lengths is not lengths:
            mapping = getattr(self.encoder, "host_lengths", None)
            host_lengths = mapping(host_lengths) if callable(mapping) else None
        self._check_encoded(inputs, features, out_lengths, host_lengths)
        return features, out_lengths, host_lengths

    def _encoder_name(self) -> str:
        return f"the encoder {type(self.encoder).__name__} ({(self.hparams.get('encoder') or {}).get('_target_')})"

    def _check_encoded(self, inputs: torch.Tensor, features: Any, lengths: Any,
                       host_lengths: Sequence[int] | None) -> None:
        """The encoder's output as the LSTM reads it, checked from shapes (no device sync).

        Why: an encoder of the user's own that returned (T, B, F), or fewer features than its
        ``out_features`` said, failed deep inside torch ("index 44 is out of bounds"), or, on the
        CPU's fused kernel, which does not check the input width, trained on wrong values.
        """
        batch = inputs.shape[0]
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[0] != batch \
                or features.shape[2] != self.core.lstm.input_size:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ConfigError(f"{self._encoder_name()} returned features of shape {shape} for a batch of {batch}; "
                              f"expected (batch {batch}, steps, out_features {self.core.lstm.input_size})")
        if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,):
            shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise ConfigError(f"{self._encoder_name()} returned lengths of shape {shape}; expected one per "
                              f"example ({batch},)")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ConfigError(f"{self._encoder_name()} returned lengths of dtype {lengths.dtype}; lengths count steps, "
                              "whole numbers (int64: lengths // 2, not lengths / 2)")
        # the host copy of the lengths, when there is one: reading the tensor's would wait for the device
        longest = max(host_lengths, default=0) if host_lengths is not None else 0
        if host_lengths is not None and min(host_lengths, default=1) < 1:
            raise ConfigError(f"{self._encoder_name()} returned a length of {min(host_lengths)} steps; every row "
                              "needs at least one step for the LSTM")
        if longest > features.shape[1]:
            raise ConfigError(f"{self._encoder_name()} returned a length of {longest} steps for features of "
                              f"{features.shape[1]} steps; a length counts the valid steps of its row")

    def pool(self, features: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
             host_lengths: Sequence[int] | None = None) -> torch.Tensor:
        """The LSTM over the encoder's output, pooled as the head asks."""
        if self.head.pooling == "last":  # packed batches: straight from the final state (LSTMCore.last_summary)
            last = self.core.last_summary(features, lengths, stream=stream, host_lengths=host_lengths)
            if last is not None:
                return last
        outputs, _ = self.core(features, lengths, stream=stream, host_lengths=host_lengths)  # (B, T', D)
        return summarise(outputs, lengths, self.head.pooling, self.core.num_directions)

    def _step(self, batch: Batch, split: str) -> torch.Tensor:
        if split == "train":
            return self._training_loss(batch)
        outputs, lengths = self(batch.inputs, batch.lengths, stream=split, host_lengths=batch.host_lengths)
        self.head.check(lengths, batch)
        loss = self.head.loss(outputs, lengths, batch)
        self.head.update_metrics(self.metrics[split], outputs, lengths, batch)
        if split == self.figure_split and self.figure_metrics is not None:
            self.head.update_metrics(self.figure_metrics, outputs, lengths, batch)
        self.losses[split].update(loss.detach(), weight=self.head.loss_weight(outputs, lengths, batch))
        name = self.test_name if split == "test" else split
        self.log(f"{name}/loss", self.losses[split], batch_size=len(batch))
        self.log_dict(self.metrics[split], prog_bar=split == "val", batch_size=len(batch))
        return loss

    def _training_loss(self, batch: Batch) -> torch.Tensor:
        """The head's training loss, plus the L1 penalty and the (virtual) adversarial terms when they are on."""
        features, lengths, host = self.encode(batch.inputs, batch.lengths, batch.host_lengths)
        self.head.check(lengths, batch)  # once per batch: the adversarial pass below computes a second loss
        perturbed = self.adversarial > 0 or self.virtual_adversarial > 0
        if perturbed and not features.requires_grad:  # an encoder without weights (spectrogram)
            features = features.detach().requires_grad_()
        pooled = self.pool(features, lengths, stream="train", host_lengths=host)
        clean = self.head.training_loss(pooled, lengths, batch)
        loss = clean
        if self.l1 > 0:
            # trained weight matrices only: a frozen part (lr_scale 0, freeze) would add a constant
            loss = loss + self.l1 * sum(p.abs().sum() for p in self.parameters() if p.dim() > 1 and p.requires_grad)
        self.log("train/loss", loss, batch_size=len(batch))  # shown by callbacks.LossProgressBar, read without a wait
        if self.adversarial > 0:
            moved = features + worst_direction(clean, features, self._grad_scaler()) * self.adversarial
            worst = self.head.training_loss(self.pool(moved, lengths, host_lengths=host), lengths, batch)
            self.log("train/adversarial_loss", worst, batch_size=len(batch))
            loss = loss + worst
        if self.virtual_adversarial > 0:
            virtual = virtual_adversarial_loss(self, features, lengths, host, self.head(pooled, lengths).detach(),
                                               self.virtual_adversarial, self._grad_scaler())
            self.log("train/virtual_adversarial_loss", virtual, batch_size=len(batch))
            loss = loss + virtual
        return loss

    def _grad_scaler(self) -> Any:
        """The run's GradScaler under 16-mixed (the adversarial directions are taken of the scaled loss)."""
        return getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    @torch.no_grad()  # Lightning's loop runs it without gradients; a call from Python (notebooks) does too
    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        outputs, lengths = self(batch.inputs, batch.lengths, host_lengths=batch.host_lengths)
        return self.head.decode(outputs, lengths)

    # Carried LSTM state (stateful=true) starts fresh at every epoch of every loop.
    def reset_state(self, stream: str) -> None:
        self.core.reset_state(stream)

    def on_train_epoch_start(self) -> None:
        self.reset_state("train")

    def on_validation_epoch_start(self) -> None:
        self.reset_state("val")
        # heads learn decision values (an anomaly threshold) on the validation split while fitting
        # only: ``lstmkit eval split=val`` scores the stored ones, as test and predict do
        # (not the sanity check's batches: they would choose it from the untrained model's scores, and it
        # would stay whenever no real validation followed: check_val_every_n_epoch, max_time)
        self.head.fitting = self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking
        # eval split=val draws the test loop's figures of the val split (it wrote no plots/ at all)
        self.figure_split = "val" if self.trainer.state.fn == TrainerFn.VALIDATING else "test"
        if self.figure_split == "val" and self.figure_metrics is not None:
            self.figure_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        if self.figure_split == "val":
            self._save_figures("val")

    # what test-time adaptation (lstmkit.adaptation.AdaptToScoredData: adapt, self_train) may change
    def encoders(self) -> list[nn.Module]:
        """The encoder(s) whose inputs this model normalises (an ensemble: each member's)."""
        return [self.encoder]

    def check_adaptable(self) -> None:
        """``adapt=true`` before any work: a ConfigError unless every encoder keeps statistics to re-estimate."""
        for encoder in self.encoders():
            if not hasattr(encoder, "check_adapt"):
                raise ConfigError(f"adapt=true: the {type(encoder).__name__} encoder keeps no running "
                                  "normalisation statistics to re-estimate (the speech encoder with "
                                  "encoder.normalise=global|both does)")
            encoder.check_adapt()  # its own settings (the speech encoder: normalise=global|both)

    def trained_models(self) -> list[SequenceModel]:
        """The models whose weights self-training tunes (an ensemble: each member)."""
        return [self]

    def setup(self, stage: str) -> None:
        if self.trainer.is_global_zero:
            log_in_spawned_process()

    def on_test_epoch_start(self) -> None:
        self.reset_state("test")
        self.figure_split = "test"
        if self.figure_metrics is not None:
            self.figure_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self._save_figures(self.test_name)

    def _save_figures(self, split: str) -> None:
        """The head's figures of ``split`` under ``plots/``: the test loop's as ``<name>.png`` (eval split=all's
        too), the val split's as ``val_<name>.png``, so that a run folder's test plots keep their names."""
        if self.figure_metrics is None or self.trainer.sanity_checking:
            return
        self.head.figure_split = split
        figures = self.head.figures(self.figure_metrics)  # computed on every rank (metric sync)
        if split == "val":
            figures = {f"val_{name}": fig for name, fig in figures.items()}
        if figures and self.trainer.is_global_zero:
            save_and_log(figures, self.trainer.default_root_dir, self.loggers, step=self.global_step)

    # The W&B run id travels with the checkpoint so that a resumed run continues the same run.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = str(logger.version)
        if self.schedule_steps is not None:
            checkpoint["schedule_steps"] = self.schedule_steps
        if self._trainer is not None:
            save_plateau_as_stepped(self._trainer, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # read before configure_optimizers when a run resumes (Lightning restores the module first)
        self.resumed_schedule_steps = checkpoint.get("schedule_steps")

    # -- optimisation -----------------------------------------------------------------------
    def _parts(self) -> dict[str, list[nn.Parameter]]:
        """Each part's own parameters; a tied one (an LM's output layer is its embedding) goes to the first."""
        parts: dict[str, list[nn.Parameter]] = {}
        seen: set[int] = set()
        for part in self.PARTS:
            parts[part] = [p for p in getattr(self, part).parameters() if id(p) not in seen]
            seen.update(id(p) for p in parts[part])
        return parts

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups: weight matrices decay, biases and norms do not; each part at its lr_scale.

        Parts with the same scale share their groups, so the default (every scale 1) gives the two
        groups of a checkpoint written before lr_scale existed, and ``resume`` still loads it. A part
        scaled to 0 is frozen and not handed to the optimiser.
        """
        parts = self._parts()
        parts_at: dict[float, list[str]] = {}
        for part in parts:
            scale = self.lr_scale.get(part, 1.0)
            if scale > 0:
                parts_at.setdefault(scale, []).append(part)
        groups: list[dict[str, Any]] = []
        for scale, names in parts_at.items():
            params = [p for part in names for p in parts[part] if p.requires_grad]
            # "name" labels the group's learning rate on the dashboards (LearningRateMonitor);
            # "lr_scale" lets a schedule scale its floor with the group (optim.plateau)
            prefix = "" if len(parts_at) == 1 else "+".join(names) + "/"
            extra: dict[str, Any] = {"lr": lr * scale} if scale != 1.0 else {}
            extra["lr_scale"] = scale
            groups += [{"params": [p for p in params if p.dim() > 1], "name": f"{prefix}decay", **extra},
                       {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0,
                        "name": f"{prefix}no_decay", **extra}]
        return [group for group in groups if group["params"]]

    def on_train_start(self) -> None:
        continue_rebuilt_schedules(self.trainer, self.resumed_schedule_steps, self.schedule_steps)

    def configure_optimizers(self) -> Any:
        spec = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "_partial_": True})
        lr = spec.get("lr")
        if lr is None:  # the optimiser's own default learning rate, from its signature
            factory = build(spec)
            default = inspect.signature(getattr(factory, "func", factory)).parameters.get("lr")
            if default is None or default.default is inspect.Parameter.empty:
                raise ConfigError(f"optimizer.lr: {spec.get('_target_')} has no default learning rate; set one")
            lr = default.default
        groups = self.param_groups(float(lr))
        if spec.get("fused") and self._trainer is not None and "mixed" in str(self.trainer.precision):
            # Lightning's mixed-precision plugin refuses to clip the gradients of a fused optimizer
            # (it would unscale them itself), so mixed-precision runs use the foreach kernel
            spec["fused"] = False
        optimizer = build(spec)(groups)
        if not self.hparams.scheduler:
            return optimizer
        sched_spec = dict(self.hparams.scheduler)
        interval = sched_spec.pop("interval", "step")
        total = float(self.trainer.estimated_stepping_batches) if interval == "step" else float(
            self.trainer.max_epochs or 1
        )
        target = str(sched_spec.get("_target_", ""))
        if target in SPREAD_OVER_RUN:
            self.schedule_steps = check_schedule_length(target.rsplit(".", 1)[-1], total, self.resumed_schedule_steps,
                                                        self.trainer)
        total = int(total) if math.isfinite(total) else 1
        kwargs: dict[str, Any] = {}
        if target.endswith(".plateau"):
            kwargs["mode"] = self.monitor_mode
        scheduler = build(sched_spec)(optimizer, total_steps=max(1, total), **kwargs)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config.update(interval="epoch", monitor=self.monitor)
        return {"optimizer": optimizer, "lr_scheduler": config}
