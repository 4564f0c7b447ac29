"""Speech recognition data: generated utterances by default, a wav folder with ``path``.

Every split holds mono float32 waveforms at ``sample_rate`` and their transcripts as
character ids; the character vocabulary (``<blank>`` at 0, space at 1, then the characters
of the *train* transcripts) is stored in the DataSpec, so a checkpoint can transcribe new
files on its own.

The embedded corpus is synthetic speech with the structure a CTC model must learn and
nothing it could shortcut: each character is a distinct phone-like sound (a vowel-like
harmonic source shaped by its own formants, a fricative noise band, or a short burst),
spoken by 24 seeded "speakers" with their own pitch, vocal-tract scale, speaking rate,
accent (per-sound formant shifts) and recording noise (8-30 dB SNR), with phones
cross-faded into each other (a doubled letter is one longer sound, as in real speech),
per-character duration jitter, silences between words, random padding and a random
channel tilt. Utterances are one to three words from a 20-word vocabulary (the ten digit names
and ten command words), so both CER and WER mean something.

Real data (``path=``) is either

* a manifest (CSV/TSV/JSONL with ``path`` and ``text`` columns, audio paths relative to
  the manifest; optional ``split`` and ``speaker`` columns), or
* a folder of wav files named the Free Spoken Digit way, ``<digit>_<speaker>_<n>.wav``,
  whose transcript is the digit's English name (``7_jackson_32.wav`` -> ``seven``).

Decisions documented once: characters outside the train vocabulary in val/test raise a
:class:`~lstmkit.errors.DataError` naming the file and the characters (``unknown_chars:
drop`` removes them with a warning instead); empty or silent clips raise a DataError
(``empty_clips: skip`` skips them with a warning naming each file). Stereo files are mixed
to mono and other sample rates resampled, with one logged note per split saying how many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from lstmkit.data.base import (
    PadCollate,
    SequenceDataModule,
    SequenceDataset,
    as_list,
    check_fractions,
    path_not_found,
)
from lstmkit.data.text import csv_records, jsonl_records, read_text
from lstmkit.errors import ConfigError, DataError
from lstmkit.progress import track
from lstmkit.types import Batch, DataSpec

log = logging.getLogger("lstmkit")
SILENCE_PEAK = 1e-4  # a clip whose loudest sample is below it is silent (data.silence_threshold)

BLANK = "<blank>"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go", "on", "off")
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)(\.[A-Za-z0-9]+)$")  # an audio suffix: fsdd_transcript
_MANIFEST_NAMES = ("manifest.csv", "manifest.tsv", "manifest.jsonl", "manifest.json")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
                  "test": "test"}


# -- the generated corpus -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phone:
    """How one character sounds: a formant-shaped voiced part and/or a noise band."""

    formants: tuple[float, ...] = ()  # Hz; empty = unvoiced
    noise: tuple[float, float, float] | None = None  # (low Hz, high Hz, level relative to voicing)
    ms: float = 80.0  # typical duration
    burst: bool = False  # plosive: short, fast decay after a closure


_PHONES: dict[str, _Phone] = {
    "a": _Phone((730, 1090, 2440), ms=95),
    "e": _Phone((530, 1840, 2480), ms=85),
    "i": _Phone((300, 2250, 3000), ms=80),
    "o": _Phone((570, 840, 2410), ms=95),
    "u": _Phone((400, 1020, 2240), ms=85),
    "y": _Phone((260, 2600, 3300), ms=55),
    "w": _Phone((300, 610, 2200), ms=55),
    "r": _Phone((420, 1300, 1600), ms=65),
    "l": _Phone((360, 1050, 2900), ms=65),
    "n": _Phone((250, 1700), ms=65),
    "v": _Phone((300, 1400), noise=(1000, 2800, 0.5), ms=65),
    "z": _Phone((250,), noise=(3000, 3900, 0.8), ms=80),
    "d": _Phone((300, 1700), noise=(2000, 3500, 1.0), ms=35, burst=True),
    "g": _Phone((300, 1000), noise=(1200, 2200, 1.0), ms=40, burst=True),
    "s": _Phone(noise=(3000, 3950, 1.0), ms=95),
    "f": _Phone(noise=(1500, 3900, 0.45), ms=85),
    "h": _Phone(noise=(400, 3000, 0.3), ms=60),
    "t": _Phone(noise=(2500, 3900, 1.0), ms=35, burst=True),
    "p": _Phone(noise=(300, 1500, 1.0), ms=35, burst=True),
    "x": _Phone(noise=(1500, 3950, 0.9), ms=105),
}


@dataclass(frozen=True)
class _Speaker:
    name: str
    f0: float  # Hz
    tract: float  # formant / noise-band scale (vocal tract length)
    rate: float  # speaking rate (> 1 = faster)
    snr_db: float  # typical signal-to-noise ratio of the recordings
    accent: dict[str, float]  # per-character formant shift (how this speaker says each sound)


def _envelope(freqs: np.ndarray, formants: tuple[float, ...], scale: float) -> np.ndarray:
    """Sum of resonance curves: the spectral envelope of a vowel-like sound."""
    env = np.zeros_like(freqs)
    for k, formant in enumerate(formants):
        centre, width = formant * scale, 60.0 + 40.0 * k
        env += (0.8**k) / (1.0 + ((freqs - centre) / width) ** 2)
    return env


def _render_phone(
    char: str, n: int, speaker: _Speaker, phase: float, sr: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """``n`` samples of one character; returns them and the glottal phase to continue from."""
    phone = _PHONES[char]
    scale = speaker.tract * speaker.accent[char]
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    out = np.zeros(n)
    if phone.formants:
        f0 = speaker.f0 * rng.uniform(0.92, 1.08) * np.linspace(1.03, 0.97, n)
        phases = phase + np.cumsum(2 * np.pi * f0 / sr)
        phase = float(phases[-1] % (2 * np.pi))
        saw = (phases % (2 * np.pi)) / np.pi - 1.0  # harmonic-rich glottal source
        voiced = np.fft.irfft(np.fft.rfft(saw) * _envelope(freqs, phone.formants, scale), n)
        out += voiced / (voiced.std() + 1e-9)
    if phone.noise is not None:
        low, high, level = phone.noise
        band = (freqs >= low * scale) & (freqs <= min(high * scale, 0.49 * sr))
        hiss = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * band, n)
        out += level * hiss / (hiss.std() + 1e-9)
    if phone.burst:
        out *= np.exp(-np.arange(n) / (0.35 * n))
    return out, phase


def _render_word(word: str, speaker: _Speaker, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Phones overlap-added with cross-fades (no silence between them, as in fluent speech)."""
    fade = int(0.012 * sr)
    pieces, phase = [], 0.0
    for char in word:
        n = int(sr * _PHONES[char].ms / 1000.0 / speaker.rate * rng.uniform(0.75, 1.3)) + fade
        if _PHONES[char].burst:  # the closure before a plosive
            pieces.append(np.zeros(int(sr * rng.uniform(0.01, 0.025)) + fade))
        samples, phase = _render_phone(char, n, speaker, phase, sr, rng)
        pieces.append(samples * rng.uniform(0.6, 1.0))
    ramp_in, ramp_out = np.linspace(0.0, 1.0, fade), np.linspace(1.0, 0.0, fade)
    out = np.zeros(sum(len(p) - fade for p in pieces) + fade)
    start = 0
    for piece in pieces:
        piece = piece.copy()
        piece[:fade] *= ramp_in
        piece[-fade:] *= ramp_out
        out[start : start + len(piece)] += piece
        start += len(piece) - fade
    return out


