"""``lstmkit train``: build data, model, callbacks, loggers and trainer from the config; fit; test."""

from __future__ import annotations

import contextlib
import math
import os
import random
import zlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from lstmkit.adaptation import AdaptToScoredData
from lstmkit.build import TRUST_ENV, build, config_targets, is_trusted, locate, trust
from lstmkit.callbacks import ReseedEachEpoch, StopOnNonFiniteLoss
from lstmkit.checkpoints import check_resumable, read_checkpoint
from lstmkit.commands.common import (
    TYPED_GROUPS,
    bool_option,
    check_device,
    check_option_types,
    config_stage,
    instantiate_group,
    int_option,
    log,
    plain,
    read_metrics,
    report,
    scalar_metrics,
)
from lstmkit.data.base import as_list
from lstmkit.errors import ConfigError, DataError, LstmkitError, SweepError
from lstmkit.loggers import configure_wandb, purge_resumed_tensorboard, trim_csv_logs
from lstmkit.module import SequenceModel
from lstmkit.resume import job_overrides, override_key, resolve_ckpt_path, run_files  # noqa: F401 - re-exported
from lstmkit.self_train import SelfTraining
from lstmkit.warm_start import init_from_checkpoint, init_reverse_from_checkpoint


def check_splits(datamodule: Any, cfg: DictConfig) -> None:
    """Refuse empty train / val (and test, when it runs) splits before Lightning meets them.

    Why: a file of five rows at ``val_fraction=0.1`` has no val rows; Lightning then either stops
    with "early stopping conditioned on metric val/acc which is not available" after an epoch or,
    without callbacks, trains and reports nothing.
    """
    needed = ["train", "val"] if cfg.get("train", True) else []
    needed += ["test"] if cfg.get("test", True) else []
    for name in needed:
        if name not in datamodule.splits or len(datamodule.splits[name]) == 0:  # absent (an empty next-word part)
            raise DataError(f"the {name} split is empty ({datamodule.split_sizes()} examples); give more data, or set "
                            f"data.val_fraction / data.test_fraction so that every split gets examples"
                            + (" (or test=false)" if name == "test" else ""),
                            path=getattr(datamodule, "path", None))


def check_monitor(monitor: str, model: SequenceModel) -> None:
    """Refuse a ``monitor=val/<name>`` that the model does not log, before training.

    Why: Lightning's callbacks find a misspelt monitor only after the first validation, a whole
    epoch in (every trial of a sweep spent it). A validation metric is ``val/loss`` or one of the head's
    metrics (``val/acc_best`` is written to ``metrics.json`` after training, never logged during it);
    other monitors (``train/loss``) are left to Lightning's check. In a sweep it stops the sweep at once,
    unless a job's overrides choose its task, experiment or head: a sweep over tasks may hold trials the
    monitor fits and trials it does not, and only these fail (each recorded).
    """
    split, _, name = monitor.partition("/")
    if split != "val":
        return
    logged = ["loss", *model.head.metrics().keys()]
    if name not in logged:
        message = (f"monitor={monitor} is not a metric this model logs; its validation metrics are "
                   f"{', '.join('val/' + k for k in logged)}")
        per_trial = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and any(
            override_key(str(o)) in ("task", "experiment", "head") for o in HydraConfig.get().overrides.task)
        raise (ConfigError if per_trial else SweepError)(message)


def monitor_mode(monitor: str, model: SequenceModel) -> str:
    """Whether ``monitor`` is maximised or minimised, when ``monitor_mode`` is not given.

    Why: the head's mode belongs to the head's metric. ``monitor=val/loss`` with a classifier
    (``max``) kept the epoch with the *highest* loss as best, tested it, and an Optuna sweep
    maximised the loss. Losses are minimised; the head's metrics say it themselves (torchmetrics'
    ``higher_is_better``). A name that is neither keeps the head's mode: if it is not logged at
    all, Lightning's check names the logged metrics.
    """
    if monitor == model.head.monitor:
        return model.head.mode
    name = monitor.split("/", 1)[-1].removesuffix("_best")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    metrics = model.head.metrics()
    higher = getattr(metrics[name], "higher_is_better", None) if name in metrics else None
    return model.head.mode if higher is None else ("max" if higher else "min")


