"""Logger fixes for runs that span several processes."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

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
        if isinstance(logger, TensorBoardLogger) and logger._experiment is None:  # the writer is made lazily
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