def make_speakers(count: int, seed: int) -> list[_Speaker]:
    rng = np.random.default_rng(seed + 7919)
    return [
        _Speaker(f"spk{k:02d}", f0=float(rng.uniform(85, 240)), tract=float(rng.uniform(0.88, 1.14)),
                 rate=float(rng.uniform(0.75, 1.3)), snr_db=float(rng.uniform(8, 30)),
                 accent={c: float(rng.uniform(0.93, 1.07)) for c in sorted(_PHONES)})
        for k in range(count)
    ]


def generate_utterances(
    n: int, seed: int = 0, sample_rate: int = 8000, num_speakers: int = 24, max_words: int = 3
) -> list[tuple[np.ndarray, str, str]]:
    """``n`` seeded ``(waveform float32 (S,), transcript, speaker)`` synthetic utterances.

    Deterministic for a given ``seed``; about 1 s of audio each on average.
    """
    rng = np.random.default_rng(seed)
    speakers = make_speakers(num_speakers, seed)
    words = DIGIT_WORDS + COMMAND_WORDS
    utterances = []
    for _ in range(n):
        speaker = speakers[int(rng.integers(len(speakers)))]
        chosen = [words[int(k)] for k in rng.integers(len(words), size=int(rng.integers(1, max_words + 1)))]
        pieces = [np.zeros(int(sample_rate * rng.uniform(0.05, 0.3)))]
        for k, word in enumerate(chosen):
            if k:
                pieces.append(np.zeros(int(sample_rate * rng.uniform(0.08, 0.25) / speaker.rate)))
            pieces.append(_render_word(word, speaker, sample_rate, rng))
        pieces.append(np.zeros(int(sample_rate * rng.uniform(0.05, 0.3))))
        wave = np.concatenate(pieces)
        tilt = rng.uniform(-0.6, 0.6)  # the microphone / channel colours the spectrum
        wave = wave + tilt * np.concatenate([[0.0], wave[:-1]])
        speech_rms = np.sqrt(np.mean(wave[np.abs(wave) > 0] ** 2))
        snr = speaker.snr_db + rng.uniform(-4, 4)
        wave = wave + speech_rms * 10 ** (-snr / 20) * rng.standard_normal(wave.shape[0])
        wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.2, 0.9)
        utterances.append((wave.astype(np.float32), " ".join(chosen), speaker.name))
    return utterances


# -- reading audio --------------------------------------------------------------------------------
_AUDIO_CACHE: dict[tuple[str, int, int, int], tuple[np.ndarray, int, int]] = {}


