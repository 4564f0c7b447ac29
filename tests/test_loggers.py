"""Loggers write what they should (read back from disk); a resumed run continues its W&B run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import QUICK, run_cli

TINY = ["data.num_examples=200", "data.batch_size=16", "model.hidden_size=8", "encoder.dim=8"]


def _runs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "sentiment" / "runs").iterdir())


def test_many_loggers_write_their_files_and_resume_continues_the_wandb_run(tmp_path: Path) -> None:
    run_cli("train", "logger=many", *TINY, *QUICK, cwd=tmp_path)
    run = _runs(tmp_path)[-1]
    with (run / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert any(r.get("val/acc") for r in rows) and any(r.get("test/acc") for r in rows)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"val/acc", "val/loss", "test/acc"} <= set(events.Tags()["scalars"])
    assert "confusion_matrix" in events.Tags()["images"]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    run_id = offline[0].name.rsplit("-", 1)[-1]

    run_cli("train", "logger=wandb", *TINY, *QUICK, "trainer.max_epochs=2", "ckpt_path=last", "test=false",
            cwd=tmp_path)
    resumed = _runs(tmp_path)[-1]
    again = list((resumed / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[-1] for p in again] == [run_id]


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
