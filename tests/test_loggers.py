"""Loggers write what they should (read back from disk); a resumed run continues its W&B run."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import QUICK, run_cli

TINY = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8"]


def _runs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "sentiment" / "runs").iterdir())


def _wandb_records(path: Path) -> list:
    """The records of a W&B ``.wandb`` transaction log (LevelDB log framing after a 7-byte header), as
    wandb's own protobuf messages: what ``wandb sync`` uploads, read without a server."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the padding at a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_run(folder: Path) -> tuple[object, list[tuple[int, int]]]:
    """An offline W&B run folder's run record and its history rows as (W&B step, trainer/global_step)."""
    (log,) = folder.glob("run-*.wandb")
    records = _wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item}
            rows.append((r.history.step.num, int(float(items.get("trainer/global_step", "-1")))))
    return run, rows


def test_many_loggers_write_their_files_and_resume_continues_the_wandb_run(tmp_path: Path) -> None:
    """One run with every logger, then resumed in its own folder (a fixed hydra.run.dir) with a new length."""
    from tensorboard.plugins.hparams import metadata

    run = tmp_path / "run"
    fixed = f"hydra.run.dir={run}"
    first_run = run_cli("train", "logger=many", *TINY, *QUICK, fixed, cwd=tmp_path)
    assert "anonymous setting has no effect" not in first_run.stdout + first_run.stderr  # W&B's warning, every run
    with (run / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert any(r.get("val/acc") for r in rows) and any(r.get("test/acc") for r in rows)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"val/acc", "val/loss", "test/acc"} <= set(events.Tags()["scalars"])
    assert "confusion_matrix" in events.Tags()["images"]
    # TensorBoard's HParams tab: the config against the monitored metric and its test twin (it was empty)
    hparams = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(hparams[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "test/acc"]
    session = metadata.parse_session_start_info_plugin_data(hparams[metadata.SESSION_START_INFO_TAG])
    assert session.hparams["trainer/max_epochs"].number_value == 1 and session.hparams["monitor"].string_value == "val/acc"
    assert "max_epochs: 1" in (run / "tensorboard" / "hparams.yaml").read_text()
    (first,) = (run / "wandb").glob("offline-run-*")
    record, steps = _wandb_run(first)
    assert record.job_type == "train" and record.display_name == "sentiment"
    assert steps and all(step == global_step for step, global_step in steps)  # W&B's step is the trainer's

    run_cli("train", "logger=many", *TINY, *QUICK, fixed, "trainer.max_epochs=2", "resume=true", "test=false",
            cwd=tmp_path)
    assert "max_epochs: 2" in (run / "tensorboard" / "hparams.yaml").read_text()  # it kept the first attempt's
    again = sorted((run / "wandb").glob("offline-run-*"))
    assert len(again) == 2 and {p.name.rsplit("-", 1)[-1] for p in again} == {record.run_id}
    resumed, steps = _wandb_run(next(p for p in again if p != first))
    assert resumed.run_id == record.run_id and resumed.resume  # the same W&B run, resume intent recorded
    # offline W&B starts a resumed run's folder at step 0 (it cannot ask its server where the run was); its
    # steps continue the checkpoint's (3: one epoch of 3 batches) instead
    assert steps[0][0] == 3 and all(step == global_step for step, global_step in steps)


def test_eval_runs_are_eval_jobs_in_wandb(tmp_path: Path) -> None:
    """``lstmkit eval ... logger=wandb`` was logged with job_type train."""
    run_cli("train", *TINY, *QUICK, "test=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    run_cli("eval", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", "logger=wandb",
            "trainer.limit_test_batches=2", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    (folder,) = (tmp_path / "eval" / "wandb").glob("offline-run-*")
    record, _ = _wandb_run(folder)
    assert record.job_type == "eval" and record.display_name == "eval"


def test_sweep_trials_get_distinct_names_in_one_group(make_cfg, monkeypatch, tmp_path: Path) -> None:
    """Every trial of a sweep had the task's name in W&B."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write

    from lstmkit.loggers import configure_wandb

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after the test
    sweep = tmp_path / "multiruns" / "2026-01-02_03-04-05_000006"
    sweep.mkdir(parents=True)
    OmegaConf.save({"hydra": {"overrides": {"task": ["logger=wandb", "optimizer.lr=1e-3,3e-3", "model.dropout=0.1,0.3",
                                                      "data.num_examples=200"]}}}, sweep / "multirun.yaml")
    names, groups = [], set()
    for num, (lr, dropout) in enumerate([(0.001, 0.1), (0.003, 0.3)]):
        cfg = make_cfg(["logger=wandb", f"optimizer.lr={lr}", f"model.dropout={dropout}", "data.num_examples=200"])
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(sweep)
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        configure_wandb(cfg)
        names.append(cfg.logger.wandb.name)
        groups.add(cfg.logger.wandb.group)
        assert cfg.logger.wandb.job_type == "train"
    assert names == ["sentiment-0 optimizer.lr=0.001 model.dropout=0.1", "sentiment-1 optimizer.lr=0.003 model.dropout=0.3"]
    assert groups == {sweep.name}
    # an Optuna search's parameters are its swept keys (no comma lists on its command line)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.sweeper = {"params": {"optimizer.lr": "interval(1e-4, 1e-2)"}}
        cfg.logger.wandb.name = "sentiment"
    (sweep / "multirun.yaml").unlink()
    HydraConfig.instance().set_config(cfg)
    configure_wandb(cfg)
    assert cfg.logger.wandb.name == "sentiment-1 optimizer.lr=0.003"
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = ["optimizer.lr=0.00024156772025296256", "logger=wandb"]  # as Optuna samples it
        cfg.logger.wandb.name = "sentiment"
    HydraConfig.instance().set_config(cfg)
    configure_wandb(cfg)
    assert cfg.logger.wandb.name == "sentiment-1 optimizer.lr=0.0002416"


def test_an_optuna_trial_name_lists_only_the_keys_that_vary(make_cfg, tmp_path: Path) -> None:
    """``hparams_search=sentiment_optuna model.num_layers=1``: every trial's W&B name listed
    ``model.num_layers=1`` (and any parameter the search fixes), as every key of the preset's search space."""
    from omegaconf import OmegaConf, open_dict, read_write

    from lstmkit.loggers import trial_name

    sweep = tmp_path / "multiruns" / "2026-01-02_03-04-05_000006"
    sweep.mkdir(parents=True)
    OmegaConf.save({"hydra": {"overrides": {"task": ["hparams_search=sentiment_optuna", "model.num_layers=1",
                                                      "model.dropout=choice(0.1,0.3)", "logger=wandb"]}}},
                   sweep / "multirun.yaml")
    # as Optuna writes a trial's overrides: the sampled values, then the fixed ones
    cfg = make_cfg(["optimizer.lr=0.00024156772025296256", "model.hidden_size=128", "model.dropout=0.3",
                    "data.batch_size=64", "model.num_layers=1", "logger=wandb"])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.sweep.dir = str(sweep)
        cfg.hydra.job.num = 4
        cfg.hydra.sweeper = {"params": {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                                        "model.hidden_size": "choice(64, 128, 256)", "model.num_layers": "choice(1, 2)",
                                        "data.batch_size": 64}}  # a parameter the search fixes
    assert trial_name("sentiment", cfg.hydra) == "sentiment-4 optimizer.lr=0.0002416 model.hidden_size=128 model.dropout=0.3"


def test_wandb_steps_are_the_trainers_and_never_go_back(tmp_path: Path) -> None:
    """W&B drops data logged to a step below one it has committed: such a step is logged at W&B's current one."""
    from types import SimpleNamespace

    from lstmkit.loggers import WandbLogger

    logged = []
    run = SimpleNamespace(step=0)

    def log(data: dict, step: int | None = None) -> None:
        logged.append((step, dict(data)))
        run.step = max(run.step, step if step is not None else run.step + 1)

    run.log = log
    logger = WandbLogger(experiment=run, save_dir=str(tmp_path))
    logger.log_metrics({"val/acc": 0.5}, step=6)
    logger.log_metrics({"plot": 1.0})  # no step (an image): W&B's next one
    logger.log_metrics({"test/acc": 0.7}, step=6)
    assert logged == [(6, {"val/acc": 0.5, "trainer/global_step": 6}), (None, {"plot": 1.0}),
                      (None, {"test/acc": 0.7, "trainer/global_step": 6})]  # W&B's next step, 7


def test_steps_behind_wandbs_each_keep_a_row_of_their_own(tmp_path: Path) -> None:
    """An online run resumed from a checkpoint older than its last logged step: W&B's step is ahead of the
    trainer's. Logged at W&B's current step, every call until the trainer caught up fell into one row,
    each overwriting the one before (the resumed attempt's curve lost all but one point there)."""
    from lstmkit.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lstmkit")
    run = logger.experiment
    for _ in range(150):  # what the server holds: the killed attempt logged up to step 149
        run.log({"earlier": 1.0})
    for step in (101, 111, 121, 200):  # the resumed attempt, from its checkpoint at step 100
        logger.log_metrics({"train/loss": float(step)}, step=step)
    run.finish()
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    expected = [(150, 101), (151, 111), (152, 121), (200, 200)]
    rows: list[tuple[int, int]] = []
    for _ in range(60):  # W&B's service process may still be writing the file when finish() returns (a loaded CI)
        try:
            _, rows = _wandb_run(folder)
        except Exception:  # noqa: BLE001, S110 - a record half written: read it again
            pass
        if len([row for row in rows if row[0] >= 150]) >= len(expected):
            break
        time.sleep(0.5)
    assert [row for row in rows if row[0] >= 150] == expected


def test_tensorboard_hparams_show_the_monitored_metric_and_yaml_follows_the_latest_attempt(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import metadata

    from lstmkit.loggers import TensorBoardLogger

    def attempt(max_epochs: int) -> Path:
        logger = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="", default_hp_metric=False)
        logger.log_hyperparams({"monitor": "val/mase", "trainer": {"max_epochs": max_epochs}})
        logger.log_hyperparams({"spec": {"size": 3}})  # Lightning's own call with the module's: no second session
        logger.save()
        logger.finalize("success")
        return Path(logger.log_dir)

    folder = attempt(1)
    events = EventAccumulator(str(folder))
    events.Reload()
    experiment = metadata.parse_experiment_plugin_data(events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == ["val/mase", "test/mase"]
    assert not events.Tags()["scalars"]  # no placeholder value of the metrics
    assert "max_epochs: 1" in (folder / "hparams.yaml").read_text()
    attempt(2)  # resumed in the same folder
    text = (folder / "hparams.yaml").read_text()
    assert "max_epochs: 2" in text and "size: 3" in text


def test_hparams_yaml_is_written_once_per_logged_config_not_at_every_save(tmp_path: Path) -> None:
    """Lightning calls ``save()`` after every ``log_metrics``: hparams.yaml (a text model's holds its
    vocabulary: PTB's took 0.8 s to write) was rewritten every ``trainer.log_every_n_steps`` steps.

    In a process of its own: the HParams summary imports TensorFlow where it is installed (the bench
    extra), whose log handler keeps pytest's captured stderr and breaks later tests once it is closed."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = f"from tests.test_loggers import _hparams_writes; _hparams_writes({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _hparams_writes(folder: str) -> None:
    from lightning.pytorch.loggers import tensorboard

    from lstmkit import loggers
    from lstmkit.loggers import TensorBoardLogger

    writes = []
    real = loggers.save_hparams_to_yaml

    def counted(path, hparams) -> None:
        writes.append(path)
        real(path, hparams)

    for module in (loggers, tensorboard):  # lstmkit's rewrite and Lightning's first write
        module.save_hparams_to_yaml = counted
    logger = TensorBoardLogger(save_dir=folder, name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams({"monitor": "val/acc", "trainer": {"max_epochs": 1}})
    for step in range(5):  # as the trainer does: log, then save
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.save()
    assert len(writes) == 1, writes
    logger.log_hyperparams({"spec": {"size": 3}})  # a later call (Lightning's, with the module's) is written
    logger.save()
    logger.save()
    assert len(writes) == 2 and "size: 3" in (Path(logger.log_dir) / "hparams.yaml").read_text(), writes
    logger.finalize("success")


def test_data_preparation_progress_shows_on_terminals_only(monkeypatch, capsys) -> None:
    import sys

    from lstmkit.progress import track

    assert list(track(range(500), "reading")) == list(range(500))  # not a terminal: plain pass-through
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(track(range(500), "decoding train audio")) == list(range(500))
    assert list(track(range(5), "tiny")) == list(range(5))  # too short to deserve a bar
    err = capsys.readouterr().err
    assert "decoding train audio" in err and "tiny" not in err


def _strict(text: str) -> object:
    """JSON as a strict reader (jq, JavaScript) parses it: ``NaN`` / ``Infinity`` are errors."""
    import json

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_strict_json_with_null_for_a_diverged_metric(tmp_path: Path) -> None:
    from lstmkit.commands.common import read_metrics, report
    from lstmkit.files import json_text

    report({"test/acc": 0.5, "val/loss": float("nan"), "val/mase": float("inf")}, tmp_path)
    written = (tmp_path / "metrics.json").read_text()
    assert _strict(written) == {"test/acc": 0.5, "val/loss": None, "val/mase": None}
    back = read_metrics(tmp_path / "metrics.json")
    assert back["test/acc"] == 0.5 and math.isnan(back["val/loss"]) and math.isnan(back["val/mase"])
    # the one writer of every JSON record with computed numbers: nested values too
    assert _strict(json_text({"a": [1.0, float("-inf"), {"b": float("nan")}], "c": (2, None)})) == \
        {"a": [1.0, None, {"b": None}], "c": [2, None]}