def read_audio(path: str | Path, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """Decode a sound file to mono float32 at ``sample_rate`` with soundfile.

    Returns ``(samples (S,), channels, original rate)`` so callers can report conversions.
    Decoded arrays are cached in memory per (file, size, mtime, rate): reloading a corpus in
    the same process (train then eval, tests, notebooks) costs nothing.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("expected an audio file, found a folder" if path.is_dir() else "audio file not found",
                        path=path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, int(sample_rate))
    if key in _AUDIO_CACHE:
        return _AUDIO_CACHE[key]
    if stat.st_size == 0:  # libsndfile: "Format not recognised"
        raise DataError("the file is empty (0 bytes); expected a WAV, FLAC, OGG/Opus, MP3 or AIFF recording",
                        path=path, readable=True)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot decode audio ({first}); {_expected_audio(path)}", path=path,
                        readable=_audio_container(path)) from None
    declared = wav_declared_frames(path)
    if declared is not None and declared > data.shape[0]:  # libsndfile reads what is there, silently
        raise DataError(f"the file is truncated: its WAV header declares {declared} samples, the file holds "
                        f"{data.shape[0]} (cut short while copying or writing?)", path=path, readable=True)
    if ogg_complete(path) is False:  # libsndfile decodes the pages that are there, silently
        raise DataError(f"the file is truncated: its Ogg stream has no end-of-stream page ({data.shape[0]} samples "
                        "were decoded from what is there; cut short while copying or writing?)", path=path,
                        readable=True)
    bad = int(data.size - np.isfinite(data).sum())
    if bad:  # a float WAV can hold NaN / inf: one would turn the whole batch's loss into NaN
        first = int(np.argwhere(~np.isfinite(data))[0][0])
        raise DataError(f"{bad} sample(s) are not finite numbers (NaN or infinity; the first at sample {first}, "
                        f"{first / rate:.3f} s); expected audio samples", path=path, readable=True)
    channels = int(data.shape[1])
    wave = data.mean(axis=1) if channels > 1 else data[:, 0]
    if channels > 1 and wave.size:
        loudest = float(np.sqrt(np.mean(np.square(data, dtype=np.float64), axis=0)).max())
        mixed = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        if loudest > 0 and mixed < 0.1 * loudest:  # e.g. one channel wired in opposite phase
            raise DataError(f"its {channels} channels cancel out when mixed down to mono (the mix is "
                            f"{20 * math.log10(max(mixed, 1e-12) / loudest):.0f} dB below the loudest channel: "
                            "a channel in opposite phase?); save one channel of it", path=path, readable=True)
    if rate != sample_rate and wave.size:
        source = int(rate)
        if source // math.gcd(source, int(sample_rate)) > 1000:
            # 8,001 or 22,051 Hz share no divisor with the model's rate: an exact resampling filter
            # would take seconds and gigabytes per file; a source rate rounded to 50 Hz changes pitch
            # and tempo by < 0.6 % (the encoder's speed perturbation does the same)
            source = max(50, round(source / 50.0) * 50)
            log.warning("%s: sample rate %d Hz resampled as %d Hz (within %.2f %%) to %d Hz", path, rate, source,
                        100 * abs(source - rate) / rate, sample_rate)
        tensor = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), source, int(sample_rate))
        wave = tensor.numpy()
    result = (np.ascontiguousarray(wave, dtype=np.float32), channels, int(rate))
    _AUDIO_CACHE[key] = result
    return result


# audio files by extension (data.path naming one is no manifest, whether or not libsndfile reads it)
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm"}


_DECODED_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"}  # libsndfile >= 1.1


def _expected_audio(path: Path) -> str:
    """What a file that did not decode should have been, by its name: a damaged ``.mp3`` was told
    "expected a WAV/FLAC/OGG file", which sent its owner converting a format that is read."""
    suffix = path.suffix.lower()
    if suffix in _DECODED_SUFFIXES:
        return f"expected a valid {suffix[1:].upper()} recording (is the file damaged, cut short or misnamed?)"
    if suffix in _AUDIO_SUFFIXES:
        return (f"{suffix} is not read (libsndfile reads WAV, FLAC, OGG/Opus, MP3, AIFF): convert it, e.g. "
                f"ffmpeg -i {path.name} {path.with_suffix('.wav').name}")
    return "expected a WAV, FLAC, OGG/Opus, MP3 or AIFF recording"


def _audio_container(path: Path) -> bool:
    """Whether the file starts as a WAV, FLAC, Ogg or AIFF file does: one that libsndfile then cannot
    decode is a damaged clip (the checkpoint is of the right kind), not some other kind of file."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) in {b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM"}
    except OSError:
        return False


def ogg_complete(path: Path) -> bool | None:
    """Whether an Ogg file (Vorbis, Opus) ends with a whole page flagged end-of-stream; ``None`` when the
    file is not Ogg. A cut-short copy ends without one (or mid-page), and libsndfile decodes what is there
    without a word (a 10 s clip cut at half: 3.8 s read)."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"OggS":
                return None
            size = handle.seek(0, 2)
            start = max(0, size - 70_000)  # a page is at most 27 + 255 + 255 * 255 bytes
            handle.seek(start)
            tail = handle.read()
    except OSError:
        return None
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:  # the last page that parses to the end of the file
        header = tail[at : at + 27]
        if len(header) == 27 and header[4] == 0:  # stream structure version 0
            segments = tail[at + 27 : at + 27 + header[26]]
            if len(segments) == header[26] and at + 27 + header[26] + sum(segments) == len(tail):
                return bool(header[5] & 0x04)  # header type: end of stream
    return False


def wav_declared_frames(path: Path) -> int | None:
    """The sample frames a RIFF/WAVE file's ``data`` chunk header declares, or ``None`` when the file
    is not a WAV or the writer left the size open (0 or 0xFFFFFFFF, as streaming writers do)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    fmt = handle.read(size + (size & 1))
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
                elif name == b"data":
                    # left open by a streaming writer: 0, 0xFFFFFFFF, or arecord's 0x80000000 placeholder
                    # (its largest file size), which no finished file of ours comes near
                    if not block_align or size == 0 or size >= 0x7FFF0000:
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), 1)
    except OSError:
        return None


def wav_files(folder: Path, recursive: bool = False, suffixes: Iterable[str] = (".wav",)) -> list[Path]:
    """The ``.wav`` files (or those of other ``suffixes``) of ``folder`` (of its subfolders too if
    ``recursive``), any case of the suffix (``.WAV`` from Windows tools), sorted; none if it is no folder."""
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.suffix.lower() in suffixes and p.is_file())


_MANIFEST_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json"}


def manifest_records(manifest: Path, required: tuple[str, ...], hint: str, optional: tuple[str, ...] = ()
                     ) -> list[tuple[int, dict[str, Any]]]:
    """``(row, record)`` of a manifest (``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json``), its columns found in any case."""
    content, suffix = read_text(manifest), manifest.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return list(csv_records(content, "," if suffix == ".csv" else "\t", manifest, required=required, hint=hint,
                                optional=optional))
    if suffix in {".jsonl", ".json"}:
        return list(jsonl_records(content, manifest, (*required, *optional), hint))
    raise DataError(f"unknown manifest type {suffix!r}; expected .csv, .tsv or .jsonl", path=manifest)


def audio_beside(manifest: Path, row: int, column: str, audio: str) -> str:
    """A manifest row's audio path, relative to the manifest, that must name a file."""
    file = (manifest.parent / audio.strip()).resolve()
    if not file.is_file():
        raise DataError(f"audio file {file} not found (paths are relative to the manifest)", path=manifest, row=row,
                        field=column)
    return str(file)


def _manifest_files(manifest: Path, column: str) -> list[str]:
    """The audio files a manifest's ``column`` lists (predict: no transcript read)."""
    files: list[str] = []
    for row, record in manifest_records(manifest, (column,), "data.path_column", optional=("offset", "duration")):
        audio = record.get(column)
        if not isinstance(audio, str) or not audio.strip():
            raise DataError(f"expected an audio file path, found {audio!r}", path=manifest, row=row, field=column)
        file = audio_beside(manifest, row, column, audio)
        offset, duration = manifest_segment(record, manifest, row)
        files.append(Segment(file, offset, duration) if offset or duration is not None else file)
    if not files:
        raise DataError("the manifest lists no recordings", path=manifest)
    log.info("%s: the %d recording(s) of its %r column", manifest, len(files), column)
    return files


