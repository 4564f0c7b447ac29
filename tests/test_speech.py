"""The speech (CTC) pipeline: generator, loaders, SpectrogramEncoder, CTCHead, CLI, notebook."""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from lstmkit.checkpoints import load_model
from lstmkit.commands.common import apply_decoding
from lstmkit.data.speech import (
    BLANK,
    SpeechDataModule,
    fsdd_transcript,
    generate_utterances,
    read_audio,
)
from lstmkit.encoders.spectrogram import SpectrogramEncoder
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.ctc import (
    CTCHead,
    greedy_decode,
    sequence_log_likelihood,
)
from lstmkit.types import Batch, DataSpec

from .conftest import run_here, run_notebook

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
ROOT = Path(__file__).resolve().parents[1]
SR = 8000


def tone(seconds: float = 0.3, freq: float = 440.0, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_fsdd(folder: Path, speakers=("anna", "bob"), digits=(1, 2, 3), count: int = 7) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for speaker in speakers:
        for digit in digits:
            for n in range(count):
                sf.write(folder / f"{digit}_{speaker}_{n}.wav", tone(0.2, 300 + 50 * digit), SR)


def write_manifest(folder: Path, rows: list[dict], kind: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if "path" in row and not (folder / row["path"]).exists():
            sf.write(folder / row["path"], tone(0.25), SR)
    if kind == "csv":
        path = folder / "manifest.csv"
        keys = list(rows[0])
        path.write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]) + "\n")
    else:
        path = folder / "manifest.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def split_rows(n_train: int = 6, val_text: str = "yes", test_text: str = "no") -> list[dict]:
    rows = [{"path": f"tr{i}.wav", "text": "yes no" if i % 2 else "on off", "split": "train"}
            for i in range(n_train)]
    rows.append({"path": "va.wav", "text": val_text, "split": "val"})
    rows.append({"path": "te.wav", "text": test_text, "split": "test"})
    return rows


# -- the generator -----------------------------------------------------------------------------------
def test_generator_is_deterministic_and_varied():
    a = generate_utterances(6, seed=3)
    b = generate_utterances(6, seed=3)
    c = generate_utterances(6, seed=4)
    assert all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))
    assert any(x[1] != y[1] or x[0].shape != y[0].shape for x, y in zip(a, c))
    for wave, text, speaker in a:
        assert wave.dtype == np.float32 and 0.1 < wave.shape[0] / SR < 3.0
        assert 1 <= len(text.split()) <= 3 and speaker.startswith("spk")
        assert 0.1 < np.abs(wave).max() <= 1.0


def test_generated_datamodule_spec_and_splits():
    dm = SpeechDataModule(num_examples=40, batch_size=8, seed=1)
    dm.setup()
    spec = dm.spec
    assert spec.input_kind == "waveform" and spec.sample_rate == SR and spec.blank_id == 0
    assert spec.classes[:2] == [BLANK, " "] and "e" in spec.classes
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 32, "val": 4, "test": 4}
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.dtype == torch.float32 and batch.inputs.dim() == 2
    assert batch.target_lengths is not None and int(batch.lengths.max()) == batch.inputs.shape[1]


# -- real-format loaders -------------------------------------------------------------------------------
def test_fsdd_names_and_official_split(tmp_path):
    assert fsdd_transcript("7_jackson_32.wav") == ("seven", "jackson", 32)
    assert fsdd_transcript("hello.wav") is None
    write_fsdd(tmp_path / "recordings")
    dm = SpeechDataModule(path=str(tmp_path), val_fraction=0.2)  # parent of recordings/ works too
    dm.setup()
    assert len(dm.splits["test"]) == 2 * 3 * 5  # recordings 0-4 of every speaker
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 2 * 3 * 2
    assert set(dm.spec.classes) == {BLANK, " ", *"onetwhr"}


def test_an_audio_file_as_data_path_is_not_read_as_a_manifest(tmp_path):
    """eval data.path=some.wav said "row 1: not valid UTF-8 ... re-save the file as UTF-8"."""
    clip = tmp_path / "some.wav"
    sf.write(str(clip), np.zeros(800, dtype=np.float32), 8000)
    odd = tmp_path / "clip.bin"  # a WAV by its content, whatever its name
    odd.write_bytes(clip.read_bytes())
    for path in (clip, odd):
        with pytest.raises(DataError, match=re.escape(f"{path}: data.path is an audio file; expected a folder of "
                                                      "recordings or a manifest CSV (to transcribe one clip: "
                                                      "lstmkit predict")):
            SpeechDataModule(path=str(path)).setup()


