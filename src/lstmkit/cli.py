"""The ``lstmkit`` console script: ``lstmkit <command> [hydra overrides...]``.

Commands map to packaged config files (``conf/<command>.yaml``) and to functions in
:mod:`lstmkit.commands`. Everything after the command is plain Hydra: overrides, ``-m`` for
sweeps, ``--cfg job`` to print the composed config, ``--help``.

The command word is kept in ``LSTMKIT_COMMAND`` as well: Lightning's DDP launcher re-executes
``sys.argv`` for each extra rank, and the re-executed process must run the same command.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

# the signals that stop a job (recorded as interrupted, exit 128 + the signal's number), and why they come
STOP_SIGNALS = {signal.SIGTERM: "e.g. a scheduler preempting the job", signal.SIGINT: "Ctrl-C"}

COMMANDS = {
    "train": "lstmkit.commands.train:train",
    "eval": "lstmkit.commands.evaluate:evaluate",
    "predict": "lstmkit.commands.predict:predict",
    "export": "lstmkit.commands.export:export",
}
USAGE = """usage: lstmkit <command> [overrides ...] [-m] [--verbose]

commands:
  train     train (and test) a model:        lstmkit train task=sentiment model.hidden_size=256
  eval      evaluate a checkpoint:           lstmkit eval ckpt_path=<run>/checkpoints/best.ckpt
  predict   predict from raw input:          lstmkit predict ckpt_path=... input="what a film"
  export    export to ONNX / TorchScript:    lstmkit export ckpt_path=... format=onnx

Overrides are Hydra's (key=value, -m for sweeps, --cfg job to print the config,
<command> --help for every option). --verbose shows full tracebacks; lstmkit --version
prints the installed version.
"""


def config_dir() -> str:
    """The packaged configs (installed wheel), or the checkout's ``conf/`` (editable install)."""
    packaged = resources.files("lstmkit") / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


def _load(target: str) -> Callable[[Any], Any]:
    module, _, name = target.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def explain_runtime_error(err: BaseException) -> str | None:
    """A plain explanation for the runtime failures users can act on (dead workers, OOM)."""
    text = str(err)
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        first = text.strip().splitlines()[0]
        return (f"a data-loading worker process died ({first}). This is usually the system running out of "
                "memory (see `dmesg`) or a crash inside a custom dataset: rerun with data.num_workers=0 to "
                "see the error in the main process, or lower data.batch_size / data.num_workers")
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or (
            "PytorchStreamWriter failed writing" in text or re.search(r"inline_container.*unexpected pos", text)):
        where = f" while writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        return (f"the disk is full (or over quota){where}: {text.strip().splitlines()[0] if text.strip() else err!r}. "
                "Free space, or write the runs elsewhere (LSTMKIT_LOG_DIR=... or paths.log_dir=...); a training run "
                "continues from its last complete checkpoint with resume=true (checkpoints are written whole, then "
                "moved into place, so a failed write leaves the previous one)")
    if isinstance(err, torch_oom()) or "CUDA out of memory" in text:
        return ("the GPU ran out of memory: lower data.batch_size, use trainer.precision=bf16-mixed, or "
                "shorten the sequences (in a sweep, this trial is recorded as failed and the sweep goes on)")
    return None


def torch_oom() -> tuple[type[BaseException], ...]:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()


