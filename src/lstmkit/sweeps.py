"""Sweep bookkeeping: one ``result.json`` per job, a summary table per sweep.

``write_result`` runs at the end of every job (also a failed one); ``SweepSummary`` is a Hydra
callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``) that collects them when the
multirun ends into ``summary.csv`` and ``summary.md`` beside the job folders, best first.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lstmkit.files import json_text, write_atomic

# overrides whose sweep changes the task, and with it ${task_name}
_TASK_KEYS = {"task", "experiment", "task_name"}
MIXED_SWEEP = "multitask"
SWEEP_NAME_ENV = "LSTMKIT_SWEEP_NAME"
SWEEP_DIR_ENV = "LSTMKIT_SWEEP_DIR"  # the running sweep's folder, for a sweep that ends without on_multirun_end


def sweep_name(config: DictConfig) -> str:
    """The folder of a sweep's jobs under ``logs/``: its ``task_name``, or ``multitask`` for a sweep
    over ``task=`` / ``experiment=`` / ``task_name=`` (``config``: the sweep's own, not a job's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in OmegaConf.select(config, "hydra.overrides.task", default=None) or []:
        try:
            (override,) = parser.parse_overrides([str(text)])
        except Exception:  # noqa: BLE001, S112 - Hydra reports a bad override itself
            continue
        if override.key_or_group.split("@")[0] in _TASK_KEYS and override.is_sweep_override():
            return MIXED_SWEEP
    return str(config.task_name)


def _sweep_folder(task_name: str) -> str:
    """``${lstmkit_sweep_name:${task_name}}`` in ``hydra.sweep.dir``: the sweep's name, set by
    :class:`SweepSummary` when the multirun starts, else the job's task.

    Why: Hydra resolves ``hydra.sweep.dir`` in every job's own config, where ``task_name`` is the
    job's, so ``-m task=ecg,stock`` spread its jobs over ``logs/ecg/`` and ``logs/stock/`` and the
    summary, looking in the sweep config's folder (the default task's), found none of them: no
    table, and exit 0 when every trial had failed. An environment variable, because parallel
    launchers (joblib, submitit) resolve the folder in their worker processes, which inherit it.
    """
    return os.environ.get(SWEEP_NAME_ENV) or task_name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lstmkit_sweep_name"):
        OmegaConf.register_new_resolver("lstmkit_sweep_name", _sweep_folder)


def write_result(out_dir: str | Path, overrides: list[str], monitor: str | None, mode: str | None,
                 objective: float | None, error: str | None = None, status: str | None = None) -> None:
    """``out_dir/result.json``: the job's status, monitored metric, objective, overrides and error.

    An infinite objective (a trial whose validation metric overflowed, ``val/mase`` = inf, while its
    training loss stayed finite) is recorded as ``null``, status ``failed``, with the reason as its
    error. Why: ``json.dumps`` wrote it as ``Infinity``, which is not JSON (strict readers, ``jq``,
    JavaScript refuse the file), and the trial counted as ``ok`` though it had diverged. As a failed
    trial it is ranked after every trial with a value, and a sweep where every trial diverged says so.
    A NaN objective is a failed trial alike.
    """
    if isinstance(objective, (int, float)) and math.isinf(objective):
        error = error or (f"{monitor or 'the monitored metric'} = {objective}: the run diverged (try a lower "
                          "optimizer.lr, or gradient clipping: trainer.gradient_clip_val=1.0)")
        status = status or "failed"
        objective = None
    if isinstance(objective, float) and math.isnan(objective):
        # not a number to rank: undefined on the split (val/auroc of a split with one class) or diverged;
        # recorded as "ok" with no objective, it read as a trial that worked
        error = error or (f"{monitor or 'the monitored metric'} is NaN: undefined on the validation split (an "
                          "AUROC or F1 of a split with one class only) or the run diverged")
        status = status or "failed"
        objective = None
    value = objective
    record = {"status": status or ("failed" if error else "ok"), "monitor": monitor, "mode": mode, "objective": value,
              "overrides": overrides, "error": error}
    path = Path(out_dir) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole, then renamed: a worker killed mid-write (stop_workers after its grace period)
    # leaves no half a record, and "result.json exists" means the job has recorded itself
    write_atomic(path, json_text(record, indent=2) + "\n")


def summarise_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Collect every job's result into summary.csv / summary.md; returns the rows, best first."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # one unreadable record must not lose the others' summary
            record = {"status": "failed", "monitor": None, "mode": None, "objective": None, "overrides": [],
                      "error": f"{path}: unreadable ({err})"}
        rows.append({"job": path.parent.name, **record})
    if not rows:
        return rows
    # jobs of one metric are ranked in its direction; a sweep over tasks has several metrics (val/auroc,
    # val/mase), which are never ranked against one another
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in rows:
        if r["objective"] is not None:
            groups.setdefault((r.get("monitor"), r.get("mode") or "max"), []).append(r)
    for (_, mode), members in groups.items():
        members.sort(key=lambda r: r["objective"], reverse=mode == "max")
    ok = [r for members in groups.values() for r in members]
    ordered = ok + [r for r in rows if r["objective"] is None]
    with (sweep_dir / "summary.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job", "status", "monitor", "objective", "overrides", "error"])
        for r in ordered:
            writer.writerow([r["job"], r["status"], r["monitor"], r["objective"], " ".join(r["overrides"]),
                             r["error"] or ""])
    lines = [f"# Sweep summary: {sweep_dir.name}", ""]
    for (monitor, mode), members in groups.items():
        best = members[0]
        label = "Best" if len(groups) == 1 else f"Best by {monitor} ({mode})"
        lines += [f"{label}: job {best['job']} with {monitor} = {best['objective']:.4f} ({' '.join(best['overrides'])})"]
    if groups:
        lines += [""]
    # the column names its metric; a sweep over tasks (val/auroc beside val/mase) names it in every cell
    column = (next(iter(groups))[0] or "objective") if len(groups) == 1 else "objective"
    lines += [f"| job | status | {column} | overrides | error |", "|---|---|---|---|---|"]
    for r in ordered:
        value = ("" if r["objective"] is None else f"{r['objective']:.4f}" if len(groups) == 1
                 else f"{r['monitor']} = {r['objective']:.4f}")
        error = (r["error"] or "").replace("|", "/")[:200]
        lines.append(f"| {r['job']} | {r['status']} | {value} | {' '.join(r['overrides'])} | {error} |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return ordered


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends; stop a parallel sweep's
    workers when the sweep is sent SIGTERM or SIGINT (Ctrl-C)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lstmkit.cli import release_stderr

        launcher = str(config.hydra.launcher.get("_target_", ""))
        if not launcher.endswith("BasicLauncher"):  # jobs run elsewhere: this process prints from now on
            release_stderr()  # (the basic launcher composes each job here; its first job releases it)
        os.environ[SWEEP_NAME_ENV] = sweep_name(config)  # every job's folder: see _sweep_folder
        os.environ[SWEEP_DIR_ENV] = str(config.hydra.sweep.dir)  # lstmkit.cli._report_broken_sweep
        if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
            # submitit fails deep inside with 'Could not detect "srun"' and a traceback
            print("lstmkit train: error: cluster=slurm (hydra/launcher=submitit_slurm) submits the jobs with "
                  "SLURM's sbatch, which this machine does not have on its PATH: run the command on a SLURM login "
                  "node, or drop cluster=slurm (hydra/launcher=submitit_local runs the jobs here)", file=sys.stderr)
            raise SystemExit(2)
        earlier = job_folders(str(config.hydra.sweep.dir))
        if earlier and config.get("resume") is not True:  # a fixed hydra.sweep.dir again: two sweeps in one summary
            print(f"lstmkit: warning: hydra.sweep.dir={config.hydra.sweep.dir} already holds {len(earlier)} job "
                  f"folder(s) of an earlier sweep ({earlier[0].name}..{earlier[-1].name}): this sweep's jobs write "
                  "into the folders of their numbers (their records replace the earlier ones; checkpoints are kept "
                  "beside), and its summary lists the others too; give a new folder (by default each sweep gets its "
                  "own), or resume=true to continue that sweep", file=sys.stderr)
        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            # Hydra's basic sweeper writes the sweep's config (multirun.yaml) into its folder, Optuna's does
            # not; lstmkit reads it for the swept keys of trial names and to report a sweep whose worker died
            folder = Path(str(config.hydra.sweep.dir))
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "multirun.yaml").exists():
                OmegaConf.save(config, folder / "multirun.yaml")
        if "joblib" in launcher:
            signal.signal(signal.SIGTERM, lambda signum, frame: stop_workers(config.hydra.sweep.dir, signum))
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (nohup, &)
                # Ctrl-C: a KeyboardInterrupt inside joblib's wait was a 40-line traceback, no summary
                signal.signal(signal.SIGINT, lambda signum, frame: stop_workers(config.hydra.sweep.dir, signum))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            finish_sweep(config.hydra.sweep.dir)
        finally:
            os.environ.pop(SWEEP_NAME_ENV, None)  # a later sweep in this process names its own
            os.environ.pop(SWEEP_DIR_ENV, None)