def check_sweep_direction(cfg: DictConfig) -> None:
    """Refuse an Optuna sweep whose ``direction`` opposes the monitored metric's mode.

    The presets fix the direction of their task's metric (``sentiment_optuna``: maximize val/acc);
    with another ``monitor`` or ``task`` the sweep would otherwise optimise the wrong way silently.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    direction = HydraConfig.get().sweeper.get("direction")
    if not isinstance(direction, str):
        return  # the basic sweeper (no objective), or a multi-objective study
    wanted = "maximize" if cfg.monitor_mode == "max" else "minimize"
    if direction.lower() != wanted:
        raise SweepError(f"hydra.sweeper.direction={direction}, but monitor={cfg.monitor} is to be "
                          f"{wanted}d (monitor_mode={cfg.monitor_mode}); set hydra.sweeper.direction={wanted}")


# trainer options Lightning takes without checking their type (a string fails mid-fit, 2.5 as a bare assert)
TRAINER_WHOLE = ("max_epochs", "min_epochs", "max_steps", "min_steps", "accumulate_grad_batches",
                 "log_every_n_steps", "check_val_every_n_epoch", "num_sanity_val_steps")
TRAINER_NUMBERS = ("gradient_clip_val", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                   "val_check_interval")


def check_trainer_numbers(cfg: DictConfig) -> None:
    """One line naming the key for a non-numeric trainer option (``trainer.max_epochs=abc``)."""
    for key in (*TRAINER_WHOLE, *TRAINER_NUMBERS):
        value = cfg.trainer.get(key)
        if value is None:
            continue
        whole = key in TRAINER_WHOLE
        if not _is_number(value, whole):
            raise ConfigError(f"trainer.{key}={value!r}: expected " + ("a whole number" if whole else "a number"))
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and clip < 0:  # Lightning reads it as "no clipping", without a word
        raise ConfigError(f"trainer.gradient_clip_val={clip}: expected a number >= 0 (a gradient norm; 0 or null: "
                          "no clipping)")


def check_experiment_task(cfg: DictConfig) -> None:
    """Refuse an experiment whose task another config group replaced.

    Why: ``experiment=ecg_unsupervised_real hparams_search=ecg_optuna`` composed the search
    preset's ``task: ecg`` over the experiment's ``ecg_unsupervised``: the run kept the
    experiment's name and data settings but trained the supervised head, with no word.
    """
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    experiment = choices.get("experiment")
    if not experiment:
        return
    from lstmkit.cli import config_dir

    file = Path(config_dir()) / "experiment" / f"{experiment}.yaml"
    if not file.is_file():
        return
    defaults = OmegaConf.to_container(OmegaConf.load(file)).get("defaults") or []  # type: ignore[union-attr]
    wanted = next((d["override /task"] for d in defaults if isinstance(d, dict) and "override /task" in d), None)
    if wanted and choices.get("task") != wanted:
        search = choices.get("hparams_search")
        raise SweepError(  # wrong for every trial of a sweep too: it stops at once
            f"experiment={experiment} is a recipe for task={wanted}, but the composed task is "
            f"{choices.get('task')}{f' (set by hparams_search={search})' if search else ''}; "
            f"add task={wanted} to keep the experiment's task")


def check_strategy(cfg: DictConfig) -> None:
    """Refuse the one combination that silently goes wrong: script-relaunching DDP inside a sweep.

    Lightning's ``ddp`` re-executes the command line for every extra rank; inside a Hydra
    multirun each rank would then run the whole sweep itself (with Optuna, different trials in
    one process group). ``ddp_spawn`` (``trainer=ddp_cpu``) or the submitit launcher work.
    """
    strategy = str(cfg.trainer.get("strategy", "auto"))
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if HydraConfig.get().mode == RunMode.MULTIRUN and strategy == "ddp" and "submitit" not in launcher:
        raise SweepError(  # wrong for every trial: the sweep stops at once rather than fail each in turn
            "trainer.strategy=ddp cannot run inside a Hydra multirun (each rank would re-run the sweep); "
            "use trainer.strategy=ddp_spawn, hydra/launcher=submitit_slurm, or single runs"
        )


def build_model(cfg: DictConfig, datamodule: Any) -> SequenceModel:
    return SequenceModel(
        spec=datamodule.spec.to_dict(),
        encoder=plain(cfg.encoder),
        core=plain(cfg.model),
        head=plain(cfg.head),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        l1=_number(cfg, "l1"),
        lr_scale=plain(cfg.get("lr_scale")) or None,
        adversarial=_number(cfg, "adversarial"),
        virtual_adversarial=_number(cfg, "virtual_adversarial"),
        data=absolute_data_path(plain(cfg.data)),
        task=str(cfg.task_name),
    )


def _number(cfg: DictConfig, key: str) -> float:
    """A top-level penalty strength as a float (absent: 0); ``adversarial=abc`` or ``l1=null`` is refused by name
    rather than failing in ``float()`` with no key in the message."""
    value = cfg.get(key, 0.0)
    if not _is_number(value):
        raise ConfigError(f"{key}={value!r}: expected a number >= 0 (0 = off)")
    return float(value)


def _is_number(value: Any, whole: bool = False) -> bool:
    """A YAML number (a whole one if ``whole``); ``true`` is a bool in YAML and ``1e-3`` a float, not text."""
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


def absolute_data_path(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data settings stored in the checkpoint, with ``path`` made absolute.

    Why: ``lstmkit eval`` / ``predict`` re-read the data from the checkpoint's settings, and a
    relative path (``data.path=data/reviews.csv``) would be read from wherever they run.
    """
    if not data or not data.get("path"):
        return data
    path = Path(str(data["path"])).expanduser()
    return {**data, "path": str(path.resolve())} if path.exists() else data