def _user_error(err: BaseException) -> str | None:
    """The user-fixable problem behind ``err`` (ours, Lightning's misconfiguration...), if any."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import MissingMandatoryValue

    from lstmkit.errors import LstmkitError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (LstmkitError, MisconfigurationException)):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):  # a `???` in the config, e.g. eval's ckpt_path
            key = seen.full_key or "a mandatory value"
            example = " (a run's checkpoints/best.ckpt)" if key == "ckpt_path" else ""
            return f"{key} is required: give it on the command line, {key}=...{example}"
        typo = re.search(r"conditioned on metric `([^`]*)`.*following: (.*)", str(seen), flags=re.DOTALL)
        if isinstance(seen, RuntimeError) and typo:  # monitor=<a typo>, found by Lightning's EarlyStopping
            logged = typo.group(2).strip().rstrip(".") or "none"
            return f"monitor={typo.group(1)} is not a logged metric; the logged ones are {logged}"
        explained = explain_runtime_error(seen)
        if explained:
            return explained
        seen = seen.__cause__ or seen.__context__
    return None


def _task(command: str) -> Callable[[Any], Any]:
    def run(cfg: Any) -> Any:
        release_stderr()  # the config composed: see _HeldStderr
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from lstmkit.errors import Interrupted, SweepError, TrialFailed
        from lstmkit.sweeps import write_result

        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
        record = command == "train" and hydra_cfg is not None and os.environ.get("LOCAL_RANK", "0") == "0"

        def result(value: Any, error: str | None = None, status: str | None = None) -> None:
            if record:
                write_result(hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task),
                             cfg.get("monitor"), cfg.get("monitor_mode"), value, error, status)

        def interrupted() -> NoReturn:
            # Lightning's SIGTERMException is a SystemExit(None): without this the process exits 0, and a
            # scheduler that preempted the job (SLURM sends SIGTERM) or a sweep would read it as a success
            signum = stop.received or signal.SIGTERM
            name = signal.Signals(signum).name
            result(None, f"interrupted by {name}", status="interrupted")  # first: the record matters most
            if multirun and record:  # rank 0 of a training sweep: the jobs so far, in summary.csv / .md
                from lstmkit.sweeps import summarise_sweep

                summarise_sweep(hydra_cfg.sweep.dir)
            from omegaconf import OmegaConf

            checkpoints = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
            saved = bool(checkpoints) and (Path(str(checkpoints)) / "last.ckpt").exists()
            why = f"interrupted by {name} ({STOP_SIGNALS.get(signum, 'a signal')})"
            message = (f"{why}; run the same command with resume=true to continue from the run's last.ckpt (the end "
                       "of its last finished epoch)"
                       if saved else
                       f"{why} before this run saved a checkpoint; the same command with resume=true continues from "
                       "the newest last.ckpt of an earlier run with the same overrides, or starts afresh if there is none")
            if multirun and record:  # as a parallel sweep's stop says it
                message += f"; the sweep's jobs so far are in {Path(hydra_cfg.sweep.dir) / 'summary.md'}"
            with contextlib.suppress(OSError):  # stderr may be a pipe closed by the same signal
                print(f"lstmkit {command}: {message}", file=sys.stderr)
            raise SystemExit(128 + signum) from None

        exit_code: int | None = None
        stop = SimpleNamespace(received=None)  # the first stopping signal (SIGTERM, SIGINT) the job got
        try:
            with _signals_interrupt(stop) if command == "train" else contextlib.nullcontext():
                _one_console_for_lightning()  # (its import takes seconds: a SIGTERM meanwhile is an interruption)
                value = _load(COMMANDS[command])(cfg)
            # a metric undefined on the split (val/auroc of one class): a failed trial, on W&B too
            nan_trial = multirun and isinstance(value, float) and math.isnan(value)
            if nan_trial:
                exit_code = 1
        except SystemExit as err:
            # Lightning's SIGTERMException, raised at the next batch after SIGTERM or SIGINT, or ours outside
            # its loops
            if not isinstance(err, Interrupted) and type(err).__name__ != "SIGTERMException":
                # any other non-zero exit must not close the W&B run as finished either
                exit_code = None if not err.code else err.code if isinstance(err.code, int) else 1
                raise
            exit_code = 128 + (stop.received or signal.SIGTERM)
            interrupted()
        except Exception as err:
            exit_code = 1  # a crashed or failed job: W&B must not record it as finished
            if stop.received:  # e.g. a DataLoader worker that the same (process-group) signal killed first
                exit_code = 128 + stop.received
                interrupted()
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                _JOB.crashed = True
                raise
            user_error = _user_error(err)
            if multirun and isinstance(err, SweepError):  # wrong for every trial: stop the sweep now
                print(f"lstmkit {command}: error: {user_error}", file=sys.stderr)
                raise SystemExit(2) from None
            if multirun:
                # one failing trial (bad combination, divergence, out of memory) must not end a
                # sweep: record it, score it as missing, go on with the next trial
                message = user_error or f"{type(err).__name__}: {err}"
                logging.getLogger("lstmkit").error("trial failed: %s", message)
                result(None, message)
                if "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
                    # Optuna is told a failed trial by an exception (a NaN value crashes the plugin's
                    # tell); the presets' max_failure_rate lets the study go on
                    raise TrialFailed(message) from None
                return float("nan")
            if user_error is None:  # a bug (the user's own encoder's, ours): its traceback, and a failed record
                _JOB.crashed = True  # no "did you mean" under it: the command line composed
                result(None, f"{type(err).__name__}: {err}")
                raise
            if command in ("eval", "train"):  # (a sweep's trials returned above: their folders hold the record)
                _drop_unused_run_dir(Path(hydra_cfg.runtime.output_dir),
                                     made_since=_JOB.started if getattr(err, "nothing_trained", False) else None)
            print(f"lstmkit {command}: error: {user_error}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            _finish_wandb(exit_code)
        result(value)  # (a NaN is recorded as a failed trial: lstmkit.sweeps.write_result)
        if nan_trial and "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
            # told to Optuna as a failed trial, as above: returned, the NaN crashed the plugin's tell
            raise TrialFailed(f"{cfg.get('monitor') or 'the monitored metric'} is NaN") from None
        return value

    return run


class _HeldStderr:
    """``sys.stderr`` while Hydra composes the config: its output held back until the config composes.

    Why: a typo (``model.hiden_size=3``) got Hydra's 6-15 lines ("To append to your config use
    +model.hiden_size=3", advice that only hides the typo) above lstmkit's one-line "did you mean". Held,
    they are dropped when lstmkit has a hint (``HYDRA_FULL_ERROR=1`` still shows Hydra's error, as a
    traceback), and printed as they were when it has none. Only Hydra's error report is dropped: what
    else was written meanwhile (a warning while the config composed) is kept. Released (written through,
    and ``sys.stderr`` restored) once a job starts, or a sweep whose jobs run elsewhere begins; a logging
    handler that took this object for its stream keeps writing through it.
    """

    _REPORTERS = ("hydra._internal.utils", "traceback")  # what writes Hydra's error report (run_and_report)

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.held: list[tuple[str, bool]] | None = []

    def write(self, text: str) -> int:
        if self.held is None:
            return self.stream.write(text)
        try:
            writer = sys._getframe(1).f_globals.get("__name__", "")  # print() is C: frame 1 is its caller
        except ValueError:  # called from C with no Python frame under it (an unraisable hook at teardown)
            writer = ""
        self.held.append((text, writer in self._REPORTERS))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.held is None:
            self.stream.flush()

    def release(self, keep: bool = True) -> None:
        held, self.held = self.held, None
        if sys.stderr is self:
            sys.stderr = self.stream
        kept = "".join(text for text, report in held or () if keep or not report)
        if kept:
            self.stream.write(kept)
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the terminal's
        return getattr(self.stream, name)


_JOB = SimpleNamespace(crashed=False, started=0.0)  # a job raised a bug's exception: Hydra's exit 1 is no command-line error


def release_stderr() -> None:
    """Write what Hydra's composition printed, and print straight to stderr from here on (see _HeldStderr)."""
    if isinstance(sys.stderr, _HeldStderr):
        sys.stderr.release()


