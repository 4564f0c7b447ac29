"""Interrupted runs, reproducibility, atomic checkpoints, long runs, and the errors users meet first."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader, Dataset

from lstmkit.checkpoints import AtomicCheckpointIO, read_checkpoint
from lstmkit.cli import config_dir, explain_runtime_error
from lstmkit.errors import CheckpointError
from lstmkit.suggest import suggest_override

from .conftest import BIN, QUICK, run_cli, run_here

# Dropout on, so a resume that replayed different random numbers would give different metrics.
RUN = [
    "data.num_examples=2000", "data.batch_size=16", "model.hidden_size=16", "encoder.dim=16",
    "encoder.dropout=0.3", "trainer.max_epochs=3", "trainer.deterministic=true",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
]


def _metrics(root: Path) -> dict[str, float]:
    (run,) = [p for p in (root / "logs" / "sentiment" / "runs").iterdir() if (p / "metrics.json").exists()]
    return json.loads((run / "metrics.json").read_text())


def _fake_run(folder: Path, overrides: list[str], age: float | None = None, config: str | None = None) -> Path:
    """An earlier run's folder as ``resume=true`` reads it: ``.hydra/overrides.yaml`` (``overrides``),
    ``.hydra/config.yaml`` when ``config`` is given, and ``checkpoints/last.ckpt`` (not a real
    checkpoint), ``age`` seconds old when given. Returns the checkpoint's path."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (folder / ".hydra" / "config.yaml").write_text(config)
    (folder / "checkpoints").mkdir()
    ckpt = folder / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    if age is not None:
        os.utime(ckpt, (time.time() - age, time.time() - age))
    return ckpt


def test_same_seed_same_config_gives_bit_identical_metrics(tmp_path: Path) -> None:
    """One run in a process of its own (its own hash seed and import state), one in this process: the
    same metrics, bit for bit, which also shows that ``run_here`` runs a command as the console script does."""
    for name, run in (("a", run_cli), ("b", run_here)):
        (tmp_path / name).mkdir()
        run("train", *RUN, cwd=tmp_path / name)
    first, second = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert first == second  # exact float equality, every metric
    for name in ("c",):
        (tmp_path / name).mkdir()
        run_here("train", *RUN, "seed=7", cwd=tmp_path / name)
    assert _metrics(tmp_path / "c")["val/loss"] != first["val/loss"]  # the seed does reach the run


