"""ECG beats for anomaly detection: generated beats by default, UCR-format files with ``path``.

One example is one heartbeat: ``T`` samples (140 in ECG5000) and a class number (1 = normal,
2-5 = anomalous types in the UCR convention). The model only sees normal vs anomaly (the
positive class is *anomaly*); the finer class is kept for the stratified split, so that the rare
anomaly types appear in every split in proportion.

The embedded beats are generated (seeded, deterministic) from the standard synthetic-ECG recipe
(McSharry et al. 2003, "A dynamical model for generating synthetic electrocardiogram signals"):
P wave, QRS complex and T wave as Gaussian bumps with per-beat variation in timing, width and
amplitude, plus baseline wander and noise. Anomalies change the *shape* of the beat, as real ones
do: premature ventricular contractions (no P wave, wide tall QRS, discordant T), supraventricular
ectopic beats (premature, with an early, inverted or missing P wave), inverted / flattened T waves
and ST elevation. Each anomaly has a severity, and mild ones resemble normal beats, so the task is
learnable but not trivially separable.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from typing_extensions import Self

from lstmkit.data.base import PadCollate, SequenceDataModule, SequenceDataset, path_not_found
from lstmkit.data.text import read_text
from lstmkit.errors import ConfigError, DataError, LstmkitError
from lstmkit.types import Batch, DataSpec

log = logging.getLogger(__name__)

NORMAL, ANOMALY = "normal", "anomaly"
#: Names of the generated classes (the real ECG5000 classes: the README's ECG section).
GENERATED_CLASSES = {1: "normal", 2: "pvc", 3: "supraventricular", 4: "inverted_t", 5: "st_elevation"}
LABEL_COLUMNS = ("first", "last", "none")
FORMATS = ("auto", "whitespace", "csv")
_DATA_SUFFIXES = {".txt", ".tsv", ".csv", ".dat", ".arff", ""}


# -- generated beats ------------------------------------------------------------------------------
def _bump(t: np.ndarray, centre: float, width: float, amplitude: float) -> np.ndarray:
    return amplitude * np.exp(-0.5 * ((t - centre) / width) ** 2)


def _beat(rng: np.random.Generator, t: np.ndarray, kind: int) -> np.ndarray:
    """One beat of class ``kind`` (see :data:`GENERATED_CLASSES`) sampled at times ``t`` in [0, 1)."""
    stretch = rng.uniform(0.93, 1.07)  # heart-rate variation stretches the beat around the R peak
    shift = rng.normal(0.0, 0.008)
    r_time = 0.38 + shift

    def at(centre: float) -> float:
        return r_time + (centre - 0.38) * stretch

    def jitter(scale: float) -> float:
        return 1.0 + rng.normal(0.0, scale)

    p = {"centre": at(0.20), "width": 0.022 * jitter(0.1), "amp": 0.15 * jitter(0.12)}
    q = {"centre": at(0.355), "width": 0.009 * jitter(0.1), "amp": -0.12 * jitter(0.15)}
    r = {"centre": r_time, "width": 0.011 * jitter(0.08), "amp": 1.0 * jitter(0.08)}
    s = {"centre": at(0.405), "width": 0.010 * jitter(0.1), "amp": -0.28 * jitter(0.15)}
    tw = {"centre": at(0.66), "width": 0.055 * jitter(0.1), "amp": 0.32 * jitter(0.12)}
    st_level = 0.0

    severity = rng.uniform(0.25, 1.0)  # mild anomalies overlap with normal variation
    if kind == 2:  # PVC: no P wave, wide and tall QRS, discordant (inverted) T wave, often early
        p["amp"] = 0.0
        widen = 1.0 + 2.2 * severity
        for wave in (q, r, s):
            wave["width"] *= widen
        r["amp"] *= 1.0 + 0.5 * severity
        s["amp"] *= 1.0 + 1.0 * severity
        tw["amp"] = -abs(tw["amp"]) * (0.3 + 0.9 * severity)
        early = 0.04 * severity
        for wave in (q, r, s, tw):
            wave["centre"] -= early
    elif kind == 3:  # supraventricular ectopic: premature, P wave early / inverted / missing
        early = 0.03 + 0.06 * severity
        for wave in (q, r, s, tw):
            wave["centre"] -= early
        p["centre"] = q["centre"] - rng.uniform(0.06, 0.12)
        p["amp"] *= rng.choice([-1.0, 0.0, 0.5]) * severity + (1.0 - severity) * 0.6
    elif kind == 4:  # inverted (or, when mild, flattened) T wave
        tw["amp"] *= 1.0 - 2.0 * severity
    elif kind == 5:  # ST elevation: a raised plateau from the S wave into the T wave
        st_level = 0.06 + 0.24 * severity

    beat = sum(_bump(t, w["centre"], w["width"], w["amp"]) for w in (p, q, r, s, tw))
    if st_level:
        rise = 1.0 / (1.0 + np.exp(-(t - (s["centre"] + 0.02)) / 0.006))
        fall = 1.0 / (1.0 + np.exp((t - tw["centre"]) / 0.03))
        beat = beat + st_level * rise * fall
    wander = rng.uniform(0.0, 0.06) * np.sin(2 * math.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 2 * math.pi))
    drift = rng.normal(0.0, 0.03) * t
    noise = rng.normal(0.0, rng.uniform(0.01, 0.03), size=t.shape)
    gain = rng.uniform(0.7, 1.4)  # electrode gain: removed by per-beat normalisation
    offset = rng.normal(0.0, 0.2)
    return gain * (beat + wander + drift + noise) + offset


def generate_beats(
    num_beats: int = 3000, anomaly_fraction: float = 0.3, samples_per_beat: int = 140, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``num_beats`` ECG-like beats ``(N, T)`` float32 and their classes ``(N,)`` (1 = normal).

    Exactly ``round(num_beats * anomaly_fraction)`` beats are anomalous, spread evenly over the
    four anomaly types (classes 2-5 of :data:`GENERATED_CLASSES`), in a seeded random order.
    """
    if not 0.0 <= anomaly_fraction < 1.0:
        raise ConfigError(f"data.anomaly_fraction must be in [0, 1), got {anomaly_fraction}")
    rng = np.random.default_rng(seed)
    num_anomalies = round(num_beats * anomaly_fraction)
    kinds = np.array([1] * (num_beats - num_anomalies) + [2 + i % 4 for i in range(num_anomalies)])
    kinds = kinds[rng.permutation(num_beats)]
    t = np.arange(samples_per_beat) / samples_per_beat
    beats = np.stack([_beat(rng, t, int(k)) for k in kinds]) if num_beats else np.zeros((0, samples_per_beat))
    return beats.astype(np.float32), kinds.astype(np.int64)