def warm_start(model: SequenceModel, warm: Any, resumed: str | None) -> None:
    """``init_from``: the reverse direction from a backward LM, then the rest from ``ckpt_path``.

    Nothing happens when a run resumes (``resumed``: its checkpoint restores every weight).
    """
    paths = {key: warm.get(key) for key in ("ckpt_path", "reverse_ckpt_path") if warm.get(key)}
    if not paths:
        return
    if resumed:
        log.info("init_from ignored: resuming %s restores every weight", resumed)
        return
    for key, path in paths.items():
        if not Path(path).expanduser().exists():
            raise ConfigError(f"init_from.{key}={path}: file not found")
    filled: list[str] = []
    if "reverse_ckpt_path" in paths:
        filled = init_reverse_from_checkpoint(model, paths["reverse_ckpt_path"]).copied
        if "ckpt_path" not in paths:
            log.warning("init_from.reverse_ckpt_path without init_from.ckpt_path: the reverse direction was "
                        "trained on its language model's embedding, which this model does not start from")
    if "ckpt_path" in paths:
        # init_from.include=encoder (no brackets) is one part, not the letters e, n, c...
        init_from_checkpoint(model, paths["ckpt_path"], as_list(warm.get("include")), filled=filled)


DRAWN_SEED_ENV = "LSTMKIT_DRAWN_SEED"


def drawn_seed() -> int:
    """The seed of a ``seed=null`` run: drawn at random, but one for all of the run's processes.

    Why: under DDP every rank builds its own data splits and shuffles its own share of them. With a
    seed of its own per rank, a single file splits differently on each rank (one rank's test rows
    train another) and the ranks' shuffled shares overlap (measured: 17 of 23 examples seen in an
    epoch, 7 of them twice). Lightning's ``ddp`` relaunches the command for ranks > 0 with rank 0's
    environment, so rank 0's draw reaches them through ``LSTMKIT_DRAWN_SEED``; tasks that SLURM or
    torchrun start side by side share their job's id instead.
    """
    inherited = os.environ.get(DRAWN_SEED_ENV)
    if inherited is not None and os.environ.get("LOCAL_RANK", "0") != "0":
        return int(inherited)
    for shared in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(shared):
            return zlib.crc32(f"{shared}={os.environ[shared]}".encode()) % 2**31
    seed = random.SystemRandom().randrange(2**31)
    os.environ[DRAWN_SEED_ENV] = str(seed)
    return seed


