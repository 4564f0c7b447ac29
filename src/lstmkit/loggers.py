"""Lightning's loggers as lstmkit runs need them: across processes, resumes and sweeps.

* :class:`CSVLogger` appends across the processes of one run (``ddp_spawn``, fit then test);
* :class:`TensorBoardLogger` fills TensorBoard's HParams tab (the config against the monitored
  metric) and keeps ``hparams.yaml`` that of the latest attempt of a run resumed in its folder;
* :class:`WandbLogger` numbers W&B's steps by the trainer's global step, so a resumed run's
  steps continue the checkpoint's also offline, where W&B cannot ask its server where the run was;
* :func:`configure_wandb` names the W&B run: the command as its job type, a sweep trial by its
  number and swept values, in a group per sweep, and the checkpoint's run id when resuming.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lstmkit.files import write_atomic
from lstmkit.resume import override_key

log = logging.getLogger("lstmkit")


def trim_csv_logs(run_dir: str | Path, ckpt_path: str | Path, step: int) -> None:
    """Drop the CSV rows of steps ``step`` on when a run resumes in the folder it was written in
    (``step``: the checkpoint's ``global_step``; Lightning logs the step that made it ``k`` at ``k - 1``).

    Why: a resume normally gets a new run folder, but a fixed ``hydra.run.dir`` (torchrun, a
    scheduler's job folder) resumes in the same one, and :class:`CSVLogger` keeps the file: the
    steps between the checkpoint and the crash would be logged twice.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir not in Path(ckpt_path).resolve().parents:
        return
    for path in run_dir.glob("csv/**/metrics.csv"):
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or "step" not in rows[0]:
            continue
        at = rows[0].index("step")
        kept = [rows[0], *(r for r in rows[1:] if not (len(r) > at and r[at].isdigit() and int(r[at]) >= step))]
        if len(kept) < len(rows):
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            write_atomic(path, text.getvalue())  # a kill mid-write leaves the old file, not half of it
            log.info("%s: dropped %d row(s) of step %d on, which this resume trains again", path,
                     len(rows) - len(kept), step)


def purge_resumed_tensorboard(loggers: list[Logger], run_dir: str | Path, ckpt_path: str | Path, step: int) -> None:
    """Have TensorBoard discard the events of steps ``step`` on when a run resumes in its own folder.

    Why: as for the CSV (:func:`trim_csv_logs`), the steps between the checkpoint and the crash are
    trained again and would be drawn twice, a zigzag in every curve. TensorBoard's own mechanism
    is ``SummaryWriter(purge_step=...)``: the new event file starts with a marker, and the reader
    drops the earlier events at or after that step.
    """
    if Path(run_dir).resolve() not in Path(ckpt_path).resolve().parents:
        return
    for logger in loggers:
        if isinstance(logger, _TensorBoardLogger) and logger._experiment is None:  # the writer is made lazily
            logger._kwargs.setdefault("purge_step", step)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, made safe for ``ddp_spawn`` and for fit-then-test in new processes.

    Lightning's writer deletes an existing ``metrics.csv`` when it is created and forgets the
    header it wrote in another process; with ``ddp_spawn`` every ``fit``/``test`` starts new
    processes, so the test phase erased (or crashed on) the training metrics. Each lstmkit run
    has its own fresh directory, so this writer keeps the file and continues its header.
    """

    def _check_log_dir_exists(self) -> None:
        return

    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends across processes of one run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def hparams_metrics(monitor: str) -> list[str]:
    """The metrics TensorBoard's HParams tab shows for a run monitoring ``monitor``: it, and its
    test-split twin (``val/acc`` -> ``test/acc``: train scores the best checkpoint on the test split)."""
    names = [monitor]
    if monitor.startswith("val/"):
        names.append("test/" + monitor.removeprefix("val/"))
    return names


class TensorBoardLogger(_TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with a filled HParams tab and a current ``hparams.yaml``.

    HParams: ``default_hp_metric: false`` (no placeholder ``hp_metric`` curve at -1) left the tab
    empty, since Lightning writes its summary only with metrics. When the run's config is logged (the
    parameters hold its ``monitor``), the summary is written with the monitored metric and its test
    twin (:func:`hparams_metrics`) as the tab's metrics, Lightning's documented
    ``log_hyperparams(params, metrics=...)`` less the initial values it would log: their values are
    the run's own ``val/...`` and ``test/...`` scalars, so no placeholder point either.

    ``hparams.yaml``: Lightning writes it only when it is missing, so a run resumed in its own folder
    (a fixed ``hydra.run.dir``) kept the first attempt's values; it is rewritten (whole, then
    swapped in) with the hyperparameters of the attempt now running, once after each
    ``log_hyperparams``: Lightning calls ``save()`` after every ``log_metrics``, and a text model's
    hyperparameters hold its vocabulary (PTB's 10,000 words took 0.8 s to write as YAML, every
    ``trainer.log_every_n_steps`` steps).
    """

    _hparams_written = True  # no hyperparameters logged since hparams.yaml was last written

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics, step)
        self._hparams_written = False
        monitor = params.get("monitor") if isinstance(params, Mapping) else None
        if metrics is None and isinstance(monitor, str) and monitor:
            from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
            from torch.utils.tensorboard.summary import hparams

            flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
            writer = self.experiment._get_file_writer()
            for summary in hparams(flat, dict.fromkeys(hparams_metrics(monitor), 0.0)):  # the names only
                writer.add_summary(summary)

    @rank_zero_only
    def save(self) -> None:
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        missing = not path.is_file()
        super().save()  # writes hparams.yaml when missing
        if missing and path.is_file():
            self._hparams_written = True
        if self._hparams_written or not self.hparams or not path.parent.is_dir():
            return
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            save_hparams_to_yaml(partial, self.hparams)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        self._hparams_written = True


class WandbLogger(_WandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose W&B step (``_step``) is the trainer's global step.

    Why: Lightning logs each call as the next W&B step (0, 1, 2... whatever the trainer's step), and
    a run resumed offline starts its new run folder at step 0 again: W&B cannot ask its server where
    the run stopped. With the global step as the W&B step, the resumed folder's steps continue the
    checkpoint's (and online, where W&B resumes the run, they continue the server's). A step lower
    than W&B's (a call without a step, e.g. an image, advanced it; an online run resumed from a
    checkpoint older than its last logged step) is logged as W&B's next step, a row of its own, as
    Lightning logs every call: W&B drops data logged to an earlier step, and logged at W&B's current
    step the calls of all those trainer steps fell into one row, each overwriting the one before.
    ``trainer/global_step``, the charts' x-axis (Lightning's ``define_metric``), always holds the
    trainer's own step.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes anonymous=None: W&B warned on every run
            self._wandb_init.pop("anonymous", None)     # "The anonymous setting has no effect"

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None or self._wandb_init.get("sync_tensorboard"):
            super().log_metrics(metrics, step)
            return
        run = self.experiment
        current = getattr(run, "step", 0)
        data = {**_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), "trainer/global_step": step}
        if int(step) >= (current if isinstance(current, int) else 0):
            run.log(data, step=int(step))
        else:  # W&B is past this step: its next one
            run.log(data)