def write_beats(path: str | Path, beats: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write beats in the UCR text format (label first, whitespace-separated, ``%e`` numbers)."""
    path = Path(path)
    rows = beats if labels is None else np.column_stack([np.asarray(labels, dtype=np.float64), beats])
    np.savetxt(path, rows, fmt="%.7e")
    return path


# -- reading files ----------------------------------------------------------------------------------
@dataclass
class BeatTable:
    """Beats read from one file: ``samples (N, T)``, ``labels (N,)`` (-1 = no label), file ``rows (N,)``."""

    path: str
    samples: np.ndarray
    labels: np.ndarray
    rows: np.ndarray

    def take(self, index: np.ndarray) -> BeatTable:
        return BeatTable(self.path, self.samples[index], self.labels[index], self.rows[index])

    @classmethod
    def concat(cls, tables: list[BeatTable]) -> BeatTable:
        """The beats of several tables, in order (their files named together)."""
        return cls(", ".join(dict.fromkeys(t.path for t in tables)), np.concatenate([t.samples for t in tables]),
                   np.concatenate([t.labels for t in tables]), np.concatenate([t.rows for t in tables]))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse_row(cells: list[str], path: Path | str, row: int, hint: str = "") -> np.ndarray:
    """The row's values; ``hint`` ends the error of a non-number (e.g. why the row looks like a header)."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        column = next(j for j, c in enumerate(cells) if not _is_number(c))
        raise DataError(f"expected a number, found {cells[column]!r}{hint}", path=path, row=row,
                        field=f"column {column}") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        column = int(bad[0])
        raise DataError(f"found {cells[column]!r}; every value must be a finite number",
                        path=path, row=row, field=f"column {column}")
    return values


def _counts_up(values: list[float] | np.ndarray) -> bool:
    """Whether ``values`` are 0, 1, 2, ... or 1, 2, 3, ...: row numbers or column numbers, not data."""
    values = np.asarray(values, dtype=np.float64)
    return values.size > 0 and values[0] in (0.0, 1.0) and bool(np.all(values == values[0] + np.arange(values.size)))


#: how to write a beat file with pandas so that it reads back as written
_PANDAS_FIX = "write the file with df.to_csv(path, index=False, header=False)"


def _pandas_header(cells: list[str]) -> str:
    """Why the first line ``cells`` looks like the header pandas writes, or ``""`` when it does not.

    Why: pandas names unnamed columns 0, 1, 2, ..., so its header is a line of numbers, which
    would otherwise be read as a beat (or fail as one, on its empty first cell: the index's name).
    """
    numbers = [float(c) for c in cells if _is_number(c)]
    if len(numbers) == len(cells) and len(cells) >= 3 and _counts_up(numbers):
        what = "the column numbers 0, 1, 2, ..., which pandas writes for unnamed columns"
    elif len(numbers) >= 2 and _counts_up(numbers):  # and an empty cell or a name: not a beat either
        what = ("an empty first cell above a row index, then the column numbers" if cells[0] == ""
                else "column names and the numbers 0, 1, 2, ... of unnamed columns")
    else:
        return ""
    return f"the line looks like a header written by pandas ({what}), not a beat; {_PANDAS_FIX}, or delete it"


def _label(
    value: float, known: set[int] | None, path: Path | str, row: int, column: int, model_layout: str = ""
) -> int:
    """The class number ``value`` of a row, checked.

    ``model_layout`` (predict) says where the model reads a label; the hints then point at the
    beat first, and at predict's ``data.label_column`` for a file written the other way.
    """
    if not float(value).is_integer():
        other = "last" if column == 0 else "first"
        hint = (f"{model_layout}; put the label there, give the samples alone, or set data.label_column={other} "
                f"if the label is the {other} column" if model_layout else
                f"the label is read from column {column}; data.label_column={other} if it is the {other} column")
        raise DataError(f"class label {value:g} is not a whole number ({hint})", path=path, row=row,
                        field=f"column {column}")
    label = int(value)
    if known is not None and label not in known:
        hint = (f"the classes of the model's training data; {model_layout}" if model_layout
                else "set data.normal_labels / data.anomaly_labels for other class numbers")
        raise DataError(f"class label {label} is not a known class; expected one of {sorted(known)} ({hint})",
                        path=path, row=row, field=f"column {column}")
    return label


def _warn_if_label_like(beats: list[np.ndarray], rows: list[int], label_column: str, known: set[int] | None,
                        where: str) -> None:
    """Say so when beats read as unlabelled hold a known class number where the model reads labels.

    Why: a labelled beat that lost one sample has exactly the model's samples per beat, so it is
    read as a beat without its label, the label as its first (or last) sample. Values of a
    recorded beat are practically never exactly a whole class number; a warning, not an error,
    because such a beat can still be right.
    """
    if known is None or label_column not in ("first", "last"):
        return
    column = 0 if label_column == "first" else -1
    suspect = [row for row, beat in zip(rows, beats, strict=True)
               if beat.size and float(beat[column]).is_integer() and int(beat[column]) in known]
    if suspect:
        log.warning("%s: %d beat(s) read without a label (e.g. row %d) have a class number of the model's (%s) as "
                    "their %s value: if it is the label, the beat lost one sample and is scored with its label as a "
                    "sample; give the beat's %d samples after its label", where, len(suspect), suspect[0],
                    ", ".join(map(str, sorted(known))), label_column, beats[0].size)


def _split_label(
    values: np.ndarray, label_column: str, known: set[int] | None, path: Path | str, row: int,
    predicting: bool = False,
) -> tuple[np.ndarray, int]:
    """A labelled row's samples and its checked label (a whole number, and a known class).

    File rows and predict's inline / ``input_file`` rows both come here, so that a beat given
    in the other label layout is refused the same way wherever it comes from, instead of its
    label being read as a sample and one sample dropped.
    """
    column = 0 if label_column == "first" else len(values) - 1
    layout = (f"this model reads a beat of {len(values)} values as its label in the {label_column} column and "
              f"{len(values) - 1} samples, as in its training data") if predicting else ""
    label = _label(values[column], known, path, row, column, layout)
    return (values[1:] if label_column == "first" else values[:-1]), label


def _one_format_each(files: list[Path]) -> list[Path]:
    """One file per name: an unpacked UCR archive holds ``ECG5000_TRAIN.txt`` and ``ECG5000_TRAIN.arff``,
    the same beats twice; the text one is read (said in the log), the ARFF one where it is alone."""
    texts = {f.stem.upper(): f for f in files if f.suffix.lower() != ".arff"}
    kept = []
    for file in files:
        twin = texts.get(file.stem.upper()) if file.suffix.lower() == ".arff" else None
        if twin is not None:  # only an .arff beside its text twin: two text files of one name stay an error
            log.info("%s: %s holds the same split in another format; %s is read", file.parent, file.name, twin.name)
        else:
            kept.append(file)
    return kept


def _arff_data(lines: list[str], path: Path, label_column: str, labels_required: bool = True
               ) -> tuple[list[str], str]:
    """An ARFF file's data lines (its header blanked, so that rows keep the file's line numbers, quotes
    around nominal values dropped) and where its class attribute is: ``first``, ``last`` or ``none``.
    A class value ``?`` (an instance still to classify, as Weka writes one) is a missing label: refused
    for training, and for ``predict`` (``labels_required`` false) the class values are left out.

    Why: the UCR archive ships every dataset as ``.arff`` beside ``.txt``; read as CSV, its ``@relation``
    line passed for a header and ``@attribute`` was "expected a number" on row 2.
    """
    kinds: list[str] = []
    data = next((i for i, line in enumerate(lines) if line.strip().lower() == "@data"), None)
    if data is None:
        raise DataError("an ARFF file without its @data line", path=path)
    for number, line in enumerate(lines[:data], start=1):
        text = line.strip()
        if text.lower().startswith("@attribute"):
            parts = re.match(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)$", text, re.IGNORECASE)
            if parts is None:
                raise DataError(f"unreadable attribute line {text[:60]!r}", path=path, row=number)
            kinds.append("class" if parts.group(2).strip().startswith("{") else parts.group(2).strip().lower())
    classes = [i for i, kind in enumerate(kinds) if kind == "class"]
    where = ("none" if not classes else "first" if classes == [0] else "last" if classes == [len(kinds) - 1]
             else "")
    if not where:
        raise DataError(f"the class attribute is attribute {classes[0] + 1} of {len(kinds)}; lstmkit reads it first "
                        "or last", path=path)
    if label_column not in (where, "first"):  # "first" is the default: the header decides
        log.info("%s: its ARFF header puts the class %s, not %s: read so", path, where, label_column)
    body = [re.sub(r"""['"]""", "", line) if not line.lstrip().startswith("%") else "" for line in lines[data + 1:]]
    if where != "none":
        position = 0 if where == "first" else -1
        cells = [line.split(",") if line.strip() else None for line in body]
        unknown = next((i for i, row in enumerate(cells) if row is not None and row[position].strip() == "?"), None)
        if not labels_required:  # predict: the beats alone, labelled or not
            body = [",".join(row[1:] if position == 0 else row[:-1]) if row is not None else "" for row in cells]
            where = "none"
        elif unknown is not None:
            raise DataError("class '?': a missing label (an instance still to classify); training and evaluation "
                            "need each beat's label", path=path, row=data + 2 + unknown, field="class")
    return [""] * (data + 1) + body, where


def read_beats(
    path: str | Path,
    label_column: str = "first",
    fmt: str = "auto",
    known_labels: set[int] | None = None,
    samples_per_beat: int | None = None,
    labels_required: bool = True,
) -> BeatTable:
    """Read one beat per row from a UCR text file (whitespace-separated) or a CSV file.

    Args:
        label_column: where the class number is: ``first`` (UCR), ``last`` or ``none``.
        fmt: ``auto`` (CSV for ``.csv`` files or lines with commas), ``whitespace`` or ``csv``.
        known_labels: class numbers accepted in the label column (``None`` = any whole number).
        samples_per_beat: expected samples per beat; ``None`` takes the first row's count.
        labels_required: ``False`` (predict) also accepts rows without the label column, i.e.
            rows of exactly ``samples_per_beat`` values; the first row decides for the whole file,
            so a labelled row that lost one value is an error, not a shifted unlabelled beat.

    A first line made only of non-numbers is a header and is skipped. Every other problem
    (ragged rows, non-numbers, NaN/inf, unknown labels) raises :class:`DataError` with the row,
    and so do the marks of a file written by pandas with its defaults: a header of column
    numbers (``0,1,2,...``, which would read as a beat) and a first column of row numbers (the
    index, which would read as every beat's first sample, or as its label).
    """
    path = Path(path)
    if label_column not in LABEL_COLUMNS:
        raise ConfigError(f"data.label_column={label_column!r}: expected one of {LABEL_COLUMNS}")
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r}: expected one of {FORMATS}")
    if labels_required and label_column == "none":
        raise ConfigError("data.label_column=none: training and evaluation need each beat's class label")
    lines = read_text(path).splitlines()
    if path.suffix.lower() == ".arff":  # the UCR archive's other format: the header says where the class is
        lines, label_column = _arff_data(lines, path, label_column, labels_required)
        if labels_required and label_column == "none":
            raise DataError("the ARFF header declares no class attribute ({...} values, first or last); training "
                            "and evaluation need each beat's label", path=path)
    first_line = next((line for line in lines if line.strip()), "")
    comma = fmt == "csv" or (fmt == "auto" and (path.suffix.lower() in {".csv", ".arff"} or "," in first_line))
    has_label = label_column != "none"
    table: list[np.ndarray] = []  # every row's values, label included
    rows: list[int] = []
    expected, expected_from = None, ""
    if samples_per_beat is not None:
        expected = samples_per_beat + int(has_label)
        expected_from = f"the model's {samples_per_beat} samples per beat"
    first = True
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")] if comma else line.split()
        if comma and len(cells) > 1 and cells[-1] == "":
            cells.pop()  # "0.1,0.2," as spreadsheets write rows: the empty cell after the last comma is no value
        if comma and any(";" in c for c in cells):
            raise DataError(f"found {next(c for c in cells if ';' in c)[:40]!r}: the file looks ';'-separated, as "
                            "spreadsheets of locales with a decimal comma write CSV; save it with ',' between values "
                            "and '.' as the decimal point (or whitespace between values)", path=path, row=row)
        if first and comma and len(cells) == 1 and len(line.split()) > 1 and all(map(_is_number, line.split())):
            # numbers without a comma, read as CSV: one cell that is no number, which would pass for a header
            raise DataError("a line of whitespace-separated numbers in a file read as CSV (data.format="
                            f"{fmt}); set data.format=whitespace (or auto)", path=path, row=row)
        if first and not any(_is_number(c) for c in cells):
            first = False
            continue  # header line
        header = _pandas_header(cells) if first else ""
        if header and all(_is_number(c) for c in cells):
            raise DataError(header, path=path, row=row)
        first = False
        values = _parse_row(cells, path, row, f" ({header})" if header else "")
        if not labels_required and not rows:  # predict: the first beat says whether the file has labels
            if len(values) == samples_per_beat:
                has_label, expected = False, samples_per_beat
                expected_from = f"row {row} (a beat without its label)"
            elif expected is not None and len(values) == expected:
                expected_from = f"row {row} (a label and {samples_per_beat} samples)"
            elif samples_per_beat is not None and has_label:  # either is a beat here: "expected 141" alone misled
                raise DataError(f"row has {len(values)} values; expected the model's {samples_per_beat} samples of a "
                                f"beat, or {samples_per_beat + 1} with its label {label_column}", path=path, row=row)
        if expected is None:
            expected, expected_from = len(values), f"row {row}"
        elif len(values) != expected:
            label_note = f" ({label_column} one is the label)" if has_label else ""
            raise DataError(
                f"row has {len(values)} values, expected {expected}{label_note} as in {expected_from}; "
                "every beat must have the same number of samples",
                path=path, row=row,
            )
        table.append(values)
        rows.append(row)
    if not table:
        raise DataError("file has no beats (only a header or blank lines)", path=path)
    _check_row_index(table, rows, path, has_label and label_column == "first", known_labels)
    samples: list[np.ndarray] = []
    labels: list[int] = []
    for row, values in zip(rows, table):
        if has_label:
            values, label = _split_label(values, label_column, known_labels, path, row, not labels_required)
        else:
            label = -1
        samples.append(values)
        labels.append(label)
    if samples[0].size == 0:
        raise DataError("rows hold a label but no samples", path=path, row=rows[0])
    if not has_label and not labels_required:  # predict read the file as unlabelled
        _warn_if_label_like(samples, rows, label_column, known_labels, str(path))
    return BeatTable(
        str(path), np.stack(samples).astype(np.float32), np.array(labels, dtype=np.int64), np.array(rows)
    )