def stop_workers(sweep_dir: str | Path, signum: int = signal.SIGTERM, grace_s: float = 60.0) -> None:
    """SIGTERM or SIGINT (``signum``) in the parent of a joblib sweep: pass it on to the trials (as
    SIGTERM), wait for them, exit 128 + ``signum`` (143, or 130 for Ctrl-C).

    Why: the trials run in loky worker processes, which the parent's death left running (orphaned,
    training on, then recording "ok" for a sweep that had been stopped). Each trial stops at its
    next batch and records itself as interrupted (``lstmkit.cli``); once the running trials have
    (or ``grace_s`` seconds have passed) the workers, idle by then, and loky's resource trackers,
    which ignore SIGTERM, are killed. The trials are sent SIGTERM whichever signal came: a Ctrl-C
    reaches them too (the terminal signals the whole process group), and a second SIGINT would make
    them stop at once rather than at the next batch.
    """
    import psutil

    for stopping in (signal.SIGTERM, signal.SIGINT):  # a second signal (Ctrl-C again) must not cut this short
        signal.signal(stopping, signal.SIG_IGN)
    workers = psutil.Process().children(recursive=True)
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signal.SIGTERM)

    def is_tracker(process: psutil.Process) -> bool:  # loky's and multiprocessing's: they ignore SIGTERM
        with contextlib.suppress(psutil.Error):
            return "resource_tracker" in " ".join(process.cmdline())
        return False

    trials = [w for w in workers if not is_tracker(w)]
    # the message counts the sweep's worker processes (its direct children), not loky's resource trackers or
    # what a trial started itself: "4 worker process(es) stopped" was said of a sweep of n_jobs=2
    counted = [w for w in trials if _parent_pid(w) == os.getpid()]
    # a loky worker stays alive (idle) after its trial has stopped and recorded itself: wait for the
    # records of the trials that were running, not for the processes
    running = [d for d in job_folders(sweep_dir) if not (d / "result.json").exists()]
    deadline = time.monotonic() + grace_s
    while (time.monotonic() < deadline and any(not (d / "result.json").exists() for d in running)
           and any(w.is_running() for w in trials)):
        time.sleep(0.2)
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.kill()
    psutil.wait_procs(workers, timeout=10)
    summarise_sweep(sweep_dir)
    with contextlib.suppress(OSError):  # stderr may be a pipe closed by the same signal
        print(f"lstmkit train: the sweep was interrupted by {signal.Signals(signum).name} ({len(counted)} worker "
              f"process(es) stopped); the jobs so far are in {Path(sweep_dir, 'summary.md')}; run the same command "
              "with resume=true to continue it", file=sys.stderr)
    os._exit(128 + signum)  # the launcher's own threads and pools would otherwise keep the process alive