def fsdd_transcript(name: str) -> tuple[str, str, int] | None:
    """``7_jackson_32.wav`` (or ``.flac``, any audio suffix) -> ``("seven", "jackson", 32)``; ``None`` for other names."""
    match = FSDD_NAME.match(name)
    if match is None or match.group(4).lower() not in _AUDIO_SUFFIXES:
        return None
    return DIGIT_WORDS[int(match.group(1))], match.group(2).lower(), int(match.group(3))


def normalise_text(text: str, lowercase: bool = True) -> str:
    text = " ".join(str(text).split())
    return text.lower() if lowercase else text


@dataclass
class Utterance:
    """One example before encoding: where it came from (for error messages) and what it says."""

    source: str  # the wav file, or "<generated>"
    text: str
    speaker: str = ""
    index: int = 0  # FSDD recording number; generated: position
    row: int | None = None  # manifest row
    split: str = ""  # from a manifest's split column
    wave: np.ndarray | None = None
    offset: float = 0.0  # a manifest's segment of its file (NeMo's offset / duration, in seconds)
    duration: float | None = None

    @property
    def key(self) -> str:
        """The clip: its file, and the segment of it when the manifest gives one."""
        return segment_name(self.source, self.offset, self.duration)


def segment_name(source: str, offset: float, duration: float | None) -> str:
    """``file`` for a whole file, ``file@0.975+0.644`` for a segment (seconds): a name for messages,
    results and the audio cache."""
    if not offset and duration is None:
        return source
    return f"{source}@{offset:g}" + (f"+{duration:g}" if duration is not None else "")


class Segment(str):
    """A segment of a recording to transcribe (a manifest row with NeMo's ``offset`` / ``duration``),
    named ``file@offset+duration``; JSON-serialises as its name."""

    file: str
    offset: float
    duration: float | None

    def __new__(cls, file: str, offset: float, duration: float | None) -> Self:
        item = super().__new__(cls, segment_name(file, offset, duration))
        item.file, item.offset, item.duration = file, offset, duration
        return item


def manifest_segment(record: dict[str, Any], manifest: Path, row: int) -> tuple[float, float | None]:
    """A manifest row's segment of its file: NeMo's ``offset`` and ``duration`` columns (seconds; both
    optional). Why: a NeMo manifest of a long recording's segments was read as the whole file for
    each row, every transcript beside all of the recording's speech."""
    values: dict[str, float | None] = {}
    for column in ("offset", "duration"):
        value = record.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            values[column] = None
            continue
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0 or (column == "duration" and number == 0):
            raise DataError(f"expected the segment's {column} in seconds ({'> 0' if column == 'duration' else '>= 0'}), "
                            f"found {value!r}", path=manifest, row=row, field=column)
        values[column] = number
    return values["offset"] or 0.0, values["duration"]


def cut_segment(wave: np.ndarray, rate: int, offset: float, duration: float | None, name: str) -> np.ndarray:
    """The samples of a segment of a decoded file; a segment that starts past the file's end, or runs
    more than 0.1 s past it (a manifest of another recording, durations in ms?), is an error."""
    if not offset and duration is None:
        return wave
    length = wave.size / rate
    end = offset + duration if duration is not None else length
    if offset >= length or end > length + 0.1:
        raise DataError(f"the segment {offset:g} s + {(duration if duration is not None else length - offset):g} s "
                        f"runs past the end of the recording ({length:.3f} s); offset and duration are in seconds",
                        path=name, readable=True)
    return wave[round(offset * rate) : min(wave.size, round(end * rate))]


def _clip(utt: Utterance) -> object:
    """What makes two utterances the same clip: a manifest's file, or its segment (it may list one
    twice); any other utterance is its own (generated ones share the source "<generated>")."""
    return utt.key if utt.row is not None else id(utt)


def _take_shuffled(utterances: list[Utterance], count: int, rng: random.Random) -> tuple[list[Utterance], list[Utterance]]:
    """About ``count`` utterances drawn at random, and the rest, with the rows of one clip (a manifest
    that lists it twice) kept on the same side. Without repeats: exactly ``rng.shuffle`` and a cut."""
    groups: dict[object, list[Utterance]] = {}
    for utt in utterances:
        groups.setdefault(_clip(utt), []).append(utt)
    order = list(groups.values())
    rng.shuffle(order)
    taken: list[Utterance] = []
    rest: list[Utterance] = []
    for group in order:
        (taken if len(taken) < count else rest).extend(group)
    return taken, rest


def _cell(record: dict[str, Any], column: str) -> str:
    """A manifest cell as text, stripped: "" where it is missing or null (never for a number such as 0)."""
    value = record.get(column)
    return "" if value is None else str(value).strip()