def checkpointing(callbacks: list[Any], cfg: DictConfig) -> dict[str, Any]:
    """``enable_checkpointing=False`` for the trainer when no checkpoint callback is configured.

    Why: Lightning adds a ``ModelCheckpoint`` of its own when none is given, so ``callbacks=none``
    ("no callbacks, no checkpoints") still wrote ``csv/checkpoints/epoch=N-step=M.ckpt``, and the run
    then said it was "testing the best checkpoint" of a callback that monitors nothing (the last
    epoch's). Now such a run writes no checkpoint and tests its final weights, saying so. A
    ``+trainer.enable_checkpointing=true`` given on the command line is kept.
    """
    if any(isinstance(c, ModelCheckpoint) for c in callbacks) or cfg.trainer.get("enable_checkpointing") is not None:
        return {}
    return {"enable_checkpointing": False}


def best_score(checkpoint: ModelCheckpoint | None) -> float | None:
    """The best monitored value of the run: the callback's, or, when the training ran in spawned
    processes (``ddp_spawn``, which sends back only ``best_model_path``), the one its best
    checkpoint file recorded. Without this a ``ddp_spawn`` sweep was given the last epoch's value."""
    if checkpoint is None:
        return None
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if not checkpoint.best_model_path or not Path(checkpoint.best_model_path).is_file():
        return None
    states = read_checkpoint(checkpoint.best_model_path).get("callbacks") or {}
    for key, state in states.items():
        if (str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor") == checkpoint.monitor
                and state.get("best_model_score") is not None
                and Path(str(state.get("best_model_path"))).name == Path(checkpoint.best_model_path).name):
            return float(state["best_model_score"])
    return None


def stored_seed(checkpoint: dict[str, Any] | None) -> int | None:
    """The seed a checkpoint's run used (``ReseedEachEpoch``'s state; for checkpoints from before
    it kept one, the data seed of its hyperparameters), or ``None``."""
    if not checkpoint:
        return None
    state = (checkpoint.get("callbacks") or {}).get("ReseedEachEpoch")
    if isinstance(state, dict) and isinstance(state.get("seed"), int):
        return int(state["seed"])
    data_seed = ((checkpoint.get("hyper_parameters") or {}).get("data") or {}).get("seed")
    return int(data_seed) if isinstance(data_seed, int) else None


def _switches_and_checkpoint(cfg: DictConfig) -> tuple[str | None, dict[str, Any] | None]:
    """``train`` / ``test`` as booleans in ``cfg``, and the checkpoint a resumed run continues
    (``ckpt_path=`` or ``resume=true``) with its contents, read once (its seed, checks, W&B run id)."""
    resume = bool_option(cfg, "resume")
    for key in ("train", "test"):  # test=maybe was taken for true, train=null for false
        value = bool_option(cfg, key, default=True)
        with open_dict(cfg):
            cfg[key] = value
    requested = cfg.get("ckpt_path") or ("last" if resume else None)
    if requested and not cfg.get("train", True):  # it would test the untrained model it builds, silently
        raise ConfigError(f"train=false with {'ckpt_path=' + str(cfg.ckpt_path) if cfg.get('ckpt_path') else 'resume=true'}: "
                          "train=false tests the model this config builds, untrained; to score a checkpoint use "
                          "lstmkit eval ckpt_path=... (split=val for its val split)")
    ckpt_path = resolve_ckpt_path(requested, cfg)
    resumed = read_checkpoint(ckpt_path) if ckpt_path else None
    if not ckpt_path and cfg.get("train", True) and HydraConfig.initialized():
        folder = Path(HydraConfig.get().runtime.output_dir) / "checkpoints"
        held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if held:  # a fixed hydra.run.dir (or sweep dir) used again without resume
            log.warning("%s already holds checkpoints of an earlier run (%s): this run starts afresh beside them "
                        "(Lightning names its best best-v1.ckpt, and the CSV log goes on), so the folder mixes two "
                        "runs; resume=true continues the earlier run, or give the run another folder",
                        folder.parent, ", ".join(held[:3]))
    return ckpt_path, resumed


