"""Shared fixtures: compose the packaged configs in-process, and run the console script."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lstmkit.cli import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent

torch.set_num_threads(1)  # two pytest workers share two cores


def shared_data(task: str) -> Path:
    """The real dataset of a task beside the checkout, or skip the test with a clear reason."""
    path = SHARED_DATA / task
    if not path.exists():
        pytest.skip(f"real data not found at {path} (clone the repo beside shared/ to run this test)")
    return path


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<name>.yaml`` with overrides, as ``lstmkit <name>`` would, outputs under tmp_path."""

    def _make(overrides: list[str] | None = None, name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
            cfg = compose(
                config_name=name,
                overrides=[f"hydra.run.dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", *(overrides or [])],
                return_hydra_config=True,
            )
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def split_accuracy(model: Any, datamodule: Any) -> tuple[int, int]:
    """``(correct, total)`` of ``model``'s argmax over ``datamodule``'s test loader, computed by hand."""
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            outputs, _ = model(batch.inputs, batch.lengths)
            correct += int((outputs.argmax(-1) == batch.targets).sum())
            total += len(batch)
    return correct, total


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: int = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script like a user, from ``cwd`` (``env``: more variables)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [str(BIN / "lstmkit"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lstmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class _Current:
    """A stream that writes to ``sys.<name>`` as it is at each write (a handler's stream outliving a run)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return getattr(sys, self.name).write(text)

    def flush(self) -> None:
        getattr(sys, self.name).flush()


def run_here(*args: str, cwd: Path, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``run_cli`` in this process: ``lstmkit.cli.main`` with the same arguments, what it prints and its
    exit status collected alike.

    Why: a tiny run of the console script spends ~6 of its ~9 s importing torch and Lightning, which
    this process has done already. For tests of what a run does (resume, checkpoints, schedules), not
    of the process itself: signals, DDP, parallel sweeps and the console script's own wiring keep
    :func:`run_cli`. What ``main`` changes for the process is put back after: working directory,
    environment, argv, logging (and handlers that loggers created during the run bound to its
    captured streams), SIGTERM / SIGINT handlers, torch's threads and deterministic mode, and the
    random number generators of torch, NumPy and ``random`` (a run seeds them all).
    """
    import random

    import numpy as np

    from lstmkit import cli

    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_loggers = {name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
                     for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled())
    saved_random = (random.getstate(), np.random.get_state())
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({"WANDB_MODE": "offline", **(env or {})})
    os.environ.pop("HYDRA_FULL_ERROR", None)
    code: int = 0
    try:
        os.chdir(cwd)
        GlobalHydra.instance().clear()
        with torch.random.fork_rng(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as exc:  # as the interpreter reads it at exit
                if isinstance(exc.code, int) or exc.code is None:
                    code = (exc.code or 0) & 0xFF  # the status a process reports: sys.exit(256) ends with 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            # (a KeyboardInterrupt is pytest's own Ctrl-C, so it goes on up to pytest)
            except Exception:  # noqa: BLE001 - a traceback and status 1, as the console script ends
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        os.chdir(saved_cwd)
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update({k: v for k, v in saved_env.items() if os.environ.get(k) != v})
        sys.argv[:] = saved_argv
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, lg in list(logging.Logger.manager.loggerDict.items()):
            if name in saved_loggers:
                handlers, level, propagate, disabled = saved_loggers[name]
                lg.handlers[:] = handlers
                lg.setLevel(level)
                lg.propagate, lg.disabled = propagate, disabled
            elif isinstance(lg, logging.Logger):  # created during the run (e.g. optuna's, on its import)
                for handler in lg.handlers:  # bound to this run's buffers: follow whatever stream is current
                    stream = getattr(handler, "stream", None)
                    stream = getattr(stream, "stream", stream) if isinstance(stream, cli._HeldStderr) else stream
                    if stream is out or stream is err:
                        handler.stream = _Current("stdout" if stream is out else "stderr")
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1], warn_only=saved_torch[2])
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])
    proc = subprocess.CompletedProcess(["lstmkit", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"lstmkit {' '.join(args)} failed ({code}) in process:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_notebook(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Execute ``notebooks/<name>.ipynb`` (committed without outputs) in ``workdir``; returns it executed.

    The kernel inherits the environment: one thread per worker, quick settings where the
    notebook reads them, and ``LSTMKIT_NOTEBOOK_DIR`` for where its runs go.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it clean"
    for key, value in {"OMP_NUM_THREADS": "1", "LSTMKIT_NOTEBOOK_DIR": str(workdir), **env}.items():
        monkeypatch.setenv(key, value)
    # kernel "python3" with argv[0] "python" runs as this interpreter (jupyter_client's rule)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
]
