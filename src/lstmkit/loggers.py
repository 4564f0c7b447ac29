"""Logger fixes for runs that span several processes."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


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