def _check_row_index(
    table: list[np.ndarray], rows: list[int], path: Path, label_first: bool, known: set[int] | None
) -> None:
    """Refuse a first column that numbers the rows (0..n-1 or 1..n): pandas' ``to_csv`` index.

    Why: it reads as every beat's first sample, silently (a model of 141 samples, one of them the
    row number), or as the label. Three beats at least, so that a beat that happens to start at
    0 or 1 is not taken for one. As the label column, it is only refused when it also holds a
    number that is no class, which the label check would refuse less helpfully.
    """
    first_column = np.array([values[0] for values in table])
    if len(table) < 3 or not _counts_up(first_column):
        return
    if label_first and (known is None or set(first_column.astype(np.int64).tolist()) <= known):
        return
    n = len(table)
    numbers = f"{first_column[0]:g}, {first_column[1]:g}, ..., {first_column[-1]:g}"
    raise DataError(
        f"column 0 holds the row numbers ({numbers}) of the {n} beats: it looks like a row index, as pandas' "
        f"df.to_csv writes one unless index=False, not {'a label' if label_first else 'a sample'}; "
        f"{_PANDAS_FIX} (or drop the column)",
        path=path, row=rows[0], field="column 0",
    )


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split, each class divided in the given proportions (the rest goes to ``train``).

    Each split is shuffled, so evaluation batches mix the classes.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["train", *fractions]}
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, fraction in fractions.items():
            count = round(len(index) * fraction)
            parts[name].append(index[start : start + count])
            start += count
        parts["train"].append(index[start:])
    return {name: rng.permutation(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)
            for name, chunks in parts.items()}


