"""Sweeps: grid, joblib and Optuna multiruns; failing trials are reported and the sweep goes on."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch.optim import SGD

from lstmkit.callbacks import DivergedError, StopOnNonFiniteLoss

from .conftest import QUICK, run_cli, run_here

TINY = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8", "test=false"]


def _sweep_dir(root: Path) -> Path:
    return max((root / "logs" / "sentiment" / "multiruns").iterdir())


def _summary(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_failing_trial_is_reported_and_the_sweep_goes_on(tmp_path: Path) -> None:
    proc = run_here("train", "-m", "model.proj_size=0,999", *TINY, *QUICK, cwd=tmp_path)
    rows = _summary(_sweep_dir(tmp_path))
    assert [r["status"] for r in rows] == ["ok", "failed"], proc.stdout
    assert "proj_size (999) must be smaller" in rows[1]["error"]
    assert 0.0 <= float(rows[0]["objective"]) <= 1.0  # the ok job's val/acc, a number (not "" or nan)
    assert "Best: job 0" in (_sweep_dir(tmp_path) / "summary.md").read_text()


def test_optuna_sweep_optimises_the_heads_metric(tmp_path: Path) -> None:
    run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=2", "model.hidden_size=choice(8,16)",
            "data.batch_size=choice(16,32)", *TINY[:1], *TINY[3:], *QUICK, cwd=tmp_path)
    sweep = _sweep_dir(tmp_path)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = _summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["monitor"] == "val/acc" for r in rows)
    assert results["best_value"] == pytest.approx(max(float(r["objective"]) for r in rows))
    # the sweep's config, as the basic sweeper writes it (Optuna's did not): trial names and a broken sweep's
    # report read the command line's sweeps from it
    written = OmegaConf.load(sweep / "multirun.yaml")
    assert "model.hidden_size=choice(8,16)" in written.hydra.overrides.task


def test_an_optuna_sweep_records_a_failed_trial_and_goes_on(tmp_path: Path) -> None:
    """A NaN objective crashed the Optuna plugin's tell (no summary, exit 1): a failed trial is now told
    as failed and the study goes on; a direction against the metric stops the sweep in one line."""
    proc = run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=2",
                   "model.hidden_size=choice(8,16)", "model.proj_size=12", "model.bidirectional=false",
                   *TINY[:1], *TINY[3:], *QUICK, cwd=tmp_path)
    rows = _summary(_sweep_dir(tmp_path))
    assert sorted(r["status"] for r in rows) == ["failed", "ok"], proc.stdout  # TPE seed 1234: 8 cells, then 16
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert "proj_size (12) must be smaller than model.hidden_size (8)" in failed["error"]
    results = yaml.safe_load((_sweep_dir(tmp_path) / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(float(r["objective"]) for r in rows if r["status"] == "ok"))
    wrong = run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=2", "monitor=val/loss",
                    *TINY, *QUICK, cwd=tmp_path, check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "set hydra.sweeper.direction=minimize" in wrong.stderr
    # trainer.strategy=ddp in a sweep failed each trial in turn (found by a tester): it stops the sweep at once
    (tmp_path / "ddp").mkdir()
    ddp = run_here("train", "-m", "trainer.strategy=ddp", "optimizer.lr=1e-3,3e-3", *TINY, *QUICK,
                   cwd=tmp_path / "ddp", check=False)
    assert ddp.returncode == 2 and "trainer.strategy=ddp cannot run inside a Hydra multirun" in ddp.stderr
    assert not list((tmp_path / "ddp").glob("logs/*/multiruns/*/1")), "the sweep went on to its second trial"


def test_parallel_trials_with_the_joblib_launcher(tmp_path: Path) -> None:
    run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=1e-3,3e-3",
            *TINY, *QUICK, cwd=tmp_path)
    sweep = _sweep_dir(tmp_path)
    rows = _summary(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    lrs = {float(json.loads((sweep / j / "result.json").read_text())["overrides"][0].split("=")[1])
           for j in ("0", "1")}
    assert lrs == {1e-3, 3e-3}


def test_divergence_stops_with_a_clear_error() -> None:
    trainer = SimpleNamespace(current_epoch=2, global_step=16, optimizers=[SGD([torch.zeros(1)], lr=0.5)])
    callback = StopOnNonFiniteLoss(check_every_n_steps=1)
    callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 2)  # finite: nothing
    trainer.global_step = 17
    with pytest.raises(DivergedError, match=r"loss became nan at epoch 2, step 17, batch 3 \(learning rate 0.5\).*"
                                            r"no checkpoint had been saved yet"):  # this trainer saved none
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    # what is already set is not proposed again (it said "Try ... gradient_clip_val=1.0" to a clipped bf16 run)
    clipped = SimpleNamespace(**vars(trainer), gradient_clip_val=0.5, precision_plugin=SimpleNamespace(precision="bf16-mixed"))
    with pytest.raises(DivergedError) as said:
        StopOnNonFiniteLoss(check_every_n_steps=1).on_train_batch_end(
            clipped, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    assert "Try a lower optimizer.lr, or trainer.precision=32-true;" in str(said.value)
    with pytest.raises(DivergedError, match=r"Try a lower optimizer\.lr, or trainer\.gradient_clip_val=1\.0;"):
        StopOnNonFiniteLoss(check_every_n_steps=1).on_train_batch_end(
            trainer, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    # the first group is the encoder's at lr_scale.encoder=0.1: the rate quoted is optimizer.lr's (a review)
    scaled = SimpleNamespace(**{**vars(trainer), "optimizers": [SGD([{"params": [torch.zeros(1)], "lr": 0.05,
                                                                       "lr_scale": 0.1}], lr=0.5)]})
    with pytest.raises(DivergedError, match=r"\(learning rate 0\.5\)\. Try a lower optimizer\.lr"):
        StopOnNonFiniteLoss(check_every_n_steps=1).on_train_batch_end(
            scaled, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    by_value = SimpleNamespace(**vars(trainer), gradient_clip_val=0.5, gradient_clip_algorithm="value")
    with pytest.raises(DivergedError, match=r"Try a lower optimizer\.lr, or trainer\.gradient_clip_algorithm=norm;"):
        StopOnNonFiniteLoss(check_every_n_steps=1).on_train_batch_end(
            by_value, None, {"loss": torch.tensor(float("nan"))}, None, 3)


class NaNValidation(L.Callback):
    """Makes the validation metric NaN, as val/auroc of a split with one class is (test helper)."""

    def on_validation_end(self, trainer: L.Trainer, *args: object) -> None:  # (Lightning runs checkpoints last)
        trainer.callback_metrics["val/acc"] = torch.tensor(float("nan"))


def test_an_optuna_trial_whose_metric_is_nan_is_a_failed_trial(tmp_path: Path) -> None:
    """A trial whose metric was NaN (val/auroc of a split with one class) was recorded as "ok" without an
    objective: Lightning's checkpoint kept NaN as -inf (told "diverged" once that was failed) and train()
    returned None for NaN. Returned as NaN, it crashed the Optuna plugin's tell. Now: a failed trial."""
    proc = run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=1",
                    "+callbacks.nan._target_=tests.test_sweeps.NaNValidation", *TINY, *QUICK, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "every trial of the sweep failed (1 of 1); the first: val/acc is NaN" in proc.stderr
    (row,) = _summary(_sweep_dir(tmp_path))
    assert row["status"] == "failed" and "val/acc is NaN: undefined on the validation split" in row["error"], row