def test_an_empty_audio_file_is_said_to_be_empty(tmp_path):
    """A 0-byte .wav gave libsndfile's "cannot decode audio (Format not recognised)"."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(f"{empty}: the file is empty (0 bytes)")):
        read_audio(empty, 8000)


def test_an_undecodable_file_is_told_by_its_format(tmp_path):
    """A damaged .mp3 was told "expected a WAV/FLAC/OGG file", though MP3 is read: its owner converted
    a format that works. A format libsndfile does not read (.m4a) is told how to convert it."""
    damaged = tmp_path / "clip.mp3"
    damaged.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(200))
    with pytest.raises(DataError, match=r"clip\.mp3: cannot decode audio .*expected a valid MP3 recording"):
        read_audio(damaged, 8000)
    other = tmp_path / "clip.m4a"
    other.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    with pytest.raises(DataError, match=r"\.m4a is not read .*ffmpeg -i clip\.m4a clip\.wav"):
        read_audio(other, 8000)


def test_fsdd_holdout_speakers(tmp_path):
    write_fsdd(tmp_path, speakers=("anna", "bob", "carl"), count=3)
    dm = SpeechDataModule(path=str(tmp_path), holdout_speakers=["carl"], val_fraction=0.2)
    dm.setup()
    assert len(dm.splits["test"]) == 3 * 3
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 2 * 3 * 3
    with pytest.raises(Exception, match="no speaker"):
        SpeechDataModule(path=str(tmp_path), holdout_speakers=["zed"]).setup()


def test_fsdd_val_speakers(tmp_path, caplog):
    write_fsdd(tmp_path, speakers=("anna", "bob", "carl", "dora"), count=3)
    dm = SpeechDataModule(path=str(tmp_path), holdout_speakers=["carl"], val_speakers=["dora"])
    splits = dm._split(dm._utterances())
    assert {u.speaker for u in splits["test"]} == {"carl"}
    assert {u.speaker for u in splits["val"]} == {"dora"} and len(splits["val"]) == 3 * 3
    assert {u.speaker for u in splits["train"]} == {"anna", "bob"} and len(splits["train"]) == 2 * 3 * 3
    dm.setup()
    assert [len(dm.splits[name]) for name in ("train", "val", "test")] == [18, 9, 9]
    # with FSDD's official split the val speaker's test recordings move to val too
    write_fsdd(tmp_path / "official", speakers=("anna", "bob", "dora"), count=7)
    official = SpeechDataModule(path=str(tmp_path / "official"), val_speakers=["dora"])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        splits = official._split(official._utterances())
    assert "dora" not in {u.speaker for u in splits["test"] + splits["train"]} and len(splits["val"]) == 3 * 7
    assert "15 of their utterances move from the test split to val" in caplog.text  # recordings 0-4, 3 digits
    with pytest.raises(ConfigError, match="overlap"):
        SpeechDataModule(path=str(tmp_path), holdout_speakers=["carl"], val_speakers=["carl"])
    with pytest.raises(ConfigError, match="val_speakers: no speaker"):
        SpeechDataModule(path=str(tmp_path), val_speakers=["zed"]).setup()


def test_fsdd_bad_name_names_the_file(tmp_path):
    write_fsdd(tmp_path, count=1)
    sf.write(tmp_path / "hello.wav", tone(), SR)
    with pytest.raises(DataError, match=r"hello\.wav.*<digit>_<speaker>_<n>\.wav"):
        SpeechDataModule(path=str(tmp_path)).setup()


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_splits_and_relative_paths(tmp_path, kind):
    write_manifest(tmp_path / "corpus", split_rows(), kind)
    dm = SpeechDataModule(path=str(tmp_path / "corpus"))
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6, "val": 1, "test": 1}
    assert set(dm.spec.classes) == {BLANK, " ", *"yesnof"}
    ids = dm.splits["val"][0][1].tolist()
    assert "".join(dm.spec.classes[i] for i in ids) == "yes"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_columns_are_found_in_any_case(tmp_path, kind):
    """``Path,Text,Split`` (a spreadsheet's header) was "no column 'path'": the stock reader matched its
    columns in any case, the manifest only the exact one."""
    rows = [{"Path": r["path"], "TEXT": r["text"], "Split": r["split"], "Speaker": "ann" if i % 2 else "bob"}
            for i, r in enumerate(split_rows())]
    write_manifest(tmp_path / "corpus", split_rows(), kind)  # the clips
    (tmp_path / "corpus" / f"manifest.{kind}").unlink()
    write_manifest(tmp_path / "corpus", rows, kind)
    dm = SpeechDataModule(path=str(tmp_path / "corpus"))
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6, "val": 1, "test": 1}  # the Split column
    assert {u.speaker for u in dm._utterances()} == {"ann", "bob"}  # the Speaker column
    ids = dm.splits["val"][0][1].tolist()
    assert "".join(dm.spec.classes[i] for i in ids) == "yes"  # the TEXT column


def test_manifest_missing_column_and_audio(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.csv").write_text("file,text\nx.wav,yes\n")
    with pytest.raises(DataError, match=r"manifest\.csv, row 1, field 'path'"):
        SpeechDataModule(path=str(tmp_path / "a")).setup()
    write_manifest(tmp_path / "b", split_rows())
    (tmp_path / "b" / "tr3.wav").unlink()
    with pytest.raises(DataError, match=r"manifest\.csv, row 5, field 'path'.*tr3\.wav not found"):
        SpeechDataModule(path=str(tmp_path / "b")).setup()
    # rows are the file's lines: a blank line and a quoted two-line transcript before the bad row count
    manifest = tmp_path / "b" / "manifest.csv"
    header, first, *rest = manifest.read_text().splitlines()
    name = first.split(",")[0]
    manifest.write_text("\n".join([header, "", f'{name},"yes\nno",train', *rest]) + "\n")
    with pytest.raises(DataError, match=r"manifest\.csv, row 7, field 'path'.*tr3\.wav not found"):
        SpeechDataModule(path=str(tmp_path / "b")).setup()


def test_a_clip_listed_twice(tmp_path, caplog):
    rows = split_rows()
    write_manifest(tmp_path / "a", [*rows, {**rows[0], "split": "test"}])  # a train clip also in test: a leak
    with pytest.raises(DataError, match=r"manifest\.csv, row 10, field 'split'.*tr0\.wav is also listed in row 2 "
                                        r"as train, here as test"):
        SpeechDataModule(path=str(tmp_path / "a")).setup()
    write_manifest(tmp_path / "b", [*rows, {**rows[0], "text": "off"}])  # which transcript is right?
    with pytest.raises(DataError, match=r"row 10, field 'text'.*tr0\.wav is also listed in row 2 with another"):
        SpeechDataModule(path=str(tmp_path / "b")).setup()
    # the same row twice, and no split column: it counts twice, said, and its rows stay in one split
    plain = [{"path": f"c{i}.wav", "text": "yes" if i % 2 else "no"} for i in range(40)]
    write_manifest(tmp_path / "c", plain + [dict(r) for r in plain[:10]])
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SpeechDataModule(path=str(tmp_path / "c"), val_fraction=0.2, test_fraction=0.2)
        dm.setup()
    assert re.search(r"10 clip\(s\) are listed more than once \(10 extra rows; e\.g\. .*c0\.wav in rows 2, 42\)",
                     caplog.text)
    where = {}
    for name, dataset in dm.splits.items():
        for source in dataset.sources:
            where.setdefault(source.split("(")[1], set()).add(name)
    assert len(where) == 40 and all(len(splits) == 1 for splits in where.values())
    assert sum(len(d) for d in dm.splits.values()) == 50  # nothing dropped


def test_a_cut_short_ogg_is_refused(tmp_path):
    """libsndfile decodes the pages of a truncated Ogg file that are there, without a word (FLAC and WAV
    are caught: FLAC loses sync, a WAV header declares its size); its transcript would train on half."""
    from lstmkit.data.speech import ogg_complete, read_audio

    rng = np.random.default_rng(0)
    clip = (0.3 * np.sin(np.arange(80_000) * 0.05) + 0.05 * rng.standard_normal(80_000)).astype(np.float32)
    whole = tmp_path / "whole.ogg"
    sf.write(whole, clip, SR, format="OGG")
    data = whole.read_bytes()
    assert ogg_complete(whole) is True and read_audio(whole, SR)[0].shape == (80_000,)
    page = data.find(b"OggS", len(data) // 2)  # cut at a page boundary, and in the middle of a page
    for name, cut in (("page.ogg", data[:page]), ("middle.ogg", data[: len(data) * 2 // 3])):
        (tmp_path / name).write_bytes(cut)
        assert 0 < sf.info(str(tmp_path / name)).frames < 80_000  # what libsndfile alone would train on
        with pytest.raises(DataError, match=rf"{name}: the file is truncated: its Ogg stream has no end-of-stream"):
            read_audio(tmp_path / name, SR)
    assert ogg_complete(tmp_path / "missing.ogg") is None
    sf.write(tmp_path / "a.wav", clip[:800], SR)
    assert ogg_complete(tmp_path / "a.wav") is None


def test_corrupt_wav_names_the_file(tmp_path):
    write_manifest(tmp_path, split_rows())
    (tmp_path / "tr2.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataError, match=r"tr2\.wav: cannot decode audio"):
        SpeechDataModule(path=str(tmp_path)).setup()
    # cut short while copying: libsndfile reads the half that is there without a word (its transcript
    # would train on half a clip)
    sf.write(tmp_path / "tr2.wav", tone(), SR)
    whole = (tmp_path / "tr2.wav").read_bytes()
    (tmp_path / "tr2.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"tr2\.wav: the file is truncated: its WAV header declares \d+ samples"):
        SpeechDataModule(path=str(tmp_path)).setup()


def test_empty_clip_error_or_skip(tmp_path, caplog):
    write_manifest(tmp_path, split_rows())
    sf.write(tmp_path / "tr1.wav", np.zeros(800, dtype=np.float32), SR)
    # the row is the manifest's: the error names the manifest, its row and column, and the clip
    with pytest.raises(DataError, match=r"manifest\.\w+, row 3, field 'path': clip \S*tr1\.wav is silent.*"
                                         r"remove the row or set data\.empty_clips=skip"):
        SpeechDataModule(path=str(tmp_path)).setup()
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SpeechDataModule(path=str(tmp_path), empty_clips="skip")
        dm.setup()
    assert len(dm.splits["train"]) == 5
    assert "tr1.wav" in caplog.text and "silent" in caplog.text


def test_stereo_and_resampling_are_converted_with_a_note(tmp_path, caplog):
    write_manifest(tmp_path, split_rows())
    sf.write(tmp_path / "tr0.wav", tone(0.5, channels=2), SR)
    sf.write(tmp_path / "tr1.wav", tone(0.5, sr=16000), 16000)
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        dm = SpeechDataModule(path=str(tmp_path), val_fraction=0.0)
        dm.setup()
    assert "mixed down to mono" in caplog.text and "16000 Hz resampled to 8000 Hz" in caplog.text
    wave, channels, rate = read_audio(tmp_path / "tr1.wav", SR)
    assert (channels, rate) == (1, 16000) and wave.shape == (4000,)
    wave, channels, _ = read_audio(tmp_path / "tr0.wav", SR)
    assert channels == 2 and wave.ndim == 1


def test_unknown_characters_in_val_error_or_drop(tmp_path, caplog):
    write_manifest(tmp_path, split_rows(val_text="yes!", test_text="zoo"))
    with pytest.raises(DataError, match=r"manifest\.\w+, row 8, field 'text': val transcript 'yes!' \(of \S*va\.wav\) "
                                         r"has character\(s\) \['!'\]"):
        SpeechDataModule(path=str(tmp_path)).setup()
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SpeechDataModule(path=str(tmp_path), unknown_chars="drop")
        dm.setup()
    assert "['z']" in caplog.text and "['!']" in caplog.text
    assert dm.splits["test"][0][1].shape == (2,)  # "zoo" -> "oo"


def test_predict_batch_reads_and_resamples(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.5, sr=16000, channels=2), 16000)
    sf.write(tmp_path / "b.wav", tone(0.2), SR)
    spec = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a"], blank_id=0, sample_rate=SR)
    batch = SpeechDataModule.make_predict_batch(spec, [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")])
    assert batch.inputs.shape == (2, 4000) and batch.lengths.tolist() == [4000, 1600]
    with pytest.raises(DataError, match=r"missing\.wav: audio file not found"):
        SpeechDataModule.make_predict_batch(spec, [str(tmp_path / "missing.wav")])
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(DataError, match=r"empty\.wav: clip has no samples"):
        SpeechDataModule.make_predict_batch(spec, [str(tmp_path / "empty.wav")])


def test_predict_reads_a_folder_of_recordings_and_a_manifests_path_column(tmp_path, caplog):
    """predict refused a folder ("expected an audio file, found a folder") that training reads, and a manifest
    given as input_file= had its header taken for an audio path (found by a new user)."""
    import logging

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("b.wav", "a.FLAC", "notes.txt"):
        if name.endswith("txt"):
            (clips / name).write_text("not audio")
        else:
            sf.write(clips / name, tone(0.2, channels=2 if name == "b.wav" else 1), SR)
    spec = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a"], blank_id=0, sample_rate=SR,
                    extra={"path_column": "file"})
    assert SpeechDataModule.predict_items(spec, [str(clips), "x.wav"]) == [str(clips / "a.FLAC"), str(clips / "b.wav"),
                                                                          "x.wav"]
    (tmp_path / "test.csv").write_text("file,transcript\nclips/b.wav,\nclips/a.FLAC,a\n")  # no transcript needed
    assert SpeechDataModule.predict_items(spec, [str(tmp_path / "test.csv")]) == [
        str((clips / "b.wav").resolve()), str((clips / "a.FLAC").resolve())]
    (tmp_path / "bad.csv").write_text("file\nclips/b.wav\nclips/gone.wav\n")
    with pytest.raises(DataError, match=r"bad\.csv, row 3, field 'file': audio file .*gone\.wav not found"):
        SpeechDataModule.predict_items(spec, [str(tmp_path / "bad.csv")])
    with pytest.raises(DataError, match=r"bad\.csv, row 1.*no column 'path'"):
        SpeechDataModule.predict_items(DataSpec(input_kind="waveform", classes=[BLANK], blank_id=0), [str(tmp_path / "bad.csv")])
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"none: a folder with no audio files"):
        SpeechDataModule.predict_items(spec, [str(tmp_path / "none")])
    # as training finds a folder's data: its manifest, else a recordings/ folder (FSDD's root)
    (tmp_path / "none" / "recordings").mkdir()
    sf.write(tmp_path / "none" / "recordings" / "7_x_0.wav", tone(0.2), SR)
    assert SpeechDataModule.predict_items(spec, [str(tmp_path / "none")]) == [str(tmp_path / "none" / "recordings" / "7_x_0.wav")]
    (tmp_path / "none" / "manifest.csv").write_text("file\nrecordings/7_x_0.wav\n")
    assert SpeechDataModule.predict_items(spec, [str(tmp_path / "none")]) == [
        str((tmp_path / "none" / "recordings" / "7_x_0.wav").resolve())]
    with caplog.at_level(logging.INFO, logger="lstmkit"):
        SpeechDataModule.make_predict_batch(spec, [str(clips / "b.wav")])
    assert "b.wav: 2 channels mixed down to mono" in caplog.text


def test_fixed_spec_reuses_the_vocabulary(tmp_path):
    write_manifest(tmp_path, split_rows())
    stored = DataSpec(input_kind="waveform", classes=[BLANK, " ", *"abcdefnosy"], blank_id=0, sample_rate=SR)
    dm = SpeechDataModule(path=str(tmp_path), spec=stored.to_dict())
    dm.setup()
    assert dm.spec.classes == stored.classes
    assert dm.splits["val"][0][1].tolist() == [stored.classes.index(c) for c in "yes"]


def test_real_fsdd_loads():
    if not (REAL / "recordings").is_dir():
        pytest.skip(f"real FSDD data not found at {REAL} (see docs/speech.md)")
    dm = SpeechDataModule(path=str(REAL / "recordings"), val_fraction=0.1)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 2430, "val": 270, "test": 300}
    assert dm.spec.classes == [BLANK, " ", *sorted(set("zero one two three four five six seven eight nine") - {" "})]


# -- encoder -------------------------------------------------------------------------------------------
SPEC = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a", "b"], blank_id=0, sample_rate=SR)


def test_encoder_shapes_lengths_and_padding_invariance():
    torch.manual_seed(0)
    enc = SpectrogramEncoder(SPEC, n_mels=20, hop=80, stack=3, stride=2, normalise=False).eval()
    waves = [torch.randn(1000), torch.randn(2345)]
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    feats, lengths = enc(padded, torch.tensor([1000, 2345]))
    assert enc.out_features == 60 and feats.shape[-1] == 60
    assert lengths.tolist() == [-(-(1000 // 80 + 1) // 2), -(-(2345 // 80 + 1) // 2)]
    assert feats.shape[1] == int(lengths.max())
    alone, n = enc(waves[0][None], torch.tensor([1000]))
    # frames do not depend on the batch's padding, except the last (its window reaches past the end)
    assert torch.allclose(alone[0, : int(n) - 2], feats[0, : int(n) - 2], atol=1e-4)
    assert feats[0, int(lengths[0]) :].abs().sum() == 0


def test_encoder_normalises_and_augments_only_in_training():
    torch.manual_seed(0)
    enc = SpectrogramEncoder(SPEC, n_mels=20, freq_mask=5, time_mask=5)
    x, lengths = torch.randn(3, 4000), torch.tensor([4000, 4000, 4000])
    enc.eval()
    a, _ = enc(x, lengths)
    b, _ = enc(x, lengths)
    assert torch.equal(a, b)
    assert a.mean(dim=1).abs().max() < 1e-4 and (a.std(dim=1, unbiased=False) - 1).abs().max() < 1e-2
    enc.train()
    c, _ = enc(x, lengths)
    assert not torch.equal(a, c) and (c == 0).sum() > (a == 0).sum()


def test_global_normalisation_uses_the_training_frames_statistics():
    """normalise=global: running statistics of the training batches' valid frames, frozen in eval, so an
    utterance's features do not depend on its batch and keep the average spectrum utterance CMVN removes."""
    torch.manual_seed(0)
    x = torch.randn(3, 4000) * torch.tensor([[0.2], [1.0], [3.0]])
    lengths = torch.tensor([4000, 2500, 1200])
    enc = SpectrogramEncoder(SPEC, n_mels=20, normalise="global")
    raw = SpectrogramEncoder(SPEC, n_mels=20, normalise=False).eval()
    feats, frames = raw(x, lengths)
    valid = torch.cat([feats[i, : frames[i]] for i in range(3)])  # (valid frames, F)
    enc.train()(x, lengths)  # the first batch sets the statistics
    assert torch.allclose(enc.running_mean, valid.mean(0), atol=1e-4)
    assert torch.allclose(enc.running_var, valid.var(0, unbiased=False), rtol=1e-3)
    enc.eval()
    alone, _ = enc(x[2:, :1200], lengths[2:])
    together, _ = enc(x, lengths)
    # no batch dependence (the last frames' windows reach the end: reflected alone, zero-padded in a batch)
    assert torch.allclose(alone[0, :-2], together[2, : alone.shape[1] - 2], atol=1e-4)
    assert together[2, : frames[2]].mean(0).abs().max() > 0.1  # the utterance's own mean is kept
    before = enc.running_mean.clone()
    enc(x, lengths)
    assert torch.equal(before, enc.running_mean)  # frozen outside training
    enc.train()(x * 5, lengths)
    assert not torch.equal(before, enc.running_mean)  # then a moving average
    assert {"running_mean", "running_var"} <= set(enc.state_dict())
    assert "running_mean" not in SpectrogramEncoder(SPEC, n_mels=20).state_dict()  # older checkpoints load
    assert SpectrogramEncoder(SPEC, normalise=True).normalise == "utterance"
    with pytest.raises(ConfigError, match="encoder.normalise='speaker': expected utterance, global, both or none"):
        SpectrogramEncoder(SPEC, normalise="speaker")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trainer.precision=bf16-mixed: statistics in float32
        mixed, _ = SpectrogramEncoder(SPEC, n_mels=20, normalise="global").train()(x, lengths)
    assert torch.isfinite(mixed.float()).all()
    # both: the two side by side, with the same running statistics
    both = SpectrogramEncoder(SPEC, n_mels=20, normalise="both")
    both.load_state_dict(enc.state_dict())
    both.eval(), enc.eval()
    per_utterance = SpectrogramEncoder(SPEC, n_mels=20).eval()
    side_by_side, _ = both(x, lengths)
    assert both.out_features == 40 and side_by_side.shape[-1] == 40
    assert torch.allclose(side_by_side[..., :20], per_utterance(x, lengths)[0], atol=1e-5)
    assert torch.allclose(side_by_side[..., 20:], enc(x, lengths)[0], atol=1e-5)


@pytest.mark.parametrize("features", ["logmel", "mfcc"])
def test_a_half_precision_encoder_computes_its_front_end_in_float32(features):
    """trainer.precision=bf16-true converts the model to bfloat16, and torch.stft has no bfloat16 kernel on
    this CPU (MKL) or in cuFFT: the front end runs on a float32 copy of its window and filter bank, and the
    features come out in the default dtype, as close to float32's as bfloat16 holds them."""
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 4000), torch.tensor([4000, 2500, 1200])
    reference = SpectrogramEncoder(SPEC, features=features, n_mels=20, normalise="global", trim_db=30, vtlp=0.1,
                                   speed_factors=[0.9, 1.1], tilt=0.3, noise_snr=[10, 30])
    reference.train()(x, lengths)  # statistics to normalise with
    half = copy.deepcopy(reference).to(torch.bfloat16).eval()
    assert next(half.frontend.buffers()).dtype == torch.bfloat16
    want, frames = reference.eval()(x, lengths)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as Lightning's bf16-true forward context does
    try:
        got, got_frames = half(x.to(torch.bfloat16), lengths)
        torch.manual_seed(1)
        trained, _ = half.train()(x.to(torch.bfloat16), lengths)  # every augmentation of the front end
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == trained.dtype == torch.bfloat16 and torch.equal(got_frames, frames)
    assert torch.isfinite(trained.float()).all()
    # the input rounded to bfloat16 moves the quietest log-Mel bins most; the features stay close
    assert (got.float() - want).abs().mean() < 0.05 and torch.allclose(got.float(), want, atol=0.5)
    assert next(half.frontend.buffers()).dtype == torch.bfloat16  # the module's own buffers as Lightning left them


