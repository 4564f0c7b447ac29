"""Text utilities: tokenizer, vocabulary, and readers for labelled-text files.

Readers check every row and raise :class:`~lstmkit.errors.DataError` naming the file, the row
and the field, instead of dropping rows silently.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lstmkit.errors import DataError

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
_WORD = re.compile(r"<[a-z]+>|[\w']+|[^\w\s]", re.UNICODE)


def tokenize(text: str, level: str = "word", lowercase: bool = True) -> list[str]:
    """Split text into word tokens (words, numbers, punctuation marks) or characters."""
    if lowercase:
        text = text.lower()
    if level == "char":
        return list(text.strip())
    if level == "whitespace":
        return text.split()
    if level == "word":
        return _WORD.findall(text)
    raise ValueError(f"unknown tokenizer level {level!r}; expected word, whitespace or char")


def build_vocab(
    token_lists: Iterable[list[str]],
    min_count: int = 1,
    max_size: int | None = None,
    specials: tuple[str, ...] = (PAD, UNK),
) -> list[str]:
    """Vocabulary from the train split: specials first, then tokens by frequency (ties by text)."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    for special in specials:
        counts.pop(special, None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - len(specials))]
    return list(specials) + words


def encode(tokens: list[str], index: dict[str, int], unk_id: int) -> list[int]:
    return [index.get(tok, unk_id) for tok in tokens]


def read_text(path: Path) -> str:
    """Read a whole UTF-8 file with clear errors for missing, empty or non-UTF-8 files."""
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        raise DataError("expected a file, found a folder", path=path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "re-save the file as UTF-8", path=path, row=line
        ) from None
    if not text.strip():
        raise DataError("file is empty", path=path)
    return text


def read_labelled_text(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    fmt: str = "auto",
) -> list[tuple[int, str, str]]:
    """Read ``(row, text, label)`` triples from CSV, TSV, JSONL or label-prefixed lines.

    ``fmt="auto"`` picks by extension: ``.csv``, ``.tsv``, ``.jsonl``/``.json``; anything else
    is read as ``<label> <text>`` lines (the SST-2 ``stsa.binary.*`` layout).
    Rows are numbered from 1, counting the header line of CSV/TSV files.
    """
    content = read_text(path)
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(
            path.suffix.lower(), "prefixed"
        )
    pairs: list[tuple[int, str, str]] = []
    if fmt in {"csv", "tsv"}:
        reader = csv.DictReader(content.splitlines(), delimiter="," if fmt == "csv" else "\t")
        header = reader.fieldnames or []
        for column in (text_column, label_column):
            if column not in header:
                raise DataError(
                    f"no column {column!r}; the header has {header}. Set data.text_column / "
                    "data.label_column to the right names", path=path, row=1, field=column,
                )
        for row, record in enumerate(reader, start=2):
            pairs.append(_checked(record.get(text_column), record.get(label_column), path, row,
                                  text_column, label_column))
    elif fmt == "jsonl":
        for row, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON ({err.msg})", path=path, row=row) from None
            if not isinstance(record, dict):
                raise DataError("expected a JSON object per line", path=path, row=row)
            pairs.append(_checked(record.get(text_column), record.get(label_column), path, row,
                                  text_column, label_column))
    elif fmt == "prefixed":
        for row, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            label, _, text = line.strip().partition(" ")
            pairs.append(_checked(text, label, path, row, "text", "label"))
    else:
        raise DataError(f"unknown format {fmt!r}; expected auto, csv, tsv, jsonl or prefixed", path=path)
    if not pairs:
        raise DataError("no examples found", path=path)
    return pairs


def _checked(
    text: Any, label: Any, path: Path, row: int, text_col: str, label_col: str
) -> tuple[int, str, str]:
    if text is None or not str(text).strip():
        raise DataError("empty or missing text", path=path, row=row, field=text_col)
    if label is None or str(label).strip() == "":
        raise DataError("empty or missing label", path=path, row=row, field=label_col)
    return row, str(text), str(label).strip()