WANDB_NAME_LENGTH = 128  # a trial's name is cut to this many characters (W&B shows names on one line)


def configure_wandb(cfg: DictConfig, resumed: dict[str, Any] | None = None, job_type: str = "train") -> None:
    """Fill in what ``logger.wandb`` leaves ``null``: the run's job type, and in a sweep its name and group;
    when resuming a checkpoint (``resumed``) the W&B run it was logged to.

    * ``job_type``: the command (``train``, ``eval``); eval runs were logged as ``train``;
    * a sweep trial (``-m``) is named ``<name>-<job number>`` and its swept values
      (``sentiment-3 optimizer.lr=0.003``: :func:`trial_name`), where every trial had the task's name,
      and grouped by its sweep (the sweep folder's name);
    * ``resumed``: the checkpoint's W&B run id, with ``resume: allow`` (online W&B continues that run).
    """
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg:
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    with open_dict(cfg):
        if not wandb_cfg.get("job_type"):
            wandb_cfg.job_type = job_type
        if not wandb_cfg.get("name"):
            wandb_cfg.name = str(cfg.get("task_name") or job_type)
        if hydra is not None and hydra.mode == RunMode.MULTIRUN:
            wandb_cfg.name = trial_name(str(wandb_cfg.name), hydra)
            if not wandb_cfg.get("group"):
                wandb_cfg.group = Path(hydra.sweep.dir).name
        if resumed and not wandb_cfg.get("id"):
            run_id = resumed.get("wandb_run_id")
            if run_id:
                wandb_cfg.id = run_id
                wandb_cfg.resume = "allow"