def _seed(cfg: DictConfig, resumed: dict[str, Any] | None) -> int:
    """``seed``, else the resumed run's, else a drawn one; kept in cfg (so logged with the hyperparameters)."""
    seed = int_option(cfg, "seed")
    if seed is None:
        seed = stored_seed(resumed)
        if seed is not None:
            log.info("seed=null: resuming with the seed the run drew, %d", seed)
        else:
            seed = drawn_seed()  # shared by every rank
            log.info("seed=null: this run drew seed %d (seed=%d repeats it)", seed, seed)
        with open_dict(cfg):
            cfg.seed = seed
    return seed


def _test_time(cfg: DictConfig, model: SequenceModel) -> AdaptToScoredData | None:
    """``adapt`` and ``self_train``, which act in the test after training: checked before training, not after it."""
    adapt = bool_option(cfg, "adapt")
    if adapt and not cfg.get("test", True):
        log.warning("adapt=true adapts the test after training; with test=false there is none: ignored")
        adapt = False
    elif adapt:
        model.check_adaptable()
    with config_stage("self_train"):
        self_training = SelfTraining.from_config(cfg.get("self_train"))
    if self_training is not None and not cfg.get("test", True):
        log.warning("self_train tunes the model to the test split after training; with test=false there is none: "
                    "ignored")
        self_training = None
    elif self_training is not None:
        model.head.check_self_trainable()
    return AdaptToScoredData(adapt, self_training) if adapt or self_training is not None else None


def _check_optimisation(cfg: DictConfig, model: SequenceModel) -> None:
    """Build the optimiser and schedule once on a stand-in parameter, and settle the monitored metric.

    Why: they are built for real in ``configure_optimizers``, once training has begun; a wrong
    setting would otherwise fail after the data and model are set up, in Lightning's traceback.
    """
    with config_stage("optimizer"):
        optimizer = build(plain(cfg.optimizer))([torch.zeros(1, requires_grad=True)])
    schedule = dict(plain(cfg.get("scheduler")) or {})
    if schedule.get("_target_"):
        schedule.pop("interval", None)
        with config_stage("scheduler"):
            build(schedule)(optimizer, total_steps=10,
                            **({"mode": "min"} if str(schedule["_target_"]).endswith(".plateau") else {}))
    with open_dict(cfg):
        cfg.monitor = cfg.monitor or model.head.monitor
        check_monitor(str(cfg.monitor), model)  # (a SweepError: wrong for every trial, it stops a sweep at once)
        cfg.monitor_mode = cfg.monitor_mode or monitor_mode(str(cfg.monitor), model)
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.monitor_mode!r}: expected min or max")
    check_sweep_direction(cfg)
    model.monitor, model.monitor_mode = str(cfg.monitor), str(cfg.monitor_mode)  # for scheduler=plateau


def _continue_run(cfg: DictConfig, ckpt_path: str, model: SequenceModel, resumed: dict[str, Any]) -> None:
    """A resumed run: the checkpoint fits the model, the CSV rows written after it go, and a
    ``trainer.max_epochs`` the checkpoint has reached already is said (and kept where Lightning accepts it)."""
    check_resumable(ckpt_path, model, resumed)
    if HydraConfig.initialized():  # resumed into the folder it was written in: its CSV rows after it go
        trim_csv_logs(HydraConfig.get().runtime.output_dir, ckpt_path, int(resumed.get("global_step", 0)))
    done, max_epochs = int(resumed.get("epoch", -1)) + 1, cfg.trainer.get("max_epochs")
    if cfg.get("train", True) and isinstance(max_epochs, int) and 0 <= max_epochs <= done:
        log.warning("resuming %s: it has trained %d epoch(s) already, so trainer.max_epochs=%d leaves nothing to "
                    "train%s; raise trainer.max_epochs to train on", ckpt_path, done, max_epochs,
                    " (the test split is still scored)" if cfg.get("test", True) else "")
        with open_dict(cfg):  # Lightning refuses a max_epochs below the checkpoint's epoch: nothing to train
            cfg.trainer.max_epochs = done