def test_run_killed_mid_training_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    run_here("train", *RUN, cwd=reference)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([str(BIN / "lstmkit"), "train", *RUN], cwd=killed, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    runs = killed / "logs" / "sentiment" / "runs"
    while not list(runs.glob("*/checkpoints/last.ckpt")):  # the end of epoch 0 has been saved
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: like an OOM kill or a lost node
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list(runs.glob("*/metrics.json")), "the killed run must not have finished"
    (last,) = runs.glob("*/checkpoints/last.ckpt")
    assert read_checkpoint(last)["epoch"] in (0, 1)  # a complete checkpoint, never a torn file
    assert not list(runs.glob("*/checkpoints/.*tmp*"))

    run_here("train", *RUN, "resume=true", cwd=killed)
    resumed = _metrics(killed)
    expected = _metrics(reference)
    for key in ("val/loss", "val/acc", "val/acc_best", "test/acc", "test/f1", "test/loss"):
        assert resumed[key] == expected[key], key


def _started_until(cwd: Path, pattern: str, *args: str) -> subprocess.Popen[str]:
    """``lstmkit train *args`` started in the background, returned once ``logs/sentiment/<pattern>``
    exists (training is under way). In a process group of its own (``os.killpg`` signals it as a
    terminal's Ctrl-C does), with SIGINT at its default, as a shell's foreground command has it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # inherited through exec, where a handler is not
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([str(BIN / "lstmkit"), "train", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = time.monotonic() + 300
    while not list((cwd / "logs" / "sentiment").glob(pattern)):
        assert proc.poll() is None, f"the run finished before it could be stopped: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_exits_non_zero_and_says_how_to_resume(tmp_path: Path, signum: int, code: int) -> None:
    """Lightning turns SIGTERM into a ``SystemExit(None)``: the run (or a whole sweep) exited 0, so a
    scheduler that preempted it saw a success. Now: status 143, a message, result.json says so.
    Ctrl-C (SIGINT) was Lightning's "Detected KeyboardInterrupt" and exit 1, with no result.json;
    now it is the same interruption, with the conventional status 130."""
    proc = _started_until(tmp_path, "runs/*/checkpoints/last.ckpt", *RUN, "trainer.max_epochs=50")
    runs = tmp_path / "logs" / "sentiment" / "runs"
    name = signal.Signals(signum).name
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"interrupted by {name}" in stderr and "resume=true" in stderr
    assert "KeyboardInterrupt" not in stderr and "Received SIGTERM" not in stderr.replace("SIGTERM: 15", "")
    (result,) = runs.glob("*/result.json")
    recorded = json.loads(result.read_text())
    assert (recorded["status"], recorded["error"]) == ("interrupted", f"interrupted by {name}")
    assert not list(runs.glob("*/metrics.json"))


def test_ctrl_c_in_a_sweep_records_the_job_as_interrupted(tmp_path: Path) -> None:
    """SIGINT during a sequential sweep's job was recorded as "killed by a signal: out of memory?"
    (Lightning's exit 1 read as a dead launcher). Now the job is interrupted, the sweep exits 130 with
    its summary of the jobs so far."""
    proc = _started_until(tmp_path, "multiruns/*/0/checkpoints/last.ckpt", "-m", "optimizer.lr=1e-3,3e-3", *RUN,
                          "trainer.max_epochs=50")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    (sweep,) = (tmp_path / "logs" / "sentiment" / "multiruns").iterdir()
    recorded = json.loads((sweep / "0" / "result.json").read_text())
    assert (recorded["status"], recorded["error"]) == ("interrupted", "interrupted by SIGINT")
    assert "| 0 | interrupted |" in (sweep / "summary.md").read_text()
    assert f"the sweep's jobs so far are in {(sweep / 'summary.md').relative_to(tmp_path)}" in stderr  # as joblib's says
    assert not (sweep / "1").exists()


def test_sigterm_while_the_data_is_read_is_recorded_too(tmp_path: Path) -> None:
    """Lightning handles SIGTERM inside fit / test only: a run stopped while it generated or read its
    data died on the signal (exit -15, no result.json, so a sweep lost the trial). Now it is an
    interruption like any other."""
    proc = _started_until(tmp_path, "runs/*/.hydra/overrides.yaml", "data.num_examples=3000000", "logger=none")
    time.sleep(1.0)  # the job function has started (Hydra wrote its config just before calling it)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "before this run saved a checkpoint" in stderr
    (run,) = (tmp_path / "logs" / "sentiment" / "runs").iterdir()
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert not (run / "checkpoints").exists()  # stopped before training


def test_sigterm_to_a_ddp_spawn_run_stops_its_ranks(tmp_path: Path) -> None:
    """Under ddp_spawn (trainer=ddp_cpu) the parent only waits for its ranks: SIGTERM raised there and
    multiprocessing's exit then waited for ranks that trained on to max_epochs (result.json said
    interrupted). Now the ranks get SIGINT, as when SIGTERM killed the parent outright."""
    import psutil

    proc = _started_until(tmp_path, "runs/*/checkpoints/last.ckpt", *RUN, "trainer=ddp_cpu",
                          "trainer.max_epochs=400", "callbacks.early_stopping.patience=100000",
                          "trainer.num_sanity_val_steps=0")
    ranks = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not [r for r in alive if r.status() != psutil.STATUS_ZOMBIE], alive
    (run,) = (tmp_path / "logs" / "sentiment" / "runs").iterdir()
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] < 399


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_to_a_parallel_sweep_stops_its_workers(tmp_path: Path, signum: int, code: int) -> None:
    """A joblib sweep's trials run in worker processes, which a SIGTERM'd parent left training
    (orphaned, then recording "ok"). Now they are stopped, record "interrupted", and the sweep exits 143.
    Ctrl-C (SIGINT to the whole process group, as a terminal sends it) was a KeyboardInterrupt
    traceback from inside joblib, with no summary and no result.json; now the same, with exit 130."""
    import psutil

    proc = _started_until(tmp_path, "multiruns/*/*/checkpoints/last.ckpt", "-m", "hydra/launcher=joblib",
                          "hydra.launcher.n_jobs=2", "optimizer.lr=1e-3,3e-3", *RUN, "trainer.max_epochs=50")
    jobs = tmp_path / "logs" / "sentiment" / "multiruns"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # the terminal signals every process of the foreground group
    else:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr
    # its two workers, not loky's resource trackers too ("4 worker process(es)")
    assert f"the sweep was interrupted by {signal.Signals(signum).name} (2 worker process(es) stopped)" in stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(workers, timeout=10)  # killed ones are reaped by init a moment later
    assert not [w for w in alive if w.status() != psutil.STATUS_ZOMBIE], alive
    statuses = {json.loads(p.read_text())["status"] for p in jobs.glob("*/*/result.json")}
    assert statuses == {"interrupted"}, statuses
    assert list(jobs.glob("*/summary.md"))


def test_resume_after_a_run_that_saved_no_checkpoint_starts_afresh(tmp_path: Path) -> None:
    """A run killed before its first checkpoint left only its overrides: ``resume=true`` with those
    overrides continued *another* run's newest last.ckpt (its weights, epoch and metrics)."""
    small = [*STALL[:4], "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
             "test=false"]
    run_here("train", *small, "optimizer.lr=0.01", "trainer.max_epochs=1", cwd=tmp_path)  # another, finished run
    stopped = tmp_path / "logs" / "sentiment" / "runs" / "2000-01-01_00-00-00_000000"  # killed before a checkpoint
    (stopped / ".hydra").mkdir(parents=True)
    mine = [*small, "l1=0.0001", "trainer.max_epochs=1"]
    (stopped / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in mine))
    proc = run_here("train", *mine, "resume=true", cwd=tmp_path)
    log = " ".join((proc.stdout + proc.stderr).split())
    assert f"the earlier run with these overrides, {stopped.relative_to(tmp_path)}, saved no checkpoint" in log, log
    assert "resuming the task's newest" not in log
    # with overrides no run has, the task's newest is continued, and what this run sets otherwise is named
    proc = run_here("train", *small, "optimizer.lr=0.02", "head.dropout=0.5", "model.dropout=0.0",
                    "trainer.max_epochs=2", "resume=true", cwd=tmp_path)
    log = " ".join((proc.stdout + proc.stderr).split())
    # (model.dropout=0.0 is the default, given: the same value, not named)
    assert ("a run of other settings: this run sets head.dropout=0.5 (that run: 0.2), l1=0.0 (that run: 0.0001), "
            "optimizer.lr=0.02 (that run: 0.003) (give ckpt_path=") in log, log


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1

    def torn_save(obj: object, fh: object) -> None:  # a kill half-way through writing
        fh.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RecordMemory(L.Callback):
    def __init__(self) -> None:
        self.rss: dict[int, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.rss[trainer.global_step] = _rss_mib()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read resident memory")
def test_memory_stays_flat_over_hundreds_of_steps(make_cfg) -> None:
    from hydra.utils import instantiate

    from lstmkit.commands.train import build_model

    cfg = make_cfg(["data.num_examples=1200", "data.batch_size=8", "model.hidden_size=16", "encoder.dim=16"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    memory = _RecordMemory()
    trainer = L.Trainer(max_steps=600, limit_val_batches=5, val_check_interval=50, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[memory])
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 600
    warm, end = memory.rss[100], memory.rss[600]
    print(f"resident memory: step 100 {warm:.1f} MiB, step 600 {end:.1f} MiB")
    # a leak of even one small tensor or graph per step would add far more than this over 500 steps
    assert end - warm < 25, f"resident memory grew from {warm:.0f} MiB to {end:.0f} MiB"


def test_dataloader_workers_run_end_to_end(tmp_path: Path) -> None:
    run_here("train", "data.num_workers=2", "data.num_examples=300", "model.hidden_size=16", "encoder.dim=16",
            *QUICK, cwd=tmp_path)
    assert "test/acc" in _metrics(tmp_path)


class _DiesInWorker(Dataset[int]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return index


def test_a_dead_dataloader_worker_is_reported_clearly() -> None:
    loader = DataLoader(_DiesInWorker(), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError) as err:
        list(loader)
    message = explain_runtime_error(err.value)
    assert message is not None
    assert "data-loading worker" in message and "data.num_workers=0" in message
    assert explain_runtime_error(RuntimeError("shape mismatch")) is None


def test_a_full_disk_is_said_in_one_line(tmp_path: Path) -> None:
    """Writing a checkpoint (or any file) to a full disk ended in a raw traceback; torch.save's own
    error on a full device does not even say why ("unexpected pos 704 vs 598")."""
    import torch

    with pytest.raises(OSError) as full, open("/dev/full", "wb") as fh:  # Linux: a device that is always full
        fh.write(b"x" * 100_000)
    message = explain_runtime_error(OSError(full.value.errno, full.value.strerror, str(tmp_path / "last.ckpt")))
    assert message is not None and message.startswith("the disk is full (or over quota) while writing ")
    assert "last.ckpt" in message and "LSTMKIT_LOG_DIR" in message and "resume=true" in message
    with pytest.raises(RuntimeError) as raw:
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    assert (explain_runtime_error(raw.value) or "").startswith("the disk is full")
    assert explain_runtime_error(OSError(2, "No such file or directory", "x")) is None


def test_gpu_trainer_without_a_gpu_says_so(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_here("train", "trainer=gpu", "debug=fdr", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "asks for a CUDA GPU, but none is available" in proc.stderr and "trainer=cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("override", "hint"), [
    ("model.hiden_size=32", "did you mean model.hidden_size?"),
    ("task=sentimnt", "did you mean task=sentiment?"),
    ("trainer.max_epoch=3", "did you mean trainer.max_epochs?"),
    ("+lr_scale.encoder=0", "lr_scale.encoder is already a config key: drop the + (lr_scale.encoder=0)"),
])
def test_config_typos_get_one_line_with_a_suggestion(tmp_path: Path, override: str, hint: str) -> None:
    """Hydra's 6-15 lines ("To append to your config use +model.hiden_size=32", advice that hides the typo)
    came above the hint; with a hint they are dropped: one line, lstmkit's "error:" and status 2."""
    proc = run_here("train", override, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lstmkit train: error: ") and hint in lines[0], lines
    assert "To append" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["-c", "all"], ["--cfg", "job", "-p", "model"],
                                   ["--cf", "job"], ["--cfg=job"], ["--cfg", "job", "--"]])
def test_a_typo_gets_its_hint_beside_hydras_flags(tmp_path: Path, flags: list[str]) -> None:
    """``--cfg job ~head.class_weights`` read ``job`` as an override: no hint, Hydra's message instead."""
    proc = run_here("train", *flags, "~head.class_weights", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [(
        "lstmkit train: error: ~head.class_weights: Hydra cannot delete a key whose value is null, and "
        "head.class_weights is null already (unset); drop the ~, or give the key a value (head.class_weights=...)")]


def test_split_flags_reads_a_command_line_as_hydras_parser_does() -> None:
    """Abbreviated long flags (argparse takes --config-d for --config-dir) and ``--`` (the rest are
    overrides): the flag's value was read as an override, and ``--`` as a flag."""
    from lstmkit.suggest import split_flags

    assert split_flags(["--config-d", "conf", "a=1"]) == (["--config-d", "conf"], ["a=1"])
    assert split_flags(["--cfg=job", "a=1"]) == (["--cfg=job"], ["a=1"])
    assert split_flags(["task=ecg", "-m", "seed=1,2"]) == (["-m"], ["task=ecg", "seed=1,2"])
    assert split_flags(["-m", "--", "a=1", "b=2"]) == (["-m"], ["a=1", "b=2"])
    assert split_flags(["--info", "x=1"]) == (["--info"], ["x=1"])  # --info's topic is optional
    assert split_flags(["-i", "config", "x=1"]) == (["-i", "config"], ["x=1"])


def test_a_typo_without_a_hint_keeps_hydras_message(tmp_path: Path) -> None:
    """Held back while the config composes, Hydra's message is printed as it was when lstmkit has no hint."""
    proc = run_here("train", "nothing_like_any_key=1", cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Could not override 'nothing_like_any_key'" in proc.stderr and "lstmkit train" not in proc.stderr


def test_held_stderr_writes_through_once_released(capsys) -> None:
    """A logging handler made while Hydra composed keeps the held stream: it must write through after."""
    import sys

    from lstmkit.cli import _HeldStderr, release_stderr

    real = sys.stderr
    held = sys.stderr = _HeldStderr(real)
    try:
        print("held", file=sys.stderr)
        assert capsys.readouterr().err == ""
        release_stderr()
        assert sys.stderr is real and capsys.readouterr().err == "held\n"
        held.write("through\n")
        assert held.isatty() == real.isatty() and capsys.readouterr().err == "through\n"
    finally:
        sys.stderr = real


def test_a_dropped_hydra_report_keeps_the_warnings_held_with_it(capsys) -> None:
    """Dropping Hydra's error block (a hint says more) dropped a warning printed while the config composed."""
    import sys
    import warnings

    from hydra._internal.utils import run_and_report

    from lstmkit.cli import _HeldStderr

    real = sys.stderr
    held = sys.stderr = _HeldStderr(real)
    try:
        # as warnings.showwarning writes it (pytest records warnings instead of letting them print)
        sys.stderr.write(warnings.formatwarning("a composition warning", UserWarning, "conf.py", 3))

        def compose() -> None:
            from hydra.errors import ConfigCompositionException

            raise ConfigCompositionException("Could not override 'model.hiden_size'.")

        with pytest.raises(SystemExit):
            run_and_report(compose)
        held.release(keep=False)
        err = capsys.readouterr().err
        assert "a composition warning" in err and "Could not override" not in err
    finally:
        sys.stderr = real


def test_a_valid_group_choice_names_the_earlier_override_it_does_not_fit() -> None:
    """``data.num_examples=300 task=next_word``: the task is right, the data key is the default task's."""
    hint = suggest_override(config_dir(), "train", ["data.num_examples=300", "model.hidden_size=8", "task=next_word"])
    assert hint is not None and hint.startswith("data.num_examples=300 does not apply with task=next_word")
    assert "num_tokens" in hint  # the next-word data keys are listed
    swept = suggest_override(config_dir(), "train", ["data.num_examples=300", "task=next_word,sentiment"])
    assert swept is not None and swept.startswith("data.num_examples=300 does not apply with task=next_word")


def test_a_refused_value_names_the_overrides(tmp_path: Path) -> None:
    """A value of the right type that the component refuses (``nn.LSTM``'s ValueError)."""
    proc = run_here("train", "model.hidden_size=-3", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "cannot build the model" in proc.stderr and "hidden_size must be greater than zero" in proc.stderr
    assert "model.hidden_size=-3" in proc.stderr and "Traceback" not in proc.stderr
    verbose = run_here("train", "model.hidden_size=-3", "--verbose", cwd=tmp_path, check=False)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr  # --verbose shows the stack


class PoisonWeights(L.Callback):
    """Make the model diverge in its second epoch, after one good epoch has been checkpointed."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_progress.current.ready == 3:
            with torch.no_grad():
                next(pl_module.head.parameters()).fill_(float("inf"))


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path: Path) -> None:
    from lstmkit.callbacks import DivergedError
    from lstmkit.commands.train import train

    cfg = make_cfg(["data.num_examples=300", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8",
                    "trainer.max_epochs=3", "logger=none", "trainer.enable_progress_bar=false",
                    "+callbacks.poison._target_=tests.test_reliability.PoisonWeights"])
    with pytest.raises(DivergedError, match=r"training loss became nan at epoch 1, step \d+, batch 2 .*optimizer\.lr.*"
                                            r"the last good checkpoints are kept"):
        train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_switches_are_true_or_false_and_an_adapt_without_a_test_is_said(make_cfg, caplog) -> None:
    """test=maybe / adapt=maybe were taken for true (a non-empty string); adapt=true with test=false
    adapted nothing and said nothing."""
    from lstmkit.commands.evaluate import evaluate
    from lstmkit.commands.train import train
    from lstmkit.errors import ConfigError

    for given, says in (("test=maybe", "test='maybe'"), ("train=2", "train=2"), ("adapt=maybe", "adapt='maybe'"),
                        ("resume=yes", "resume='yes'")):
        with pytest.raises(ConfigError, match=re.escape(f"{says}: expected true or false")):
            train(make_cfg([given]))
    with pytest.raises(ConfigError, match=r"adapt='no': expected true or false"):
        evaluate(make_cfg(["ckpt_path=nowhere.ckpt", "adapt=no"], name="eval"))
    cfg = make_cfg(["adapt=true", "test=false", "data.num_examples=200", "model.hidden_size=8", "encoder.dim=8",
                    "logger=none", "callbacks=none", *QUICK])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        train(cfg)  # a sentiment model (no statistics to adapt): not refused, as nothing would be adapted
    assert "adapt=true adapts the test after training; with test=false there is none: ignored" in caplog.text
    cfg = make_cfg(["train=null", "test=false", "data.num_examples=200", "model.hidden_size=8", "encoder.dim=8",
                    "logger=none", "callbacks=none", *QUICK])
    train(cfg)
    assert cfg.train is True  # null is the default (train), not a skipped fit and an untrained model tested


def test_callbacks_none_writes_no_checkpoint_and_tests_the_final_weights(make_cfg, tmp_path: Path, caplog) -> None:
    """``callbacks=none`` ("no checkpoints") still wrote Lightning's default checkpoint,
    csv/checkpoints/epoch=0-step=3.ckpt, and said it was "testing the best checkpoint" (the last one)."""
    from lstmkit.commands.train import train

    cfg = make_cfg(["callbacks=none", "data.num_examples=200", "model.hidden_size=8", "encoder.dim=8", "logger=csv",
                    *QUICK])
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "testing the final weights (no checkpoint callback" in caplog.text
    assert "testing the best checkpoint" not in caplog.text
    accuracy = json.loads((tmp_path / "metrics.json").read_text())["test/acc"]
    assert math.isfinite(accuracy) and 0 <= accuracy <= 1  # the final weights were tested


def test_last_checkpoint_is_the_last_epoch_even_when_the_metric_stalls(make_cfg, tmp_path: Path) -> None:
    """Lightning 2.6's ``save_last`` only rewrites ``last.ckpt`` when the best improves; resume needs the last epoch."""
    from lstmkit.commands.train import train

    cfg = make_cfg(["data.num_examples=200", "data.batch_size=32", "model.hidden_size=8", "encoder.dim=8",
                    "optimizer.lr=0.0", "scheduler=none", "trainer.max_epochs=3", "logger=none", "test=false",
                    "trainer.enable_progress_bar=false"])  # lr 0: val/acc never improves after epoch 0
    train(cfg)
    checkpoints = tmp_path / "checkpoints"
    assert read_checkpoint(checkpoints / "best.ckpt")["epoch"] == 0
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


# lr 0: every epoch scores the same, so the best checkpoint stays epoch 0 (a later epoch must beat it)
STALL = ["data.num_examples=200", "data.batch_size=32", "model.hidden_size=8", "encoder.dim=8", "optimizer.lr=0.0",
         "scheduler=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def test_a_resumed_run_keeps_the_best_checkpoint_of_its_earlier_epochs(tmp_path: Path) -> None:
    """The resumed run writes into a new folder; Lightning's ModelCheckpoint then forgets the best
    score, and the first epoch after the resume became "best" (so did ``val/*_best`` and the test
    metrics measured on it)."""
    run_here("train", *STALL, "trainer.max_epochs=2", cwd=tmp_path)
    run_here("train", *STALL, "trainer.max_epochs=3", "resume=true", cwd=tmp_path)
    first, second = sorted((tmp_path / "logs" / "sentiment" / "runs").iterdir())
    assert read_checkpoint(second / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert read_checkpoint(second / "checkpoints" / "best.ckpt")["epoch"] == 0  # carried over, not epoch 2
    assert read_checkpoint(first / "checkpoints" / "best.ckpt")["epoch"] == 0  # the earlier folder is kept
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (first, second)]
    assert metrics[1]["val/acc_best"] == metrics[0]["val/acc_best"]
    # other optimiser settings: the restored optimiser state would ignore them silently
    proc = run_here("train", *STALL, "trainer.max_epochs=4", "resume=true", "optimizer.weight_decay=0.5", cwd=tmp_path)
    log = " ".join((proc.stdout + proc.stderr).split())
    assert "no earlier run of this task has the overrides" in log  # falls back to the newest, saying so
    assert "optimizer.weight_decay 0.01 -> 0.5 differ from the checkpoint's run" in log
    # a resume that has nothing left to train says so (only Lightning's "max_epochs=3 reached" did)
    proc = run_here("train", *STALL, "trainer.max_epochs=3", "resume=true", cwd=tmp_path)
    log = " ".join((proc.stdout + proc.stderr).split())
    assert "it has trained 3 epoch(s) already, so trainer.max_epochs=3 leaves nothing to train" in log, log
    # fewer epochs than it has trained: Lightning's "You restored a checkpoint with current_epoch=2, but you have
    # set Trainer(max_epochs=2)" ended the run (exit 2) although the warning promised the test
    proc = run_here("train", *STALL, "trainer.max_epochs=2", "resume=true", cwd=tmp_path)
    log = " ".join((proc.stdout + proc.stderr).split())
    assert "it has trained 3 epoch(s) already, so trainer.max_epochs=2 leaves nothing to train" in log, log
    newest = max((tmp_path / "logs" / "sentiment" / "runs").iterdir())
    assert "test/acc" in json.loads((newest / "metrics.json").read_text())
    # ... and its metrics.json keeps the validation metrics of the run it continued, which no epoch logged
    # again (it held the test's and val/acc_best alone)
    again = json.loads((newest / "metrics.json").read_text())
    continued = json.loads((second / "metrics.json").read_text())
    assert again["val/acc"] == continued["val/acc"] and again["train/loss"] == continued["train/loss"]


def test_an_untrained_resume_of_an_interrupted_run_keeps_its_logged_metrics(tmp_path: Path) -> None:
    """An interrupted run writes no metrics.json: a resume with nothing left to train kept only the test
    metrics (tester-2). Its CSV log holds each metric's last value."""
    from lstmkit.commands.train import _untrained_resume

    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text(
        "epoch,lr-AdamW,step,train/loss,val/acc,test/acc\n0,0.001,9,0.7,,\n0,,9,,0.6,\n1,,19,0.5,,\n1,,19,,0.8,\n")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert _untrained_resume(ckpt, {"global_step": 20}, 20) == {"train/loss": 0.5, "val/acc": 0.8}
    assert _untrained_resume(ckpt, {"global_step": 20}, 30) == {}  # it trained: its own metrics are logged
    (run / "metrics.json").write_text(json.dumps({"val/acc": 0.9, "test/acc": 0.1}))
    assert _untrained_resume(ckpt, {"global_step": 20}, 20) == {"val/acc": 0.9}


def test_a_resumed_sweep_continues_each_job_from_its_own_checkpoint(tmp_path: Path) -> None:
    """``resume=true`` in a multirun: each job takes the earlier sweep's job with its overrides, never a
    sibling's checkpoint or one the running sweep has just written; a job without one starts afresh."""
    run_here("train", "-m", "optimizer.lr=0.001,0.002", *STALL[:4], *STALL[5:], "trainer.max_epochs=1", cwd=tmp_path)
    run_here("train", "-m", "optimizer.lr=0.001,0.002,0.003", *STALL[:4], *STALL[5:], "trainer.max_epochs=2",
            "resume=true", cwd=tmp_path)
    earlier, resumed = sorted((tmp_path / "logs" / "sentiment" / "multiruns").iterdir())
    for job, lr in enumerate((0.001, 0.002, 0.003)):
        last = read_checkpoint(resumed / str(job) / "checkpoints" / "last.ckpt")
        assert last["epoch"] == 1
        assert {group["lr"] for group in last["optimizer_states"][0]["param_groups"]} == {lr}  # its own optimiser
    for job in (0, 1):
        log = (resumed / str(job) / "cli.log").read_text()
        assert f"{earlier.name}/{job}/checkpoints/last.ckpt" in log
    assert "this job starts afresh" in (resumed / "2" / "cli.log").read_text()


def test_a_sweep_in_a_fixed_folder_resumes_each_job_in_place(tmp_path: Path) -> None:
    """A sweep given ``hydra.sweep.dir`` and run again with resume=true found "no earlier run" for any
    job (the sweep now running, left out of the search, is in the earlier one's folder): each job
    started afresh beside its checkpoints (best-v1.ckpt) and its CSV log held two runs. Now each job
    continues its own folder's last.ckpt, in place, as a single run in a fixed folder does."""
    sweep = tmp_path / "sweep"
    args = ["-m", "optimizer.lr=0.001,0.002", *STALL[:4], *STALL[5:], f"hydra.sweep.dir={sweep}"]
    first = run_here("train", *args, "trainer.max_epochs=1", cwd=tmp_path)
    again = run_here("train", *args, "trainer.max_epochs=2", "resume=true", cwd=tmp_path)
    # the folder used again without resume=true: its summary would mix the two sweeps' jobs, which is said
    assert "already holds" not in first.stderr + again.stderr
    assert run_here("train", *args[:1], "optimizer.lr=0.003", *args[2:], "train=false", cwd=tmp_path).stderr.count(
        f"hydra.sweep.dir={sweep} already holds 2 job folder(s) of an earlier sweep (0..1)") == 1
    for job, lr in enumerate((0.001, 0.002)):
        folder = sweep / str(job)
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        last = read_checkpoint(folder / "checkpoints" / "last.ckpt")
        assert last["epoch"] == 1
        assert {group["lr"] for group in last["optimizer_states"][0]["param_groups"]} == {lr}
        assert f"resuming {folder}/checkpoints/last.ckpt (this job's own folder" in (folder / "cli.log").read_text()
        with (folder / "csv" / "metrics.csv").open() as fh:
            epochs = [int(row["epoch"]) for row in csv.DictReader(fh) if row.get("val/loss")]
        assert epochs == [0, 1], epochs  # one run: each epoch's validation once


def test_a_fixed_sweep_folder_of_another_sweep_is_not_continued(make_cfg, tmp_path: Path, caplog,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The job folder's earlier run is continued only when its result.json recorded this job's
    overrides: Hydra has already replaced its .hydra/overrides.yaml, and a folder reused by a sweep over
    other values holds another job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path

    # the MULTIRUN config set below must not outlive the test (the job wrapper of later tests reads it)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)

    cfg = make_cfg(["optimizer.lr=1e-3", "resume=true"])
    job = tmp_path / "sweep" / "0"
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(job.parent)
        cfg.hydra.runtime.output_dir = str(job)
    HydraConfig.instance().set_config(cfg)
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    recorded = [o.replace("1e-3", "0.001") for o in cfg.hydra.overrides.task if not o.startswith("resume")]
    (job / "result.json").write_text(json.dumps({"status": "ok", "overrides": recorded}))
    assert resolve_ckpt_path("last", cfg) == str(job / "checkpoints" / "last.ckpt")  # its own: 1e-3 is 0.001
    other = [o.replace("0.001", "0.01") for o in recorded]
    (job / "result.json").write_text(json.dumps({"status": "ok", "overrides": other}))
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        assert resolve_ckpt_path("last", cfg) is None
    assert f"holds a run of other overrides, {other}" in caplog.text
    assert "this job starts afresh" in caplog.text


def test_sweep_jobs_with_the_same_overrides_each_resume_their_own(make_cfg, tmp_path: Path, caplog,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``-m seed=null,null ... resume=true``: both jobs have the same overrides, and both resumed the
    earlier sweep's newest job of them (its job 1). Now each takes the job of its own number, and a job
    whose twin saved no checkpoint, or that the earlier sweep did not have, starts afresh."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path

    # the MULTIRUN config set below must not outlive the test (the job wrapper of later tests reads it)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)

    cfg = make_cfg(["seed=null", "resume=true"])
    mine = [o for o in cfg.hydra.overrides.task if not o.startswith("resume")]
    earlier = tmp_path / "logs" / "sentiment" / "multiruns" / "earlier"
    for job in (0, 1):
        _fake_run(earlier / str(job), mine, age=10 - job)
    (earlier / "1" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 1\n")

    def resumed(number: int) -> str | None:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(tmp_path / "logs" / "sentiment" / "multiruns" / "now")
            cfg.hydra.runtime.output_dir = f"{cfg.hydra.sweep.dir}/{number}"
            cfg.hydra.job.num = number
        HydraConfig.instance().set_config(cfg)
        return resolve_ckpt_path("last", cfg)

    assert resumed(0) == str(earlier / "0" / "checkpoints" / "last.ckpt")  # not the newest, job 1's
    assert resumed(1) == str(earlier / "1" / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        assert resumed(2) is None
    assert "its job 2 is not among them, so this job starts afresh" in caplog.text
    (earlier / "0" / "checkpoints" / "last.ckpt").unlink()  # job 0 stopped before its first checkpoint
    assert resumed(0) is None

    # two earlier single runs of these overrides (a review): not twins of a sweep; the newest is continued
    runs = tmp_path / "logs" / "sentiment" / "runs"
    _fake_run(runs / "2026-01-01_10-00-00", mine, age=4)
    newest = _fake_run(runs / "2026-01-01_11-00-00", mine, age=3)
    assert resumed(0) == str(newest)


def test_resuming_with_another_length_warns_for_cosine_and_refuses_one_cycle(tmp_path: Path) -> None:
    """The schedule is rebuilt over the new length while its step count continues: cosine jumps
    (said), one-cycle would step past its saved end and crash inside PyTorch (refused)."""
    small = [*STALL[:4], "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
    for schedule, folder in (("cosine", "c"), ("onecycle", "o")):
        (tmp_path / folder).mkdir()
        run_here("train", *small, f"scheduler={schedule}", "trainer.max_epochs=1", cwd=tmp_path / folder)
    proc = run_here("train", *small, "scheduler=cosine", "trainer.max_epochs=2", "resume=true", cwd=tmp_path / "c")
    log = " ".join((proc.stdout + proc.stderr).split())
    covered = re.search(r"the cosine_with_warmup schedule covered (\d+) steps and now covers (\d+)", log)
    assert covered and 2 * int(covered.group(1)) == int(covered.group(2))  # twice the epochs
    proc = run_here("train", *small, "scheduler=onecycle", "trainer.max_epochs=2", "resume=true", cwd=tmp_path / "o",
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "scheduler=onecycle cannot change its length when a run resumes: it was spread over" in proc.stderr


def test_a_changed_schedule_is_said_by_rank_zero_only(caplog) -> None:
    """Under DDP every rank printed the resumed schedule's warning (twice on two processes)."""
    from types import SimpleNamespace

    from lstmkit.optim import check_schedule_length

    said = []
    for zero in (True, False):
        trainer = SimpleNamespace(is_global_zero=zero, max_epochs=2, max_steps=-1)
        with caplog.at_level(logging.WARNING, logger="lstmkit"):
            caplog.clear()
            assert check_schedule_length("cosine_with_warmup", 20, 10, trainer) == 20
            said.append("schedule covered 10 steps and now covers 20" in caplog.text)
    assert said == [True, False]


def test_a_resume_refusal_names_the_classes_that_differ() -> None:
    """"classes (2 entries against 2)" did not say which: the entries only on either side are named."""
    from lstmkit.checkpoints import check_resumable
    from lstmkit.module import SequenceModel
    from lstmkit.types import DataSpec

    def model(classes: list[str]) -> SequenceModel:
        spec = DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>", "a"], classes=classes).to_dict()
        return SequenceModel(spec, {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4}, {"hidden_size": 4},
                             {"_target_": "lstmkit.heads.ClassificationHead"})

    old = model(["neg", "pos"])
    ckpt = {"hyper_parameters": dict(old.hparams), "state_dict": old.state_dict()}
    with pytest.raises(CheckpointError, match=r"classes \(2 entries against 2; only in the checkpoint: \['neg', 'pos'\], "
                                              r"only in this run: \['negative', 'positive'\]\)"):
        check_resumable("old.ckpt", model(["negative", "positive"]), ckpt)


def test_an_eval_data_option_is_pointed_to_its_plus() -> None:
    """``eval ... data.eval_batch_size=4`` was told "did you mean data.batch_size?": a real datamodule
    option of the checkpoint's data is overridden with a +, which the hint now says first."""
    hint = suggest_override(config_dir(), "eval", ["ckpt_path=x.ckpt", "data.eval_batch_size=4"])
    assert hint is not None and hint.startswith("the checkpoint's other data settings are overridden with a +: "
                                                "+data.eval_batch_size=4 (or did you mean data.batch_size?)")
    # predict takes no +data.*: its data.* keys only say how input files are read
    hint = suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", "input=x", "data.date_fmt=%d"])
    assert hint is not None and hint.startswith("predict's data.* settings say how input files are read (")
    assert "+" not in hint and "did you mean data.date_format?" in hint
    # train has a ckpt_path too (resume), but its data.* keys are the datamodule's: no "+" advice
    hint = suggest_override(config_dir(), "train", ["task=next_word", "data.num_examples=200"])
    assert hint is not None and "+data" not in hint and "checkpoint" not in hint, hint


def test_an_error_after_a_sigterm_is_an_interruption(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A SIGTERM to the whole process group (SLURM, systemd) may kill a DataLoader worker before the
    main process stops at its next batch: the worker's death, not a crash, must be what is reported."""
    from omegaconf import OmegaConf

    from lstmkit import cli

    def job(cfg: object) -> None:
        found = signal.getsignal(signal.SIGTERM)

        def lightning_like(signum: int, frame: object) -> None:  # Lightning's: notes it, calls the one it found
            found(signum, frame)  # type: ignore[operator]

        signal.signal(signal.SIGTERM, lightning_like)
        os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated.")

    monkeypatch.setattr(cli, "_load", lambda target: job)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cli._task("train")(OmegaConf.create({}))
    assert stopped.value.code == 143
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler before the job is back


@pytest.fixture
def sigint_default() -> object:
    """SIGINT at Python's default (KeyboardInterrupt), as in a terminal; pytest may run with it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_default")
def test_ctrl_c_stops_at_the_next_batch_and_is_closed_in_wandb_as_interrupted(monkeypatch: pytest.MonkeyPatch,
                                                                              capsys) -> None:
    """SIGINT inside Lightning's loops was a KeyboardInterrupt (Lightning's exit 1; W&B closed the run
    as finished, exit code 0). Now it goes to the SIGTERM handler of the moment, Lightning's, which
    stops at the next batch; W&B gets 130. Outside the loops, and for a second Ctrl-C, it stops at once."""
    import sys
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from omegaconf import OmegaConf

    from lstmkit import cli

    finished: list[int | None] = []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=object(), finish=lambda exit_code=None: finished.append(exit_code)))
    noted: list[int] = []

    def job(cfg: object) -> None:
        found = signal.getsignal(signal.SIGTERM)

        def lightning_like(signum: int, frame: object) -> None:  # Lightning's: notes it, calls the one it found
            noted.append(signum)
            found(signum, frame)  # type: ignore[operator]

        signal.signal(signal.SIGTERM, lightning_like)
        os.kill(os.getpid(), signal.SIGINT)  # handled before the next bytecode: noted, not raised
        assert noted == [signal.SIGINT]
        raise SIGTERMException  # what Lightning raises at the next batch

    monkeypatch.setattr(cli, "_load", lambda target: job)
    with pytest.raises(SystemExit) as stopped:
        cli._task("train")(OmegaConf.create({}))
    assert stopped.value.code == 130
    assert finished == [130]
    assert "interrupted by SIGINT (Ctrl-C)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before the job is back

    def twice(cfg: object) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # inside Lightning's loops, which wait
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: at once
        raise AssertionError("not stopped")

    monkeypatch.setattr(cli, "_load", lambda target: twice)
    with pytest.raises(SystemExit) as stopped:
        cli._task("train")(OmegaConf.create({}))
    assert stopped.value.code == 130


def test_ctrl_c_outside_a_job_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A Ctrl-C that no job handles (eval, predict; Hydra between a sweep's jobs) was a KeyboardInterrupt
    traceback; now one line and exit 130."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from lstmkit import cli

    def job(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", lambda target: job)
    monkeypatch.setattr(sys, "argv", ["lstmkit"])
    monkeypatch.setenv("LSTMKIT_COMMAND", "eval")  # main sets it; restored afterwards
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    try:
        cli.main(["eval", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path}"])
    except BaseException as err:  # noqa: BLE001 - a KeyboardInterrupt here would stop pytest itself
        stopped = err
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(stopped, SystemExit) and stopped.code == 130, repr(stopped)
    assert "lstmkit eval: interrupted by SIGINT (Ctrl-C)" in capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [(RuntimeError("out of memory"), 1), (None, None)])
def test_a_failed_job_is_not_recorded_in_wandb_as_finished(monkeypatch: pytest.MonkeyPatch, error, code) -> None:
    """W&B marks a run crashed only when told a non-zero exit code; a crash used to finish it with 0."""
    import sys
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lstmkit import cli

    finished: list[int | None] = []
    fake = SimpleNamespace(run=object(), finish=lambda exit_code=None: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def job(cfg: object) -> float:
        if error is not None:
            raise error
        return 0.5

    monkeypatch.setattr(cli, "_load", lambda target: job)
    if error is None:
        cli._task("train")(OmegaConf.create({}))
    else:
        with pytest.raises(RuntimeError):
            cli._task("train")(OmegaConf.create({}))
    assert finished == [code]


class CrashAtStep(L.Callback):
    """Raises after global step ``step``: a run that dies mid-epoch (test helper, named by a config)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("crashed")


def test_last_checkpoint_is_an_epoch_end_even_with_validation_mid_epoch(make_cfg, tmp_path: Path) -> None:
    """With val_check_interval < 1 last.ckpt was written mid-epoch; a resume from it replays the
    epoch's first batches (the loader starts again at batch 0) and never sees the others."""
    from lstmkit.commands.train import train

    cfg = make_cfg(["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8",
                    "logger=csv", "trainer.max_epochs=3", "trainer.limit_train_batches=8",
                    "trainer.val_check_interval=0.5", "trainer.enable_progress_bar=false", "test=false",
                    "+callbacks.crash._target_=tests.test_reliability.CrashAtStep", "+callbacks.crash.step=14"])
    with pytest.raises(RuntimeError, match="crashed"):
        train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8 and last["epoch"] == 0  # the end of the first epoch, not step 12


def test_a_resume_with_another_optimizer_or_lr_scale_is_refused_before_lightning_fails() -> None:
    """Lightning failed deep in the optimiser's load_state_dict (a traceback, after a warning that
    the new values were "not used"): the checkpoint's optimiser state cannot fit either."""
    from lstmkit.checkpoints import check_resumable
    from lstmkit.module import SequenceModel
    from lstmkit.types import DataSpec

    spec = DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>", "a"], classes=["neg", "pos"]).to_dict()

    def model(**options: object) -> SequenceModel:
        return SequenceModel(spec, {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4}, {"hidden_size": 4},
                             {"_target_": "lstmkit.heads.ClassificationHead"}, **options)

    adamw = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    old = model(optimizer=adamw)
    ckpt = {"hyper_parameters": dict(old.hparams), "state_dict": old.state_dict(),
            "optimizer_states": [old.configure_optimizers().state_dict()]}
    check_resumable("old.ckpt", model(optimizer={**adamw, "lr": 3e-3}), ckpt)  # a new lr: warned, resumable
    with pytest.raises(CheckpointError, match=r"another optimizer \(torch\.optim\.AdamW against torch\.optim\.SGD\)"):
        check_resumable("old.ckpt", model(optimizer={**adamw, "_target_": "torch.optim.SGD"}), ckpt)
    with pytest.raises(CheckpointError, match=r"other optimizer parameter groups \(2 groups of \[\d+, \d+\] tensors "
                                              r"against 3 of \[1, 3, 3\]: another lr_scale"):
        check_resumable("old.ckpt", model(optimizer=adamw, lr_scale={"encoder": 0.5}), ckpt)
    # another schedule (a review): plateau's state loaded into cosine failed with KeyError 'lr_lambdas'; a run
    # without one resumed with cosine restarted it at its step 0; both were "not used" in the warning
    cosine = {"_target_": "lstmkit.optim.cosine_with_warmup", "_partial_": True, "interval": "step"}
    plateau = {"_target_": "lstmkit.optim.plateau", "_partial_": True, "interval": "epoch"}
    with pytest.raises(CheckpointError, match=r"another scheduler \(none against lstmkit\.optim\.cosine_with_warmup\)"):
        check_resumable("old.ckpt", model(optimizer=adamw, scheduler=cosine), ckpt)
    scheduled = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "scheduler": plateau}}
    with pytest.raises(CheckpointError, match=r"another scheduler \(lstmkit\.optim\.plateau against lstmkit\.optim\."
                                              r"cosine_with_warmup\).*init_from\.ckpt_path=old\.ckpt"):
        check_resumable("old.ckpt", model(optimizer=adamw, scheduler=cosine), scheduled)
    check_resumable("old.ckpt", model(optimizer=adamw, scheduler={**plateau, "factor": 0.3}), scheduled)  # warned


def test_the_first_step_after_a_longer_resume_is_on_the_new_schedule(tmp_path: Path) -> None:
    """``trainer.max_epochs`` raised on resume rebuilds the cosine schedule over the new length; its
    first step trained at the old schedule's last (floor) rate, restored with the optimiser, and only
    the steps after it followed the new schedule."""
    from lstmkit.optim import cosine_with_warmup

    small = [*STALL[:4], "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
             "trainer.limit_train_batches=4", "callbacks.lr_monitor.logging_interval=step", "trainer.log_every_n_steps=1",
             "test=false", "optimizer.lr=0.01"]
    run_here("train", *small, "trainer.max_epochs=1", cwd=tmp_path)
    run_here("train", *small, "trainer.max_epochs=2", "resume=true", cwd=tmp_path)
    resumed = max((tmp_path / "logs" / "sentiment" / "runs").iterdir())
    with (resumed / "csv" / "metrics.csv").open() as fh:
        rates = {int(row["step"]): float(row["lr-AdamW/decay"]) for row in csv.DictReader(fh) if row.get("lr-AdamW/decay")}
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    schedule = cosine_with_warmup(optimizer, total_steps=8)
    expected = []
    for _ in range(8):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert sorted(rates) == [4, 5, 6, 7], rates
    assert [rates[step] for step in (4, 5, 6, 7)] == pytest.approx(expected[4:], rel=1e-9)


def test_override_key_drops_hydras_prefixes_and_the_value() -> None:
    from lstmkit.resume import override_key

    assert override_key("+model.hidden_size=3") == "model.hidden_size"
    assert override_key("++optimizer.lr=1e-3,3e-3") == "optimizer.lr"
    assert override_key("~callbacks.early_stopping") == "callbacks.early_stopping"
    assert override_key("data.text=a=b") == "data.text"


def test_a_resume_keeps_the_patience_it_is_given() -> None:
    """Lightning restored the checkpoint's patience over the command line's; the counts are restored."""
    from lstmkit.callbacks import RunEarlyStopping

    before = RunEarlyStopping(monitor="val/acc", mode="max", patience=3)
    before.wait_count, before.best_score = 3, torch.tensor(0.8)
    after = RunEarlyStopping(monitor="val/acc", mode="max", patience=10)
    after.load_state_dict(before.state_dict())
    assert after.patience == 10 and after.wait_count == 3 and float(after.best_score) == pytest.approx(0.8)


def test_a_resume_with_a_new_patience_finds_its_earlier_run(make_cfg, tmp_path: Path) -> None:
    """README: "A new callbacks.early_stopping.patience is used (give a stopped run more epochs)". But
    the patience was compared with the earlier runs' overrides: no run matched, and the task's newest
    last.ckpt, another run's, was resumed. It is left out like the run length; a changed setting that
    makes another run (the learning rate) is not."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import job_overrides, resolve_ckpt_path

    assert job_overrides(["callbacks.early_stopping.patience=10", "optimizer.lr=0.01"]) == ["optimizer.lr=0.01"]
    # how a run is logged and shown is not what it trains (a sweep resumed with test=false started afresh)
    assert job_overrides(["logger=tensorboard", "logger.wandb.project=p", "test=false", "model.dropout=0.1",
                          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5"]) == ["model.dropout=0.1"]
    cfg = make_cfg(["optimizer.lr=0.01", "callbacks.early_stopping.patience=10", "trainer.max_epochs=9",
                    "resume=true"])
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(tmp_path / "logs" / "sentiment" / "runs" / "now")
    HydraConfig.instance().set_config(cfg)
    runs = tmp_path / "logs" / "sentiment" / "runs"
    kept = [o for o in cfg.hydra.overrides.task if o.split("=")[0] not in ("resume", "trainer.max_epochs",
                                                                          "callbacks.early_stopping.patience")]
    for name, overrides, age in (("mine", [*kept, "callbacks.early_stopping.patience=3"], 100),
                                 ("other", [o.replace("0.01", "0.02") for o in kept], 10)):
        _fake_run(runs / name, overrides, age)
    assert resolve_ckpt_path("last", cfg) == str(runs / "mine" / "checkpoints" / "last.ckpt")


def test_a_run_from_before_tokenizer_versions_is_found_with_the_setting_its_refusal_advises(
        make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming a run from before tokenizer versions is refused with the advice data.tokenizer_version=1;
    with it, the overrides were no longer the earlier run's: resume=true took the task's newest last.ckpt
    (another run's, here one of another dropout), and each job of a resumed sweep started afresh."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after the test
    cfg = make_cfg(["model.dropout=0.1", "data.tokenizer_version=1", "trainer.max_epochs=9", "resume=true"])
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(tmp_path / "logs" / "sentiment" / "runs" / "now")
    HydraConfig.instance().set_config(cfg)
    runs = tmp_path / "logs" / "sentiment" / "runs"
    before = [o for o in cfg.hydra.overrides.task if o.split("=")[0] not in ("resume", "trainer.max_epochs",
                                                                            "data.tokenizer_version")]
    old_config = "data:\n  tokenizer: word\n  lowercase: true\n"  # a run's data config before versions
    for name, overrides, config, age in (
            ("before_versions", before, old_config, 100),
            ("other_dropout", [o.replace("0.1", "0.2") for o in before], old_config, 50),
            ("version_2", before, old_config + "  tokenizer_version: 2\n", 10)):  # the same overrides, newer
        _fake_run(runs / name, overrides, age, config)
    assert resolve_ckpt_path("last", cfg) == str(runs / "before_versions" / "checkpoints" / "last.ckpt")

    # a sweep job in a fixed sweep folder: its own folder's run, whose result.json lacks the setting
    job = tmp_path / "sweep" / "0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (job / "result.json").write_text(json.dumps({"status": "ok", "overrides": before}))
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(job.parent)
        cfg.hydra.runtime.output_dir = str(job)
    HydraConfig.instance().set_config(cfg)
    assert resolve_ckpt_path("last", cfg) == str(job / "checkpoints" / "last.ckpt")


def test_a_plateau_schedule_resumes_where_it_was(tmp_path: Path) -> None:
    """Lightning steps ReduceLROnPlateau after the epoch's checkpoint and skips that step on resume:
    every resume lost an epoch of the schedule. Stopped after 2 epochs and resumed to 5, the run
    must cut the learning rate when the uninterrupted one does."""
    run = ["data.num_examples=300", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8", "logger=csv",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "test=false",
           "scheduler=plateau", "scheduler.patience=0", "optimizer.lr=1e-7",  # val/acc stays: a cut every epoch
           "callbacks.early_stopping.patience=100"]

    def lrs(root: Path) -> list[float]:
        rows = []
        for path in sorted((root / "logs" / "sentiment" / "runs").glob("*/csv/metrics.csv")):
            with path.open() as fh:
                rows += [row for row in csv.DictReader(fh) if row.get("lr-AdamW/decay")]
        return [float(row["lr-AdamW/decay"]) for row in sorted(rows, key=lambda r: int(r["step"]))]

    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    run_here("train", *run, "trainer.max_epochs=5", cwd=tmp_path / "whole")
    run_here("train", *run, "trainer.max_epochs=2", cwd=tmp_path / "parts")
    run_here("train", *run, "trainer.max_epochs=5", "resume=true", cwd=tmp_path / "parts")
    expected = lrs(tmp_path / "whole")
    # the uninterrupted run cuts the rate after the resume point (else this would test nothing)
    assert len(expected) == 5 and any(b < a for a, b in itertools.pairwise(expected[1:])), expected
    assert lrs(tmp_path / "parts") == expected


def test_a_run_resumes_in_its_own_fixed_folder_and_logs_each_step_once(make_cfg, tmp_path: Path) -> None:
    """With a fixed hydra.run.dir (torchrun's recipe) resume=true found no checkpoint, or resumed
    another run's over this one's; resumed in place, the CSV logged the replayed steps twice."""
    from lstmkit.commands.train import train

    run = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8",
           "logger=many", "~logger.wandb", "trainer.max_epochs=3", "trainer.limit_train_batches=8",
           "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "test=false"]
    with pytest.raises(RuntimeError, match="crashed"):
        train(make_cfg([*run, "+callbacks.crash._target_=tests.test_reliability.CrashAtStep", "+callbacks.crash.step=12"]))
    with (tmp_path / "csv" / "metrics.csv").open() as fh:
        assert max(int(row["step"]) for row in csv.DictReader(fh) if row.get("train/loss")) > 8  # logged past it
    train(make_cfg([*run, "resume=true"]))
    with (tmp_path / "csv" / "metrics.csv").open() as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh) if row.get("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 24, steps  # 3 epochs of 8 steps, each once
    # TensorBoard, as TensorBoard reads its folder: the replayed steps once, the old events after the
    # checkpoint purged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tb_steps = [e.step for e in events.Scalars("train/loss")]
    assert tb_steps == sorted(set(tb_steps)) and len(tb_steps) == 24, tb_steps


def test_resume_finds_its_own_run_and_never_adopts_another(make_cfg, tmp_path: Path, caplog) -> None:
    """Three ways resume=true continued the wrong run, or none: overrides compared as typed (a sweeper
    writes 0.001 and False, a user 1e-3 and false), a sweep over task= kept under logs/multitask/, and a
    fixed folder killed before its first checkpoint adopting the task's newest unrelated run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path

    cfg = make_cfg(["optimizer.lr=1e-3", "trainer.enable_progress_bar=false", "resume=true"])
    logs = tmp_path / "logs"
    mine = [o for o in cfg.hydra.overrides.task if not o.startswith("resume")]

    # a fixed folder (make_cfg's hydra.run.dir) with no checkpoint: never another run's
    other = _fake_run(logs / "sentiment" / "runs" / "2026-01-01", [o.replace("1e-3", "0.01") for o in mine], 10)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        assert resolve_ckpt_path("last", cfg) is None
    assert "holds no checkpoints/last.ckpt yet" in caplog.text
    # a run in a folder of its own under runs/: the job whose overrides match once parsed, not the newest
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(logs / "sentiment" / "runs" / "now")
    HydraConfig.instance().set_config(cfg)
    recorded = [o.replace("1e-3", "0.001").replace("=false", "=False") for o in mine]  # as a sweeper writes them
    match = _fake_run(logs / "sentiment" / "multiruns" / "s" / "0", recorded, 100)
    assert resolve_ckpt_path("last", cfg) == str(match)
    match.unlink()  # ...and in a sweep over tasks' folder
    in_multitask = _fake_run(logs / "multitask" / "multiruns" / "t" / "1", recorded, 50)
    assert resolve_ckpt_path("last", cfg) == str(in_multitask)
    assert other.exists()


def test_resume_matches_an_override_that_names_the_default(make_cfg, tmp_path: Path) -> None:
    """``optimizer=adamw ... resume=true`` (adamw is the default) found no earlier run of its overrides, as
    the earlier one left the optimizer alone, and resumed the task's newest last.ckpt, another seed's run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path

    cfg = make_cfg(["task=sentiment", "optimizer=adamw", "optimizer.lr=3e-3", "seed=5", "resume=true"])
    runs = tmp_path / "logs" / "sentiment" / "runs"
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(runs / "now")
    HydraConfig.instance().set_config(cfg)
    config = "task_name: sentiment\noptimizer:\n  lr: 0.003\n"
    choices = "hydra:\n  runtime:\n    choices:\n      task: sentiment\n      optimizer: {optimizer}\n"

    given = [o for o in cfg.hydra.overrides.task if o.startswith("paths.")]  # make_cfg's own

    def earlier(name: str, overrides: list[str], age: float, optimizer: str = "adamw", conf: str = config) -> Path:
        ckpt = _fake_run(runs / name, [*given, *overrides], age, conf)
        (runs / name / ".hydra" / "hydra.yaml").write_text(choices.format(optimizer=optimizer))
        return ckpt

    mine = earlier("mine", ["seed=5"], 100)  # the defaults left alone
    earlier("other_seed", ["seed=21"], 10)  # newer: what the fallback took
    earlier("sgd", ["seed=5"], 20, optimizer="sgd")  # its optimizer was not this run's adamw
    earlier("other_lr", ["seed=5"], 30, conf=config.replace("0.003", "0.01"))
    assert resolve_ckpt_path("last", cfg) == str(mine)
    # a run of the very overrides wins over a newer one of the same settings written otherwise (tiers)
    exact = _fake_run(runs / "exact", [o for o in cfg.hydra.overrides.task if not o.startswith("resume")], 200)
    assert resolve_ckpt_path("last", cfg) == str(exact)
    shutil.rmtree(runs / "exact")
    shutil.rmtree(runs / "mine")  # only runs of other settings are left: the task's newest, as before
    assert resolve_ckpt_path("last", cfg) == str(runs / "other_seed" / "checkpoints" / "last.ckpt")


def test_resume_reads_each_folder_of_the_logs_once(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """resume=true globbed ``**/last.ckpt`` and ``**/overrides.yaml`` over two roots: every folder of a
    large log tree listed twice per resume. One walk finds the same files as those globs did: a
    ``checkpoints`` or ``.hydra`` folder that is a link is read, a linked run folder is not descended
    into (as ``**`` does not), a dangling ``last.ckpt`` is not a checkpoint."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lstmkit.commands.train import resolve_ckpt_path, run_files

    cfg = make_cfg(["trainer.enable_progress_bar=false", "resume=true"])
    logs = tmp_path / "logs"
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(logs / "sentiment" / "runs" / "now")
    HydraConfig.instance().set_config(cfg)
    mine = [o for o in cfg.hydra.overrides.task if not o.startswith("resume")]
    for k in range(6):
        _fake_run(logs / ("multitask" if k == 5 else "sentiment") / "multiruns" / "s" / str(k), [*mine, f"seed={k}"])
    elsewhere = tmp_path / "scratch"  # checkpoints kept on another disk, linked into a run folder
    (elsewhere / "ckpts").mkdir(parents=True)
    (elsewhere / "ckpts" / "last.ckpt").write_bytes(b"x")
    (elsewhere / "run" / "checkpoints").mkdir(parents=True)
    (elsewhere / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    linked = logs / "sentiment" / "runs" / "linked"
    linked.mkdir(parents=True)
    (linked / "checkpoints").symlink_to(elsewhere / "ckpts")
    (logs / "sentiment" / "runs" / "run-link").symlink_to(elsewhere / "run")
    (logs / "sentiment" / "runs" / "dangling" / "checkpoints").mkdir(parents=True)
    (logs / "sentiment" / "runs" / "dangling" / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "gone")
    roots = [logs / "sentiment", logs / "multitask"]
    checkpoints, overrides = run_files(roots)
    assert sorted(checkpoints) == sorted(p for r in roots for p in r.glob("**/checkpoints/last.ckpt"))
    assert sorted(overrides) == sorted(p for r in roots for p in r.glob("**/.hydra/overrides.yaml"))
    assert linked / "checkpoints" / "last.ckpt" in checkpoints and len(checkpoints) == 7

    listed: list[str] = []
    scandir = os.scandir

    def counting(path: str | os.PathLike[str] = ".") -> object:
        listed.append(os.path.realpath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    resolve_ckpt_path("last", cfg)
    assert listed and len(listed) == len(set(listed)), sorted(p for p in listed if listed.count(p) > 1)


def test_a_fixed_folder_used_again_without_resume_is_said(make_cfg, caplog) -> None:
    """Lightning wrote best-v1.ckpt beside the earlier run's best.ckpt and the CSV went on, silently."""
    from lstmkit.commands.train import train

    run = ["data.num_examples=120", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8", "logger=none",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "test=false"]
    with caplog.at_level(logging.WARNING, logger="lstmkit"):  # a fresh folder: nothing to say
        train(make_cfg(run))
    assert "already holds checkpoints" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        train(make_cfg(run))
    assert re.search(r"already holds checkpoints of an earlier run \(best\.ckpt, last\.ckpt\).*resume=true",
                     caplog.text)


def test_a_typo_in_a_group_sweep_gets_a_suggestion() -> None:
    """-m optimizer=adamw,sgdd: the first choice composed, so only Hydra's "Could not find" was printed."""
    hint = suggest_override(config_dir(), "train", ["-m", "optimizer=adamw,sgdd", "model.hidden_size=8"])
    assert hint == ("optimizer=sgdd in the sweep is no optimizer choice: did you mean optimizer=sgd? "
                    "(optimizer options: adam, adamw, sgd)")
    hint = suggest_override(config_dir(), "train", ["task=ecg,stok"])
    assert hint is not None and "did you mean task=stock?" in hint
    assert suggest_override(config_dir(), "train", ["task=ecg,stock", "model.hiden_size=8"]).startswith(
        "did you mean model.hidden_size?")  # a valid sweep: the hint is for the real typo


def test_early_stopping_state_of_a_plain_early_stopping_checkpoint_comes_back() -> None:
    """RunEarlyStopping kept a state key of its own: a checkpoint written with Lightning's EarlyStopping
    resumed with the count of epochs without improvement and the best score silently reset. Its key is
    Lightning's now (as RunCheckpoint's), and checkpoints under its old key are still read, without a
    warning that asks for a callback the run has."""
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.trainer import call

    from lstmkit.callbacks import RunEarlyStopping

    plain = EarlyStopping(monitor="val/acc", mode="max", patience=3)
    plain.wait_count, plain.best_score = 2, torch.tensor(0.8)
    old = RunEarlyStopping(monitor="val/acc", mode="max", patience=3)
    old.wait_count, old.best_score = 1, torch.tensor(0.7)
    old_key = "RunEarlyStopping{'monitor': 'val/acc', 'mode': 'max'}"  # the key lstmkit wrote before
    for key, state, count, best in ((plain.state_key, plain.state_dict(), 2, 0.8), (old_key, old.state_dict(), 1, 0.7)):
        resumed = RunEarlyStopping(monitor="val/acc", mode="max", patience=10)
        trainer = L.Trainer(callbacks=[resumed], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        checkpoint = {"callbacks": {key: state}, "pytorch-lightning_version": L.__version__}
        resumed.setup(trainer, None, "fit")  # as Lightning does before it restores a checkpoint
        ignored = [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            call._call_callbacks_on_load_checkpoint(trainer, checkpoint)
        # "please add the following callbacks", about a state that is read, is filtered out
        asked = [str(w.message) for w in seen if "Please add the following callbacks" in str(w.message)]
        assert all(any(f[1].match(text) for f in ignored) for text in asked), asked
        call._call_callbacks_load_state_dict(trainer, checkpoint)
        assert (resumed.wait_count, float(resumed.best_score), resumed.patience) == (count, pytest.approx(best), 10), key
    assert RunEarlyStopping(monitor="val/acc", mode="max").state_key == plain.state_key


def test_the_epoch_reseed_stays_in_the_generators_range_for_large_seeds() -> None:
    """seed + 100003 * epoch left the range [0, 2**32) after the first epoch of a valid large seed: ValueError."""
    from types import SimpleNamespace

    from lstmkit.callbacks import ReseedEachEpoch

    ReseedEachEpoch(4_294_900_000).on_train_epoch_start(SimpleNamespace(current_epoch=1), None)
    first = torch.rand(3)
    ReseedEachEpoch(4_294_900_000 + 100_003 - 2**32).on_train_epoch_start(SimpleNamespace(current_epoch=0), None)
    assert torch.equal(torch.rand(3), first)  # the same seed, modulo 2**32
    ReseedEachEpoch(7).on_train_epoch_start(SimpleNamespace(current_epoch=2), None)
    second = torch.rand(3)
    torch.manual_seed(7 + 2 * 100_003)
    assert torch.equal(torch.rand(3), second)  # seeds in range are those they were


@pytest.mark.parametrize("override", ["+head.threshold=0.99", "+model.hidden_size=3", "+foo=3"])
def test_eval_refuses_an_override_it_does_not_apply(make_cfg, override) -> None:
    """eval ran with exit 0 and silently ignored them: the model and its head are the checkpoint's."""
    from lstmkit.commands.evaluate import evaluate
    from lstmkit.errors import ConfigError

    cfg = make_cfg(["ckpt_path=nowhere.ckpt", override], name="eval")
    with pytest.raises(ConfigError, match=re.escape(override) + r": eval does not apply this setting .*eval takes "
                                          r"ckpt_path, split, adapt, self_train\.\*, seed, tags, data\.\*, decode\.\*"):
        evaluate(cfg)


@pytest.mark.parametrize("override", ["+head.threshold=0.99", "+model.hidden_size=3", "+foo=3"])
def test_predict_refuses_an_override_it_does_not_apply(make_cfg, override) -> None:
    """As eval: predict ran and silently ignored a setting of the checkpoint's model or head."""
    from lstmkit.commands.predict import predict
    from lstmkit.errors import ConfigError

    cfg = make_cfg(["ckpt_path=nowhere.ckpt", "input=x", override], name="predict")
    with pytest.raises(ConfigError, match=re.escape(override) + r": predict does not apply this setting .*predict "
                                          r"takes ckpt_path, input, input_file"):
        predict(cfg)


@pytest.mark.parametrize("override", ["+foo=1", "+model.hidden_size=3"])
def test_export_refuses_an_override_it_does_not_apply(make_cfg, override) -> None:
    """As eval and predict: `export +foo=1` exported with exit 0 and ignored the setting."""
    from lstmkit.commands.export import export
    from lstmkit.errors import ConfigError

    cfg = make_cfg(["ckpt_path=nowhere.ckpt", override], name="export")
    with pytest.raises(ConfigError, match=re.escape(override) + r": export does not apply this setting .*export "
                                          r"takes ckpt_path, format, output, tolerance"):
        export(cfg)


def test_predict_checks_its_output_path_before_it_predicts(make_cfg, tmp_path: Path) -> None:
    """output=<a folder> (or a path through a file) printed every prediction and only then failed to
    write them. It is refused first: here before the (missing) checkpoint is even read."""
    from lstmkit.commands.predict import predict
    from lstmkit.errors import ConfigError, LstmkitError

    (tmp_path / "afile").write_text("")
    for output, says in ((tmp_path, "is a folder; expected the path of the file to write"),
                         (tmp_path / "afile" / "out.jsonl", "cannot write it (" + str(tmp_path / "afile") + " is a file")):
        cfg = make_cfg(["ckpt_path=nowhere.ckpt", "input=x", f"output={output}"], name="predict")
        with pytest.raises(ConfigError, match=re.escape(f"output={output}: {says}")):
            predict(cfg)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        cfg = make_cfg(["ckpt_path=nowhere.ckpt", "input=x", f"output={tmp_path / 'locked' / 'new' / 'out.jsonl'}"],
                       name="predict")
        with pytest.raises(ConfigError, match="is not writable"):
            predict(cfg)
    # a folder yet to be made is fine (made when the file is written): the missing checkpoint is what fails
    cfg = make_cfg(["ckpt_path=nowhere.ckpt", "input=x", f"output={tmp_path / 'new' / 'out.jsonl'}"], name="predict")
    with pytest.raises(LstmkitError) as err:
        predict(cfg)
    assert "output=" not in str(err.value) and "nowhere.ckpt" in str(err.value)
    assert not (tmp_path / "new").exists()



def test_predict_and_export_never_write_over_a_file_they_read(make_cfg, tmp_path: Path) -> None:
    """output= naming the input file or the checkpoint replaced it with the results, exit 0 (a new
    user's reviews and a checkpoint's weights were lost); refused before anything is read or written."""
    from lstmkit.commands.export import export
    from lstmkit.commands.predict import predict
    from lstmkit.errors import ConfigError

    reviews, ckpt = tmp_path / "reviews.txt", tmp_path / "model.ckpt"
    reviews.write_text("great film\n")
    ckpt.write_bytes(b"not read")
    (tmp_path / "link.txt").symlink_to(reviews)
    for given, output, named in ((["input_file=" + str(reviews)], reviews, f"input_file={reviews}"),
                                 (["input_file=" + str(tmp_path / "link.txt")], reviews, "input_file="),
                                 (["input=[" + str(reviews) + "]"], reviews, f"input={reviews}"),
                                 (["input=x"], ckpt, f"ckpt_path={ckpt}")):
        cfg = make_cfg([f"ckpt_path={ckpt}", *given, f"output={output}"], name="predict")
        with pytest.raises(ConfigError, match=re.escape(f"output={output}: is the file {named}")):
            predict(cfg)
    cfg = make_cfg([f"ckpt_path={ckpt}", f"output={ckpt}"], name="export")
    with pytest.raises(ConfigError, match=re.escape(f"output={ckpt}: is the file ckpt_path={ckpt} that this command reads")):
        export(cfg)
    assert reviews.read_text() == "great film\n" and ckpt.read_bytes() == b"not read"
    from lstmkit.commands.common import check_output_file

    (tmp_path / "out.jsonl").write_text("")  # an input that is text starting with ~ is no path (no such user)
    assert check_output_file(tmp_path / "out.jsonl", inputs=[("input", "~so bad it is good")]) == tmp_path / "out.jsonl"


def test_a_setting_eval_or_predict_lacks_is_refused_in_one_line_not_with_hydras_plus_advice() -> None:
    """eval model.hidden_size=3 got only Hydra's "use +model.hidden_size=3" (refused next); predict adapt=true
    got "did you mean data?"."""
    hint = suggest_override(config_dir(), "eval", ["ckpt_path=x.ckpt", "model.hidden_size=3"])
    assert hint is not None and hint.startswith("eval does not apply model.hidden_size (the task, model, head")
    assert "eval takes ckpt_path, split, adapt" in hint and "+" not in hint
    hint = suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", "input=x", "adapt=true"])
    assert hint is not None and hint.startswith("predict does not apply adapt") and "did you mean" not in hint
    hint = suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", "input=x", "ouptut=y.jsonl"])
    assert hint is not None and "did you mean output?" in hint
    hint = suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", "input=x", "task=ecg"])
    assert hint is not None and hint.startswith("task=ecg: predict takes the task, model and training settings")
    hint = suggest_override(config_dir(), "export", ["ckpt_path=x.ckpt", "adapt=true"])
    assert hint == ("export does not apply adapt (the task, model, head and training settings are the checkpoint's); "
                    "export takes ckpt_path, format, output, tolerance")


def test_typos_and_test_time_settings_get_one_line_before_hydra(tmp_path: Path) -> None:
    """A new user's mistakes that printed Hydra's block first (self_train.epoch=2; eval's data.holdout_speaker
    on a speech model), got no hint (train optimzer.lr=0.1), or were called "the checkpoint's" (predict
    adapt=true: a setting of eval's)."""
    from lstmkit.suggest import refuse_before_hydra

    for command in ("train", "eval"):
        said = refuse_before_hydra(config_dir(), command, ["self_train.epoch=2"])
        assert said == "self_train.epoch: no such setting; did you mean self_train.epochs? (self_train takes epochs, keep, lr)"
    said = refuse_before_hydra(config_dir(), "eval", ["ckpt_path=x.ckpt", "self_train={epochs:1,kep:0.5}"])
    assert said is not None and said.startswith("self_train.kep: no such setting; did you mean self_train.keep?")
    assert refuse_before_hydra(config_dir(), "eval", ["ckpt_path=x.ckpt", "self_train={epochs:1,keep:0.5}"]) is None
    said = refuse_before_hydra(config_dir(), "predict", ["ckpt_path=x.ckpt", "input=x", "adapt=true"])
    assert said is not None and said.startswith("predict does not apply adapt: adapt is test-time adaptation")
    assert refuse_before_hydra(config_dir(), "train", ["optimizer.lr=0.1", "self_train.epochs=2"]) is None
    assert suggest_override(config_dir(), "train", ["optimzer.lr=0.1"]) == (
        "did you mean optimizer.lr? (optimzer is not a config key)")
    ckpt = tmp_path / "best.ckpt"
    parts = {key: {} for key in ("spec", "encoder", "core", "head")}
    torch.save({"state_dict": {}, "hyper_parameters": {**parts, "data": {"holdout_speakers": ["theo"]}}}, ckpt)
    said = refuse_before_hydra(config_dir(), "eval", [f"ckpt_path={ckpt}", "data.holdout_speaker=[x]"])
    assert said is not None and "+data.holdout_speakers=[x]" in said
    assert refuse_before_hydra(config_dir(), "eval", [f"ckpt_path={ckpt}", "data.batch_size=4"]) is None


def test_eval_says_when_a_held_out_speaker_is_one_the_model_trained_on(caplog) -> None:
    from lstmkit.commands.evaluate import warn_trained_speakers

    stored = {"holdout_speakers": ["theo", "lucas"], "val_speakers": ["nicolas"]}
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        for held in (["lucas"], ["Nicolas"], "theo"):
            warn_trained_speakers(stored, {"holdout_speakers": held}, "test")
        assert not caplog.text  # speakers the run never trained on
        warn_trained_speakers(stored, {"holdout_speakers": ["george"], "path": "/other/data"}, "test")
        warn_trained_speakers(stored, {"holdout_speakers": ["george"]}, "all")
        assert not caplog.text  # other data, or split=all (which says so itself)
        warn_trained_speakers(stored, {"holdout_speakers": ["george", "lucas"]}, "test")
    assert "the model trained on george (its run held out theo, lucas): the test score measures fit" in caplog.text


def test_evals_data_hint_reads_the_checkpoints_own_data_keys(tmp_path: Path) -> None:
    """eval of a speech model with data.holdout_speaker=[x] was told "data has the keys: path, text_column,
    label_column, ..." (eval.yaml's generic keys). The checkpoint's stored keys are read when it can be."""
    ckpt = tmp_path / "best.ckpt"
    parts = {key: {} for key in ("spec", "encoder", "core", "head")}  # what read_checkpoint checks, no more
    data = {"_target_": "x", "path": None, "holdout_speakers": [], "sample_rate": 8000}
    torch.save({"state_dict": {}, "hyper_parameters": {**parts, "data": data}}, ckpt)
    hint = suggest_override(config_dir(), "eval", [f"ckpt_path={ckpt}", "data.holdout_speaker=[lucas]"])
    assert hint is not None and "+data.holdout_speakers=[lucas] (did you mean data.holdout_speakers?)" in hint
    hint = suggest_override(config_dir(), "eval", [f"ckpt_path={ckpt}", "data.zzzq=1"])
    assert hint is not None and "its data keys: holdout_speakers, path, sample_rate)" in hint and "+data.zzzq=1" in hint
    hint = suggest_override(config_dir(), "eval", [f"ckpt_path={ckpt}", "data.pth=/x"])
    assert hint == "did you mean data.path? (data.path=/x)"  # eval.yaml's own key: no +
    hint = suggest_override(config_dir(), "eval", [f"ckpt_path={tmp_path / 'none.ckpt'}", "data.zzzq=1"])
    assert hint is not None and "data has the keys: path, text_column" in hint  # unreadable: eval.yaml's keys


def test_eval_with_a_training_group_says_the_task_is_the_checkpoints() -> None:
    """eval task=ecg / callbacks=none: only Hydra's "To append use +task=ecg", whose advice fails next."""
    for given in ("task=ecg", "callbacks=none"):
        hint = suggest_override(config_dir(), "eval", ["ckpt_path=x.ckpt", given])
        assert hint is not None and hint.startswith(f"{given}: eval takes the task, model and training settings "
                                                    f"from the checkpoint (ckpt_path=), so drop {given}"), hint
    assert suggest_override(config_dir(), "eval", ["ckpt_path=x.ckpt", "trainer.max_epochs=1"]) is None


@pytest.mark.parametrize("text, meant", [
    ("it's good", "it's good"), ("not bad!", "not bad!"), ("(a) great film", "(a) great film"), ("café", "café"),
    # a list: each item quoted; quoted whole, it was read as one text, brackets and all, without a word
    ("[great film!,awful]", ["great film!", "awful"]), ("[the company said,日本語 テスト]", ["the company said", "日本語 テスト"]),
    ("[a, b!]", ["a", "b!"]),
    # not lists: a text with brackets in it is quoted whole; a backslash is kept as written (not doubled)
    ("[SPOILER] loved it, 9/10 [imdb]", "[SPOILER] loved it, 9/10 [imdb]"),
    ("C:\\clips\\take(1).wav", "C:\\clips\\take(1).wav"), ('say "hi"!', 'say "hi"!'), ('a\\"b!', 'a\\"b!'),
])
def test_free_text_hydra_cannot_read_gets_quoting_that_works(text: str, meant: str | list[str]) -> None:
    """``input=it's good`` ended in Hydra's LexerNoViableAltException alone; the hint's quoted form is read back
    (through the shell, as a user would paste it) into the same text, or the same list of texts."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    hint = suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", f"input={text}"])
    assert hint is not None and hint.startswith(f"input={text}: Hydra's override grammar takes "), hint
    assert ("non-ASCII characters" in hint) == (not text.isascii())
    pasted = hint.split("inside the shell's quotes: ", 1)[1].split(" (or give", 1)[0]
    (arg,) = shlex.split(pasted)
    (override,) = OverridesParser.create().parse_overrides([arg])
    assert override.value() == meant
    assert suggest_override(config_dir(), "predict", ["ckpt_path=x.ckpt", 'input="it\'s"']) is None


def test_a_misspelt_added_key_gets_a_did_you_mean() -> None:
    """``+model.hiden_size=3`` composes (the + adds a key) and fails in the class: the one line now names the
    parameter meant; an unknown word with no close parameter gets no guess."""
    from lstmkit.commands.common import config_stage
    from lstmkit.core import LSTMCore
    from lstmkit.errors import ConfigError

    meant = r"unexpected keyword argument 'hiden_size'; did you mean hidden_size\?"
    with pytest.raises(ConfigError, match=meant), config_stage("model"):
        LSTMCore(input_size=3, hiden_size=3)
    with pytest.raises(ConfigError, match=r"unexpected keyword argument 'zzz' \("), config_stage("model"):
        LSTMCore(input_size=3, zzz=3)


def test_what_eval_and_predict_say_they_take_is_what_they_apply() -> None:
    """The keys eval / predict apply (their KEYS) and the list their refusals print (suggest's TAKES) are two
    declarations: adding adapt to one and not the other made the refusal test fail. Kept in step here, and
    with the configs' own keys, which the refusal before Hydra reads (a key missing there would be refused)."""
    from lstmkit.suggest import KEYS, TAKES

    internal = {"task_name", "paths", "hydra"}
    for command, keys in KEYS.items():
        said = {re.split(r"[.=( ]", item.strip())[0] for item in TAKES[command].split(",")}
        assert said == set(keys) - internal
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
            cfg = compose(config_name=command, overrides=[], return_hydra_config=True)
        GlobalHydra.instance().clear()
        assert set(cfg) == set(keys), command


def test_a_setting_eval_lacks_gets_one_line_not_hydras_block_above_it(tmp_path: Path) -> None:
    """``eval ... model.hidden_size=3`` printed Hydra's seven lines ("Could not override ... To append to your
    config use +model.hidden_size=3 ... HYDRA_FULL_ERROR") above lstmkit's refusal. Refused before Hydra now,
    with or without +; a typo under a key the command has still gets Hydra's error and the did-you-mean."""
    for args in (["eval", "ckpt_path=x.ckpt", "model.hidden_size=3"], ["export", "ckpt_path=x.ckpt", "+foo=1"],
                 ["predict", "ckpt_path=x.ckpt", "input=x", "adapt=true"]):
        proc = run_here(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr  # lstmkit's own refusal: "error:" and 2, as its other errors
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lstmkit {args[0]}: error: ") and "does not apply" in lines[0], lines
    from lstmkit.suggest import refuse_before_hydra

    # another command's setting is named as that command's, not as the checkpoint's
    said = refuse_before_hydra(config_dir(), "eval", ["ckpt_path=x.ckpt", "input=hi"])
    assert said is not None and said.startswith("eval does not apply input: it is a setting of lstmkit predict; eval takes")
    said = refuse_before_hydra(config_dir(), "eval", ["ckpt_path=x.ckpt", "self_trian.epochs=2"])
    assert said is not None and said.startswith("self_trian.epochs is no eval setting: did you mean self_train.epochs?")
    for fine in (["-sc", "install=bash"], ["--cfg", "job", "hydra.run.dir=x"], ["+data.seed=3", "trainer=cpu"],
                 ["hydra/job_logging=disabled", 'data.path="a=b"']):
        assert refuse_before_hydra(config_dir(), "eval", ["ckpt_path=x.ckpt", *fine]) is None, fine
    proc = run_here("predict", "ckpt_path=x.ckpt", "input=x", "data.colunm=text", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "predict's data.* settings say how input files are read" in proc.stderr, proc.stderr
    assert "Could not override" not in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "logs").exists()


def test_a_refused_eval_leaves_no_run_folder_behind(tmp_path: Path) -> None:
    """A failed eval left logs/eval/runs/<date>/ holding only .hydra and its log, one per attempt; it is removed.
    A folder that holds anything else, or that is not named like a run, stays."""
    from lstmkit.cli import _drop_unused_run_dir

    proc = run_here("eval", f"ckpt_path={tmp_path / 'missing.ckpt'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    runs = tmp_path / "logs" / "eval" / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    kept = tmp_path / "elsewhere" / "runs" / "2026-12-03_01-02-03_000001"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "metrics.json").write_text("{}")
    mine = tmp_path / "mine"
    (mine / ".hydra").mkdir(parents=True)
    for folder in (kept, mine):
        _drop_unused_run_dir(folder)
        assert (folder / ".hydra").is_dir()
    (kept / "metrics.json").unlink()
    (kept / "eval.log").write_text("refused")
    _drop_unused_run_dir(kept)
    assert not kept.exists()
    # a run refused inside fit before a batch (made_since): its logger files and copied checkpoints go, but
    # never a folder holding a file from before the job (an earlier run's, in a fixed run dir)
    import time

    made = tmp_path / "logs2" / "runs" / "2026-12-04_01-02-03_000001"
    (made / "checkpoints").mkdir(parents=True)
    (made / "checkpoints" / "last.ckpt").write_bytes(b"copied")
    _drop_unused_run_dir(made, made_since=time.time() + 60)  # a file older than the job: kept
    assert (made / "checkpoints" / "last.ckpt").is_file()
    _drop_unused_run_dir(made, made_since=time.time() - 60)
    assert not made.exists()
    proc = run_here("train", "trainer.max_epochs=-1", "data.num_examples=200", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "spreads its schedule over the run's length" in proc.stderr, proc.stderr
    assert not any((tmp_path / "logs" / "sentiment" / "runs").iterdir())


BOOM = """
import lightning as L


class Boom(L.Callback):
    def on_train_start(self, trainer, pl_module):
        raise RuntimeError("boom: a bug in the user's own code")
"""


def test_a_crashed_job_gets_no_config_hint_and_leaves_a_failed_record(tmp_path: Path, monkeypatch) -> None:
    """A bug in the user's own code ended in its traceback and then "did you mean encoder=features?" for a
    valid choice (the command line had composed); and a single run's folder kept no record that it failed."""
    (tmp_path / "boom.py").write_text(BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = run_here("train", "+callbacks.boom._target_=boom.Boom", "encoder=embedding", "data.num_examples=60",
                    "model.hidden_size=4", "encoder.dim=4", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr, proc.stderr[-2000:]
    assert "did you mean" not in proc.stderr and "options:" not in proc.stderr, proc.stderr[-2000:]
    record = json.loads(next(tmp_path.glob("logs/sentiment/runs/*/result.json")).read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom: a bug in the user's own code"


def test_no_hint_replaces_hydras_message_for_the_users_own_configs(tmp_path: Path) -> None:
    """With hydra.searchpath (or --config-dir) the user's own groups are options lstmkit's configs lack:
    "encoder=mine: no such encoder option" replaced Hydra's message about the real typo."""
    mine = tmp_path / "conf" / "encoder"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("_target_: lstmkit.encoders.EmbeddingEncoder\ndim: 8\n")
    for args in ([f"hydra.searchpath=[file://{tmp_path / 'conf'}]"], ["--config-dir", str(tmp_path / "conf")]):
        proc = run_here("train", *args, "encoder=mine", "model.hiden=3", cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "Could not override 'model.hiden'" in proc.stderr, proc.stderr
        assert "encoder option" not in proc.stderr
    # ~key of a null key: Hydra says it "does not exist"; the hint said "did you mean" the same key
    proc = run_here("train", "~encoder.pretrained", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Hydra cannot delete a key whose value is null" in proc.stderr, proc.stderr


MY_ENCODER = """
from lstmkit.encoders import EmbeddingEncoder


class MyEncoder(EmbeddingEncoder):
    \"\"\"A user's own encoder, in a package of their own.\"\"\"
"""


def test_the_users_own_code_trains_and_loads_once_trusted(tmp_path: Path, monkeypatch) -> None:
    """An encoder of the user's own package was refused by train itself ("component targets must start with
    one of ('lstmkit.', 'torch.optim.')"), with no way to allow it. Train runs the config's own code and
    says what loading its checkpoints needs; the other commands refuse it until trusted, before any work."""
    from lstmkit import build

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "parts.py").write_text(MY_ENCODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(build.TRUST_ENV, raising=False)
    monkeypatch.setattr(build, "_TRUSTED", set())
    proc = run_here("train", "encoder._target_=mypkg.parts.MyEncoder", "data.num_examples=60", "model.hidden_size=4",
                    "encoder.dim=4", *QUICK, cwd=tmp_path)
    said = proc.stdout + proc.stderr
    assert "this run builds code outside lstmkit (mypkg.parts.MyEncoder)" in said
    assert "LSTMKIT_TRUSTED_MODULES=mypkg.parts set" in said
    ckpt = next(tmp_path.glob("logs/sentiment/runs/*/checkpoints/last.ckpt"))
    monkeypatch.setattr(build, "_TRUSTED", set())  # another process: only what it is told to trust
    for command in (["predict", "input=fine"], ["export", f"output={tmp_path / 'm.onnx'}"], ["eval"]):
        proc = run_here(command[0], f"ckpt_path={ckpt}", *command[1:], cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{ckpt}: refusing to build 'mypkg.parts.MyEncoder'" in proc.stderr
        assert "set LSTMKIT_TRUSTED_MODULES=mypkg" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()
    proc = run_here("predict", f"ckpt_path={ckpt}", "input=fine", cwd=tmp_path, env={build.TRUST_ENV: "mypkg"})
    assert json.loads(proc.stdout.strip().splitlines()[-1])["input"] == "fine"
    # trusted but not importable here: one line saying so, not "does not match this lstmkit version"
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    import sys

    monkeypatch.delitem(sys.modules, "mypkg.parts")
    monkeypatch.delitem(sys.modules, "mypkg")
    (tmp_path / "mypkg" / "parts.py").rename(tmp_path / "parts.py.away")
    proc = run_here("predict", f"ckpt_path={ckpt}", "input=fine", cwd=tmp_path, env={build.TRUST_ENV: "mypkg"},
                    check=False)
    assert proc.returncode == 2 and "cannot import 'mypkg.parts.MyEncoder' (ModuleNotFoundError" in proc.stderr, \
        proc.stderr[-1500:]


def test_a_checkpoint_cannot_reach_other_code_through_lstmkits_imports(tmp_path: Path) -> None:
    """A name is resolved attribute by attribute: ``lstmkit.commands.train.instantiate`` (Hydra's, which runs
    any target of its config) passed a check of the name alone, and built what a checkpoint asked for."""
    from lstmkit.build import build, check_targets
    from lstmkit.errors import CheckpointError

    touched = tmp_path / "touched"
    spec = {"_target_": "lstmkit.commands.train.instantiate",
            "config": {"_target_": "pathlib.Path.touch", "self": str(touched)}}
    with pytest.raises(CheckpointError, match=r"refusing to build 'lstmkit\.commands\.train\.instantiate': it is "
                                              r"hydra\._internal\.instantiate\._instantiate2's code"):
        build(spec)
    with pytest.raises(CheckpointError, match=r"it is posix's code|it is os's code"):
        check_targets(["lstmkit.build.os.getpid"])
    assert not touched.exists()
    check_targets(["lstmkit.encoders.EmbeddingEncoder", "torch.optim.AdamW", "lstmkit.optim.cosine_with_warmup"])
