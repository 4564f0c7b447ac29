"""Every bad input in the README's table, through the command line: the message, the exit code.

Each case builds its bad file(s) under a temporary folder, runs ``lstmkit <command>`` in-process
(the same ``main`` as the console script) and checks that the user sees one clear line naming
the file / row / field / key, with no traceback, and a non-zero exit; or, for inputs lstmkit
repairs (stereo, other sample rates, unsorted dates), that the run goes on and says so.
``test_readme_lists_every_case`` keeps this file and the README table in step.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from hydra.core.global_hydra import GlobalHydra

from lstmkit.cli import main
from lstmkit.data.stock import generate_ohlcv

from .conftest import REPO

FDR = ["debug=fdr", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
SR = 8000


@dataclass
class Case:
    """One row of the README table: how to make the bad input, and what the user must read."""

    id: str
    make: Callable[[Path], list[str]]  # builds files under the folder, returns the overrides
    expect: str  # regex over the command's stderr (or log, for repairs)
    command: str = "train"
    exit_code: int = 2  # 0: lstmkit repairs the input and says so
    extra: list[str] = field(default_factory=list)


def _text(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _reviews(n: int = 40) -> str:
    return "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} film number {i},{i % 2}\n" for i in range(n))


def _splits(d: Path, test: str) -> list[str]:
    _text(d / "train.txt", "0 bad\n1 good\n0 awful\n1 great\n")
    _text(d / "dev.txt", "0 bad\n")
    _text(d / "test.txt", test)
    return [f"data.path={d}"]


def _stock(d: Path, edit: Callable[[pd.DataFrame], pd.DataFrame] = lambda f: f, days: int = 200) -> list[str]:
    frame = edit(generate_ohlcv(1, days, seed=3).drop(columns="Name").astype({"volume": object}))
    frame.to_csv(d / "acme.csv", index=False)
    return ["task=stock", f"data.path={d / 'acme.csv'}", "data.window=8"]


def _day_first_early_days(frame: pd.DataFrame) -> pd.DataFrame:
    """Dates written DD/MM/YYYY, only days 1-12 of each month kept: month-first reads them all too."""
    days = pd.to_datetime(frame["date"])
    frame = frame[days.dt.day <= 12].copy()
    frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y")
    return frame


def _stock_extra_field(d: Path) -> list[str]:
    """Every row ends with a comma (an export quirk lstmkit accepts), but row 6 has a value there."""
    overrides = _stock(d)
    lines = (d / "acme.csv").read_text().splitlines()
    lines = [lines[0]] + [line + ("," if i != 6 else ",12.5") for i, line in enumerate(lines[1:], start=2)]
    (d / "acme.csv").write_text("\n".join(lines) + "\n")
    return overrides


def _tone(seconds: float = 0.3, sr: int = SR, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _speech(d: Path, val_text: str = "yes", edit: Callable[[Path], None] = lambda d: None) -> list[str]:
    rows = [(f"tr{i}.wav", "yes no" if i % 2 else "on off", "train") for i in range(6)]
    rows += [("va.wav", val_text, "val"), ("te.wav", "no", "test")]
    for name, _, _ in rows:
        sf.write(d / name, _tone(), SR)
    _text(d / "manifest.csv", "path,text,split\n" + "".join(f"{p},{t},{s}\n" for p, t, s in rows))
    edit(d)
    return ["task=speech", f"data.path={d}", "data.batch_size=4"]


def _ecg(d: Path, edit: Callable[[list[list[str]]], None] = lambda rows: None) -> list[str]:
    rng = np.random.default_rng(0)
    rows = [[f"{1 + (i % 2) * (1 + i % 4)}.0", *(f"{v:.5f}" for v in rng.normal(size=60))] for i in range(40)]
    edit(rows)
    _text(d / "beats.txt", "\n".join(" ".join(r) for r in rows) + "\n")
    return ["task=ecg", f"data.path={d / 'beats.txt'}"]


def _set(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


def _trained_stock_checkpoint(d: Path, *data: str) -> Path:
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1", "test=false", *FDR[1:]]  # fast_dev_run saves no checkpoint
    code = _run(["train", "task=stock", "data.num_tickers=1", "data.num_days=200", *data, *quick,
                 f"hydra.run.dir={d / 'stock_run'}"], d)[0]
    assert code == 0
    return next((d / "stock_run" / "checkpoints").glob("*.ckpt"))


def _trained_sentiment_checkpoint(d: Path) -> Path:
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1", "test=false", "data.num_examples=200", "model.hidden_size=8",
             "encoder.dim=8"]
    code = _run(["train", *quick, f"hydra.run.dir={d / 'sentiment_run'}"], d)[0]
    assert code == 0
    return next((d / "sentiment_run" / "checkpoints").glob("*.ckpt"))


CASES = [
    Case("missing-file", lambda d: [f"data.path={d / 'nope.csv'}"], r"nope\.csv: data\.path does not exist"),
    Case("missing-folder", lambda d: ["task=speech", f"data.path={d / 'no_such_dir'}"],
         r"no_such_dir.*(does not exist|not found)"),
    Case("empty-file", lambda d: [f"data.path={_text(d / 'empty.csv', '  ')}"], r"empty\.csv.*file is empty"),
    Case("not-utf8", lambda d: ["data.path=" + str(_text(d / "l.txt", "1 caf\xe9 good".encode("latin-1")))],
         r"l\.txt, row 1: not valid UTF-8 \(byte 0xe9 at offset 5, 'é' in Windows-1252 / Latin-1\): a text saved in "
         r"another encoding, as older Excel and Windows tools save it; re-save the file as UTF-8"),
    Case("utf16-file", lambda d: ["data.path=" + str(_text(d / "u.csv", _reviews().encode("utf-16")))],
         r"u\.csv: the file is UTF-16 \(little-endian, with a byte-order mark, as Windows Notepad and Excel save "
         r"'Unicode text'\), not UTF-8; convert it, e\.g\. iconv -f UTF-16 -t UTF-8 '\S*/u\.csv' > '\S*/u-utf8\.csv'"),
    Case("missing-column", lambda d: ["data.path=" + str(_text(d / "c.csv", "text,stars\nfine,1\n"))],
         r"c\.csv, row 1, field 'label': no column 'label'"),
    Case("unknown-label", lambda d: _splits(d, test="1 good\n2 meh\n"),
         r"test\.txt, row 2, field 'label': label '2' is not one of the classes"),
    Case("label-missing", lambda d: _splits(d, test="1 good\n0 bad\nsimply awful\n1 fine\n"),
         r"test\.txt, row 3, field 'label': label 'simply' is not a number, unlike the file's other labels \(0, 1\); "
         r"is this line missing its label\?"),
    Case("too-little-text", lambda d: ["task=next_word", f"data.path={_text(d / 'short.txt', 'just a few words')}"],
         r"short\.txt.*too little text"),
    Case("non-numeric", lambda d: _stock(d, lambda f: _set(f, 3, "close", "abc")),
         r"acme\.csv, row 5, field 'close': expected a finite number, found 'abc'"),
    Case("nan-value", lambda d: _stock(d, lambda f: _set(f, 5, "volume", "nan")),
         r"acme\.csv, row 7, field 'volume': expected a finite number, found 'nan'"),
    Case("inf-value", lambda d: _stock(d, lambda f: _set(f, 2, "open", "inf")),
         r"acme\.csv, row 4, field 'open': expected a finite number, found 'inf'"),
    Case("duplicate-dates", lambda d: _stock(d, lambda f: _set(f, 6, "date", f.loc[5, "date"])),
         r"acme\.csv, row 8, field 'date': duplicate date"),
    Case("unsorted-dates", lambda d: _stock(d, lambda f: f.iloc[::-1]), r"not in date order", exit_code=0),
    Case("ambiguous-dates", lambda d: _stock(d, _day_first_early_days),
         r"acme\.csv, row 2, field 'date': dates such as '0\d/0\d/20\d\d' read as .* with the format '%m/%d/%Y' "
         r"and as .* with '%d/%m/%Y', and both read every row of the file; set data\.date_format"),
    Case("missing-price-column", lambda d: _stock(d, lambda f: f.drop(columns="volume")),
         r"acme\.csv, field 'volume': missing column"),
    Case("ohlcv-extra-field", _stock_extra_field, r"acme\.csv, row 6: 7 fields, but the header has 6 \(\['date', .*\]\); quote a field"),
    Case("split-fraction", lambda d: ["data.val_fraction=-0.05"],
         r"data\.val_fraction=-0\.05 / data\.test_fraction=0\.1: each must be in \[0, 1\) and their sum below 1"),
    Case("series-too-short", lambda d: _stock(d, days=12), r"ticker 'acme' is too short: 12 rows"),
    Case("corrupt-wav", lambda d: _speech(d, edit=lambda d: _text(d / "tr2.wav", b"RIFF\x00\x00garbage") and None),
         r"tr2\.wav: cannot decode audio .*\(listed in .*manifest\.csv, row \d+\)"),
    Case("truncated-wav", lambda d: _speech(d, edit=lambda d: _text(d / "tr2.wav", (d / "tr2.wav").read_bytes()[:1500])
                                           and None),
         r"tr2\.wav: the file is truncated: its WAV header declares \d+ samples, the file holds \d+"),
    Case("stereo-wav", lambda d: _speech(d, edit=lambda d: sf.write(d / "tr0.wav", _tone(channels=2), SR)),
         r"mixed down to mono", exit_code=0),
    Case("other-sample-rate", lambda d: _speech(d, edit=lambda d: sf.write(d / "tr1.wav", _tone(sr=16000), 16000)),
         r"16000 Hz resampled to 8000 Hz", exit_code=0),
    Case("silent-clip", lambda d: _speech(d, edit=lambda d: sf.write(d / "tr1.wav", np.zeros(800, np.float32), SR)),
         r"manifest\.csv, row 3, field 'path': clip \S*tr1\.wav is silent.*empty_clips=skip"),
    Case("empty-clip", lambda d: _speech(d, edit=lambda d: sf.write(d / "tr3.wav", np.zeros(0, np.float32), SR)),
         r"manifest\.csv, row 5, field 'path': clip \S*tr3\.wav has no samples.*empty_clips=skip"),
    Case("batches-without-speakers", lambda d: [*_speech(d), "data.group_batches=true"],
         r"data\.group_batches=true: the data names no speakers; a manifest needs a 'speaker' column "
         r"\(data\.speaker_column\) to batch by speaker"),
    Case("nan-samples", lambda d: _speech(d, edit=lambda d: sf.write(d / "tr2.wav", np.full(800, np.nan, np.float32), SR,
                                                                      subtype="FLOAT")),
         r"tr2\.wav: 800 sample\(s\) are not finite numbers \(NaN or infinity; the first at sample 0"),
    Case("unknown-characters", lambda d: _speech(d, val_text="yes!"),
         r"manifest\.csv, row 8, field 'text': val transcript 'yes!' \(of \S*va\.wav\) has character\(s\) \['!'\]"),
    Case("ragged-ecg-rows", lambda d: _ecg(d, lambda rows: rows.__setitem__(2, rows[2][:30])),
         r"beats\.txt, row 3: row has 30 values, expected 61"),
    Case("ecg-nan", lambda d: _ecg(d, lambda rows: rows[1].__setitem__(7, "nan")),
         r"beats\.txt, row 2, field 'column 7': found 'nan'"),
    Case("ecg-unknown-class", lambda d: _ecg(d, lambda rows: rows[1].__setitem__(0, "7.0")),
         r"beats\.txt, row 2, field 'column 0': class label 7 is not a known class"),
    Case("column-case-ambiguous", lambda d: ["data.path=" + str(_text(d / "t.csv", "Text,TEXT,label\ngood,fine,1\n"))],
         r"t\.csv, row 1, field 'text': columns 'Text' \(column 1\) and 'TEXT' \(column 2\) both match 'text' .*set "
         r"data\.text_column / data\.label_column to its exact name"),
    Case("csv-extra-field", lambda d: ["data.path=" + str(_text(d / "x.csv", _reviews(10) + "good, really good,1\n"))],
         r"x\.csv, row 12: 3 fields, but the header has 2 \(\['text', 'label'\]\); quote a field"),
    Case("csv-short-row", lambda d: ["data.path=" + str(_text(d / "x.csv", _reviews(10) + "a review cut off\n"))],
         r"x\.csv, row 12: 1 field\(s\), but the header has 2 \(\['text', 'label'\]\): the row is cut short"),
    Case("csv-unclosed-quote", lambda d: ["data.path=" + str(_text(d / "x.csv", _reviews(5) + '"a fine film,1\n'
                                                                    + _reviews(5).split("\n", 1)[1]))],
         r"x\.csv, row 7: a quote opened on this row is never closed: the rest of the file \(6 line\(s\)\) was read as "
         r"one field"),
    Case("csv-joined-header", lambda d: ["data.path=" + str(_text(d / "x.csv", _reviews(300) + _reviews(300)))],
         r"x\.csv, row 302, field 'label': label 'label' is not a number, unlike the file's other labels \(0, 1\): "
         r"it is the column's name, a header line repeated where files were joined"),
    Case("csv-nan-label", lambda d: ["data.path=" + str(_text(d / "x.csv", _reviews(30) + "a fine film,NaN\n"))],
         r"x\.csv, row 32, field 'label': label 'NaN': a missing value \(NaN, as pandas writes one\), not a class"),
    Case("empty-val-split", lambda d: ["data.path=" + str(_text(d / "tiny.csv", _reviews(4)))],
         r"tiny\.csv: the val split is empty \(val 0 / test 0 / train 4 examples\)"),
    Case("ecg-one-class-split", lambda d: _ecg(d, lambda rows: [r.__setitem__(0, "1.0") for r in rows]),
         r"beats\.txt: the val split has 8 beats and no anomalous beats \(labels"),
    Case("config-key-typo", lambda d: ["model.hiden_size=32"], r"did you mean model\.hidden_size\?"),
    Case("added-key-typo", lambda d: ["+model.hiden_size=32"],
         r"unexpected keyword argument 'hiden_size'; did you mean hidden_size\?"),
    Case("config-key-in-a-group", lambda d: ["hidden_size=32"], r"did you mean model\.hidden_size\? \(hidden_size is not"),
    Case("config-group-typo", lambda d: ["task=sentimnt"], r"did you mean task=sentiment\?"),
    Case("wrong-type", lambda d: ["model.hidden_size=abc"],
         r"model\.hidden_size='abc': expected a whole number \(LSTMCore's hidden_size\)"),
    Case("fractional-batch-size", lambda d: ["data.batch_size=2.5"],
         r"data\.batch_size=2\.5: expected a whole number \(SentimentDataModule's batch_size\)"),
    Case("eval-data-not-a-number", lambda d: [f"ckpt_path={_trained_stock_checkpoint(d)}", "data.batch_size=abc"],
         r"data\.batch_size='abc': expected a whole number \(StockDataModule's batch_size\)", command="eval"),
    Case("eval-empty-split", lambda d: [f"ckpt_path={_trained_sentiment_checkpoint(d)}",
                                        "data.path=" + str(_text(d / "five.csv", _reviews(5).replace(",0\n", ",negative\n")
                                                                 .replace(",1\n", ",positive\n")))],
         r"five\.csv: the test split is empty \(val 0 / test 0 / train 5 examples\), so there is nothing to score; "
         r"split=all scores every example of the data", command="eval"),
    Case("eval-after-test-start",
         lambda d: [f"ckpt_path={_trained_stock_checkpoint(d, 'data.window=8', 'data.val_start=2016-07-01', 'data.test_start=2016-08-15')}",
                    *_stock(d, lambda f: f.assign(date=pd.bdate_range("2018-01-02", periods=len(f)).strftime("%Y-%m-%d")),
                            days=60)[1:2]],
         r"acme\.csv: ticker 'acme': all of its dates \(2018-01-02 to 2018-03-26\) are on or after the checkpoint's "
         r"data\.test_start=2016-08-15, so .* none in train or val .*: split=all scores every window of the data",
         command="eval"),
    Case("impossible-size", lambda d: ["encoder.dim=-1"],
         r"cannot build the model \(encoder / model / head\) from the config: .*negative dimension -1.*encoder\.dim=-1"),
    Case("optimizer-not-a-number", lambda d: ["optimizer.lr=fast"], r"optimizer\.lr='fast': expected a number \(AdamW's lr\)"),
    Case("trainer-not-a-number", lambda d: ["trainer.max_epochs=abc"], r"trainer\.max_epochs='abc': expected a whole number"),
    Case("unknown-monitor", lambda d: ["monitor=val/accuracy"],
         r"monitor=val/accuracy is not a metric this model logs; its validation metrics are val/loss, val/acc, val/f1"),
    Case("negative-clip", lambda d: ["trainer.gradient_clip_val=-1"],
         r"trainer\.gradient_clip_val=-1: expected a number >= 0 \(a gradient norm; 0 or null: no clipping\)"),
    Case("unknown-pooling", lambda d: ["head.pooling=bogus"], r"head\.pooling='bogus': this head reads one summary of the sequence; expected one of last, mean, max"),
    Case("seed-not-a-number", lambda d: ["seed=abc"], r"seed='abc': expected a whole number >= 0"),
    Case("missing-module", lambda d: ["data._target_=lstmkit_no_such_module.DataModule"],
         r"cannot build the data from the config: Error loading 'lstmkit_no_such_module\.DataModule': "
         r"ModuleNotFoundError: No module named 'lstmkit_no_such_module'"),
    Case("gpu-without-gpu", lambda d: ["trainer=gpu"], r"asks for a CUDA GPU, but none is available.*trainer=cpu"),
    Case("eval-gpu-without-gpu", lambda d: ["ckpt_path=any.ckpt", "trainer=gpu"],
         r"asks for a CUDA GPU, but none is available", command="eval"),
    Case("not-a-checkpoint", lambda d: [f"ckpt_path={_text(d / 'notes.ckpt', 'hello')}", "input=x"],
         r"notes\.ckpt: not a PyTorch checkpoint: expected a zip archive written by torch\.save, found 5 bytes", command="predict"),
    Case("truncated-checkpoint", lambda d: [f"ckpt_path={_text(d / 'cut.ckpt', b'PK' + bytes(40))}", "input=x"],
         r"cut\.ckpt: a damaged or truncated checkpoint \(42 bytes", command="predict"),
    Case("missing-checkpoint-path", lambda d: [], r"ckpt_path is required: give it on the command line", command="eval"),
    Case("resume-not-a-checkpoint", lambda d: [f"ckpt_path={_text(d / 'notes.ckpt', 'hello')}"],
         r"notes\.ckpt: not a PyTorch checkpoint"),
    Case("resume-other-data", lambda d: ["task=stock", "data.num_tickers=1", "data.num_days=260",
                                         f"ckpt_path={_trained_stock_checkpoint(d)}"],
         r"cannot resume this run from it, it was trained with another data spec: normaliser \(its .* differ\).*"
         r"init_from\.ckpt_path="),
    Case("resume-not-boolean", lambda d: ["resume=maybe"], r"resume='maybe': expected true or false"),
    Case("predict-batch-size", lambda d: [f"ckpt_path={_trained_stock_checkpoint(d)}", "batch_size=0", "input=x"],
         r"batch_size=0: expected a whole number >= 1", command="predict"),
    Case("predict-device", lambda d: [f"ckpt_path={_trained_stock_checkpoint(d)}", "device=cuda", "input=x"],
         r"device=cuda: no CUDA GPU is available on this machine; use device=cpu", command="predict"),
    Case("other-task-checkpoint", lambda d: [f"ckpt_path={_trained_stock_checkpoint(d)}", "input=what a film"],
         r"what a film: file or folder not found \(the checkpoint .* is a model of task 'stock', which predicts from "
         r"OHLCV CSV file paths\)", command="predict"),
    Case("nothing-to-predict", lambda d: [f"ckpt_path={_trained_stock_checkpoint(d)}"],
         r"nothing to predict: pass input=", command="predict"),
]


def _run(args: list[str], cwd: Path) -> tuple[int, str]:
    """``lstmkit <args>`` in this process; returns (exit code, stderr + run log)."""
    stderr = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    code = 0
    try:
        with contextlib.redirect_stderr(stderr):
            main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()
    logs = "".join(p.read_text() for p in cwd.rglob("*.log"))
    return code, stderr.getvalue() + logs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_message(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.id in {"gpu-without-gpu", "eval-gpu-without-gpu", "predict-device"} and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    overrides = case.make(data)
    run_dir = tmp_path / "run"
    extra = FDR if case.command == "train" else []
    code, output = _run([case.command, *overrides, *extra, *case.extra, f"hydra.run.dir={run_dir}",
                         f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
    assert code == case.exit_code, output[-3000:]
    assert re.search(case.expect, output, flags=re.DOTALL), output[-3000:]
    assert "Traceback" not in output


def test_readme_lists_every_case() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Bad input and the message it gets", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(c.id for c in CASES)


@pytest.mark.parametrize(("encoding", "bom", "named"), [
    ("utf-16-le", b"\xff\xfe", "UTF-16 (little-endian"), ("utf-16-be", b"\xfe\xff", "UTF-16 (big-endian"),
    ("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32 (little-endian"), ("utf-32-be", b"\x00\x00\xfe\xff", "UTF-32 (big-endian"),
], ids=["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_a_utf16_or_utf32_file_is_named_with_how_to_convert_it(tmp_path: Path, encoding: str, bom: bytes,
                                                                  named: str) -> None:
    """Notepad's and Excel's "Unicode text" is UTF-16 with a byte-order mark: it was "not valid UTF-8
    (byte 0xff at offset 0)", which says neither what the file is nor how to fix it. A UTF-8 mark is read."""
    from lstmkit.data.stock import read_ohlcv
    from lstmkit.data.text import read_labelled_text
    from lstmkit.errors import DataError

    text = _reviews(4)
    with pytest.raises(DataError, match=re.escape(f"reviews.csv: the file is {named}") + r".*iconv -f UTF-\d\d -t UTF-8"):
        read_labelled_text(_text(tmp_path / "reviews.csv", bom + text.encode(encoding)))
    assert read_labelled_text(_text(tmp_path / "bom8.csv", text.encode("utf-8-sig")))[0] == (2, "bad film number 0", "0")
    if encoding.startswith("utf-16"):  # without its byte-order mark (iconv -t UTF-16LE): valid UTF-8, full of NULs
        order = encoding[-2:].upper()
        with pytest.raises(DataError, match=r"bare\.csv, row 1: NUL bytes in every other position, as in a UTF-16 file "
                                            rf"without a byte-order mark; .*iconv -f UTF-16{order} -t UTF-8 '\S*bare\.csv'"):
            read_labelled_text(_text(tmp_path / "bare.csv", text.encode(encoding)))
        with pytest.raises(DataError, match=r"padded\.csv, row 6: a NUL byte, which no text has") as err:
            read_labelled_text(_text(tmp_path / "padded.csv", text.encode() + b"\x00" * 64))  # UTF-8, NULs after it
        assert "UTF-16" not in str(err.value)
    frame = generate_ohlcv(1, 30, seed=3).drop(columns="Name").to_csv(index=False)
    with pytest.raises(DataError, match=re.escape(f"acme.csv: the file is {named}")):
        read_ohlcv(_text(tmp_path / "acme.csv", bom + frame.encode(encoding)), ["close"])
    import gzip
    (tmp_path / "acme.csv.gz").write_bytes(gzip.compress(bom + frame.encode(encoding)))
    with pytest.raises(DataError, match=re.escape(f"acme.csv.gz: the decompressed text is {named}")):
        read_ohlcv(tmp_path / "acme.csv.gz", ["close"])