def _trainer(cfg: DictConfig, seed: int, ckpt_path: str | None, resumed: dict[str, Any] | None,
             extra: list[L.Callback]) -> L.Trainer:
    """The Trainer with the config's callbacks and loggers, lstmkit's two that every run needs, and ``extra``."""
    callbacks = [*instantiate_group(cfg.get("callbacks")), StopOnNonFiniteLoss(), ReseedEachEpoch(seed), *extra]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    configure_wandb(cfg, resumed)
    loggers = instantiate_group(cfg.get("logger"))
    if ckpt_path and resumed and HydraConfig.initialized():
        purge_resumed_tensorboard(loggers, HydraConfig.get().runtime.output_dir, ckpt_path,
                                  int(resumed.get("global_step", 0)))
    if not loggers:  # nothing to log learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    with config_stage("trainer"):
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                         **checkpointing(callbacks, cfg))
    for logger in trainer.loggers:
        logger.log_hyperparams(plain(cfg))
    return trainer


def _untrained_resume(ckpt_path: str | None, resumed: dict[str, Any] | None, step: int) -> dict[str, float]:
    """A resumed run that trained nothing more (its ``trainer.max_epochs`` reached): the training and
    validation metrics its checkpoint's run wrote, which no epoch logs again; else none.

    Why: ``metrics.json`` was rewritten with the test metrics and ``val/..._best`` alone, losing
    ``val/acc``, ``val/loss``, ``train/loss`` of the run it continued.
    """
    if not ckpt_path or resumed is None or step != int(resumed.get("global_step", -1)):
        return {}
    earlier = Path(ckpt_path).parent.parent / "metrics.json"
    if earlier.is_file():
        return {k: v for k, v in read_metrics(earlier).items() if not k.startswith("test/")}
    # an interrupted run writes no metrics.json: its CSV log holds them, each metric's last value
    logged = sorted(Path(ckpt_path).parent.parent.glob("csv/**/metrics.csv"))
    return _last_logged(logged[-1]) if logged else {}


def _last_logged(metrics_csv: Path) -> dict[str, float]:
    """Each training and validation metric's last value in a CSV logger's ``metrics.csv`` (not the step,
    epoch or learning-rate columns, which ``metrics.json`` does not hold either)."""
    import csv

    last: dict[str, float] = {}
    with contextlib.suppress(OSError, csv.Error), open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key and value not in (None, "") and key not in {"step", "epoch"} and not key.startswith(("lr", "test/")):
                    with contextlib.suppress(ValueError):
                        last[key] = float(value)
    return last


class _Stepped(L.Callback):
    """Whether this process trained a batch: a run refused inside ``fit`` before one (a schedule that cannot
    be rebuilt, a scheduler without a run length) leaves a folder of logger files and copied checkpoints,
    which the job wrapper removes (``lstmkit.cli``), so that ``resume=true`` never takes it for a run."""

    def __init__(self) -> None:
        self.any = False

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.any = True


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, model: SequenceModel, datamodule: Any,
                  ckpt_path: str | None, resumed: dict[str, Any] | None) -> float | None:
    """Fit (continuing ``ckpt_path``), test the best checkpoint, write ``metrics.json``; the monitored
    metric's best value (a sweep's objective; NaN where the metric is undefined on the split, which the job
    wrapper records as a failed trial), ``None`` when there is none."""
    out_dir = HydraConfig.get().runtime.output_dir
    log.info("run directory: %s", out_dir)
    metrics: dict[str, float] = {}
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    monitored = str(cfg.monitor)
    if cfg.get("train", True):
        stepped = _Stepped()
        trainer.callbacks.append(stepped)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except LstmkitError as err:  # refused inside fit (a schedule's length): the job wrapper may drop the folder
            err.nothing_trained = not stepped.any  # type: ignore[attr-defined]
            raise
        metrics.update(_untrained_resume(ckpt_path, resumed, trainer.global_step))
        metrics.update(scalar_metrics(trainer.callback_metrics))
        score = best_score(checkpoint)
        last = metrics.get(str(cfg.monitor))
        if score is not None and math.isinf(score) and last is not None and math.isnan(last):
            score = math.nan  # Lightning's ModelCheckpoint keeps a NaN metric as its worst value, +-inf: no divergence
        if score is not None:
            monitored = f"{cfg.monitor}_best"
            metrics[monitored] = score
    if cfg.get("test", True):
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if best and checkpoint is not None and checkpoint.monitor:
            log.info("testing the best checkpoint %s", best)
        elif best:  # e.g. Lightning's own callback (+trainer.enable_checkpointing=true with callbacks=none)
            log.info("testing the last checkpoint %s (its checkpoint callback monitors no metric, so there is no "
                     "best one)", best)
        elif cfg.get("train", True):
            log.info("testing the final weights (no checkpoint callback, e.g. callbacks=none: no best checkpoint)")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(scalar_metrics(trainer.callback_metrics))
    report(metrics, out_dir, title=f"{cfg.task_name}: final metrics")
    return metrics.get(monitored)


