"""Hydra's Optuna sweeper, ending a study in which every trial failed as lstmkit's other sweeps end.

Why: the plugin reads ``study.best_trial`` after the last trial, which raises "No trials are
completed yet." (a traceback, exit 1) when all of them failed, and Hydra then never calls
lstmkit's summary callback. Here the summary is written and the sweep exits 2 with the first
trial's error, as a basic sweep whose every trial failed does; a study whose trials ran but returned
no value (``train=false``) exits 2 with one line too. The ``hparams_search`` presets select it
(``hydra.sweeper._target_``).
"""

from __future__ import annotations

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginSweeper


class OptunaSweeper(_PluginSweeper):
    def sweep(self, arguments: list[str]) -> None:
        try:
            super().sweep(arguments)
        except ValueError as err:
            if "No trials are completed" not in str(err):
                raise
            from lstmkit.sweeps import finish_sweep

            finish_sweep(self.sweeper.config.hydra.sweep.dir)  # exits 2: every trial failed
            # the trials ran, but none returned a value (train=false: nothing trained, nothing to compare)
            import sys

            print("lstmkit: error: no trial of the Optuna study returned a value of its objective (the monitored "
                  "metric): nothing to optimise (a sweep with train=false trains nothing; a grid sweep, without "
                  "hparams_search, runs such trials)", file=sys.stderr)
            raise SystemExit(2) from None