class SpeechDataModule(SequenceDataModule):
    """Waveforms ``(B, S)`` + sample counts -> character targets for CTC.

    Args:
        path: ``None`` for the generated corpus; a manifest file; a folder holding
            ``manifest.{csv,tsv,jsonl}``; or a folder of FSDD-named wav files (or its parent
            with a ``recordings/`` folder, as the FSDD repository is laid out).
        format: ``auto``, ``manifest`` or ``fsdd``.
        path_column / text_column: manifest columns (audio path relative to the manifest,
            transcript); ``split_column`` (train/val|dev|valid/test) and ``speaker_column`` are
            used when present.
        sample_rate: every waveform is resampled to this rate (stored in the spec).
        holdout_speakers: these speakers form the test split (speaker-independent testing);
            otherwise FSDD uses its official split (recordings 0-4 of every speaker -> test),
            a manifest its split column, and the rest a seeded random split.
        val_speakers: these speakers form the val split, so that early stopping and the best
            checkpoint are chosen on voices the model has not trained on (model selection for
            speaker-independent testing); otherwise val is ``val_fraction`` of train.
        val_fraction / test_fraction: carved (seeded) from the training data when a split is
            not given otherwise.
        lowercase: lowercase transcripts before building the vocabulary.
        unknown_chars: ``error`` (DataError naming the file and characters) or ``drop``
            (remove them, with a warning) for val/test characters missing from the vocabulary.
        empty_clips: ``error`` or ``skip`` (with a warning naming each file) for clips with
            no samples or a peak below ``silence_threshold``.
        cache_dir: optional folder for a decoded-audio cache (one ``.pt`` per corpus), for
            corpora where decoding or resampling is slow.
        num_examples: size of the generated corpus; ``num_speakers`` / ``max_words`` shape it.
        seed: seed for generation and splitting.
    """

    # what `lstmkit predict input=...` expects (named in errors)
    predict_input = "audio file paths, folders of recordings or manifests (.csv / .tsv / .jsonl: their path column)"
    spec_settings = ("sample_rate",)
    # data.path_column=: the column of a manifest given to predict (the training data's by default)
    predict_read_options: ClassVar[dict[str, tuple[str, ...] | None]] = {"path_column": None}
    predict_manifests: ClassVar[bool] = True  # predict's input_file=<manifest.csv> is one, not a list of paths

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        path_column: str = "path",
        text_column: str = "text",
        split_column: str = "split",
        speaker_column: str = "speaker",
        sample_rate: int = 8000,
        holdout_speakers: list[str] | None = None,
        val_speakers: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        lowercase: bool = True,
        unknown_chars: str = "error",
        empty_clips: str = "error",
        silence_threshold: float = SILENCE_PEAK,
        cache_dir: str | None = None,
        num_examples: int = 1500,
        num_speakers: int = 24,
        max_words: int = 3,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unknown_chars not in {"error", "drop"}:
            raise ConfigError(f"data.unknown_chars={unknown_chars!r}: expected error or drop")
        if empty_clips not in {"error", "skip"}:
            raise ConfigError(f"data.empty_clips={empty_clips!r}: expected error or skip")
        if format not in {"auto", "manifest", "fsdd"}:
            raise ConfigError(f"data.format={format!r}: expected auto, manifest or fsdd")
        self.path, self.format = path, format
        self.path_column, self.text_column = path_column, text_column
        self.split_column, self.speaker_column = split_column, speaker_column
        self.sample_rate = int(sample_rate)
        # data.holdout_speakers=theo (no brackets) is one speaker, not the letters t, h, e, o
        self.holdout_speakers = [str(s).lower() for s in as_list(holdout_speakers)]
        self.val_speakers = [str(s).lower() for s in as_list(val_speakers)]
        if set(self.holdout_speakers) & set(self.val_speakers):
            raise ConfigError(f"data.val_speakers {self.val_speakers} and data.holdout_speakers "
                              f"{self.holdout_speakers} overlap: a speaker is either val or test")
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)
        self.lowercase = lowercase
        self.unknown_chars, self.empty_clips = unknown_chars, empty_clips
        self.silence_threshold = silence_threshold
        self.cache_dir = cache_dir
        self.num_examples, self.num_speakers, self.max_words = num_examples, num_speakers, max_words
        self.seed = seed
        self.collate = PadCollate(pad_value=0.0, target_pad=0, sequence_targets=True)
        self.manifest: Path | None = None  # set when a manifest is read; its errors name it

    # -- finding the utterances ---------------------------------------------------------------
    def _utterances(self) -> list[Utterance]:
        if self.path is None:
            generated = generate_utterances(self.num_examples, self.seed, self.sample_rate,
                                            self.num_speakers, self.max_words)
            return [Utterance("<generated>", text, speaker, index=i, wave=wave)
                    for i, (wave, text, speaker) in enumerate(generated)]
        path = Path(self.path).expanduser()
        if not path.exists():
            raise path_not_found(path)
        fmt = self.format
        if path.is_file():
            if fmt == "fsdd":
                raise DataError("format=fsdd expects a folder of wav files, found a file", path=path)
            if path.suffix.lower() in _AUDIO_SUFFIXES or _audio_container(path):
                # not "row 1: not valid UTF-8 ... re-save the file as UTF-8": it was read as a manifest
                raise DataError("data.path is an audio file; expected a folder of recordings or a manifest CSV "
                                "(to transcribe one clip: lstmkit predict ckpt_path=<checkpoint> input=<file>)",
                                path=path, readable=True)
            return self._read_manifest(path)
        manifests = [path / name for name in _MANIFEST_NAMES if (path / name).is_file()]
        if fmt in {"auto", "manifest"} and len(manifests) > 1:
            raise DataError(f"the folder holds {len(manifests)} manifests ({', '.join(m.name for m in manifests)}); "
                            "set data.path to the one to read", path=path)
        if fmt in {"auto", "manifest"} and manifests:
            return self._read_manifest(manifests[0])
        if fmt == "manifest":
            raise DataError(f"no manifest in this folder; expected one of {list(_MANIFEST_NAMES)}", path=path)
        top = wav_files(path, suffixes=_AUDIO_SUFFIXES)
        folder = path if top else path / "recordings"
        if not (top or wav_files(folder, suffixes=_AUDIO_SUFFIXES)):
            nested = wav_files(path, recursive=True, suffixes=_AUDIO_SUFFIXES)
            where = (f"; {len(nested)} audio file(s) are in subfolders (e.g. {nested[0].parent}), which are not "
                     "read: point data.path at their folder or list them in a manifest") if nested else ""
            raise DataError(
                "found no manifest and no audio files (nor a recordings/ folder of them); expected "
                f"one of {list(_MANIFEST_NAMES)} or FSDD-named recordings <digit>_<speaker>_<n>.wav (.flac, "
                f".ogg, .mp3...){where}", path=path,
            )
        return self._read_fsdd(folder)

    def _read_fsdd(self, folder: Path) -> list[Utterance]:
        utterances = []
        files = wav_files(folder, suffixes=_AUDIO_SUFFIXES)
        nested = len(wav_files(folder, recursive=True, suffixes=_AUDIO_SUFFIXES)) - len(files)
        if nested:
            log.warning("%s: %d audio file(s) in its subfolders are not read (a folder of FSDD recordings is "
                        "flat; list other layouts in a manifest)", folder, nested)
        stems: dict[str, Path] = {}
        for file in files:  # 7_jackson_3.wav beside 7_jackson_3.flac: one recording read twice, maybe split apart
            twin = stems.setdefault(file.stem.lower(), file)
            if twin is not file:
                raise DataError(f"{twin.name} and {file.name} are one recording in two formats; keep one (each "
                                "would be an utterance, and the two could land in train and test)", path=folder)
        for file in files:
            parsed = fsdd_transcript(file.name)
            if parsed is None:
                raise DataError(
                    "file name does not follow the Free Spoken Digit pattern <digit>_<speaker>_<n>.wav (or .flac...) "
                    "(e.g. 7_jackson_32.wav); use a manifest for other corpora", path=file,
                )
            text, speaker, index = parsed
            utterances.append(Utterance(str(file), text, speaker, index=index, split=""))
        # the official split: recordings 0-4 of every speaker are the test set
        for utt in utterances:
            utt.split = "" if self.holdout_speakers else ("test" if utt.index < 5 else "train")
        return utterances

    def _read_manifest(self, manifest: Path) -> list[Utterance]:
        self.manifest = manifest
        records = manifest_records(manifest, (self.path_column, self.text_column),
                                   "data.path_column / data.text_column (data.split_column / data.speaker_column)",
                                   optional=(self.split_column, self.speaker_column, "offset", "duration"))
        utterances = []
        for row, record in records:
            audio, text = record.get(self.path_column), record.get(self.text_column)
            if audio is None or not str(audio).strip():
                raise DataError("empty or missing audio path", path=manifest, row=row, field=self.path_column)
            if text is None or not str(text).strip():
                raise DataError("empty or missing transcript", path=manifest, row=row, field=self.text_column)
            for value, column, kind in ((audio, self.path_column, "a file path"), (text, self.text_column, "text")):
                if not isinstance(value, str | int | float) or isinstance(value, bool):  # JSON lists, objects
                    raise DataError(f"expected {kind}, found a JSON {type(value).__name__}: {json.dumps(value)[:60]}",
                                    path=manifest, row=row, field=column)
            file = audio_beside(manifest, row, self.path_column, str(audio))
            split = _cell(record, self.split_column).lower()
            if split and split not in _SPLIT_ALIASES:
                raise DataError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_ALIASES)}",
                                path=manifest, row=row, field=self.split_column)
            speaker = _cell(record, self.speaker_column).lower()  # a JSONL speaker 0 is speaker "0", not none
            offset, duration = manifest_segment(record, manifest, row)
            utterances.append(Utterance(str(file), str(text), speaker, row=row,
                                        split=_SPLIT_ALIASES.get(split, ""), offset=offset, duration=duration))
        if not utterances:
            raise DataError("the manifest lists no utterances", path=manifest)
        self._check_repeated_files(utterances, manifest)
        blank = [u.row for u in utterances if not u.split]
        if blank and len(blank) < len(utterances):  # some rows have a split and some none
            log.warning("%s: %d row(s) have an empty %r (e.g. row %s): they are split as data without one "
                        "(train, less data.val_fraction / data.test_fraction where a split has no rows)",
                        manifest, len(blank), self.split_column, blank[0])
        return utterances

    def _check_repeated_files(self, utterances: list[Utterance], manifest: Path) -> None:
        """A clip listed twice: an error when its rows disagree (two transcripts, or two splits: the
        test set would score a clip the model trained on), else a warning (it counts twice)."""
        rows: dict[object, list[Utterance]] = {}
        for utt in utterances:
            rows.setdefault(_clip(utt), []).append(utt)
        repeated = {file: utts for file, utts in rows.items() if len(utts) > 1}
        for file, utts in repeated.items():
            first = utts[0]
            for other in utts[1:]:
                if normalise_text(other.text, self.lowercase) != normalise_text(first.text, self.lowercase):
                    raise DataError(f"{file} is also listed in row {first.row} with another transcript "
                                    f"({first.text!r} there, {other.text!r} here); keep one row",
                                    path=manifest, row=other.row, field=self.text_column)
                if other.split != first.split and not self.holdout_speakers and not self.val_speakers:
                    raise DataError(f"{file} is also listed in row {first.row} as {first.split or 'no split'}, here "
                                    f"as {other.split or 'no split'}: one clip in two splits would be scored on "
                                    "data it trained on; keep one row", path=manifest, row=other.row,
                                    field=self.split_column)
        if repeated:
            extra = sum(len(utts) - 1 for utts in repeated.values())
            file, utts = next(iter(repeated.items()))
            log.warning("%s: %d clip(s) are listed more than once (%d extra rows; e.g. %s in rows %s): each row "
                        "counts, and the rows of one clip always fall in the same split", manifest, len(repeated),
                        extra, file, ", ".join(str(u.row) for u in utts))

    # -- splitting ------------------------------------------------------------------------------
    def _split(self, utterances: list[Utterance]) -> dict[str, list[Utterance]]:
        rng = random.Random(self.seed)
        speakers = {u.speaker for u in utterances}
        for option, chosen in (("holdout_speakers", self.holdout_speakers), ("val_speakers", self.val_speakers)):
            missing = sorted(set(chosen) - speakers)
            if missing and speakers == {""}:
                raise ConfigError(f"data.{option}: the data names no speakers; a manifest needs a "
                                  f"{self.speaker_column!r} column (data.speaker_column) to split by speaker")
            if missing:
                raise ConfigError(f"data.{option}: no speaker(s) {missing} in the data; "
                                  f"speakers are {sorted(speakers)}")
        if self.group_batches and self.fixed_spec is None and speakers == {""}:
            raise ConfigError(f"data.group_batches=true: the data names no speakers; a manifest needs a "
                              f"{self.speaker_column!r} column (data.speaker_column) to batch by speaker")
        anonymous = sum(1 for u in utterances if not u.speaker)
        if anonymous and (self.holdout_speakers or self.val_speakers):
            log.warning("%d utterance(s) name no speaker (empty %r), so they cannot be held out: they are train",
                        anonymous, self.speaker_column)
        if self.holdout_speakers:
            moved = Counter((u.split, "test" if u.speaker in self.holdout_speakers else "train")
                            for u in utterances if u.split)
            moved = Counter({pair: n for pair, n in moved.items() if pair[0] != pair[1]})
            if moved:  # a manifest's split column said otherwise
                log.warning("data.holdout_speakers=%s: the speakers' utterances are the test split and the others' "
                            "train, against the manifest's split column for %s", list(self.holdout_speakers),
                            ", ".join(f"{n} from {a} to {b}" for (a, b), n in sorted(moved.items())))
            for utt in utterances:
                utt.split = "test" if utt.speaker in self.holdout_speakers else "train"
        if self.val_speakers:
            moved = sum(1 for u in utterances if u.speaker in self.val_speakers and u.split == "test")
            if moved:  # e.g. FSDD's official split: the val speakers' recordings 0-4 leave the test set
                log.warning("data.val_speakers=%s: %d of their utterances move from the test split to val, so "
                            "the test set is no longer the data's own split", list(self.val_speakers), moved)
            for utt in utterances:
                if utt.speaker in self.val_speakers:
                    utt.split = "val"
                elif utt.split == "val":
                    utt.split = "train"
        splits: dict[str, list[Utterance]] = {"train": [], "val": [], "test": []}
        unassigned = []
        for utt in utterances:
            (splits[utt.split] if utt.split else unassigned).append(utt)
        if not splits["test"]:
            n_test = round(len(unassigned) * self.test_fraction)
            splits["test"], unassigned = _take_shuffled(unassigned, n_test, rng)
        else:
            rng.shuffle(unassigned)  # as before: the same draws, so the same val split for a seed
        splits["train"] += unassigned
        if not splits["val"]:
            n_val = round(len(splits["train"]) * self.val_fraction)
            splits["val"], splits["train"] = _take_shuffled(splits["train"], n_val, rng)
        for name in ("train", "val", "test"):
            if not splits[name]:
                raise DataError(f"the {name} split is empty; give more data or other split settings",
                                path=self.path)
        return splits

    @property
    def group_source(self) -> str:
        return (f"speaker (a manifest's {self.speaker_column!r} column, data.speaker_column, or the speaker in an "
                "FSDD file name)")

    # -- decoding audio -------------------------------------------------------------------------
    def _load_waves(self, split: str, utterances: list[Utterance]) -> list[Utterance]:
        """Decode every file (cached), report conversions once, handle empty clips."""
        stereo, resampled, skipped = [], Counter(), []
        cache_file = self._cache_file(utterances)  # named by every file of the split, skipped ones too
        cached = self._disk_cache(cache_file)
        kept = []
        last: tuple[str, tuple[np.ndarray, int, int]] | None = None  # a file's segments decode it once
        for utt in track(utterances, f"decoding {split} audio"):
            if utt.wave is None:
                if cached is not None and utt.key in cached:
                    utt.wave = cached[utt.key]
                else:
                    try:
                        decoded = last[1] if last is not None and last[0] == utt.source else \
                            read_audio(utt.source, self.sample_rate)
                        last = (utt.source, decoded)
                        wave, channels, rate = decoded
                        utt.wave = cut_segment(wave, self.sample_rate, utt.offset, utt.duration, utt.source)
                    except DataError as err:  # a manifest's file: name the manifest's row as well
                        if utt.row is None:
                            raise
                        raise DataError(f"{err} (listed in {self.manifest}, row {utt.row})") from None
                    if channels > 1:
                        stereo.append(utt.source)
                    if rate != self.sample_rate:
                        resampled[rate] += 1
            if utt.wave.size == 0 or float(np.abs(utt.wave).max()) < self.silence_threshold:
                what = "has no samples" if utt.wave.size == 0 else (
                    f"is silent (peak {float(np.abs(utt.wave).max()):.1e} < data.silence_threshold "
                    f"{self.silence_threshold:g})")
                if self.empty_clips == "error":
                    if utt.row is not None:  # the row is the manifest's: name it, and the clip
                        raise DataError(f"clip {utt.source} {what}; remove the row or set data.empty_clips=skip",
                                        path=self.manifest, row=utt.row, field=self.path_column)
                    raise DataError(f"clip {what}; remove it or set data.empty_clips=skip", path=utt.source)
                log.warning("skipping %s: clip %s", utt.source, what)
                skipped.append(utt.source)
                continue
            kept.append(utt)
        if stereo:
            log.info("%s: %d multi-channel file(s) mixed down to mono (mean of channels), e.g. %s",
                     split, len(stereo), stereo[0])
        for rate, count in sorted(resampled.items()):
            log.info("%s: %d file(s) at %d Hz resampled to %d Hz", split, count, rate, self.sample_rate)
        if skipped:
            log.warning("%s: skipped %d empty/silent clip(s)", split, len(skipped))
        if cached is None and self.cache_dir and self.path is not None and kept:  # no empty caches (split=all)
            self._write_disk_cache(cache_file, kept)
        return kept

    def _cache_file(self, utterances: list[Utterance]) -> Path | None:
        if not self.cache_dir or self.path is None:
            return None
        signature = hashlib.sha1(str(self.sample_rate).encode())
        for utt in sorted(utterances, key=lambda u: u.key):
            stat = Path(utt.source).stat()
            signature.update(f"{utt.key}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return Path(self.cache_dir).expanduser() / f"speech-{signature.hexdigest()[:16]}.pt"

    def _disk_cache(self, file: Path | None) -> dict[str, np.ndarray] | None:
        if file is None or not file.is_file():
            return None
        try:
            stored = torch.load(file, map_location="cpu", weights_only=True)
            return {str(source): wave.numpy() for source, wave in stored.items()}
        except Exception as err:  # noqa: BLE001 - a cut-short or foreign file: decode again, rewrite it
            log.warning("ignoring the unreadable audio cache %s (%s); decoding the files again", file,
                        str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            return None

    def _write_disk_cache(self, file: Path | None, utterances: list[Utterance]) -> None:
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({u.key: torch.from_numpy(u.wave) for u in utterances if u.wave is not None}, file)
        log.info("decoded audio cached in %s", file)

    # -- building -------------------------------------------------------------------------------
    def build(self) -> DataSpec:
        utterances = self._utterances()
        splits = {"train": [], "val": [], "test": utterances} if self.whole else self._split(utterances)
        for name in ("train", "val", "test"):
            for utt in splits[name]:
                utt.text = normalise_text(utt.text, self.lowercase)
        if self.fixed_spec is not None:
            spec = self.fixed_spec
            self.sample_rate = int(spec.sample_rate or self.sample_rate)
        else:
            chars = {c for utt in splits["train"] for c in utt.text} - {" "}
            classes = [BLANK, " ", *sorted(chars)]
            words = sorted({w for utt in splits["train"] for w in utt.text.split()})  # for head.lexicon=train
            spec = DataSpec(input_kind="waveform", classes=classes, blank_id=0, sample_rate=self.sample_rate,
                            extra={"lowercase": self.lowercase, "words": words, "path_column": self.path_column})
        index = {c: i for i, c in enumerate(spec.classes or [])}
        # a trained model's spec (eval): the train split is never scored, so its audio is not decoded
        # and its transcripts are not held to the model's characters
        self.splits["train"] = SequenceDataset([], [])
        for name in ("train", "val", "test") if self.fixed_spec is None else ("val", "test"):
            utterances = self._load_waves(name, splits[name])
            inputs, targets, sources, speakers = [], [], [], []
            for utt in utterances:
                ids = self._encode(utt, index, name)
                if ids is None:
                    continue
                inputs.append(torch.from_numpy(utt.wave))
                targets.append(torch.tensor(ids, dtype=torch.int64))
                sources.append(utt.source if utt.row is None else f"{self.manifest} row {utt.row} ({utt.key})")
                speakers.append(utt.speaker)
            self.splits[name] = SequenceDataset(inputs, targets, sources, groups=speakers)
        log.info("speech data: %s utterances, %d characters + blank", self.split_sizes(), len(index) - 1)
        return spec

    def _encode(self, utt: Utterance, index: dict[str, int], split: str) -> list[int] | None:
        unknown = sorted({c for c in utt.text if c not in index})
        text = utt.text
        if unknown:
            if self.unknown_chars == "error":
                known = ("the model's characters" if self.fixed_spec is not None
                         else "the vocabulary learnt from the training transcripts")
                where = {"path": self.manifest, "row": utt.row, "field": self.text_column} if utt.row is not None \
                    else {"path": utt.source}
                raise DataError(
                    f"{'all' if self.whole and split == 'test' else split} transcript {utt.text!r}"
                    f"{f' (of {utt.key})' if utt.row is not None else ''} has "
                    f"character(s) {unknown} that are not in {known}; fix the transcript or set "
                    "data.unknown_chars=drop", **where,
                )
            log.warning("%s: dropped character(s) %s not in the vocabulary from %r", utt.source, unknown, text)
            text = " ".join("".join(c for c in text if c in index).split())
            if not text:
                log.warning("%s: transcript empty after dropping unknown characters; skipped", utt.source)
                return None
        return [index[c] for c in text]

    @classmethod
    def serving_inputs(cls, spec: DataSpec) -> dict[str, Any]:
        return {"inputs": f"(batch, samples) float32: each clip mono (channels averaged), resampled to "
                          f"{spec.sample_rate} Hz, samples in [-1, 1]; padded with 0",
                "lengths": "(batch,) int64: samples per clip (the model computes its features inside)"}

    @classmethod
    def predict_items(cls, spec: DataSpec, inputs: list[Any]) -> list[Any]:
        """A folder -> as training finds its data: its manifest (``manifest.csv`` ...), else its recordings
        (audio files by extension, in name order), else those of its ``recordings/`` folder (FSDD's root); a
        manifest (``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json``) -> the files of its path column, relative to it as
        in training (no transcript needed). Why: training reads both, and a user transcribing a held-out folder or a test manifest
        should not have to list its files one by one."""
        items: list[Any] = []
        for raw in inputs:
            path = Path(raw).expanduser() if isinstance(raw, str) else None
            if path is not None and path.is_dir():
                manifests = [path / name for name in _MANIFEST_NAMES if (path / name).is_file()]
                if len(manifests) == 1:  # as training finds a folder's data: its manifest first
                    items += _manifest_files(manifests[0], str(spec.extra.get("path_column") or "path"))
                    continue
                here, nested = wav_files(path, suffixes=_AUDIO_SUFFIXES), wav_files(path / "recordings", suffixes=_AUDIO_SUFFIXES)
                folder, files = (path, here) if here or not nested else (path / "recordings", nested)
                if not files:
                    raise DataError(f"a folder with no audio files ({', '.join(sorted(_AUDIO_SUFFIXES))}) in it "
                                    "(nor one manifest, nor a recordings/ folder of them); expected recordings, a "
                                    "folder of them or a manifest", path=path, readable=True)
                log.info("%s: the %d recording(s) of the folder, in name order", folder, len(files))
                items += [str(f) for f in files]
            elif path is not None and path.is_file() and path.suffix.lower() in _MANIFEST_SUFFIXES:
                items += _manifest_files(path, str(spec.extra.get("path_column") or "path"))
            else:
                items.append(raw)
        return items

    @classmethod
    def make_predict_batch(cls, spec: DataSpec, inputs: list[Any]) -> Batch:
        """Audio paths -> padded mono waveforms at the model's sample rate (empty targets)."""
        rate = int(spec.sample_rate or 8000)
        examples = []
        for item in inputs:
            if isinstance(item, Segment):  # a manifest row's segment of its recording
                wave, channels, _ = read_audio(item.file, rate)
                wave = cut_segment(wave, rate, item.offset, item.duration, item.file)
            else:
                wave, channels, _ = read_audio(str(item), rate)
            if channels > 1:  # training says so too
                log.info("%s: %d channels mixed down to mono (their mean)", item, channels)
            if wave.size == 0:
                raise DataError("clip has no samples", path=item, readable=True)
            peak = float(np.abs(wave).max())
            if peak < SILENCE_PEAK:  # training refuses such clips; a transcript of one is noise
                log.warning("%s: the clip is silent (peak %.1e); its transcript means nothing", item, peak)
            if wave.size < rate // 20:  # shorter than 50 ms: less than a syllable
                log.warning("%s: the clip is %d samples long (%.1f ms at %d Hz); its transcript means little",
                            item, wave.size, 1000 * wave.size / rate, rate)
            examples.append((torch.from_numpy(wave), torch.zeros(0, dtype=torch.int64)))
        return PadCollate(pad_value=0.0, sequence_targets=True)(examples)