def test_adapt_normalisation_re_estimates_the_statistics_on_unlabelled_audio():
    """eval adapt=true: the global branch's statistics become the exact mean / variance of the scored
    split's valid frames (read without augmentation), whatever the batches; the per-utterance branch and
    the training mode are untouched; a model without running statistics is told so."""
    torch.manual_seed(0)
    x = torch.randn(4, 4000) * torch.tensor([[0.2], [1.0], [3.0], [0.5]])
    lengths = torch.tensor([4000, 2500, 1200, 3000])
    enc = SpectrogramEncoder(SPEC, n_mels=20, normalise="both", speed_factors=[0.9, 1.1], freq_mask=3)
    enc.train()(x * 7, lengths)  # training statistics of other audio
    raw = SpectrogramEncoder(SPEC, n_mels=20, normalise=False).eval()
    feats, frames = raw(x, lengths)
    valid = torch.cat([feats[i, : frames[i]] for i in range(4)])
    assert not torch.allclose(enc.running_mean, valid.mean(0), atol=1e-2)
    read = enc.adapt_normalisation([(x[:3], lengths[:3]), (x[3:], lengths[3:])])  # two batches
    assert read == valid.shape[0] and enc.training  # the mode it had
    assert torch.allclose(enc.running_mean, valid.mean(0), atol=1e-4)
    assert torch.allclose(enc.running_var, valid.var(0, unbiased=False), rtol=1e-3)
    adapted, _ = enc.eval()(x, lengths)
    pooled = torch.cat([adapted[i, : frames[i], 20:] for i in range(4)])  # the global branch: standardised
    assert torch.allclose(pooled.mean(0), torch.zeros(20), atol=1e-3)
    assert torch.allclose(pooled.std(0, unbiased=False), torch.ones(20), atol=1e-2)
    with pytest.raises(ConfigError, match="encoder.normalise=utterance, which has none"):
        SpectrogramEncoder(SPEC, n_mels=20).check_adapt()
    with pytest.raises(ConfigError, match="no audio frames"):
        enc.adapt_normalisation([])


def test_adapt_normalisation_is_exact_in_float32_too(monkeypatch):
    """MPS has no float64, so adapt sums in float32 there: E[x^2] - E[x]^2 of log-Mels whose mean is far from
    0 and whose variance is small cancelled (here the lowest band's variance, 8e-8, came out 0, which the
    normalisation then divides by). The sums are taken around the first scored batch's mean, so audio louder
    than the training audio (an unseen microphone) is exact too; float32 forced on the CPU."""
    import lstmkit.encoders.spectrogram as module

    torch.manual_seed(0)
    x = 2000.0 * (1 + 0.001 * torch.randn(8, 4000))  # a loud hum: log-Mels near +15, varying by little
    lengths = torch.full((8,), 4000)
    for gain in (1.0, 10.0):  # scored as loud as the training audio, and 20 dB louder
        exact = SpectrogramEncoder(SPEC, n_mels=20, normalise="global")
        exact.train()(x, lengths)
        exact.adapt_normalisation([(x * gain, lengths)])  # float64 on the CPU
        with monkeypatch.context() as patch:
            patch.setattr(module, "_accumulation_dtype", lambda device: torch.float32)
            single = SpectrogramEncoder(SPEC, n_mels=20, normalise="global")
            single.train()(x, lengths)
            single.adapt_normalisation([(x[:4] * gain, lengths[:4]), (x[4:] * gain, lengths[4:])])
        assert torch.allclose(single.running_mean, exact.running_mean, rtol=1e-5)
        assert torch.allclose(single.running_var, exact.running_var, rtol=1e-3), gain


def test_adapt_re_estimates_on_the_scored_loop_after_the_checkpoint_is_loaded(make_cfg, tmp_path):
    """adapt=true (train's test, eval): the test loop's inputs set the statistics, after Lightning has loaded
    the checkpoint (which holds the training ones); the checkpoint on disk keeps them; eval split=val adapts
    on val; fitting's val loops never adapt; only the batches the loop scores count (limit_test_batches);
    loader workers (persistent) still leave the loop its batches; a model without statistics is refused."""
    import itertools

    import lightning as L
    from hydra.utils import instantiate

    from lstmkit.adaptation import AdaptToScoredData
    from lstmkit.commands.train import build_model

    cfg = make_cfg(["task=speech", "data.num_examples=40", "data.batch_size=8", "model.hidden_size=8",
                    "model.num_layers=1", "encoder.normalise=both"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    model = build_model(cfg, dm)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": tmp_path,  # its plots/ under tmp_path
               "callbacks": [AdaptToScoredData(adapt=True)]}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, **options)
    trainer.fit(model, datamodule=dm)
    trained = model.encoder.running_mean.clone()
    trainer.save_checkpoint(tmp_path / "m.ckpt")

    def exact_mean(batches) -> torch.Tensor:
        model.encoder.eval()
        parts = []
        for batch in batches:
            feats, frames, _ = model.encoder._frames(batch.inputs, batch.lengths)
            parts += [f[:, :n].T for f, n in zip(feats, frames)]
        return torch.cat(parts).mean(0)

    assert not torch.allclose(trained, exact_mean(dm.val_dataloader()), atol=1e-3)  # fitting's val did not adapt
    scored = trainer.test(model, datamodule=dm, ckpt_path=tmp_path / "m.ckpt", weights_only=True)
    test_mean = exact_mean(dm.test_dataloader())
    assert torch.allclose(model.encoder.running_mean, test_mean, atol=1e-4)
    assert not torch.allclose(trained, test_mean, atol=1e-3)
    stored = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]["encoder.running_mean"]
    assert torch.equal(stored, trained)
    trainer.validate(model, datamodule=dm, ckpt_path=tmp_path / "m.ckpt", weights_only=True)
    assert torch.allclose(model.encoder.running_mean, exact_mean(dm.val_dataloader()), atol=1e-4)
    dm.batch_size = 2  # the test split (4 clips) in two batches, one of them scored
    limited = L.Trainer(limit_test_batches=1, **options)
    limited.test(model, datamodule=dm, ckpt_path=tmp_path / "m.ckpt", weights_only=True)
    first = exact_mean(itertools.islice(dm.test_dataloader(), 1))
    assert torch.allclose(model.encoder.running_mean, first, atol=1e-4) and not torch.allclose(first, test_mean)
    workers = instantiate(cfg.data, num_workers=2, _convert_="all")  # persistent workers (SequenceDataModule)
    workers.setup("fit")
    with_workers = L.Trainer(**options).test(model, datamodule=workers, ckpt_path=tmp_path / "m.ckpt",
                                             weights_only=True)
    assert with_workers[0]["test/cer"] == pytest.approx(scored[0]["test/cer"])  # scored, and alike
    model.encoder = torch.nn.Identity()
    with pytest.raises(ConfigError, match="adapt=true: the Identity encoder keeps no running normalisation"):
        model.check_adaptable()