def test_a_monitor_typo_is_one_line_naming_the_logged_metrics() -> None:
    """Lightning only finds out after the first validation; the message it raises is turned into one line."""
    from lightning.pytorch.callbacks import EarlyStopping

    from lstmkit.cli import _user_error

    with pytest.raises(RuntimeError) as raised:  # Lightning's own check and wording
        EarlyStopping(monitor="val/accc")._validate_condition_metric({"val/loss": torch.tensor(1.0),
                                                                      "val/acc": torch.tensor(0.5)})
    assert _user_error(raised.value) == ("monitor=val/accc is not a logged metric; the logged ones are "
                                         "`val/loss`, `val/acc`")
    assert _user_error(RuntimeError("something else")) is None


def test_predict_questions_the_checkpoint_only_for_inputs_of_another_kind(tmp_path: Path) -> None:
    """"(the checkpoint ... is a model of task 'speech' ...)" ended the error of a clip that was read as
    audio and found truncated, empty or holding NaN: it sent the user looking for another checkpoint. A
    file's row- or content-level error says what is wrong with the file; only an input that is not of
    the task's kind at all (no such file, not audio) still names the checkpoint's task."""
    tiny = ["task=speech", "data.num_examples=48", "data.batch_size=8", "model.hidden_size=8", "trainer.max_epochs=1",
            "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false", *FDR[1:]]
    assert _run(["train", *tiny, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)[0] == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sf.write(tmp_path / "ok.wav", _tone(), SR)
    whole = (tmp_path / "ok.wav").read_bytes()
    _text(tmp_path / "cut.wav", whole[: len(whole) // 2])
    _text(tmp_path / "odd.wav", whole[:20] + b"\x99\x99" + whole[22:])  # a WAV of a codec that libsndfile lacks
    sf.write(tmp_path / "nan.wav", np.full(800, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    _text(tmp_path / "notes.wav", "not audio at all\n")
    note = "is a model of task 'speech', which predicts from audio file paths, folders of recordings or manifests"
    for name, expect, of_another_kind in [
        ("cut.wav", "the file is truncated", False),
        ("odd.wav", "cannot decode audio", False),
        ("nan.wav", "sample(s) are not finite numbers", False),
        ("empty.wav", "clip has no samples", False),
        ("notes.wav", "cannot decode audio", True),
        ("what a film", "audio file not found", True),
    ]:
        code, output = _run(["predict", f"ckpt_path={ckpt}", f"input={name}"], tmp_path)
        assert code == 2 and expect in output, output[-2000:]
        assert (note in output) is of_another_kind, (name, output[-2000:])


@pytest.mark.parametrize("override", ["data._target_=lstmkit_no_such_module.DataModule",
                                      "encoder._target_=lstmkit.encoders.nope.Foo"])
def test_a_missing_module_is_lstmkits_one_line_alone(override: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's get_object logs each failed lookup ("[hydra.utils][ERROR] - Error getting object at ...",
    three lines) before raising, and lstmkit looks a target up more than once (the option-type check,
    then the build): the user read the same failure up to three times before lstmkit's own line, and
    an encoder's missing module ended in a traceback."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    stderr, stdout = io.StringIO(), io.StringIO()  # Hydra's console log handler writes to stdout
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exited:
        main(["train", override, *FDR, f"hydra.run.dir={tmp_path / 'run'}"])
    GlobalHydra.instance().clear()
    output = stderr.getvalue() + stdout.getvalue()
    assert exited.value.code == 2, output[-3000:]
    assert "hydra.utils" not in output and "Error getting" not in output and "Traceback" not in output, output
    mentions = [line for line in output.splitlines() if "No module named" in line]
    assert len(mentions) == 1 and re.match(r"lstmkit train: error: cannot build the (data|model \(encoder / model / "
                                           r"head\)) from the config: Error loading '.*': ModuleNotFoundError: No "
                                           r"module named", mentions[0]), output