def _trust_own_code(cfg: DictConfig) -> None:
    """The config's own encoder, head, data, optimiser and schedule may be built (the user runs that code:
    the modules of those targets are trusted in this process, no wider); said when its checkpoints will
    need ``LSTMKIT_TRUSTED_MODULES`` for the other commands, which rebuild encoder, head and data."""
    groups = ("encoder", "head", "data", "optimizer", "scheduler")
    targets = {group: [t for t in config_targets(plain(cfg.get(group))) if not is_trusted(t)] for group in groups}
    outside = sorted({t for found in targets.values() for t in found})
    if not outside:
        return
    for target in outside:
        trust(target.rpartition(".")[0] or target)
        with contextlib.suppress(Exception):  # an unimportable target fails where it is built, with its message
            trust(getattr(locate(target), "__module__", None) or target)  # a re-exported class: where it lives
    stored = sorted({t for group in ("encoder", "head", "data") for t in targets[group]})
    if stored and os.environ.get("LOCAL_RANK", "0") == "0":
        modules = ",".join(sorted({t.rpartition(".")[0] or t for t in stored}))
        log.warning("this run builds code outside lstmkit (%s); its checkpoints name that code, so lstmkit eval, "
                    "predict and export (and lstmkit.checkpoints.load_model) load them with %s=%s set",
                    ", ".join(stored), TRUST_ENV, modules)


def train(cfg: DictConfig) -> float | None:
    """Train (and test) one configuration; returns the monitored validation metric."""
    _trust_own_code(cfg)
    ckpt_path, resumed = _switches_and_checkpoint(cfg)
    seed = _seed(cfg, resumed)
    L.seed_everything(seed, workers=True)
    check_option_types({group: plain(cfg.get(group)) for group in TYPED_GROUPS})
    check_experiment_task(cfg)
    with config_stage("data"):
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup("fit")
    check_splits(datamodule, cfg)
    with config_stage("model (encoder / model / head)"):
        model = build_model(cfg, datamodule)
    adapting = _test_time(cfg, model)
    _check_optimisation(cfg, model)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is not None and hydra_cfg.mode != RunMode.MULTIRUN and \
            str(hydra_cfg.launcher.get("_target_", "")).endswith("SlurmLauncher"):
        log.warning("cluster=slurm submits the jobs of a sweep (lstmkit train -m ...); without -m this run trains "
                    "here, on this machine, and nothing is submitted")
    check_strategy(cfg)
    check_trainer_numbers(cfg)
    check_device(cfg)
    if ckpt_path and resumed:
        _continue_run(cfg, ckpt_path, model, resumed)
    if cfg.get("train", True):
        warm_start(model, cfg.get("init_from") or {}, ckpt_path)
    trainer = _trainer(cfg, seed, ckpt_path, resumed, [adapting] if adapting else [])
    return _fit_and_test(cfg, trainer, model, datamodule, ckpt_path, resumed)