def test_speed_perturbation_stretches_training_batches_only():
    torch.manual_seed(0)
    x, lengths = torch.randn(2, 8000), torch.tensor([8000, 4000])
    plain = SpectrogramEncoder(SPEC, n_mels=20).train()
    slow = SpectrogramEncoder(SPEC, n_mels=20, speed_factors=[0.8]).train()
    (_, a_len), (b, b_len) = plain(x, lengths), slow(x, lengths)
    assert a_len.tolist() == [101, 51] and b_len.tolist() == [126, 63]  # 1.25x the samples at speed 0.8
    assert b.shape[1] == 126 and torch.all(b[1, 63:] == 0)  # padding stays exactly zero
    slow.eval()
    c, c_len = slow(x, lengths)
    assert torch.equal(c_len, a_len) and torch.allclose(c, plain.eval()(x, lengths)[0])
    mixed = SpectrogramEncoder(SPEC, n_mels=20, speed_factors=[0.9, 1.0, 1.1]).train()
    seen = {int(mixed(x, lengths)[1][0]) for _ in range(12)}
    assert seen == {112, 101, 91}  # every factor is drawn
    with pytest.raises(ConfigError, match="between 0.5 and 2"):
        SpectrogramEncoder(SPEC, speed_factors=[3.0])


@pytest.mark.parametrize("features", ["logmel", "mfcc"])
def test_vtlp_warps_formants_in_training_only(features: str, monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.arange(8000) / SR
    tone = torch.sin(2 * math.pi * 1000.0 * t)[None, :].repeat(2, 1)  # 1 kHz, two utterances
    lengths = torch.tensor([8000, 8000])
    options = {"features": features, "n_mels": 40, "n_fft": 400, "normalise": False, "stack": 1, "stride": 1}
    plain = SpectrogramEncoder(SPEC, **options).eval()
    warp = SpectrogramEncoder(SPEC, vtlp=0.2, **options)
    reference, _ = plain(tone, lengths)
    torch.testing.assert_close(warp.eval()(tone, lengths)[0], reference)  # eval: no warp
    warp.train()
    # factor 1 (rand = 0.5): the warped path is the front end itself
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, 0.5))
    torch.testing.assert_close(warp(tone, lengths)[0], reference, atol=1e-4, rtol=1e-4)
    if features == "mfcc":
        return
    # factors 1.2 and 0.8 (rand = 1, 0): the tone's Mel band moves up and down (1.2 / 0.8 kHz)
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.tensor([[1.0], [0.0]]))
    warped, _ = warp(tone, lengths)
    band = lambda feats: int(feats[20:80].mean(0).argmax())  # (T, n_mels) -> the loudest band
    mel = warp.frontend.mel_scale.fb  # (K, n_mels): the band each frequency falls in most
    expected = [int(mel[round(f * 400 / SR)].argmax()) for f in (1000.0, 1200.0, 800.0)]
    assert [band(reference[0]), band(warped[0]), band(warped[1])] == expected
    assert expected[2] < expected[0] < expected[1]
    with pytest.raises(ConfigError, match="encoder.vtlp"):
        SpectrogramEncoder(SPEC, vtlp=0.7)


def test_channel_perturbation_tilts_and_adds_noise_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    t = torch.arange(8000) / SR
    x = torch.zeros(2, 8000)
    x[0], x[1, 1000:5000] = torch.sin(2 * math.pi * 300.0 * t), torch.sin(2 * math.pi * 300.0 * t[:4000])
    lengths = torch.tensor([8000, 6000])
    plain = SpectrogramEncoder(SPEC, n_mels=20, trim_db=30).eval()
    noisy = SpectrogramEncoder(SPEC, n_mels=20, trim_db=30, tilt=0.5, noise_snr=[10, 10])
    reference, reference_len = plain(x, lengths)
    torch.testing.assert_close(noisy.eval()(x, lengths)[0], reference)  # eval: untouched
    noisy.train()
    wave = noisy._perturb_channel(x, lengths)
    assert torch.all(wave[1, 6000:] == 0)  # the padding stays exactly zero
    only_noise = SpectrogramEncoder(SPEC, noise_snr=[10, 10]).train()._perturb_channel(x, lengths)
    for row, n in enumerate(lengths.tolist()):  # the noise sits 10 dB under the utterance's mean power
        snr = 10 * torch.log10(x[row, :n].pow(2).mean() / (only_noise[row, :n] - x[row, :n]).pow(2).mean())
        assert abs(float(snr) - 10.0) < 0.3
    # the trimming reads the clean waveform: the same frames kept in training as at evaluation
    _, train_len = noisy(x, lengths)
    assert torch.equal(train_len, reference_len)
    # the tilt: a = +0.5 (rand = 1) dampens a low tone, a = -0.5 (rand = 0) boosts it (|1 - a e^-jw| at 300 Hz)
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.tensor([[1.0], [0.0]]))
    tilted = SpectrogramEncoder(SPEC, tilt=0.5).train()._perturb_channel(x[:1].repeat(2, 1), lengths[:1].repeat(2))
    gain = tilted[:, 100:].pow(2).mean(-1) / x[0, 100:].pow(2).mean()
    w = 2 * math.pi * 300.0 / SR
    expected = [abs(1 - a * complex(math.cos(w), -math.sin(w))) ** 2 for a in (0.5, -0.5)]
    assert gain.tolist() == pytest.approx(expected, rel=0.01)
    with pytest.raises(ConfigError, match="encoder.tilt"):
        SpectrogramEncoder(SPEC, tilt=1.5)
    with pytest.raises(ConfigError, match="encoder.noise_snr"):
        SpectrogramEncoder(SPEC, noise_snr=[40, 10])


