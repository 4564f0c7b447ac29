"""The console script end to end: train -> eval -> predict, resume, multirun, errors, wheel install."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from .conftest import QUICK, REPO, run_cli, run_here

TINY = ["data.num_examples=300", "data.batch_size=16", "model.hidden_size=16", "encoder.dim=16"]


def _run_dir(root: Path, task: str = "sentiment") -> Path:
    runs = sorted((root / "logs" / task / "runs").iterdir())
    assert runs, f"no run directory under {root}/logs/{task}/runs"
    return runs[-1]


def test_train_eval_predict_through_the_console_script(tmp_path: Path) -> None:
    trained_proc = run_cli("train", *TINY, *QUICK, cwd=tmp_path)
    # Lightning's lines once, in the job's format (its own console handler printed each again: "INFO: ...")
    assert trained_proc.stdout.count("][INFO] - `Trainer.fit` stopped") == 1, trained_proc.stdout
    assert "INFO: " not in trained_proc.stderr, trained_proc.stderr
    run = _run_dir(tmp_path)
    assert (run / ".hydra" / "config.yaml").exists()
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    trained = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= trained["test/acc"] <= 1.0
    assert (run / "plots" / "confusion_matrix.png").stat().st_size > 0

    evaluated = run_cli("eval", f"ckpt_path={run}/checkpoints/best.ckpt", "trainer.limit_test_batches=2",
                        "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert "test/acc" in evaluated.stdout
    eval_run = _run_dir(tmp_path, "eval")
    assert json.loads((eval_run / "metrics.json").read_text())["test/acc"] == trained["test/acc"]
    # a +data.<key> the checkpoint's datamodule does not take: one line naming it, no traceback
    typo = run_cli("eval", f"ckpt_path={run}/checkpoints/best.ckpt", "+data.max_lenght=50", cwd=tmp_path, check=False)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr
    assert "cannot build the data from the config" in typo.stderr and "max_lenght" in typo.stderr, typo.stderr

    predicted = run_cli("predict", f"ckpt_path={run}/checkpoints/best.ckpt", "input=what a wonderful film",
                        cwd=tmp_path)
    line = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert line["input"] == "what a wonderful film"
    assert line["label"] in {"negative", "positive"} and 0.5 <= line["probability"] <= 1.0


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    run_here("train", *TINY, *QUICK, cwd=tmp_path)
    first = _run_dir(tmp_path)
    run_here("train", *TINY, *QUICK, "trainer.max_epochs=2", "ckpt_path=last", "test=false", cwd=tmp_path)
    second = _run_dir(tmp_path)
    assert second != first
    with (second / "csv" / "metrics.csv").open() as fh:
        epochs = {row["epoch"] for row in csv.DictReader(fh) if row.get("epoch")}
    assert epochs == {"1"}, f"resumed run should only train epoch 1, logged {epochs}"


def test_multirun_runs_each_value(tmp_path: Path) -> None:
    proc = run_here("train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, *QUICK, "test=false", cwd=tmp_path)
    sweeps = sorted((tmp_path / "logs" / "sentiment" / "multiruns").iterdir())
    jobs = sorted(p for p in sweeps[-1].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout
    lrs = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert all("val/acc" in m for m in lrs)


def test_a_typo_in_a_sweep_value_gets_the_hint_and_no_resume_advice(tmp_path: Path) -> None:
    """Hydra checks every job's config before the first runs: no job ran and no summary was written,
    yet "the sweep stopped ... the same command with resume=true runs the rest" came first."""
    for typo, hint in [("task=ecg,stok", "did you mean task=stock?"),
                       ("model.hiden_size=4,8", "did you mean model.hidden_size?")]:
        args = ("task=ecg", typo) if typo.startswith("model.") else (typo,)
        proc = run_here("train", "-m", *args, cwd=tmp_path, check=False)
        assert proc.returncode != 0
        assert hint in proc.stderr
        assert "resume=true" not in proc.stderr and "summary.md" not in proc.stderr, proc.stderr
    # nor is a sweep folder holding only the config of a sweep that never started left behind
    assert not [p for p in tmp_path.glob("logs/*/multiruns/*") if p.is_dir()]


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    proc = run_here("train", "data.path=no/such/file.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "no/such/file.csv: data.path does not exist" in proc.stderr
    assert not list(tmp_path.glob("logs/sentiment/runs/*"))  # a refused run leaves no folder of .hydra and a log
    assert "Traceback" not in proc.stderr
    proc = run_here("fly", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "expected a command" in proc.stderr
    proc = run_here("predict", f"ckpt_path={tmp_path}/missing.ckpt", "input=x", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    proc = run_here("train", "-m", "optimizer.lr=1e-3,3e-3", "--cfg", "hydra", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "drop -m" in proc.stderr and "Traceback" not in proc.stderr


def test_python_dash_m_works(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lstmkit", "train", "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert "hidden_size: 128" in proc.stdout


def test_installed_wheel_runs_from_another_directory(tmp_path: Path) -> None:
    """Build the wheel, install it into a scratch venv and train from an unrelated folder."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO)], check=True, capture_output=True)
    wheel = next(dist.glob("lstmkit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies come from the project's venv; lstmkit itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", ("import lstmkit, lstmkit.cli as c; print(lstmkit.__file__);"
                            "print(c.config_dir())")], cwd=elsewhere, capture_output=True, text=True, check=True)
    module_file, conf = where.stdout.split()
    assert module_file.startswith(str(site)) and conf.startswith(str(site))
    proc = subprocess.run([str(python), "-m", "lstmkit", "train", "debug=fdr", *TINY], cwd=elsewhere, check=False,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stdout


def test_runs_started_in_the_same_second_get_their_own_folders() -> None:
    """Run folders carry microseconds: parallel runs of one task must not share checkpoints."""
    import re

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lstmkit.cli import config_dir

    dirs = []
    for _ in range(3):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
            cfg = compose(config_name="train", return_hydra_config=True)
            dirs.append(OmegaConf.select(cfg, "hydra.run.dir"))
    GlobalHydra.instance().clear()
    assert all(re.search(r"/sentiment/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}$", d) for d in dirs), dirs
    assert len(set(dirs)) == 3


def test_predict_input_file_is_one_input_per_line(tmp_path, caplog) -> None:
    """Lines end at "\\n" (and "\\r\\n") only: U+2028 or NEL inside a text do not cut it in two, so the
    results match the file's lines; a blank line is skipped and counted in a warning."""
    import logging

    from omegaconf import OmegaConf

    from lstmkit.commands.predict import collect_inputs_and_origins

    path = tmp_path / "inputs.txt"
    path.write_text("a gorgeous film\x85 truly\r\n\nthe plot was dull\u2028and slow\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        inputs = collect_inputs_and_origins(OmegaConf.create({"input_file": str(path)}))[0]
    assert inputs == ["a gorgeous film\x85 truly", "the plot was dull\u2028and slow"]
    assert "1 blank line(s) skipped" in caplog.text


def test_a_relative_data_path_is_stored_absolute_so_eval_runs_from_anywhere(tmp_path) -> None:
    from lstmkit.checkpoints import read_checkpoint

    from .conftest import QUICK

    rows = "text,label\n" + "".join(f"{'a fine film' if i % 2 else 'a dull film'} {i},{i % 2}\n" for i in range(200))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.csv").write_text(rows)
    run_here("train", "data.path=data/reviews.csv", "model.hidden_size=8", "encoder.dim=8", *QUICK, "test=false",
            cwd=tmp_path)
    (ckpt,) = (tmp_path / "logs" / "sentiment" / "runs").glob("*/checkpoints/best.ckpt")
    assert read_checkpoint(ckpt)["hyper_parameters"]["data"]["path"] == str((tmp_path / "data" / "reviews.csv").resolve())
    elsewhere = tmp_path / "data"
    proc = run_here("eval", f"ckpt_path={ckpt}", "split=val", "trainer.enable_progress_bar=false", cwd=elsewhere)
    assert "val/acc" in proc.stdout + proc.stderr


def test_option_types_are_checked_against_the_annotations_of_every_task_and_experiment(make_cfg) -> None:
    """Every shipped config passes; a wrong scalar is named with its group, whatever the task."""
    import pytest

    from lstmkit.commands.common import TYPED_GROUPS, check_option_types
    from lstmkit.commands.common import plain as plain_options
    from lstmkit.errors import ConfigError

    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    tasks = ["task=next_word", "task=stock", "task=sentiment", "task=speech", "task=ecg"]
    for choice in tasks + [f"experiment={e}" for e in experiments]:
        cfg = make_cfg([choice])
        check_option_types({g: plain_options(cfg.get(g)) for g in TYPED_GROUPS})  # no false alarm
    cases = {
        ("task=speech", "encoder.normalise=global", "data.bucketing=maybe"): r"data\.bucketing='maybe': expected true or false",
        ("task=sentiment", "data.max_vocab=null"): None,  # int | None: null is fine
        ("task=sentiment", "data.max_vocab=lots"): r"data\.max_vocab='lots': expected a whole number",
        ("task=sentiment", "data.val_fraction=1"): None,  # a whole number where a float is expected
        ("task=stock", "data.horizon=[1,2]"): r"data\.horizon=\[1, 2\]: expected a whole number",
        ("task=ecg", "optimizer.weight_decay=heavy"): r"optimizer\.weight_decay='heavy': expected a number",
    }
    for overrides, expected in cases.items():
        cfg = make_cfg(list(overrides))
        groups = {g: plain_options(cfg.get(g)) for g in TYPED_GROUPS}
        if expected is None:
            check_option_types(groups)
            continue
        with pytest.raises(ConfigError, match=expected):
            check_option_types(groups)


def test_version_is_printed(tmp_path: Path) -> None:
    from importlib.metadata import version

    proc = run_cli("--version", cwd=tmp_path)
    assert proc.stdout.strip() == f"lstmkit {version('lstmkit')}"


def test_help_version_and_a_typo_answer_without_importing_torch(tmp_path: Path) -> None:
    """Importing torch and Lightning takes ~6 s; ``--help``, ``--version`` and a typo that Hydra reports
    before any job starts need neither (``import lstmkit`` loads its model classes on first use), so they
    answer in about a second. Run in a fresh interpreter: this one has imported torch already."""
    code = """
import sys
from lstmkit.cli import main
main(["--help"])
main(["--version"])
try:
    main(["train", "model.hiden_size=3"])
except SystemExit as exc:
    assert exc.code == 2, exc.code
import lstmkit
assert lstmkit.__version__
print("heavy:", sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "lightning", "torchaudio", "torchmetrics"}))
print("SequenceModel:", lstmkit.SequenceModel.__module__)  # still there, on first use
assert "LSTMCore" in dir(lstmkit) and lstmkit.core.LSTMCore is lstmkit.LSTMCore  # submodules too, as before
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: lstmkit <command>" in proc.stdout and "did you mean model.hidden_size?" in proc.stderr
    assert "heavy: []" in proc.stdout and "SequenceModel: lstmkit.module" in proc.stdout


def test_every_commands_help_names_it_and_predict_and_export_list_their_own_options(tmp_path: Path) -> None:
    """predict and export listed train's config groups (encoder, head, trainer...), none of which applies to them."""
    for command in ("predict", "export"):
        text = run_cli(command, "--help", cwd=tmp_path).stdout
        assert text.startswith(f"lstmkit {command}: every option is a key=value override")
        assert "ckpt_path: ???" in text and "Configuration groups" not in text and "encoder:" not in text
    for command in ("train", "eval"):  # Hydra's own header named the Python module: "cli is powered by Hydra."
        text = run_cli(command, "--help", cwd=tmp_path).stdout
        assert text.startswith(f"lstmkit {command}: every option below is a key=value override"), text[:200]
        assert "Configuration groups" in text and "powered by Hydra" not in text


def test_predict_writes_strict_json_with_null_for_nan() -> None:
    """``input=nan`` (Hydra parses it as a float) printed ``{"input": NaN, ...}``, which strict JSON readers reject."""
    from lstmkit.files import json_safe

    line = json.dumps(json_safe({"input": float("nan"), "forecast": [1.5, float("inf")], "label": "x"}), allow_nan=False)
    assert line == '{"input": null, "forecast": [1.5, null], "label": "x"}'


def test_input_file_paths_are_read_from_the_lists_folder(tmp_path, monkeypatch) -> None:
    """A list of wavs (or price/beat files) kept beside them works from any working directory, as a
    manifest's paths do; paths that are not there, absolute paths and sample values stay as given."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"x")
    (tmp_path / "b.wav").write_bytes(b"x")  # in the working directory only
    listing = tmp_path / "clips" / "list.txt"
    listing.write_text(f"a.wav\nb.wav\n{tmp_path / 'b.wav'}\n0.1 0.2 0.3\n")
    from omegaconf import OmegaConf

    from lstmkit.commands.predict import collect_inputs_and_origins

    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"input_file": str(listing)})
    inputs, origins = collect_inputs_and_origins(cfg, paths=True)
    assert inputs == [str(tmp_path / "clips" / "a.wav"), "b.wav", str(tmp_path / "b.wav"), "0.1 0.2 0.3"]
    assert origins == [(str(listing), n) for n in range(1, 5)]
    assert collect_inputs_and_origins(cfg)[0][0] == "a.wav"  # texts are never paths
    semi = tmp_path / "semi.csv"  # a classifier trained with data.delimiter=';' reads its tables so
    semi.write_text('text;label\n"one; two";1\nthree;0\n')
    cfg = OmegaConf.create({"input_file": str(semi)})
    assert collect_inputs_and_origins(cfg, "text", delimiter=";")[0] == ["one; two", "three"]
    # data.delimiter on predict's command line: a table whatever the name ends in (training reads so)
    for name in ("semi.tsv", "semi.txt"):
        other = tmp_path / name
        other.write_text(semi.read_text())
        given = OmegaConf.create({"input_file": str(other)})
        assert collect_inputs_and_origins(given, "text", given_delimiter=";")[0] == ["one; two", "three"]


def test_a_classifiers_input_file_table_gives_its_text_column(tmp_path) -> None:
    """A CSV/TSV/JSONL input_file was read line by line: its header and each "text,label" line were
    classified as texts, labels included. A text classifier reads the column it was trained on."""
    from omegaconf import OmegaConf

    from lstmkit.commands.predict import collect_inputs_and_origins
    from lstmkit.errors import DataError

    table = tmp_path / "new.csv"
    table.write_text('stars,review,id\npositive,"lovely, and brilliant",0\nnegative,dull,1\n', encoding="utf-8")
    cfg = OmegaConf.create({"input_file": str(table)})
    inputs, origins = collect_inputs_and_origins(cfg, text_column="review")
    assert inputs == ["lovely, and brilliant", "dull"] and origins == [(str(table), 2), (str(table), 3)]
    (tmp_path / "new.jsonl").write_text('{"review": "fine"}\n{"review": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"new\.jsonl, row 2, field 'review': expected a text"):
        collect_inputs_and_origins(OmegaConf.create({"input_file": str(tmp_path / "new.jsonl")}), "review")
    with pytest.raises(DataError, match="review"):
        collect_inputs_and_origins(OmegaConf.create({"input_file": str(tmp_path / "new.csv")}), "text")
    # other models (and other files) still read one input per line
    assert collect_inputs_and_origins(cfg)[0][0] == "stars,review,id"
    # end to end: a model trained on a CSV's column predicts from such a file by that column
    run_here("train", "data.num_examples=200", "model.hidden_size=8", "encoder.dim=8", *QUICK, "test=false", cwd=tmp_path)
    ckpt = next((tmp_path / "logs" / "sentiment" / "runs").glob("*/checkpoints/last.ckpt"))
    (tmp_path / "texts.csv").write_text("text\nwhat a wonderful film\n", encoding="utf-8")
    lines = run_here("predict", f"ckpt_path={ckpt}", f"input_file={tmp_path / 'texts.csv'}", cwd=tmp_path).stdout
    (result,) = [json.loads(line) for line in lines.strip().splitlines()]
    assert result["input"] == "what a wonderful film"
    # a table whose text column is named otherwise: the error's advice, data.text_column=, works (predict
    # refused every data.* setting of a sentiment model)
    proc = run_here("predict", f"ckpt_path={ckpt}", f"input_file={table}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Set data.text_column to the right names" in proc.stderr, proc.stderr
    lines = run_here("predict", f"ckpt_path={ckpt}", f"input_file={table}", "data.text_column=review", cwd=tmp_path).stdout
    assert [json.loads(line)["input"] for line in lines.strip().splitlines()] == ["lovely, and brilliant", "dull"]
    proc = run_here("predict", f"ckpt_path={ckpt}", "input=fine", "data.label_column=x", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "reads its input files with data.text_column" in proc.stderr, proc.stderr
    # a ';' table: the error's advice, data.delimiter, is taken by predict, and by eval without a '+' (refused
    # in predict, and eval said "Could not override 'data.delimiter'", tester-2)
    semi = tmp_path / "semi.csv"
    semi.write_text("text;label\nwhat a wonderful film;1\na dull film;0\n", encoding="utf-8")
    proc = run_here("predict", f"ckpt_path={ckpt}", f"input_file={semi}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "set 'data.delimiter=\";\"'" in proc.stderr, proc.stderr
    lines = run_here("predict", f"ckpt_path={ckpt}", f"input_file={semi}", "data.delimiter=\";\"", cwd=tmp_path).stdout
    assert [json.loads(line)["input"] for line in lines.strip().splitlines()] == ["what a wonderful film", "a dull film"]
    labelled = tmp_path / "semi_labelled.csv"
    labelled.write_text("text;label\n" + "".join(f"{'a fine' if i % 2 else 'a dull'} film;{('negative', 'positive')[i % 2]}\n"
                                                  for i in range(20)), encoding="utf-8")
    scored = run_here("eval", f"ckpt_path={ckpt}", f"data.path={labelled}", "data.delimiter=\";\"", "split=all",
                      cwd=tmp_path)
    assert "all/acc" in scored.stdout + scored.stderr


def test_predict_reads_label_prefixed_lines_as_training_did(tmp_path) -> None:
    """A text classifier trained on '<label> <text>' lines (SST-2's stsa.binary.*) predicts from such a
    file by its texts: read as plain lines, "0 one long string of cliches ." was scored with its "0"."""
    from omegaconf import OmegaConf

    from lstmkit.commands.predict import collect_inputs_and_origins, prefixed_labels
    from lstmkit.types import DataSpec

    dev = tmp_path / "stsa.binary.dev"
    dev.write_text("0 one long string of cliches .\n\n1\ta gorgeous , witty film .\n", encoding="utf-8")
    cfg = OmegaConf.create({"input_file": str(dev)})
    spec = DataSpec(input_kind="tokens", vocab=["<pad>", "<unk>"], classes=["negative", "positive"], pad_id=0)
    named = {"format": "auto", "label_names": {0: "negative", 1: "positive"}}
    labels = prefixed_labels(cfg, spec, named)
    assert labels == {"0", "1", "negative", "positive"}
    inputs, origins = collect_inputs_and_origins(cfg, "text", labels=labels)
    assert inputs == ["one long string of cliches .", "a gorgeous , witty film ."]
    assert origins == [(str(dev), 1), (str(dev), 3)]
    # a file of plain texts (a line without a label) is read one text per line, as before
    plain = tmp_path / "reviews.txt"
    plain.write_text("0 stars from me\na gorgeous film\n", encoding="utf-8")
    plain_cfg = OmegaConf.create({"input_file": str(plain)})
    assert collect_inputs_and_origins(plain_cfg, "text", labels=prefixed_labels(plain_cfg, spec, named))[0] == [
        "0 stars from me", "a gorgeous film"]
    # a model whose training read tables (or a delimiter) reads no labels off lines
    assert prefixed_labels(cfg, spec, {"format": "csv"}) is None
    assert prefixed_labels(cfg, spec, {"format": "auto", "delimiter": ";"}) is None
    assert prefixed_labels(OmegaConf.create({"input_file": "x.csv"}), spec, named) is None
    assert prefixed_labels(cfg, spec, {"format": "prefixed"}) == {"negative", "positive"}
    # a model whose spec says how its training files were read: '<label> <text>' lines only if they were
    # (one trained on a CSV read "1 star is too many" as "star is too many", tester-2)
    from dataclasses import replace
    on_csv = replace(spec, extra={"read_as": ["csv"]})
    assert prefixed_labels(cfg, on_csv, named) is None
    assert prefixed_labels(cfg, replace(spec, extra={"read_as": []}), named) is None  # the generated corpus
    assert prefixed_labels(cfg, replace(spec, extra={"read_as": ["csv", "prefixed"]}), named) == labels
    assert prefixed_labels(cfg, on_csv, {"format": "prefixed"}) == {"negative", "positive"}  # asked for
    # end to end, with a model trained on such files
    train = tmp_path / "data"
    train.mkdir()
    rows = "".join(f"{i % 2} {'a fine film' if i % 2 else 'a dull film'} {i}\n" for i in range(200))
    (train / "stsa.binary.train").write_text(rows, encoding="utf-8")
    run_here("train", f"data.path={train}", "model.hidden_size=8", "encoder.dim=8", *QUICK, "test=false",
            cwd=tmp_path)
    ckpt = next((tmp_path / "logs" / "sentiment" / "runs").glob("*/checkpoints/last.ckpt"))
    said = run_here("predict", f"ckpt_path={ckpt}", f"input_file={dev}", cwd=tmp_path)
    assert [json.loads(line)["input"] for line in said.stdout.strip().splitlines()] == inputs
    assert "every line starts with one of the model's labels (0, 1), so it is read as '<label> <text>'" in said.stderr
    # "1 star is too many" is a text too: data.format=lines scores each line whole, label-like words and all
    whole = run_here("predict", f"ckpt_path={ckpt}", f"input_file={dev}", "data.format=lines", "output=out/preds.csv",
                     cwd=tmp_path)
    printed = [json.loads(line) for line in whole.stdout.strip().splitlines()]
    assert [p["input"] for p in printed] == ["0 one long string of cliches .", "1\ta gorgeous , witty film ."]
    assert "read as '<label> <text>'" not in whole.stderr
    # ... a table's lines too: data.format=lines was ignored for a .csv input_file, read by its text column
    table_file = tmp_path / "texts.csv"
    table_file.write_text("text\na fine film\n", encoding="utf-8")
    as_lines = run_here("predict", f"ckpt_path={ckpt}", f"input_file={table_file}", "data.format=lines", cwd=tmp_path)
    assert [json.loads(line)["input"] for line in as_lines.stdout.strip().splitlines()] == ["text", "a fine film"]
    # a model trained on a CSV reads every line of a .txt whole, label-like first words and all
    table_train = tmp_path / "reviews.csv"
    table_train.write_text("text,label\n" + "".join(f"{'a fine film' if i % 2 else 'a dull film'} {i},{i % 2}\n"
                                                     for i in range(200)), encoding="utf-8")
    run_here("train", f"data.path={table_train}", "model.hidden_size=8", "encoder.dim=8", *QUICK, "test=false",
             "task_name=on_csv", cwd=tmp_path)
    csv_ckpt = next((tmp_path / "logs" / "on_csv" / "runs").glob("*/checkpoints/last.ckpt"))
    whole_lines = run_here("predict", f"ckpt_path={csv_ckpt}", f"input_file={dev}", cwd=tmp_path)
    assert [json.loads(line)["input"] for line in whole_lines.stdout.strip().splitlines()] == [
        "0 one long string of cliches .", "1\ta gorgeous , witty film ."]
    assert "read as '<label> <text>'" not in whole_lines.stderr
    # output=<name>.csv is a CSV table (it was JSON lines under a .csv name), nested results as dotted columns
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "preds.csv", dtype={"label": str})
    assert table["input"].tolist() == [p["input"] for p in printed] and table["label"].tolist() == [p["label"] for p in printed]
    assert table["probabilities.1"].tolist() == pytest.approx([p["probabilities"]["1"] for p in printed])


def test_a_predict_error_in_a_row_does_not_question_the_checkpoint() -> None:
    """"(the checkpoint ... is a model of task 'stock' ...)" ended every error, even one cell of a
    right file: it is kept for inputs that cannot be read as the task's at all."""
    from types import SimpleNamespace

    from lstmkit.commands.predict import input_context
    from lstmkit.errors import DataError

    model = SimpleNamespace(hparams={"task": "stock"})
    kind = SimpleNamespace(predict_input="OHLCV CSV file paths")
    with pytest.raises(DataError) as caught, input_context("s.ckpt", model, kind):
        raise DataError("expected a finite number, found 'abc'", path="acme.csv", row=5, field="close")
    assert "model of task" not in str(caught.value) and "acme.csv, row 5" in str(caught.value)
    with pytest.raises(DataError, match=r"not found \(the checkpoint s\.ckpt is a model of task 'stock'"), \
            input_context("s.ckpt", model, kind):
        raise DataError("file or folder not found", path="what a film")
    # a price file that is read, but too short for the window: of the right kind too
    from lstmkit.data.stock import StockDataModule, generate_ohlcv

    dm = StockDataModule(window=8, num_tickers=1, num_days=60)
    dm.setup()
    short = Path(tempfile.mkdtemp()) / "short.csv"
    generate_ohlcv(1, 5, seed=1).to_csv(short, index=False)
    with pytest.raises(DataError) as caught, input_context("s.ckpt", model, kind):
        StockDataModule.make_predict_batch(dm.spec, [str(short)])
    assert "has 5 rows; the model reads windows of 8 days" in str(caught.value)
    assert "model of task" not in str(caught.value)
    header_only = short.with_name("header.csv")  # a price file's header, no rows: the right kind too
    header_only.write_text("date,open,high,low,close,volume\n")
    with pytest.raises(DataError, match="no data rows below the header") as caught, input_context("s.ckpt", model, kind):
        StockDataModule.make_predict_batch(dm.spec, [str(header_only)])
    assert "model of task" not in str(caught.value)
    # a text file in Latin-1 (a manifest or price file saved by older Excel) is of the right kind too (tester-2)
    latin = short.with_name("latin.csv")
    latin.write_bytes(short.read_bytes().replace(b"date", "d\xe9te".encode("latin-1"), 1))
    with pytest.raises(DataError, match=r"not valid UTF-8 .*'é' in Windows-1252") as caught, \
            input_context("s.ckpt", model, kind):
        StockDataModule.make_predict_batch(dm.spec, [str(latin)])
    assert "model of task" not in str(caught.value)
    # an error that names a row but says the file is of another kind (bytes, not text) still asks
    binary = short.with_name("clip.wav")
    binary.write_bytes(b"RIFF\xff\xfe\x00\x00WAVEfmt ")
    with pytest.raises(DataError, match=r"row 1: not valid UTF-8 .* is a model of task 'stock'"), \
            input_context("s.ckpt", model, kind):
        StockDataModule.make_predict_batch(dm.spec, [str(binary)])


def test_nested_list_inputs_are_plain_and_outputs_are_written_whole(tmp_path, monkeypatch) -> None:
    """input=[[...]] reached json.dumps as OmegaConf ListConfigs after the predictions were made; an
    output file cut short by a full disk or a kill replaced the earlier complete one."""
    import os

    from omegaconf import OmegaConf

    from lstmkit.commands.common import write_atomic
    from lstmkit.commands.predict import collect_inputs_and_origins

    inputs, _ = collect_inputs_and_origins(OmegaConf.create({"input": [[0.1, 0.2], [0.3, 0.4]]}))
    assert inputs == [[0.1, 0.2], [0.3, 0.4]] and all(type(i) is list for i in inputs)
    json.dumps(inputs)
    out = tmp_path / "pred.jsonl"
    write_atomic(out, "complete\n")

    def fail(*args):
        raise OSError(27, "File too large")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(out, "new, but cut short\n")
    assert out.read_text() == "complete\n" and sorted(p.name for p in tmp_path.iterdir()) == ["pred.jsonl"]


def test_a_table_input_file_with_no_rows_says_so(tmp_path) -> None:
    """``input_file=`` of a table with only its header was told "nothing to predict: pass input=... or input_file="."""
    from omegaconf import OmegaConf

    from lstmkit.commands.predict import collect_inputs_and_origins
    from lstmkit.errors import DataError

    header = tmp_path / "texts.csv"
    header.write_text("text\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"texts\.csv: the table has no rows to predict"):
        collect_inputs_and_origins(OmegaConf.create({"input_file": str(header), "input": "fine"}), "text")


def test_flags_may_come_after_overrides(tmp_path: Path) -> None:
    """Hydra's argparse takes the overrides as one run of words: ``train task=ecg -m seed=1,2`` was
    "unrecognized arguments: seed=1,2". Flags are put first, so any order composes."""
    proc = run_here("train", "model.hidden_size=12", "--cfg", "job", "trainer.max_epochs=3", cwd=tmp_path)
    assert "unrecognized arguments" not in proc.stderr
    assert "hidden_size: 12" in proc.stdout and "max_epochs: 3" in proc.stdout
