"""Loggers write what they should (read back from disk); a resumed run continues its W&B run."""

from __future__ import annotations

import csv
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


def test_data_preparation_progress_shows_on_terminals_only(monkeypatch, capsys) -> None:
    import sys

    from lstmkit.progress import track

    assert list(track(range(500), "reading")) == list(range(500))  # not a terminal: plain pass-through
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(track(range(500), "decoding train audio")) == list(range(500))
    assert list(track(range(5), "tiny")) == list(range(5))  # too short to deserve a bar
    err = capsys.readouterr().err
    assert "decoding train audio" in err and "tiny" not in err