def test_silence_trimming_and_peak_level():
    torch.manual_seed(0)
    word = torch.from_numpy(tone(0.3, 500.0)).float() * 0.5
    quiet = 1e-4 * torch.randn(4000)  # 0.5 s of near-silence (-70 dB) before the word, 0.25 s after
    padded_word = torch.cat([quiet, word, quiet[:2000]])
    x = torch.nn.utils.rnn.pad_sequence([padded_word, word], batch_first=True)
    lengths = torch.tensor([len(padded_word), len(word)])
    plain = SpectrogramEncoder(SPEC, n_mels=20).eval()
    trim = SpectrogramEncoder(SPEC, n_mels=20, trim_db=30, trim_margin=2).eval()
    _, plain_len = plain(x, lengths)
    feats, trim_len = trim(x, lengths)
    assert plain_len.tolist() == [len(padded_word) // 80 + 1, len(word) // 80 + 1]
    # the word is 30 frames (+1 at either edge's window, + 2 margin frames each side); silence is gone
    assert 30 <= int(trim_len[0]) <= 36 and int(trim_len[1]) == int(plain_len[1])
    assert feats.shape[1] == int(plain_len.max()) and feats[0, int(trim_len[0]):].abs().sum() == 0
    # the trimmed row is the untrimmed one shifted to start 2 margin frames before the word (frame 50)
    raw, _ = SpectrogramEncoder(SPEC, n_mels=20, normalise=False).eval()(x, lengths)
    raw_trim, _ = SpectrogramEncoder(SPEC, n_mels=20, normalise=False, trim_db=30).eval()(x, lengths)
    n = int(trim_len[0])
    assert torch.equal(raw_trim[0, :n], raw[0, 48 : 48 + n]) and torch.equal(raw_trim[1], raw[1])
    # peak level: a quiet copy of the batch gives the same features
    level = SpectrogramEncoder(SPEC, n_mels=20, level="peak", trim_db=30).eval()
    torch.testing.assert_close(level(x * 0.01, lengths)[0], level(x, lengths)[0], atol=1e-4, rtol=1e-4)
    offset = (x + 0.2) * (torch.arange(x.shape[1])[None, :] < lengths[:, None])  # a DC offset, padding still 0
    torch.testing.assert_close(level(offset, lengths)[0], level(x, lengths)[0], atol=1e-3, rtol=1e-3)
    # pre-emphasis tilts the spectrum up: the top Mel band gains on the bottom one, padding stays 0
    flat, tilted = SpectrogramEncoder(SPEC, n_mels=20, normalise=False), SpectrogramEncoder(
        SPEC, n_mels=20, normalise=False, preemphasis=0.97)
    noise = torch.randn(1, 4000)
    a, b = flat.eval()(noise, torch.tensor([4000]))[0], tilted.eval()(noise, torch.tensor([4000]))[0]
    assert (b[0, :, -1] - b[0, :, 0]).mean() > (a[0, :, -1] - a[0, :, 0]).mean() + 2
    with pytest.raises(ConfigError, match="preemphasis"):
        SpectrogramEncoder(SPEC, preemphasis=1.5)
    assert not torch.allclose(plain(x * 0.001, lengths)[0], plain(x, lengths)[0], atol=1e-2)  # the floor shows
    with pytest.raises(ConfigError, match="trim_db"):
        SpectrogramEncoder(SPEC, trim_db=-3)
    with pytest.raises(ConfigError, match="level"):
        SpectrogramEncoder(SPEC, level="rms")


def test_encoder_mfcc():
    enc = SpectrogramEncoder(SPEC, features="mfcc", n_mfcc=13, n_mels=23).eval()
    feats, lengths = enc(torch.randn(2, 1600), torch.tensor([1600, 800]))
    assert feats.shape == (2, 21, 13) and lengths.tolist() == [21, 11]


# -- head ----------------------------------------------------------------------------------------------
def peaky(path: list[int], classes: int = 4) -> torch.Tensor:
    """(T, C) log-probs that put 0.9 on the given symbol per frame."""
    probs = torch.full((len(path), classes), 0.1 / (classes - 1))
    probs[torch.arange(len(path)), torch.tensor(path)] = 0.9
    return probs.log()


def test_head_loss_backward_and_decode():
    head = CTCHead(SPEC, in_features=8)
    feats = torch.randn(2, 6, 8, requires_grad=True)
    out = head(feats, torch.tensor([6, 4]))
    assert out.shape == (2, 6, 4) and torch.allclose(out.exp().sum(-1), torch.ones(2, 6))
    batch = Batch(torch.zeros(2, 10), torch.tensor([10, 7]), torch.tensor([[2, 3, 2], [3, 0, 0]]),
                  torch.tensor([3, 1]))
    loss = head.loss(out, torch.tensor([6, 4]), batch)
    loss.backward()
    assert torch.isfinite(loss) and feats.grad is not None
    log_probs = torch.stack([peaky([0, 2, 2, 0, 3, 1]), peaky([3, 0, 3, 3, 0, 0])])
    assert greedy_decode(log_probs, torch.tensor([6, 4]), 0) == [[2, 3, 1], [3, 3]]
    assert head.decode(log_probs, torch.tensor([6, 4])) == [{"transcript": "ab"}, {"transcript": "bb"}]


def test_too_short_utterances_error_or_skip(caplog):
    head = CTCHead(SPEC, in_features=4)
    out = head(torch.randn(2, 3, 4), torch.tensor([3, 3]))
    batch = Batch(torch.zeros(2, 9), torch.tensor([9, 9]), torch.tensor([[2, 2, 3], [2, 0, 0]]),
                  torch.tensor([3, 1]))
    with pytest.raises(DataError, match=r"'aab': 3 frames, needs 4.*encoder\.stride.*too_short=skip"):
        head.check(torch.tensor([3, 3]), batch)
    head = CTCHead(SPEC, in_features=4, too_short="skip")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        head.check(torch.tensor([3, 3]), batch)
    assert head.skipped == 1 and "skipped 1 utterance" in caplog.text
    # the loss leaves the short utterance out: the mean is over the one that fits
    kept = Batch(batch.inputs[1:], batch.lengths[1:], batch.targets[1:], batch.target_lengths[1:])
    torch.testing.assert_close(head.loss(out, torch.tensor([3, 3]), batch), head.loss(out[1:], torch.tensor([3]), kept))
    head.check(torch.tensor([3, 3]), batch)
    assert head.skipped == 2
    assert copy.deepcopy(head).skipped == 2 and pickle.loads(pickle.dumps(head)).skipped == 2  # copies, pickles
    nothing = Batch(batch.inputs[:1], batch.lengths[:1], batch.targets[:1], batch.target_lengths[:1])
    feats = torch.randn(1, 3, 4, requires_grad=True)
    loss = head.loss(head(feats, torch.tensor([3])), torch.tensor([3]), nothing)  # no utterance fits
    loss.backward()
    assert loss.item() == 0.0 and feats.grad is not None


def test_too_short_error_names_the_clip_and_manifest_row(tmp_path):
    # the frame count is known only once the batch is encoded (trimming, subsampling): the batch
    # carries where each row came from, through pinning and Lightning's move to the device
    from lightning.fabric.utilities.apply_func import move_data_to_device

    write_manifest(tmp_path, split_rows())
    dm = SpeechDataModule(path=str(tmp_path), batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    batch = move_data_to_device(batch.pin_memory() if torch.cuda.is_available() else batch, torch.device("cpu"))
    assert batch.sources is not None and len(batch.sources) == len(batch) == 6
    assert all(re.fullmatch(r".*manifest\.csv row \d+ \(.*tr\d\.wav\)", s) for s in batch.sources)
    head = CTCHead(dm.spec, in_features=4)
    with pytest.raises(DataError, match=r"manifest\.csv row \d+ \(.*tr\d\.wav\) '(yes no|on off)': 1 frames, needs"):
        head.check(torch.ones(len(batch), dtype=torch.int64), batch)
    # FSDD folders: the wav itself
    write_fsdd(tmp_path / "fsdd")
    dm = SpeechDataModule(path=str(tmp_path / "fsdd"), batch_size=4)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    with pytest.raises(DataError, match=r"fsdd/\d_(anna|bob)_\d\.wav '(one|two|three)': 1 frames"):
        CTCHead(dm.spec, in_features=4).check(torch.ones(len(batch), dtype=torch.int64), batch)


def _alignments_probability(probs: torch.Tensor, labels: list[int], blank: int = 0) -> float:
    """p(labels | x) by enumerating every path of the ``(T, C)`` frames (the definition CTC sums)."""
    import itertools

    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [c for k, c in enumerate(path) if c != blank and (k == 0 or c != path[k - 1])]
        if collapsed == labels:
            total += float(torch.prod(probs[torch.arange(len(path)), torch.tensor(path)]))
    return total


def test_exact_sequence_likelihood_and_rescoring(monkeypatch):
    """``sequence_log_likelihood`` is the sum over every alignment; with ``rescore`` the beam's
    hypothesis of highest exact likelihood wins, without it the beam's own first."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 4, generator=gen) * 2, dim=-1)
    candidates = [[2], [2, 3], [3, 3], [], [2, 2, 2, 3, 1]]  # the last needs 6 frames: impossible
    exact = sequence_log_likelihood(probs.log(), candidates, blank=0)
    for ids, value in zip(candidates[:4], exact[:4].tolist()):
        assert value == pytest.approx(math.log(_alignments_probability(probs, ids)), abs=1e-5), ids
    assert exact[4] == float("-inf")
    # the n-best of a beam, best first by its own score: rescoring reorders by the exact one
    order = exact[:4].argsort().tolist()  # worst first: the beam's "best" is the exact worst
    head = CTCHead(SPEC, in_features=4, decoder="beam", beam_size=4)
    monkeypatch.setattr(head, "nbest", lambda outputs, lengths: [[candidates[i] for i in order]])
    assert head.decode_ids(probs.log()[None], torch.tensor([4])) == [candidates[order[-1]]]
    head.use_decoder(rescore=False)
    assert head.decode_ids(probs.log()[None], torch.tensor([4])) == [candidates[order[0]]]
    head.use_decoder(beam_size=2)  # rescore is kept as set
    assert head.rescore is False
    # the beam's n-best (flashlight): distinct, its best first, what rescore=false keeps
    monkeypatch.undo()
    beam = CTCHead(SPEC, in_features=4, decoder="beam", beam_size=8)
    found = beam.nbest(probs.log()[None], torch.tensor([4]))[0]
    assert len(found) > 1 and len({tuple(ids) for ids in found}) == len(found)
    beam.use_decoder(rescore=False)
    assert beam.decode_ids(probs.log()[None], torch.tensor([4])) == [found[0]]
    # an install whose flashlight-text does not load: an error saying so, not another decoder's results
    import sys
    import types

    monkeypatch.setitem(sys.modules, "torchaudio.models.decoder", types.ModuleType("torchaudio.models.decoder"))
    with pytest.raises(ConfigError, match=r"head\.decoder=beam needs the flashlight-text package, a dependency of "
                                          r"lstmkit, which does not load here .*or decode with head\.decoder=greedy"):
        CTCHead(SPEC, in_features=4, decoder="beam")  # when chosen, not after an epoch of training


def test_beam_decoder_option_and_metrics():
    head = CTCHead(SPEC, in_features=4, decoder="beam", beam_size=4)
    log_probs = torch.stack([peaky([0, 2, 2, 0, 3, 1]), peaky([3, 0, 3, 3, 0, 0])])
    lengths = torch.tensor([6, 4])
    assert head.decode(log_probs, lengths) == [{"transcript": "ab"}, {"transcript": "bb"}]
    # "a" spread thinly over two frames: greedy reads "", beam search "a"; switchable after loading
    thin = torch.tensor([[0.4, 1e-9, 0.35, 0.25]] * 2).log()[None]
    head.use_decoder("greedy")
    assert head.decode(thin, torch.tensor([2])) == [{"transcript": ""}]
    head.use_decoder("beam", beam_size=4)
    assert head.decode(thin, torch.tensor([2])) == [{"transcript": "a"}]
    with pytest.raises(ConfigError, match="greedy or beam"):
        head.use_decoder("viterbi")
    batch = Batch(torch.zeros(2, 10), lengths, torch.tensor([[2, 3, 1], [3, 2, 0]]), torch.tensor([3, 2]))
    metrics = head.metrics()
    head.update_metrics(metrics, log_probs, lengths, batch)
    values = metrics.compute()
    assert values["cer"] == pytest.approx(1 / 4) and values["wer"] == pytest.approx(1 / 2)
    figure_metrics = head.figure_metrics()
    head.update_metrics(figure_metrics, log_probs, lengths, batch)
    # one-element and empty hypotheses (an untrained model) must plot too
    silent = torch.stack([peaky([0, 0, 0, 0, 0, 0]), peaky([0, 3, 0, 0, 0, 0])])
    single = Batch(torch.zeros(2, 10), lengths, torch.tensor([[2, 0], [3, 0]]), torch.tensor([1, 1]))
    head.update_metrics(figure_metrics, silent, lengths, single)
    figures = head.figures(figure_metrics)
    assert set(figures) == {"cer_by_length", "ctc_posteriors"}
    titles = [ax.get_title() for ax in figures["ctc_posteriors"].axes]
    assert titles[2:] == ["ref: 'a'   hyp: ''", "ref: 'b'   hyp: 'b'"]


def test_lexicon_decoding_keeps_to_the_words(tmp_path, monkeypatch):
    """A lexicon turns an almost-right spelling into the nearest listed word."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the flashlight lexicon files go
    spec = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a", "b"], blank_id=0, sample_rate=SR,
                    extra={"words": ["ab", "ba"]})
    # "a" then a weak "b" that loses to blank frame by frame: greedy and lexicon-free beam read "a"
    probs = torch.tensor([[0.05, 0.01, 0.9, 0.04], [0.55, 0.01, 0.04, 0.4], [0.55, 0.01, 0.04, 0.4]])
    log_probs, lengths = probs.log()[None], torch.tensor([3])
    assert CTCHead(spec, in_features=4).decode(log_probs, lengths) == [{"transcript": "a"}]
    head = CTCHead(spec, in_features=4, decoder="beam", beam_size=8, lexicon="train")
    assert head.decode(log_probs, lengths) == [{"transcript": "ab"}]
    listed = tmp_path / "words.txt"
    listed.write_text("# no 'a' alone, no 'ab'\nb\nba\n\n", encoding="utf-8")
    head.use_decoder("beam", 8, str(listed))
    assert head.decode(log_probs, lengths) == [{"transcript": "b"}]
    # no lexicon file is left behind, and a beam head pickles (DDP spawn, deep copies) and still decodes
    assert not list(scratch.iterdir())
    clone = pickle.loads(pickle.dumps(head))
    assert clone.decode(log_probs, lengths) == [{"transcript": "b"}]
    assert copy.deepcopy(head).decode(log_probs, lengths) == [{"transcript": "b"}]
    # every way to get it wrong says what is expected (the decoder is built on first use, so a checkpoint
    # whose lexicon file is gone still loads and can be switched to greedy)
    with pytest.raises(ConfigError, match="needs head.decoder=beam"):
        CTCHead(spec, in_features=4, lexicon="train")
    head.use_decoder("beam", 8, str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="no such file"):
        head.decode(log_probs, lengths)
    head.use_decoder("greedy")
    assert head.decode(log_probs, lengths) == [{"transcript": "a"}]
    with pytest.raises(ConfigError, match="lists no training words"):
        CTCHead(SPEC, in_features=4, decoder="beam", lexicon="train").decode(log_probs, lengths)
    bad = tmp_path / "bad.txt"
    bad.write_text("ab\nb a\n", encoding="utf-8")
    head.use_decoder("beam", 8, str(bad))
    with pytest.raises(DataError, match=r"bad\.txt, line 2: expected one word per line"):
        head.decode(log_probs, lengths)
    bad.write_text("ab\nabc\n", encoding="utf-8")
    head.use_decoder("beam", 8, str(bad))
    with pytest.raises(DataError, match=r"bad\.txt, line 2: lexicon word 'abc' has characters the model cannot "
                                        r"emit: \['c'\]"):
        head.decode(log_probs, lengths)
    # Notepad's byte-order mark is not a character of the first word; a file not in UTF-8 says so
    marked = tmp_path / "marked.txt"
    marked.write_bytes("\ufeff# digits\r\nb\r\nba\r\n".encode())
    head.use_decoder("beam", 8, str(marked))
    assert head.decode(log_probs, lengths) == [{"transcript": "b"}]
    marked.write_bytes("b\nb\xe4\n".encode("latin-1"))
    head.use_decoder("beam", 8, str(marked))
    with pytest.raises(DataError, match=r"marked\.txt.*not valid UTF-8"):
        head.decode(log_probs, lengths)


def test_a_missing_decode_lexicon_names_decode_lexicon(tmp_path):
    """decode.lexicon=/nope.txt failed at the first decode, naming head.lexicon= (which the user never set)."""
    spec = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a", "b"], blank_id=0, sample_rate=SR,
                    extra={"words": ["ab"]})
    model = torch.nn.Module()
    model.head = CTCHead(spec, in_features=4)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match=re.escape(f"decode.lexicon={missing!r}: no such file")) as err:
        apply_decoding(model, {"lexicon": missing})
    assert "head." not in str(err.value)
    with pytest.raises(ConfigError, match=re.escape(f"decode.lexicon={missing!r}: no such file")):
        model.head.decode(torch.zeros(1, 3, 4).log_softmax(-1), torch.tensor([3]))  # the same on first use
    model.head.use_decoder(lexicon=missing)  # from Python (or the checkpoint's own head.lexicon): head.lexicon
    with pytest.raises(ConfigError, match=re.escape(f"head.lexicon={missing!r}: no such file")):
        model.head.decode(torch.zeros(1, 3, 4).log_softmax(-1), torch.tensor([3]))