def _is_file(raw: str) -> bool:
    try:
        return Path(raw).expanduser().is_file()
    except (OSError, ValueError):  # a line of numbers can be longer than any file name
        return False


def _is_dir(raw: str) -> bool:
    try:
        return Path(raw).expanduser().is_dir()
    except (OSError, ValueError):
        return False


def _looks_like_a_path(raw: str) -> bool:
    """A string that is no line of numbers and names a folder or reads as a path (a separator, a
    leading ``~`` or a file extension): a beat file that is not there, not a beat with a bad sample."""
    cells = raw.replace(",", " ").split()
    try:
        [float(cell) for cell in cells]
    except ValueError:
        pass
    else:
        return False
    text = raw.strip()
    return (_is_dir(text) or "/" in text or "\\" in text or text.startswith("~")
            or re.search(r"\.[A-Za-z][A-Za-z0-9]{0,4}$", text) is not None)


class BeatInput(str):
    """A beat to predict, named ``file:row``; carries its samples (JSON-serialises as its name)."""

    samples: np.ndarray

    def __new__(cls, name: str, samples: np.ndarray) -> Self:
        item = super().__new__(cls, name)
        item.samples = samples
        return item


# -- the datamodule -----------------------------------------------------------------------------------
def missing_kind(kinds: set[bool], anomaly_labels: list[int]) -> str:
    """The kind of beat a split of one kind lacks (``kinds``: which of anomalous True / False it has)."""
    return "normal beats" if True in kinds else f"anomalous beats (labels {anomaly_labels})"