def _parent_pid(process: Any) -> int | None:
    with contextlib.suppress(Exception):  # psutil.Error: gone already
        return int(process.ppid())
    return None


def job_folders(sweep_dir: str | Path) -> list[Path]:
    """The job folders (``0``, ``1``, ...) of a sweep's folder, in job order."""
    return sorted((p for p in Path(sweep_dir).glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def close_broken_sweep(sweep_dir: str | Path) -> int:
    """A sweep whose launcher died (a parallel worker killed by SIGKILL, as the out-of-memory killer
    does; joblib's ``TerminatedWorkerError``): record each started job that left no ``result.json``
    as failed, write the summary of the jobs so far and return how many were recorded so.

    Why: Hydra ended such a sweep with the launcher's traceback, before ``on_multirun_end``: no
    summary, and the jobs that had finished were listed nowhere.

    When several jobs died, joblib (loky) had killed the workers of the others itself, with
    SIGKILL, once it saw the first one die: which job was killed first is not known, so each is
    said to be either (every one of them was said to be killed "out of memory?").
    """
    sweep_dir = Path(sweep_dir)
    dead = [job for job in job_folders(sweep_dir) if not (job / "result.json").exists()]
    error = ("its process died without recording a result (killed by a signal: out of memory?)" if len(dead) <= 1 else
             f"its process died without recording a result, like {len(dead) - 1} other job(s) of the sweep: killed by a "
             "signal (out of memory?), or stopped by joblib when another worker process of the sweep was")
    for job in dead:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.exists() else []
        write_result(job, overrides, None, None, None, status="failed", error=error)
    summarise_sweep(sweep_dir)
    return len(dead)


def finish_sweep(sweep_dir: str | Path) -> None:
    """Write and print the summary; exit 2 when every trial failed, and count the failures."""
    rows = summarise_sweep(sweep_dir)
    if rows:
        print(Path(sweep_dir, "summary.md").read_text())
    failed = [r for r in rows if r["status"] == "failed"]
    if rows and len(failed) == len(rows):
        # nothing trained: a script or CI step running the sweep must not read success (exit 2, as
        # lstmkit's other errors); the trials' own errors are in the summary
        print(f"lstmkit: error: every trial of the sweep failed ({len(rows)} of {len(rows)}); the first: "
              f"{failed[0]['error']} (all in {Path(sweep_dir, 'summary.md')})", file=sys.stderr)
        raise SystemExit(2)
    if failed:
        print(f"lstmkit: {len(failed)} of {len(rows)} trials failed (see the summary above)", file=sys.stderr)

