"""Lightning's loggers as lstmkit runs need them: across processes, resumes and sweeps.

* :class:`CSVLogger` appends across the processes of one run (``ddp_spawn``, fit then test);
* :class:`TensorBoardLogger` fills TensorBoard's HParams tab (the config against the monitored
  metric) and keeps ``hparams.yaml`` that of the latest attempt of a run resumed in its folder.
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
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lstmkit.files import write_atomic

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
    swapped in) with the hyperparameters of the attempt now running.
    """

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics, step)
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
        super().save()  # writes hparams.yaml when missing
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        if self.hparams and path.parent.is_dir():
            partial = path.with_name(f".{path.name}.{os.getpid()}.part")
            try:
                save_hparams_to_yaml(partial, self.hparams)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