def test_decode_overrides_of_eval_and_predict(caplog):
    spec = DataSpec(input_kind="waveform", classes=[BLANK, " ", "a", "b"], blank_id=0, sample_rate=SR,
                    extra={"words": ["ab"]})
    model = torch.nn.Module()
    model.head = CTCHead(spec, in_features=4)
    apply_decoding(model, {"decoder": None, "beam_size": None, "lexicon": None})  # nothing set: as trained
    assert (model.head.decoder, model.head.lexicon) == ("greedy", None)
    apply_decoding(model, {"lexicon": "train"})  # a lexicon implies beam search
    assert (model.head.decoder, model.head.lexicon) == ("beam", "train")
    apply_decoding(model, {"beam_size": 3})  # keeps the lexicon
    assert (model.head.decoder, model.head.beam_size, model.head.lexicon) == ("beam", 3, "train")
    apply_decoding(model, {"lexicon": "none"})  # lexicon-free beam search
    assert (model.head.decoder, model.head.lexicon) == ("beam", None)
    apply_decoding(model, {"lexicon": "train"})
    apply_decoding(model, {"decoder": "greedy"})
    assert (model.head.decoder, model.head.lexicon) == ("greedy", None)
    with pytest.raises(ConfigError, match="decode.beam: expected"):
        apply_decoding(model, {"beam": 4})
    apply_decoding(model, {"rescore": False})  # keeps the rest
    assert (model.head.decoder, model.head.lexicon, model.head.rescore) == ("greedy", None, False)
    apply_decoding(model, {"rescore": True})
    with pytest.raises(ConfigError, match=r"decode\.rescore='yes': expected true or false"):
        apply_decoding(model, {"rescore": "yes"})
    # the command line's names in the errors; a beam size that beam search will not use is said
    with pytest.raises(ConfigError, match=r"decode\.decoder='bogus': expected greedy or beam"):
        apply_decoding(model, {"decoder": "bogus"})
    with pytest.raises(ConfigError, match=r"decode\.lexicon='train' needs decode\.decoder=beam"):
        apply_decoding(model, {"decoder": "greedy", "lexicon": "train"})
    with pytest.raises(ConfigError, match=r"decode\.beam_size=0: expected a whole number >= 1"):
        apply_decoding(model, {"decoder": "beam", "beam_size": 0})
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        apply_decoding(model, {"beam_size": 4})
    assert "decode.beam_size=4 is not used: this model decodes greedily" in caplog.text
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        apply_decoding(model, {"rescore": False})
    assert "decode.rescore=False is not used: this model decodes greedily" in caplog.text
    # the same rule from Python: the head resolves it, not the CLI
    model.head.use_decoder(lexicon="train")
    assert (model.head.decoder, model.head.lexicon) == ("beam", "train")
    model.head.use_decoder(beam_size=5)
    assert (model.head.decoder, model.head.beam_size, model.head.lexicon) == ("beam", 5, "train")
    model.head.use_decoder("beam", lexicon=None)
    assert (model.head.decoder, model.head.lexicon) == ("beam", None)
    with pytest.raises(ConfigError, match="needs head.decoder=beam"):
        model.head.use_decoder("greedy", lexicon="train")
    other = torch.nn.Module()
    other.head = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="has no decoder to switch"):
        apply_decoding(other, {"decoder": "beam"})


def test_training_words_are_kept_in_the_spec():
    dm = SpeechDataModule(num_examples=40, batch_size=8, seed=1)
    dm.setup()
    words = dm.spec.extra["words"]
    assert words == sorted(set(words)) and len(words) > 3
    assert all(c in dm.spec.classes for w in words for c in w)