def trial_name(name: str, hydra: DictConfig) -> str:
    """``<name>-<job number>`` and the job's values of the swept keys: ``sentiment-3 optimizer.lr=0.003``
    (fractions to 4 significant digits).

    Swept keys: those with several values on the sweep's command line (``-m optimizer.lr=1e-3,3e-3``,
    read from the sweep's ``multirun.yaml``) and a search's parameters (``hydra.sweeper.params``,
    the Optuna presets'), less those the sweep's command line fixes to one value. When none is found,
    all the job's overrides.
    """
    overrides = [str(o) for o in hydra.overrides.task]
    swept = _swept_keys(hydra)
    shown = [_short(o) for o in overrides if override_key(o) in swept] if swept else overrides
    text = f"{name}-{hydra.job.num}" + (f" {' '.join(shown)}" if shown else "")
    return text if len(text) <= WANDB_NAME_LENGTH else text[:WANDB_NAME_LENGTH - 1] + "…"


def _short(override: str) -> str:
    """``key=value`` with a fraction to 4 significant digits (Optuna's ``optimizer.lr=0.00024156772025296256``)."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if "." in value or "e" in value.lower() else override


def _swept_keys(hydra: DictConfig) -> set[str]:
    """The keys whose values vary in this sweep: a search's parameters (``hydra.sweeper.params``) and the
    sweep command line's sweeps (``a=1,2``, ``interval(...)``), less the keys that command line fixes.

    Why less those: ``hparams_search=sentiment_optuna model.num_layers=1`` fixes ``model.num_layers`` (the
    Optuna and basic sweepers take the command line's value over the search space's), yet every trial's
    name listed ``model.num_layers=1``. A parameter the preset itself fixes (``key: 3``) is not swept either.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Override

    parser = OverridesParser.create()

    def parsed(text: str) -> Override | None:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # noqa: BLE001 - Hydra reports a bad override itself
            return None
        return override

    params = OmegaConf.select(hydra, "sweeper.params", default=None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=False)  # as the sweeper reads them
    keys = set()
    for key, value in params.items():
        override = parsed(f"{key}={value}")
        if override is None or override.is_sweep_override():  # unparsed: counted swept, as before
            keys.add(override_key(str(key)))
    try:
        sweep = OmegaConf.load(Path(hydra.sweep.dir) / "multirun.yaml")
        given = [str(o) for o in OmegaConf.select(sweep, "hydra.overrides.task", default=None) or []]
    except Exception:  # noqa: BLE001 - no multirun.yaml (another launcher): the search's keys, if any
        return keys
    for text in given:
        override = parsed(text)
        if override is None:
            continue
        if override.is_sweep_override():
            keys.add(override_key(text))
        else:  # a value fixed on the command line, over the search space's
            keys.discard(override_key(text))
    return keys