@pytest.mark.parametrize(("task", "direction"), [("sentiment", "maximize"), ("next_word", "minimize"),
                                                 ("stock", "minimize"), ("speech", "minimize"), ("ecg", "maximize")])
def test_optuna_configs_follow_the_heads_direction(make_cfg, task: str, direction: str) -> None:
    from hydra.utils import get_class

    cfg = make_cfg([f"hparams_search={task}_optuna"])
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.task_name == task
    head = get_class(cfg.head._target_)
    assert (head.mode == "max") == (direction == "maximize")
    assert "optimizer.lr" in cfg.hydra.sweeper.params


def test_slurm_cluster_config_composes(make_cfg) -> None:
    cfg = make_cfg(["cluster=slurm", "trainer.num_nodes=2", "trainer.devices=4", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (2, 4, 4, "gpu")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu" and cfg.trainer.num_nodes == 2


def test_a_sweep_whose_every_trial_fails_exits_with_an_error(tmp_path: Path) -> None:
    """Scripts and CI read the exit status: a sweep in which nothing trained must not report success."""
    proc = run_here("train", "-m", "model.proj_size=998,999", *TINY, *QUICK, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "every trial of the sweep failed (2 of 2); the first: " in proc.stderr
    assert [r["status"] for r in _summary(_sweep_dir(tmp_path))] == ["failed", "failed"]


def test_an_experiment_whose_task_a_search_preset_replaced_is_refused(tmp_path: Path) -> None:
    """hparams_search=ecg_optuna's task (ecg) composed over experiment=ecg_unsupervised_real's: the run
    trained the supervised head under the unsupervised recipe's name, silently (found by a new user)."""
    proc = run_here("train", "experiment=ecg_unsupervised_real", "hparams_search=ecg_optuna",
                   "hydra.sweeper.n_trials=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert ("experiment=ecg_unsupervised_real is a recipe for task=ecg_unsupervised, but the composed task is ecg "
            "(set by hparams_search=ecg_optuna); add task=ecg_unsupervised") in proc.stderr


def test_an_optuna_study_whose_every_trial_failed_exits_2_with_the_first_error(tmp_path: Path) -> None:
    """The Optuna plugin read study.best_trial after the last trial: a traceback ("No trials are
    completed yet."), exit 1, no summary. lstmkit's sweeper ends it as the basic sweeper does."""
    proc = run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=2",
                   f"data.path={tmp_path / 'missing.csv'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "lstmkit: error: every trial of the sweep failed (2 of 2); the first:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "logs" / "sentiment" / "multiruns").glob("*/summary.md"))
    # trials that ran but returned no value (train=false): the same traceback; now one line, exit 2
    (tmp_path / "untrained").mkdir()
    proc = run_here("train", "hparams_search=sentiment_optuna", "hydra.sweeper.n_trials=2", "train=false",
                    "model.hidden_size=8", *QUICK, cwd=tmp_path / "untrained", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "lstmkit: error: no trial of the Optuna study returned a value of its objective" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_slurm_launch_without_sbatch_is_one_line(tmp_path: Path) -> None:
    """Without SLURM on the machine, submitit failed deep inside ('Could not detect "srun"', a traceback)."""
    import shutil

    if shutil.which("sbatch"):
        pytest.skip("this machine has SLURM's sbatch")
    proc = run_cli("train", "-m", "cluster=slurm", "trainer.max_epochs=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cluster=slurm (hydra/launcher=submitit_slurm) submits the jobs with SLURM's sbatch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_summary_survives_an_unreadable_record(tmp_path: Path) -> None:
    """A record cut short (a worker killed while writing it) is a failed row; the others are kept."""
    from lstmkit.sweeps import summarise_sweep, write_result

    write_result(tmp_path / "0", ["optimizer.lr=0.1"], "val/acc", "max", 0.8)
    write_result(tmp_path / "2", ["optimizer.lr=0.3"], "val/acc", "max", 0.9)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "result.json").write_text('{"status": "ok", "monitor": "val/a')
    rows = summarise_sweep(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("2", "ok"), ("0", "ok"), ("1", "failed")]
    assert "unreadable" in rows[2]["error"] and "unreadable" in (tmp_path / "summary.md").read_text()
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["result.json"]  # no partial file left


def test_jobs_of_different_metrics_are_never_ranked_against_one_another(tmp_path: Path) -> None:
    """-m task=ecg,stock ranked a MASE (lower is better) with ECG's direction and named it best."""
    from lstmkit.sweeps import summarise_sweep, write_result

    write_result(tmp_path / "0", ["task=ecg"], "val/auroc", "max", 0.64)
    write_result(tmp_path / "1", ["task=stock"], "val/mase", "min", 1.001)
    write_result(tmp_path / "2", ["task=stock", "seed=2"], "val/mase", "min", 0.99)
    write_result(tmp_path / "3", ["task=ecg", "seed=2"], "val/auroc", "max", 0.71)
    rows = summarise_sweep(tmp_path)
    assert [r["job"] for r in rows] == ["3", "0", "2", "1"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Best by val/auroc (max): job 3" in summary and "Best by val/mase (min): job 2" in summary
    assert "\nBest: " not in summary
    # the table names each cell's metric (one "objective" column held AUROCs beside MASEs)
    assert "| 3 | ok | val/auroc = 0.7100 | task=ecg seed=2 |" in summary and "| 2 | ok | val/mase = 0.9900 |" in summary
    write_result(tmp_path / "one" / "0", ["optimizer.lr=0.1"], "val/acc", "max", 0.5)
    summarise_sweep(tmp_path / "one")
    assert "| job | status | val/acc | overrides | error |\n" in (tmp_path / "one" / "summary.md").read_text()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_diverged_trial_is_recorded_as_failed_in_strict_json_and_ranked_last(tmp_path: Path, mode: str) -> None:
    """A trial whose val/mase overflowed to inf (its training loss finite) wrote ``"objective": Infinity``
    (not JSON) as status ok, ranked first when minimising -inf or best of a max sweep."""
    from lstmkit.sweeps import summarise_sweep, write_result

    def strict(path: Path) -> dict:
        return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path}: {name} is not JSON"))

    write_result(tmp_path / "0", ["optimizer.lr=1"], "val/mase", mode, 1.5)
    for job, value in (("1", float("inf")), ("2", float("-inf"))):
        write_result(tmp_path / job, ["optimizer.lr=1e4"], "val/mase", mode, value)
        record = strict(tmp_path / job / "result.json")
        assert (record["status"], record["objective"]) == ("failed", None)
        assert record["error"].startswith(f"val/mase = {value}: the run diverged")
    write_result(tmp_path / "3", ["optimizer.lr=1e4"], "val/mase", mode, float("nan"))  # was "ok", no objective
    record = strict(tmp_path / "3" / "result.json")
    assert (record["status"], record["objective"]) == ("failed", None) and "val/mase is NaN" in record["error"]
    rows = summarise_sweep(tmp_path)
    assert rows[0]["job"] == "0" and {r["job"] for r in rows[1:]} == {"1", "2", "3"}
    assert "Best: job 0 with val/mase = 1.5000" in (tmp_path / "summary.md").read_text()


def test_a_sweep_over_tasks_keeps_its_jobs_and_summary_in_one_folder(tmp_path: Path) -> None:
    """Each job's own task_name put -m task=ecg,stock's jobs under logs/ecg/ and logs/stock/, and the
    summary (looking under the default task's folder) found none: no table, exit 0 when all failed."""
    proc = run_here("train", "-m", "task=ecg,stock", "model.hidden_size=-1", *QUICK, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "every trial of the sweep failed (2 of 2)" in proc.stderr
    (sweep,) = (tmp_path / "logs" / "multitask" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert [r["overrides"].split()[0] for r in _summary(sweep)] == ["task=ecg", "task=stock"]
    assert (sweep / "multirun.yaml").exists() and not (tmp_path / "logs" / "ecg").exists()
    # a monitor that fits one task of the sweep: only the other's trial fails (not the whole sweep at once)
    (tmp_path / "monitor").mkdir()
    proc = run_here("train", "-m", "task=ecg,stock", "monitor=val/auroc", "model.hidden_size=4", *QUICK, "test=false",
                    cwd=tmp_path / "monitor", check=False)
    (sweep,) = (tmp_path / "monitor" / "logs" / "multitask" / "multiruns").iterdir()
    rows = {r["overrides"].split()[0]: r for r in _summary(sweep)}
    assert rows["task=ecg"]["status"] == "ok" and rows["task=stock"]["status"] == "failed", proc.stderr[-2000:]
    assert "monitor=val/auroc is not a metric this model logs" in rows["task=stock"]["error"]
    # a sweep of one task keeps the task's folder
    run_here("train", "-m", "task=ecg", "model.hidden_size=4,5", *QUICK, "test=false", cwd=tmp_path)
    (sweep,) = (tmp_path / "logs" / "ecg" / "multiruns").iterdir()
    assert [r["status"] for r in _summary(sweep)] == ["ok", "ok"]


KILLER = """
import os
import signal
import time

import lightning as L
from hydra.core.hydra_config import HydraConfig


class KillJobOne(L.Callback):
    \"\"\"SIGKILL its own process in job 1 of a sweep, as the out-of-memory killer does; job 0 waits
    (LSTMKIT_TEST_WAIT seconds) at its first batch, still running when job 1 dies.\"\"\"

    def on_train_batch_end(self, trainer, *rest):
        mark = os.environ["LSTMKIT_TEST_MARK"]  # job 0 is running: on a loaded machine job 1 could die first
        if HydraConfig.get().job.num == 1:
            for _ in range(600):
                if os.path.exists(mark):
                    break
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)
        open(mark, "w").close()
        time.sleep(float(os.environ.get("LSTMKIT_TEST_WAIT", "0")))
"""


def test_a_parallel_sweep_whose_worker_is_killed_still_summarises(tmp_path: Path) -> None:
    """joblib's TerminatedWorkerError ended the sweep with a traceback: no summary, no failed row.
    The job whose worker joblib killed when it saw job 1's die was said to be killed "out of memory?"
    too; now each is said to be either."""
    (tmp_path / "killer.py").write_text(KILLER)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)  # lstmkit's own kept
    proc = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=1e-3,3e-3",
                   "+callbacks.kill._target_=killer.KillJobOne", *TINY, *QUICK, cwd=tmp_path, check=False,
                   env={"PYTHONPATH": path, "LSTMKIT_TEST_WAIT": "120",
                        "LSTMKIT_TEST_MARK": str(tmp_path / "job0_running")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the sweep stopped: 2 jobs died without a result (a worker process killed, e.g. by the out-of-memory " \
           "killer, and joblib stopped the other workers with it)" in proc.stderr, proc.stderr[-2000:]
    rows = {r["job"]: r for r in _summary(_sweep_dir(tmp_path))}
    for job in ("0", "1"):
        assert rows[job]["status"] == "failed"
        assert rows[job]["error"] == ("its process died without recording a result, like 1 other job(s) of the "
                                      "sweep: killed by a signal (out of memory?), or stopped by joblib when another "
                                      "worker process of the sweep was")


def test_cluster_slurm_without_a_sweep_says_nothing_is_submitted(make_cfg, caplog) -> None:
    import logging

    from lstmkit.commands.train import train

    cfg = make_cfg(["cluster=slurm", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1",
                    "trainer.strategy=auto", "trainer.precision=32-true", "logger=none", *TINY, *QUICK])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        train(cfg)
    assert "cluster=slurm submits the jobs of a sweep" in caplog.text and "nothing is submitted" in caplog.text