# -- end to end ----------------------------------------------------------------------------------------
def test_cli_train_then_predict(tmp_path):
    tiny = ["data.num_examples=48", "data.batch_size=8", "model.hidden_size=16", "model.num_layers=1",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false"]
    refused = run_here("train", "task=speech", *tiny, "adapt=true", cwd=tmp_path, check=False)  # before training
    assert refused.returncode != 0 and "encoder.normalise=utterance, which has none" in refused.stderr
    assert not list(tmp_path.glob("logs/speech/runs/*/checkpoints"))
    run = run_here("train", "task=speech", *tiny, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = list((tmp_path / "logs" / "speech" / "runs").glob("*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    plots = {p.name for p in ckpts[0].parents[1].glob("plots/*.png")}
    assert plots == {"cer_by_length.png", "ctc_posteriors.png"}
    for k, (wave, _, _) in enumerate(generate_utterances(2, seed=9)):
        sf.write(tmp_path / f"u{k}.wav", wave, SR)
    run = run_here("predict", f"ckpt_path={ckpts[0]}", "input=[u0.wav,u1.wav]", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["input"] for r in rows] == ["u0.wav", "u1.wav"]
    (tmp_path / "clips.txt").write_text("u0.wav\nu1.wav\n")  # a recording the list names is not an output
    before = (tmp_path / "u0.wav").read_bytes()
    run = run_here("predict", f"ckpt_path={ckpts[0]}", "input_file=clips.txt", "output=u0.wav", cwd=tmp_path,
                   check=False)
    assert run.returncode != 0 and "output=u0.wav: is the file input=" in run.stderr
    assert (tmp_path / "u0.wav").read_bytes() == before and "{" not in run.stdout
    (tmp_path / "manifest.csv").write_text("path,transcript\nu1.wav,\nu0.wav,\n")  # the training data's column
    run = run_here("predict", f"ckpt_path={ckpts[0]}", "input_file=manifest.csv", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [Path(json.loads(line)["input"]).name for line in run.stdout.splitlines() if line.startswith("{")] == [
        "u1.wav", "u0.wav"]
    run = run_here("predict", f"ckpt_path={ckpts[0]}", "input_file=manifest.csv", "output=u1.wav", cwd=tmp_path,
                   check=False)  # a recording the manifest lists is not an output either
    assert run.returncode != 0 and "output=u1.wav" in run.stderr and (tmp_path / "u1.wav").read_bytes()[:4] == b"RIFF"
    assert all(isinstance(r["transcript"], str) for r in rows)
    # decoding over the training words: every word of every transcript is one of them
    words = set(load_model(ckpts[0]).spec.extra["words"])
    run = run_here("predict", f"ckpt_path={ckpts[0]}", "input=[u0.wav,u1.wav]", "decode.decoder=beam",
                   "decode.lexicon=train", "decode.beam_size=4", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all(set(r["transcript"].split()) <= words for r in rows)
    run = run_here("eval", f"ckpt_path={ckpts[0]}", "split=val", "decode.decoder=beam", "decode.lexicon=train",
                   "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'lexicon': 'train'" in run.stdout + run.stderr and "val/cer" in run.stdout
    run = run_here("eval", f"ckpt_path={ckpts[0]}", "adapt=true", "trainer.limit_test_batches=1", cwd=tmp_path,
                   check=False)
    assert run.returncode != 0  # per-utterance CMVN (the preset): no running statistics to re-estimate
    assert "adapt=true re-estimates the running statistics of encoder.normalise=global|both" in run.stderr
    run = run_here("eval", f"ckpt_path={ckpts[0]}", "trainer.limit_test_batches=0", cwd=tmp_path, check=False)
    assert run.returncode != 0 and "eval scored no batches of the test split (trainer.limit_test_batches=0)" in run.stderr


def test_notebook_runs(tmp_path, monkeypatch):
    run_notebook("speech", tmp_path, monkeypatch)
    assert list(tmp_path.glob("logs/speech/runs/*/checkpoints/last.ckpt"))


def test_deltas_follow_the_statics_and_ignore_the_padding():
    """``deltas=2`` appends torchaudio's regression deltas of the statics, each row's computed
    over its own frames (its last frame repeated, not the batch's zero padding)."""
    torch.manual_seed(0)
    long, short = torch.randn(4000), torch.randn(1600)
    x = torch.nn.utils.rnn.pad_sequence([long, short], batch_first=True)
    lengths = torch.tensor([4000, 1600])
    options = {"features": "mfcc", "n_mfcc": 13, "stack": 1, "stride": 1}
    statics, frames = SpectrogramEncoder(SPEC, **options).eval()(x, lengths)
    enc = SpectrogramEncoder(SPEC, deltas=2, **options).eval()
    assert enc.out_features == 39
    feats, frames2 = enc(x, lengths)
    assert feats.shape[-1] == 39 and torch.equal(frames, frames2)
    torch.testing.assert_close(feats[..., :13], statics)  # the statics are unchanged
    deltas = torchaudio.functional.compute_deltas
    for row in range(2):
        n = int(frames[row])  # each row's own frames, edges repeated 4 frames out (Kaldi's add-deltas)
        valid = torch.nn.functional.pad(feats[row, :n, :13].T[None], (4, 4), mode="replicate")
        first = deltas(valid, win_length=5)
        torch.testing.assert_close(feats[row, :n, 13:26], first[0, :, 4:-4].T, atol=1e-5, rtol=1e-5)
        second = deltas(first, win_length=5)[0, :, 4:-4].T
        torch.testing.assert_close(feats[row, :n, 26:], second, atol=1e-5, rtol=1e-5)
        assert feats[row, n:].abs().sum() == 0  # padding stays exactly zero
    assert int(frames[1]) < int(frames[0])
    # traced (as export does) at one batch size, it runs at another
    traced = torch.jit.trace(enc, (torch.cat([x, x[:1]]), torch.cat([lengths, lengths[:1]])), check_trace=False)
    torch.testing.assert_close(traced(x, lengths)[0], feats)
    with pytest.raises(ConfigError, match="encoder.deltas"):
        SpectrogramEncoder(SPEC, deltas=3)


def test_disk_cache_is_read_back_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, caplog):
    write_fsdd(tmp_path / "fsdd", count=7)
    cache = tmp_path / "cache"
    first = SpeechDataModule(path=str(tmp_path / "fsdd"), cache_dir=str(cache))
    first.setup()
    files = sorted(cache.glob("speech-*.pt"))
    assert len(files) == 3  # one per split
    # the second setup decodes nothing: every wave comes from the cache
    from lstmkit.data import speech

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file the cache holds")

    with monkeypatch.context() as patch:
        patch.setattr(speech, "read_audio", no_decoding)
        again = SpeechDataModule(path=str(tmp_path / "fsdd"), cache_dir=str(cache))
        again.setup()
    assert [len(again.splits[s]) for s in ("train", "val", "test")] == [len(first.splits[s]) for s in ("train", "val", "test")]
    files[0].write_bytes(b"PK\x03\x04 cut short")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SpeechDataModule(path=str(tmp_path / "fsdd"), cache_dir=str(cache)).setup()
    assert "ignoring the unreadable audio cache" in caplog.text
    assert files[0].stat().st_size > 100  # rewritten
    # a skipped (silent) clip: the cache is still found by the split's files and not written again
    skipped = tmp_path / "skipped"
    write_fsdd(skipped, count=7)
    sf.write(next(iter(sorted(skipped.glob("1_anna_6.wav")))), np.zeros(800, np.float32), SR)
    for _ in range(2):
        with caplog.at_level(logging.INFO, logger="lstmkit"):
            caplog.clear()
            SpeechDataModule(path=str(skipped), cache_dir=str(tmp_path / "cache3"), empty_clips="skip").setup()
    assert "skipped 1 empty/silent clip" in caplog.text and "decoded audio cached" not in caplog.text
    # split=all: the empty train / val splits write no cache of nothing
    whole = SpeechDataModule(path=str(tmp_path / "fsdd"), cache_dir=str(tmp_path / "cache2"), whole=True,
                             spec=first.spec.to_dict())
    whole.setup("test")
    assert len(list((tmp_path / "cache2").glob("speech-*.pt"))) == 1


@pytest.mark.parametrize("options", [{}, {"features": "mfcc", "normalise": "both"}])
def test_an_utterance_has_the_same_features_alone_and_in_a_batch(options) -> None:
    """The STFT reflects only the batch's end: a shorter utterance's last frames read zeros, and through
    its mean every frame moved. Its own tail is reflected into its padding instead."""
    enc = SpectrogramEncoder(SPEC, **options).eval()
    torch.manual_seed(0)
    short, long = 0.1 * torch.randn(6500), 0.1 * torch.randn(12000)
    alone, n = enc(short[None], torch.tensor([6500]))
    batch = torch.zeros(2, 12000)
    batch[0, :6500], batch[1] = short, long
    together, lengths = enc(batch, torch.tensor([6500, 12000]))
    assert int(lengths[0]) == int(n[0])
    torch.testing.assert_close(together[0, : int(n[0])], alone[0, : int(n[0])], rtol=1e-5, atol=1e-5)


def test_predict_warns_about_a_silent_clip(tmp_path, caplog):
    """Training refuses silent clips; predict transcribed one without a word ("unn")."""
    sf.write(tmp_path / "quiet.wav", np.zeros(800, dtype=np.float32), SR)
    sf.write(tmp_path / "tone.wav", tone(), SR)
    spec = DataSpec(input_kind="waveform", sample_rate=SR, classes=["<blank>", "a"], blank_id=0)
    with caplog.at_level("WARNING", logger="lstmkit"):
        batch = SpeechDataModule.make_predict_batch(spec, [str(tmp_path / "tone.wav"), str(tmp_path / "quiet.wav")])
    assert batch.inputs.shape[0] == 2
    warned = [r.getMessage() for r in caplog.records if "silent" in r.getMessage()]
    assert len(warned) == 1 and "quiet.wav: the clip is silent (peak 0.0e+00)" in warned[0]
    # a clip shorter than half an analysis window, alone in its batch: the STFT's reflect padding
    # crashed inside torch; now it is transcribed, with a warning that it is too short to mean much
    sf.write(tmp_path / "short.wav", tone()[:50], SR)
    with caplog.at_level("WARNING", logger="lstmkit"):
        caplog.clear()
        short = SpeechDataModule.make_predict_batch(spec, [str(tmp_path / "short.wav")])
    assert "short.wav: the clip is 50 samples long" in caplog.text
    encoder = SpectrogramEncoder(spec).eval()
    assert short.inputs.shape[-1] <= encoder.n_fft // 2
    features, lengths = encoder(short.inputs, short.lengths)
    assert features.shape[1] >= 1 and int(lengths[0]) >= 1 and torch.isfinite(features).all()


def test_fsdd_folders_read_any_suffix_case_say_what_subfolders_hold_and_take_one_speaker(tmp_path, caplog):
    write_fsdd(tmp_path, speakers=("anna", "bob", "carl"), count=3)
    for file in tmp_path.glob("*_carl_*.wav"):  # a Windows tool's .WAV
        file.rename(file.with_suffix(".WAV"))
    write_fsdd(tmp_path / "more", speakers=("dora",), count=1)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SpeechDataModule(path=str(tmp_path), holdout_speakers="carl", val_fraction=0.2)  # no brackets
        dm.setup()
    assert len(dm.splits["test"]) == 3 * 3 and {u.speaker for u in dm._utterances()} == {"anna", "bob", "carl"}
    assert "3 audio file(s) in its subfolders are not read" in caplog.text
    # .flac recordings beside .wav ones were dropped without a word in train and eval (predict read them)
    for file in sorted(tmp_path.glob("*_anna_*.wav"))[:4]:
        data, rate = sf.read(file)
        sf.write(file.with_suffix(".flac"), data, rate)
        file.unlink()
    dm = SpeechDataModule(path=str(tmp_path), holdout_speakers="carl", val_fraction=0.2)
    dm.setup()
    assert len(dm._utterances()) == 27 and sum(u.source.endswith(".flac") for u in dm._utterances()) == 4
    twin = next(tmp_path.glob("*_anna_*.flac"))
    sf.write(twin.with_suffix(".wav"), tone(0.2, 400), SR)
    with pytest.raises(DataError, match=rf"{twin.stem}\.flac and {twin.stem}\.wav are one recording in two formats"):
        SpeechDataModule(path=str(tmp_path)).setup()
    twin.with_suffix(".wav").unlink()
    with pytest.raises(DataError, match=r"no audio files .*; 9 audio file\(s\) are in subfolders \(e\.g\. \S*nested"):
        write_fsdd(tmp_path / "top" / "nested", count=1)
        (tmp_path / "top" / "nested" / "x").mkdir()
        write_fsdd(tmp_path / "top" / "nested" / "x", speakers=("anna",), count=1)
        SpeechDataModule(path=str(tmp_path / "top")).setup()


def test_a_manifest_split_overridden_by_holdout_speakers_is_said(tmp_path, caplog):
    rows = [{"path": f"a{i}.wav", "text": "yes", "split": "train" if i < 4 else "test", "speaker": "ann"}
            for i in range(6)]
    rows += [{"path": f"b{i}.wav", "text": "no", "split": "train", "speaker": "ben"} for i in range(6)]
    write_manifest(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        splits = (dm := SpeechDataModule(path=str(tmp_path), holdout_speakers=["ben"]))._split(dm._utterances())
    assert {u.speaker for u in splits["test"]} == {"ben"}
    assert "against the manifest's split column for 2 from test to train, 6 from train to test" in caplog.text
    for row in rows:
        del row["speaker"]
    write_manifest(tmp_path / "anonymous", rows)
    with pytest.raises(ConfigError, match="names no speakers; a manifest needs a 'speaker' column"):
        SpeechDataModule(path=str(tmp_path / "anonymous"), holdout_speakers=["ben"]).setup()


def test_non_finite_samples_and_non_text_transcripts_are_refused(tmp_path):
    wave = tone()
    wave[100:103] = np.nan
    sf.write(tmp_path / "nan.wav", wave, SR, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan\.wav: 3 sample\(s\) are not finite numbers .*sample 100"):
        read_audio(tmp_path / "nan.wav", SR)
    sf.write(tmp_path / "anti.wav", np.stack([tone(), -tone()], axis=1), SR)  # one channel in opposite phase
    with pytest.raises(DataError, match=r"anti\.wav: its 2 channels cancel out when mixed down to mono"):
        read_audio(tmp_path / "anti.wav", SR)
    rows = split_rows()
    rows[2]["text"] = ["yes"]  # a JSON list, which str() would turn into "['yes']"
    write_manifest(tmp_path / "j", rows, kind="jsonl")
    with pytest.raises(DataError, match=r"manifest\.jsonl, row 3, field 'text': expected text, found a JSON list"):
        SpeechDataModule(path=str(tmp_path / "j")).setup()


def test_odd_sample_rates_and_streamed_wav_headers_are_read(tmp_path, caplog):
    # 22,051 Hz shares no divisor with 8,000: an exact filter took 6 s and 3.7 GB for this 0.4 s clip
    sf.write(tmp_path / "odd.wav", tone(0.4, sr=22051), 22051)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        wave, _, rate = read_audio(tmp_path / "odd.wav", SR)
    assert rate == 22051 and abs(wave.size - 0.4 * SR) <= 2
    assert "22051 Hz resampled as 22050 Hz" in caplog.text
    # arecord writing to stdout leaves 0x80000000 as the data size: the samples are all there
    sf.write(tmp_path / "streamed.wav", tone(), SR, subtype="PCM_16")
    raw = bytearray((tmp_path / "streamed.wav").read_bytes())
    at = raw.index(b"data") + 4
    raw[at:at + 4] = (0x80000000).to_bytes(4, "little")
    (tmp_path / "streamed.wav").write_bytes(bytes(raw))
    wave, _, _ = read_audio(tmp_path / "streamed.wav", SR)
    assert wave.size == tone().size


@pytest.mark.parametrize(("option", "says"), [
    ({"win_length": 400}, "win_length=400: expected 1..encoder.n_fft"),
    ({"hop": 0}, "expected n_fft >= 2 and hop >= 1"),
    ({"f_max": 6000}, "f_max <= 4000 Hz"),
    ({"n_mels": 128}, "n_mels=128: more Mel bands than the 101 frequency bins"),
])
def test_front_end_settings_torch_would_refuse_mid_batch_are_config_errors(option, says):
    spec = DataSpec(input_kind="waveform", sample_rate=SR, classes=[BLANK, "a"])
    with pytest.raises(ConfigError, match=re.escape(says)):
        SpectrogramEncoder(spec, **option)


def test_eval_reads_only_the_splits_it_can_score(tmp_path):
    """A trained model's characters bind the scored transcripts only: a train row of new data with
    other characters used to stop eval (and every train clip was decoded for nothing)."""
    write_manifest(tmp_path, split_rows())
    trained = SpeechDataModule(path=str(tmp_path))
    trained.setup()
    rows = split_rows()
    rows[0]["text"] = "zzz"  # a train transcript the model cannot write
    write_manifest(tmp_path / "new", rows)
    dm = SpeechDataModule(path=str(tmp_path / "new"), spec=trained.spec.to_dict())
    dm.setup("test")
    assert len(dm.splits["train"]) == 0 and len(dm.splits["test"]) == len(trained.splits["test"])
    rows[-1]["text"] = "zoo"  # a test transcript it cannot write is still an error
    write_manifest(tmp_path / "bad", rows)
    with pytest.raises(DataError, match=r"row 9, field 'text': test transcript 'zoo' .* not in the model's characters"):
        SpeechDataModule(path=str(tmp_path / "bad"), spec=trained.spec.to_dict()).setup("test")


def test_a_folder_of_two_manifests_and_blank_split_cells_are_said(tmp_path, caplog):
    rows = split_rows()
    write_manifest(tmp_path, rows)
    write_manifest(tmp_path, rows, kind="jsonl")
    with pytest.raises(DataError, match=r"holds 2 manifests \(manifest\.csv, manifest\.jsonl\); set data\.path"):
        SpeechDataModule(path=str(tmp_path)).setup()
    rows[2]["split"] = ""
    write_manifest(tmp_path / "blank", rows)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SpeechDataModule(path=str(tmp_path / "blank"))._utterances()
    assert "1 row(s) have an empty 'split' (e.g. row 4)" in caplog.text


def test_group_batches_holds_one_speaker_per_training_batch_and_counts_its_batches():
    """data.group_batches: every training batch is one speaker's (so batch statistics are the speaker's),
    each training utterance comes once per epoch, len() is the number of batches the loader yields (Lightning
    counts steps with it), and val / test batches are not grouped."""
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler, WeightedRandomSampler

    from lstmkit.data.base import BucketBatchSampler

    dm = SpeechDataModule(num_examples=300, num_speakers=5, batch_size=8, group_batches=True)
    dm.setup()
    train = dm.splits["train"]
    speakers = train.groups
    assert speakers is not None and len(set(speakers)) == 5
    loader = dm.train_dataloader()
    batches = list(loader.batch_sampler)
    assert len(batches) == len(loader.batch_sampler)
    assert all(len({speakers[i] for i in batch}) == 1 for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(train)))
    assert len(list(dm.train_dataloader())) == len(batches)  # collated as usual
    mixed = [b for b in dm.val_dataloader().batch_sampler if len({dm.splits["val"].groups[i] for i in b}) > 1]
    assert mixed  # val is not grouped
    for sampler in (RandomSampler(train), SequentialSampler(train),
                    DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=3)):
        grouped = BucketBatchSampler(sampler, 8, False, lengths=train.lengths, groups=speakers, pool_factor=2)
        drawn = list(grouped)
        assert len(drawn) == len(grouped) and all(len({speakers[i] for i in b}) == 1 for b in drawn)
        assert sorted(i for b in drawn for i in b) == sorted(grouped._group_indices())
    # DDP: DistributedSampler's shards split the speakers unevenly (ranks would cut different numbers of
    # batches, and hang); each speaker is dealt out evenly instead, so every rank and every epoch has as many
    uneven = [BucketBatchSampler(DistributedSampler(train, num_replicas=3, rank=r, shuffle=True, seed=3), 8, False,
                                 groups=speakers) for r in range(3)]
    assert len({r._count(r.sampler) for r in uneven}) > 1  # the case at hand
    counts = set()
    for epoch in range(4):
        ranks = [BucketBatchSampler(DistributedSampler(train, num_replicas=3, rank=r, shuffle=True, seed=3), 8,
                                    False, lengths=train.lengths, groups=speakers) for r in range(3)]
        for r in ranks:
            r.sampler.set_epoch(epoch)
        drawn = [list(r) for r in ranks]
        counts |= {len(d) for d in drawn} | {len(r) for r in ranks}
        assert all(len({speakers[i] for i in b}) == 1 for d in drawn for b in d)
        assert {i for d in drawn for b in d for i in b} == set(range(len(train)))  # repeats a few, loses none
        assert sum(len(b) for d in drawn for b in d) < len(train) + 3 * 5  # at most ranks - 1 repeats a speaker
    assert len(counts) == 1  # Lightning reads len() once: the same on every rank and epoch
    with pytest.raises(TypeError, match="needs a sequential, random .* got WeightedRandomSampler"):
        len(BucketBatchSampler(WeightedRandomSampler([1.0] * len(train), 20), 8, False, groups=speakers))
    # without groups the sampler is the one it was: the same batches for the same draws
    torch.manual_seed(5)
    plain = list(BucketBatchSampler(list(range(len(train))), 8, False, lengths=train.lengths, pool_factor=2))
    order = list(range(len(train)))
    pools = [sorted(order[i: i + 16], key=lambda k: train.lengths[k]) for i in range(0, len(order), 16)]
    torch.manual_seed(5)
    expected = []
    for pool in pools:
        cut = [pool[i: i + 8] for i in range(0, len(pool), 8)]
        expected += [cut[k] for k in torch.randperm(len(cut)).tolist()]
    assert plain == expected


def test_group_batches_needs_examples_that_name_their_group(tmp_path):
    from lstmkit.data.sentiment import SentimentDataModule

    dm = SentimentDataModule(num_examples=100, group_batches=True)
    with pytest.raises(ConfigError, match="data.group_batches=true: SentimentDataModule's training examples name no "
                                          "group to batch by; only speech data has one"):
        dm.setup()  # before any loader, so before Lightning's sanity check
    rows = ["path,text,speaker"]
    for i in range(12):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).normal(0, 0.1, 2000).astype(np.float32), 8000)
        rows.append(f"{i}.wav,one,{'ann' if i % 3 else ''}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    speech = SpeechDataModule(path=str(tmp_path / "manifest.csv"), group_batches=True, val_fraction=0.2,
                              test_fraction=0.2)
    with pytest.raises(ConfigError, match=r"data.group_batches=true: \d+ of \d+ training examples have no speaker "
                                          r"\(a manifest's 'speaker' column, data.speaker_column.*\), e\.g\. "
                                          r"\S*manifest\.csv row \d+ \(\S*\.wav\); give every example one"):
        speech.setup()
    SpeechDataModule(path=str(tmp_path / "manifest.csv"), val_fraction=0.2, test_fraction=0.2).setup()


def test_batch_stats_normalise_each_training_batch_with_its_own_statistics():
    """encoder.batch_stats: in training the global branch standardises the batch over its own valid frames
    (with group_batches: the speaker's), the running statistics still follow for eval, where they are used;
    it needs a global branch."""
    torch.manual_seed(0)
    x = torch.randn(3, 4000) * torch.tensor([[0.2], [1.0], [3.0]])
    lengths = torch.tensor([4000, 2500, 1200])
    enc = SpectrogramEncoder(SPEC, n_mels=20, normalise="both", batch_stats=True).train()
    feats, frames = enc(x, lengths)
    pooled = torch.cat([feats[i, : frames[i], 20:] for i in range(3)])
    assert torch.allclose(pooled.mean(0), torch.zeros(20), atol=1e-4)
    assert torch.allclose(pooled.std(0, unbiased=False), torch.ones(20), atol=1e-3)
    shifted, _ = enc(x * 10, lengths)  # a louder batch: standardised all the same (log-Mels shift by a constant)
    assert torch.allclose(shifted[..., 20:], feats[..., 20:], atol=1e-3)
    running = SpectrogramEncoder(SPEC, n_mels=20, normalise="both").train()
    running(x, lengths), running(x * 10, lengths)
    assert torch.allclose(enc.running_mean, running.running_mean) and enc.batches_seen == 2
    enc.eval()
    assert torch.allclose(enc(x, lengths)[0], running.eval()(x, lengths)[0], atol=1e-5)  # eval: running ones
    with pytest.raises(ConfigError, match="encoder.batch_stats=true .* encoder.normalise=utterance has no global"):
        SpectrogramEncoder(SPEC, batch_stats=True)


def test_a_jsonl_speaker_numbered_0_is_a_speaker(tmp_path):
    """JSONL speakers numbered 0, 1, 2...: `record.get(column) or ""` turned speaker 0 into no speaker, so
    data.holdout_speakers=[0] found "no speaker(s) ['0']" and group_batches said its rows had none."""
    rows = [{"path": f"u{i}.wav", "text": "yes" if i % 2 else "no", "speaker": i % 3} for i in range(18)]
    path = write_manifest(tmp_path, rows, kind="jsonl")
    dm = SpeechDataModule(path=str(path), holdout_speakers=[0], group_batches=True)
    dm.setup()
    assert len(dm.splits["test"]) == 6 and set(dm.splits["train"].groups) | set(dm.splits["val"].groups) == {"1", "2"}


def test_a_nemo_manifest_of_segments_reads_each_segment(tmp_path):
    """NeMo's offset / duration were ignored: every row of a long recording's segments was the whole file,
    each transcript beside all of its speech (tester-2). Training and predict cut the segment."""
    folder = tmp_path / "seg"
    folder.mkdir()
    recording = np.concatenate([tone(0.3, 300), np.zeros(int(0.2 * SR), np.float32), tone(0.4, 600)])
    sf.write(folder / "long.wav", recording, SR)
    rows = [{"audio_filepath": "long.wav", "offset": 0.0, "duration": 0.3, "text": "yes", "split": split}
            for split in ("train", "val", "test")]
    rows[1] = {**rows[1], "offset": 0.5, "duration": 0.4, "text": "sey"}
    rows[2] = {**rows[2], "offset": "0.5", "duration": None, "text": "sey"}  # to the end of the file
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = SpeechDataModule(path=str(folder), path_column="audio_filepath")
    dm.setup()
    lengths = {name: [int(x.shape[0]) for x, *_ in (dataset[i] for i in range(len(dataset)))]
               for name, dataset in dm.splits.items()}
    assert lengths == {"train": [int(0.3 * SR)], "val": [int(0.4 * SR)], "test": [int(0.4 * SR)]}
    assert dm.splits["val"].sources[0].endswith("long.wav@0.5+0.4)")
    # predict from the manifest: each row its segment, named so
    items = SpeechDataModule.predict_items(dm.spec, [str(manifest)])
    assert [str(i).rsplit("/", 1)[-1] for i in items] == ["long.wav@0+0.3", "long.wav@0.5+0.4", "long.wav@0.5"]
    batch = SpeechDataModule.make_predict_batch(dm.spec, items)
    assert batch.lengths.tolist() == [int(0.3 * SR), int(0.4 * SR), int(0.4 * SR)]
    # a segment past the end of its file, or a duration that is no number: the row and what is wrong
    past = (r"long\.wav: the segment 2 s \+ 0\.3 s runs past the end of the recording \(0\.900 s\).*"
            r"\(listed in .*manifest\.jsonl, row 1\)")
    no_number = r"manifest\.jsonl, row 1, field 'duration': expected the segment's duration in seconds \(> 0\), found 'abc'"
    for change, expected in [({"offset": 2.0}, past), ({"duration": "abc"}, no_number)]:
        manifest.write_text("\n".join(json.dumps({**r, **change} if i == 0 else r) for i, r in enumerate(rows)) + "\n")
        with pytest.raises(DataError, match=expected):
            SpeechDataModule(path=str(folder), path_column="audio_filepath").setup()