def warn_one_kind(path: Any, what: str, anomaly_labels: list[int], kinds: set[bool]) -> None:
    """Scoring data of one kind of beat (an eval of other data): say which metrics mean nothing."""
    log.warning("%s: %s has no %s: AUROC and AUPRC are undefined (reported as nan); F1, precision and "
                "recall count the one kind of beat there is", path, what, missing_kind(kinds, anomaly_labels))


class EcgDataModule(SequenceDataModule):
    """Heartbeats -> ``(T, 1)`` float sequences with a normal (0) / anomaly (1) target.

    Args:
        path: ``None`` for the generated beats; a file (split ``train/val/test`` by a seeded
            stratified split); or a folder with ``*_TRAIN`` (and optionally ``*_TEST``) files,
            whose split is kept (val is carved out of train).
        format: ``auto``, ``whitespace`` (UCR text) or ``csv``.
        label_column: ``first`` (UCR), ``last`` or ``none`` (predict only).
        normal_labels / anomaly_labels: class numbers of each kind; other numbers are errors.
        train_on: ``all``, or ``normal`` to drop anomalies from the *train* split only
            (unsupervised detectors learn what normal looks like; val/test keep both kinds).
        num_beats / anomaly_fraction / samples_per_beat: size of the generated data.
        val_fraction / test_fraction: split fractions (of a single file; of the train file
            for the validation split when a test file is given).
        seed: seed for generation and splitting.
    """

    # `lstmkit predict data.<option>=`: how its input files are read, and the values each may take
    predict_read_options: ClassVar[dict[str, tuple[str, ...] | None]] = {"label_column": LABEL_COLUMNS, "format": FORMATS}
    predict_input = "beat files (one beat per row) or one beat's sample values, whitespace- or comma-separated (quote a comma list: 'input=\"0.1,0.2,...\"')"  # what `lstmkit predict input=...` expects (named in errors)

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        label_column: str = "first",
        normal_labels: list[int] | tuple[int, ...] = (1,),
        anomaly_labels: list[int] | tuple[int, ...] = (2, 3, 4, 5),
        train_on: str = "all",
        num_beats: int = 3000,
        anomaly_fraction: float = 0.3,
        samples_per_beat: int = 140,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if train_on not in ("all", "normal"):
            raise ConfigError(f"data.train_on={train_on!r}: expected all or normal")
        if label_column not in LABEL_COLUMNS:
            raise ConfigError(f"data.label_column={label_column!r}: expected one of {LABEL_COLUMNS}")
        if set(normal_labels) & set(anomaly_labels):
            raise ConfigError(f"data.normal_labels {list(normal_labels)} and data.anomaly_labels "
                              f"{list(anomaly_labels)} overlap")
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(f"data.val_fraction={val_fraction} / data.test_fraction={test_fraction}: "
                              "need 0 < val, 0 <= test and val + test < 1")
        self.path = path
        self.format = format
        self.label_column = label_column
        self.normal_labels = [int(v) for v in normal_labels]
        self.anomaly_labels = [int(v) for v in anomaly_labels]
        self.train_on = train_on
        self.num_beats, self.anomaly_fraction = num_beats, anomaly_fraction
        self.samples_per_beat = samples_per_beat
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed = seed
        self.collate = PadCollate(pad_value=0.0)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, path: Path, samples_per_beat: int | None) -> BeatTable:
        known = set(self.normal_labels) | set(self.anomaly_labels)
        return read_beats(path, self.label_column, self.format, known, samples_per_beat)

    def _read_splits(self, samples_per_beat: int | None) -> dict[str, BeatTable]:
        three_way = {"val": self.val_fraction, "test": self.test_fraction}
        if self.path is None:
            beats, kinds = generate_beats(self.num_beats, self.anomaly_fraction,
                                          samples_per_beat or self.samples_per_beat, self.seed)
            table = BeatTable("<generated>", beats, kinds, np.arange(1, len(kinds) + 1))
            return self._split(table, three_way)
        path = Path(self.path).expanduser()
        if not path.exists():
            raise path_not_found(path)
        if path.is_file():
            return self._split(self._read(path, samples_per_beat), three_way)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES
                       and not p.name.upper().startswith(("SOURCE", "README", "LICENSE", ".")))
        files = _one_format_each(files)
        train = [p for p in files if p.stem.upper().endswith("TRAIN")]
        test = [p for p in files if p.stem.upper().endswith("TEST")]
        if len(train) != 1 or len(test) > 1:
            if len(files) == 1:
                return self._split(self._read(files[0], samples_per_beat), three_way)
            raise DataError(
                "expected one *_TRAIN file (and optionally one *_TEST file) in the folder, "
                f"found {[p.name for p in files]}", path=path,
            )
        train_table = self._read(train[0], samples_per_beat)
        if not test:
            return self._split(train_table, three_way)
        splits = self._split(train_table, {"val": self.val_fraction})
        splits["test"] = self._read(test[0], train_table.samples.shape[1])
        return splits

    def _split(self, table: BeatTable, fractions: dict[str, float]) -> dict[str, BeatTable]:
        index = stratified_split(table.labels, fractions, self.seed)
        return {name: table.take(rows) for name, rows in index.items()}

    # -- building -----------------------------------------------------------------------------
    def build(self) -> DataSpec:
        fixed = self.fixed_spec
        stored_length = int(fixed.extra["samples_per_beat"]) if fixed is not None else None
        splits = self._read_splits(stored_length)
        anomaly = np.array(self.anomaly_labels)
        if self.whole:  # every beat, normal or not (the splits' order: scores do not depend on it)
            splits = {"test": BeatTable.concat([splits[n] for n in ("train", "val", "test") if n in splits])}
            kinds = set(np.isin(splits["test"].labels, anomaly).tolist())
            if len(kinds) == 1:
                warn_one_kind(self.path, "the data", self.anomaly_labels, kinds)
        else:
            train = splits["train"]
            if self.train_on == "normal":
                splits["train"] = train = train.take(np.flatnonzero(~np.isin(train.labels, anomaly)))
            if len(train.labels) == 0 and fixed is None:
                raise DataError("the training split has no beats" +
                                (" (train_on=normal and no normal beats)" if self.train_on == "normal" else ""),
                                path=self.path)
            for name in ("val", "test"):  # AUROC, F1 and the val-chosen threshold need both kinds of beat
                table = splits.get(name)
                kinds = set(np.isin(table.labels, anomaly).tolist()) if table is not None else set()
                if len(kinds) == 1:
                    if fixed is not None:  # eval of other data: say it, the scores stand for the other kind
                        warn_one_kind(table.path, f"the {name} split", self.anomaly_labels, kinds)
                        continue
                    raise DataError(
                        f"the {name} split has {len(table.labels)} beats and no "
                        f"{missing_kind(kinds, self.anomaly_labels)}, so AUROC, F1 and the threshold chosen on val "
                        "are undefined; give more beats of that kind or other "
                        "data.val_fraction / data.test_fraction", path=table.path)
        if fixed is not None:
            spec = fixed
        else:
            num_anomalies = int(np.isin(train.labels, anomaly).sum())
            spec = DataSpec(
                input_kind="features",
                num_features=1,
                classes=[NORMAL, ANOMALY],
                extra={
                    "samples_per_beat": int(train.samples.shape[1]),
                    "label_column": self.label_column,
                    "format": self.format,
                    "normal_labels": self.normal_labels,
                    "anomaly_labels": self.anomaly_labels,
                    "train_counts": {NORMAL: len(train.labels) - num_anomalies, ANOMALY: num_anomalies},
                },
            )
        for name, table in splits.items():
            beats = torch.from_numpy(table.samples).unsqueeze(-1)  # (N, T, 1)
            targets = torch.from_numpy(np.isin(table.labels, anomaly).astype(np.int64))  # 1 = anomaly
            self.splits[name] = SequenceDataset(list(beats), list(targets))
        log.info("ECG beats from %s: %s", self.path or "<generated>", self.split_sizes())
        return spec

    # -- predict ------------------------------------------------------------------------------
    @classmethod
    def predict_file_is_one_input(cls, path: Path) -> bool:
        """An ``input_file`` of beats (not a list of beat files) is read as ``input=<file>`` is, by the
        training reader: its header skipped, an ARFF read by its header (read line by line, a header
        line was "expected a number"). A list of beat files, one per line, stays a list."""
        try:
            first = [line.strip() for line in itertools.islice(
                (line for line in read_text(path).split("\n") if line.strip()), 5)]
        except LstmkitError:
            return False  # the line reader reports the file's own problem
        # a path among its first lines, there or not (a list whose first beat file is missing is said to be
        # missing, not "expected a number"; a list under a comment line is a list)
        listed = any(_is_file(line) or _is_file(str(path.parent / line)) or _looks_like_a_path(line) for line in first)
        return bool(first) and not listed

    @classmethod
    def predict_items(cls, spec: DataSpec, inputs: list[Any]) -> list[Any]:
        """Expand file paths into one :class:`BeatInput` per row (``beats.txt:7``); keep the rest."""
        items: list[Any] = []
        for raw in inputs:
            if isinstance(raw, str) and not isinstance(raw, BeatInput) and _is_file(raw):
                table = cls._read_predict_file(spec, Path(raw).expanduser())
                items.extend(BeatInput(f"{raw}:{row}", beat) for row, beat in zip(table.rows, table.samples))
            elif isinstance(raw, str) and not isinstance(raw, BeatInput) and _looks_like_a_path(raw):
                # not "field 'column 0': expected a number, found '/missing/beats.txt'"
                raise DataError("a folder, expected a beat file (one beat per row) or one beat's sample values"
                                if _is_dir(raw) else
                                "file not found (an input is a beat file, one beat per row, or one beat's sample values)",
                                path=raw, readable=True)
            else:
                items.append(raw)
        return items

    @staticmethod
    def _known_labels(spec: DataSpec) -> set[int] | None:
        """The class numbers the model was trained with (``None`` for a spec that does not say)."""
        extra = spec.extra
        if "normal_labels" not in extra and "anomaly_labels" not in extra:
            return None
        return {int(v) for v in [*extra.get("normal_labels", []), *extra.get("anomaly_labels", [])]}

    @classmethod
    def _read_predict_file(cls, spec: DataSpec, path: Path) -> BeatTable:
        extra = spec.extra
        return read_beats(path, extra.get("label_column", "first"), extra.get("format", "auto"),
                          cls._known_labels(spec), int(extra["samples_per_beat"]), labels_required=False)

    @classmethod
    def serving_inputs(cls, spec: DataSpec) -> dict[str, Any]:
        length = spec.extra.get("samples_per_beat")
        return {"inputs": f"(batch, {length}, 1) float32: one beat's {length} raw samples per row, without its "
                          "label (the model normalises them inside)",
                "lengths": f"(batch,) int64: {length} for every row"}

    @classmethod
    def make_predict_batch(cls, spec: DataSpec, inputs: list[Any]) -> Batch:
        """Beats from file paths (every row), lines of numbers, lists / arrays of numbers or :class:`BeatInput`.

        A beat may carry its label in the model's label column, checked as in a file (a whole
        number, one of the model's classes: a beat in the other layout would otherwise lose a
        sample and keep its label as one) and then ignored; otherwise it must have exactly the
        model's samples per beat. Errors name ``<input>`` and the item's position in ``inputs``,
        which ``lstmkit predict`` turns into the ``input_file`` line or the ``input`` item.
        """
        length = int(spec.extra["samples_per_beat"])
        label_column = spec.extra.get("label_column", "first")
        known = cls._known_labels(spec)
        beats: list[np.ndarray] = []
        unlabelled: list[int] = []  # the inline beats given without a label
        for number, raw in enumerate(cls.predict_items(spec, list(inputs)), start=1):
            if isinstance(raw, BeatInput):
                beats.append(raw.samples)
                continue
            if isinstance(raw, str):
                cells = raw.replace(",", " ").split()
            else:  # a list, array or tensor of samples (or a stray number)
                cells = [str(v) for v in np.ravel(np.asarray(raw, dtype=object))]
            values = _parse_row(cells, "<input>", number)
            if len(values) == length + 1 and label_column in ("first", "last"):
                values, _ = _split_label(values, label_column, known, "<input>", number, predicting=True)
            elif len(values) == length:
                unlabelled.append(len(beats))
            if len(values) != length:
                raise DataError(
                    f"expected a beat of {length} samples (optionally with its label), found {len(values)} "
                    "values; pass a file path or one line of numbers per input",
                    path="<input>", row=number,
                )
            beats.append(values.astype(np.float32))
        if unlabelled:
            _warn_if_label_like([beats[i] for i in unlabelled], [i + 1 for i in unlabelled], label_column, known,
                                "input")
        inputs_t = torch.from_numpy(np.stack(beats).astype(np.float32)).unsqueeze(-1)  # (B, T, 1)
        lengths = torch.full((len(beats),), length, dtype=torch.int64)
        return Batch(inputs_t, lengths, torch.zeros(len(beats), dtype=torch.int64))