def _one_console_for_lightning() -> None:
    """Lightning's INFO lines ("`Trainer.fit` stopped ...") once, in the job's log format, not twice.

    Why: ``import lightning`` gives its logger a console handler of its own ("INFO: ...", to stderr), and the
    logger also propagates to the root, where Hydra's handlers print it again (to stdout and the job's log
    file). Where the root has handlers (a Hydra job), Lightning's own is removed; a process without them
    (a ``ddp_spawn`` rank) keeps it, so that the lines are still seen there.
    """
    import lightning

    if logging.getLogger().handlers:
        logger = logging.getLogger("lightning")
        logger.handlers = [h for h in logger.handlers if h is not getattr(lightning, "_console", None)]


@contextlib.contextmanager
def _signals_interrupt(state: SimpleNamespace) -> Iterator[None]:
    """SIGTERM or SIGINT (Ctrl-C) outside Lightning's loops raises :class:`~lstmkit.errors.Interrupted`;
    either sets ``state.received`` (to the first one's number).

    Why: Lightning handles SIGTERM only while ``fit`` / ``test`` run. A job stopped while it read its
    data (or between fit and test) died on the signal's default action: no ``result.json``, so a
    sweep's summary lost the trial. Inside the loops Lightning's handler, which calls the handler it
    found (this one), is installed; this one then leaves the stop to it, at the next batch, and only
    notes the signal: a SIGTERM to the whole process group (SLURM, systemd) may kill a DataLoader
    worker first, and the error that follows is the interruption, not a crash.

    SIGINT (Ctrl-C) takes the same path: it is handed to the SIGTERM handler of the moment
    (Lightning's, which stops at the next batch, and whose "Received SIGTERM: 2" log line is dropped;
    outside the loops this one). Left to Python it was a ``KeyboardInterrupt``, which Lightning turns
    into ``sys.exit(1)`` after "Detected KeyboardInterrupt": no ``result.json``, W&B closed as
    finished with exit code 0, and a sweep that recorded the job as killed for memory. A second
    SIGINT stops at once (the user pressed Ctrl-C again). SIGINT is left alone when it was ignored
    when the job began (a background job of a non-interactive shell, ``nohup``).

    Under ``ddp_spawn`` this process only waits for its spawned ranks, which run their own
    Lightning handlers: they get SIGINT (what their parent-death signal sent when SIGTERM killed
    this process outright), since a SIGTERM would make them broadcast inside its handler, where
    ranks signalled at different moments can wait for each other for ever.
    """
    from lstmkit.errors import Interrupted

    def interrupt(signum: int, frame: Any) -> None:
        state.received = state.received or signum
        if signal.getsignal(signal.SIGTERM) is interrupt:
            for child in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGINT)  # type: ignore[arg-type]
            raise Interrupted(128 + state.received)

    def interrupt_on_sigint(signum: int, frame: Any) -> None:
        if state.received == signal.SIGINT:  # Ctrl-C again: do not wait for the next batch
            raise Interrupted(128 + signum)
        state.received = state.received or signum
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):  # cannot happen while this context is active; stop at once
            raise Interrupted(128 + signum)
        handler(signum, frame)

    def not_sigint_as_sigterm(record: logging.LogRecord) -> bool:
        return not (state.received == signal.SIGINT and "Received SIGTERM" in str(record.msg))

    lightning_log = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    installed: dict[int, Any] = {}
    try:
        installed[signal.SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            installed[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt_on_sigint)
    except ValueError:  # not the main thread (a launcher running jobs in threads): leave the signals alone
        pass
    lightning_log.addFilter(not_sigint_as_sigterm)
    try:
        yield
    finally:
        lightning_log.removeFilter(not_sigint_as_sigterm)
        for signum, previous in installed.items():
            signal.signal(signum, previous)


def _drop_unused_run_dir(run_dir: Path, made_since: float | None = None) -> None:
    """An eval or a training run refused before it scored or trained anything (a bad setting, an unreadable
    file) leaves nothing but Hydra's ``.hydra`` and its log: the folder is removed, so that ``logs/<task>/runs``
    lists runs only (a new user counted 13 such folders). Folders holding anything else (a checkpoint, a
    metrics file) are left, as are folders not named like a run (``hydra.run.dir=.``, say). ``made_since``:
    a training run refused inside ``fit`` before a batch (a scheduler without a run length, a schedule a
    resume cannot rebuild) also left logger files and the checkpoints a resume copied; its folder goes
    too when every file in it was made since then (the job's start), so never an earlier run's."""
    if run_dir.parent.name != "runs" or not re.fullmatch(r"[\d_-]+", run_dir.name) or not run_dir.is_dir():
        return
    made_now = made_since is not None and all(  # every file made by this job: none an earlier run's (a fixed run dir)
        entry.stat().st_ctime >= made_since for entry in run_dir.rglob("*") if entry.is_file())
    if made_now or all(entry.name == ".hydra" or (entry.is_file() and entry.suffix == ".log")
                       for entry in run_dir.iterdir()):
        import shutil

        logging.shutdown()  # the log file's handler, closed before its folder goes
        shutil.rmtree(run_dir, ignore_errors=True)


def _finish_wandb(exit_code: int | None = None) -> None:
    """Close the W&B run of this job so the next sweep job starts its own (with ``exit_code``
    when the job was interrupted or failed, so the dashboard does not show it as finished)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code) if exit_code else wandb.finish()


def _report_broken_sweep(command: str) -> None:
    """After a sweep's launcher died (a worker killed): record the jobs that died, summarise, say so."""
    from lstmkit.sweeps import SWEEP_DIR_ENV, SWEEP_NAME_ENV, close_broken_sweep, job_folders

    os.environ.pop(SWEEP_NAME_ENV, None)
    sweep_dir = Path(os.environ.pop(SWEEP_DIR_ENV, "") or ".")
    if not (sweep_dir / "multirun.yaml").is_file():  # Hydra failed before the sweep had a folder
        return
    if not job_folders(sweep_dir):
        # no job started: Hydra checks every job's config first, so a typo in a sweep value stops it
        # here; its error (and lstmkit's hint) is the whole story: no summary, and resume would fail alike.
        # The folder, which holds nothing but the sweep's config then, goes (logs/<task>/multiruns lists sweeps)
        if [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
            import shutil

            shutil.rmtree(sweep_dir, ignore_errors=True)
            if sweep_dir.parent.name == "multiruns":  # <task>/multiruns, if empty now (never a folder of the user's)
                with contextlib.suppress(OSError):
                    sweep_dir.parent.rmdir()
                    sweep_dir.parent.parent.rmdir()
        return
    died = close_broken_sweep(sweep_dir)
    why = ("see the error above" if not died else
           "1 job died without a result (a worker process killed, e.g. by the out-of-memory killer)" if died == 1 else
           f"{died} jobs died without a result (a worker process killed, e.g. by the out-of-memory killer, and "
           "joblib stopped the other workers with it)")
    print(f"lstmkit {command}: error: the sweep stopped: {why}; the jobs so far are in {sweep_dir / 'summary.md'}; "
          "the same command with resume=true runs the rest", file=sys.stderr)


def _report_interrupted_outside_a_job(command: str) -> NoReturn:
    """Ctrl-C outside a training job (Hydra composing the config, a sequential sweep between two jobs,
    ``eval`` / ``predict``): one line and exit 130, as inside a job, not a ``KeyboardInterrupt``
    traceback; a sweep's jobs so far are summarised (``summary.md``), as an interrupted job does."""
    from lstmkit.sweeps import SWEEP_DIR_ENV, SWEEP_NAME_ENV, summarise_sweep

    os.environ.pop(SWEEP_NAME_ENV, None)
    sweep_dir = Path(os.environ.pop(SWEEP_DIR_ENV, "") or ".")
    where = ""
    if (sweep_dir / "multirun.yaml").is_file() and summarise_sweep(sweep_dir):
        where = (f"; the jobs so far are in {sweep_dir / 'summary.md'}; the same command with resume=true "
                 "continues the sweep")
    with contextlib.suppress(OSError):
        print(f"lstmkit {command}: interrupted by SIGINT (Ctrl-C){where}", file=sys.stderr)
    raise SystemExit(128 + signal.SIGINT) from None


def main(argv: list[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    # OpenMP threads that spin-wait for busy cores slowed training ~10x on a loaded 2-core machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "--verbose" in args:
        args.remove("--verbose")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if args and args[0] in COMMANDS:
        command = args.pop(0)
        os.environ["LSTMKIT_COMMAND"] = command
    elif args and args[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return None
    elif args and args[0] in {"-V", "--version", "version"}:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"lstmkit {version('lstmkit')}")
        except PackageNotFoundError:  # run from a source tree that is not installed
            print("lstmkit (not installed; run from its source tree)")
        return None
    elif os.environ.get("LSTMKIT_COMMAND") in COMMANDS and os.environ.get("LOCAL_RANK"):
        command = os.environ["LSTMKIT_COMMAND"]  # a DDP rank re-executed by Lightning
    else:
        print(USAGE, file=sys.stderr)
        given = args[0] if args else "nothing"
        print(f"lstmkit: error: expected a command ({', '.join(COMMANDS)}), got {given!r}", file=sys.stderr)
        raise SystemExit(2)

    import hydra

    from lstmkit.sweeps import register_resolvers

    register_resolvers()  # ${lstmkit_sweep_name:} in conf/hydra/default.yaml
    from lstmkit.suggest import refuse_before_hydra, split_flags

    refused = refuse_before_hydra(config_dir(), command, args)  # one line, not Hydra's block above it
    if refused:  # lstmkit's own refusal: "error:" and status 2, as its other errors (Hydra's own exit 1)
        print(f"lstmkit {command}: error: {refused}", file=sys.stderr)
        raise SystemExit(2)
    flags, overrides = split_flags(args)
    # flags first: Hydra's argparse takes the overrides as one run of words, so `train task=ecg -m seed=1,2`
    # was "unrecognized arguments: seed=1,2"
    sys.argv = [sys.argv[0], *flags, *(["--"] if "--" in args else []), *overrides]
    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name=command)(_task(command))
    _JOB.crashed = False
    # before Hydra makes the run folder (less a second: file times are coarser than the clock)
    _JOB.started = time.time() - 1.0
    held = sys.stderr = _HeldStderr(sys.stderr)
    try:
        return app()
    except ValueError as exc:
        if not str(exc).startswith("Only one of --run, --multirun"):
            raise
        # Hydra's own check, raised as a traceback: -m with --cfg / --info, or two of them
        print(f"lstmkit {command}: error: {exc} (--cfg and --info show one run's config: drop -m and give "
              "one value per key; a search preset's settings show under hydra.sweeper in --cfg hydra)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _report_interrupted_outside_a_job(command)
    except SystemExit as exc:
        if exc.code == 1 and os.environ.get("LSTMKIT_SWEEP_DIR"):  # a sweep that never reached its end
            _report_broken_sweep(command)
        if exc.code == 1 and not _JOB.crashed:  # Hydra rejected the command line: a "did you mean" when we can
            from lstmkit.suggest import suggest_override

            hint = suggest_override(config_dir(), command, args)
            if hint and held.held is not None:  # Hydra's block, still held, is dropped: the hint says more
                held.release(keep=False)
                print(f"lstmkit {command}: error: {hint}", file=sys.stderr)
                raise SystemExit(2) from None
            held.release()
            if hint:  # a sweep's job that did not compose: Hydra's block is out, the hint under it
                print(f"lstmkit {command}: {hint}", file=sys.stderr)
        raise
    finally:
        held.release()


if __name__ == "__main__":
    main()
