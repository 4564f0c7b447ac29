"""``lstmkit predict``: raw inputs -> the head's decoded predictions, from a checkpoint alone."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lstmkit.build import trusted_object
from lstmkit.checkpoints import checkpoint_paths, load_models
from lstmkit.commands.common import (
    apply_decoding,
    check_command_keys,
    check_output_file,
    check_torch_device,
    int_option,
    plain,
)
from lstmkit.data.text import check_delimiter, csv_records, jsonl_records, read_text
from lstmkit.errors import ConfigError, DataError, LstmkitError
from lstmkit.files import json_text, write_atomic
from lstmkit.types import DataSpec

log = logging.getLogger(__name__)


TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}


def collect_inputs_and_origins(cfg: DictConfig, text_column: str | None = None, paths: bool = False,
                               delimiter: str | None = None, labels: frozenset[str] | None = None,
                               manifests: bool = False, given_delimiter: str | None = None,
                               ) -> tuple[list[Any], list[tuple[str, int]]]:
    """The inputs, and where each came from: ``("input", item number)`` or ``(input_file, line)``.

    ``text_column``: for a text classifier, the column its training files' texts came from. An
    ``input_file`` that is a CSV/TSV/JSONL table then gives that column's texts, one per row: read
    as lines, its header and every ``text,label`` line were classified as texts, label included.
    ``delimiter``: the model's ``data.delimiter`` (``;``), for such a CSV table. ``given_delimiter``: the
    command line's ``data.delimiter``: the ``input_file`` is such a table whatever its name ends in, as
    training reads a file with a delimiter (a ``.tsv`` or ``.txt`` of ``;``-separated fields).

    ``labels``: a text classifier's labels as its training files wrote them, when it read other files
    than tables as ``<label> <text>`` lines (the SST-2 ``stsa.binary.*`` layout). An ``input_file``
    whose every line starts with one of them is read so: its texts without the label (read as plain
    lines, "0 one long string of cliches ." was classified with its "0"). A file of plain texts is
    read one text per line, as before.

    ``manifests``: the ``input_file`` is one input, which the datamodule's ``predict_items`` expands
    (:meth:`~lstmkit.data.base.SequenceDataModule.predict_file_is_one_input`): a speech manifest, to the
    files it lists (read as lines, its header was taken for an audio path); a file of ECG beats, to its
    rows (read as lines, its header was taken for a beat).

    ``paths``: the model reads files (wavs, price or beat files). A relative path on a line of
    ``input_file`` is then taken relative to that file's folder, as a manifest's are, when the file
    is there: a list kept beside its clips works from any working directory.
    """
    inputs: list[Any] = []
    origins: list[tuple[str, int]] = []
    if cfg.get("input") is not None:
        raw = OmegaConf.to_container(cfg.input) if OmegaConf.is_config(cfg.input) else cfg.input  # nested: lists
        inputs.extend(list(raw) if not isinstance(raw, (str, int, float)) else [raw])
        origins += [("input", i) for i in range(1, len(inputs) + 1)]
    table = Path(str(cfg.get("input_file") or "")).suffix.lower()
    if cfg.get("input_file") and text_column and (table in TABLE_SUFFIXES or table in {".jsonl", ".json"}
                                                  or given_delimiter):
        path = Path(cfg.input_file)
        content = read_text(path)
        separator = given_delimiter or (table == ".csv" and delimiter) or TABLE_SUFFIXES.get(table)
        records = (csv_records(content, separator, path, required=(text_column,), hint="data.text_column")
                   if separator
                   else jsonl_records(content, path, (text_column,), "data.text_column"))
        for row, record in records:
            text = record.get(text_column)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"expected a text in column {text_column!r} (the one the model was trained on), "
                                f"found {text!r}", path=path, row=row, field=text_column)
            inputs.append(text)
            origins.append((str(path), row))
        if not any(source == str(path) for source, _ in origins):  # not "nothing to predict: pass input_file="
            raise DataError("the table has no rows to predict", path=path)
        log.info("input_file=%s: the texts of its %r column, one result per row", path, text_column)
    elif cfg.get("input_file") and manifests:
        inputs.append(str(cfg.input_file))
        origins.append((str(cfg.input_file), 1))
    elif cfg.get("input_file"):
        # split at "\n" only, as the data readers do: splitlines() also splits at U+2028, NEL and form
        # feed, which a text may hold, and results would no longer match the file's lines
        lines = [line.removesuffix("\r") for line in read_text(Path(cfg.input_file)).split("\n")]
        if lines and not lines[-1].strip():
            lines.pop()  # the final newline ends the last line; it is not a blank line
        kept = [line for line in lines if line.strip()]
        if len(kept) < len(lines):  # said, so that results are not matched to line numbers by mistake
            log.warning("input_file=%s: %d blank line(s) skipped; one result per non-blank line, in order",
                        cfg.input_file, len(lines) - len(kept))
        if paths:
            kept = _beside(Path(cfg.input_file), kept)
        elif labels and all(len(line.split(None, 1)) == 2 and line.split(None, 1)[0] in labels for line in kept):
            kept = [line.split(None, 1)[1].rstrip() for line in kept]
            # a warning, not a note: "1 star is too many" is a text too, and its "1" would go unscored unsaid
            log.warning("input_file=%s: every line starts with one of the model's labels (%s), so it is read as "
                        "'<label> <text>' lines, as the model's training files were: the texts without their "
                        "labels, one result per line. To score each line whole, set data.format=lines",
                        cfg.input_file, ", ".join(sorted(labels)))
        inputs.extend(kept)
        origins += [(str(cfg.input_file), number) for number, line in enumerate(lines, start=1) if line.strip()]
    if not inputs:
        raise ConfigError('nothing to predict: pass input="..." (or input=[a,b]) or input_file=<file>')
    blank = [i for i, item in enumerate(inputs) if isinstance(item, str) and not item.strip()]
    if blank:
        raise ConfigError(f"input: item {blank[0] + 1} of {len(inputs)} is empty; give text, a file path or numbers")
    return inputs, origins


def table_text(results: list[dict[str, Any]], delimiter: str) -> str:
    """Predictions as a CSV / TSV table (``output=preds.csv``): one row per input, nested results flattened
    to dotted columns (``probabilities.positive``) by pandas, lists (a forecast's steps) as JSON.

    Why: written as JSON lines whatever the name, a ``.csv`` did not open as one in a spreadsheet.
    """
    import pandas as pd

    frame = pd.json_normalize([json.loads(json_text(r)) for r in results])  # JSON's own values: NaN as null
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, list)).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    return frame.to_csv(index=False, sep=delimiter, lineterminator="\n")


def _beside(list_file: Path, lines: list[str]) -> list[str]:
    """Relative paths of a list file that name a file beside it, as paths from there; others as given."""
    folder = list_file.parent
    resolved = []
    for line in lines:
        name = line.strip()
        try:
            here = not Path(name).is_absolute() and (folder / name).is_file()
        except (OSError, ValueError):  # not a path (a beat's sample values, a name too long)
            here = False
        resolved.append(str(folder / name) if here else line)
    moved = sum(a != b for a, b in zip(lines, resolved, strict=True))
    if moved and folder.resolve() != Path.cwd().resolve():
        log.info("input_file=%s: %d relative path(s) read from its folder %s", list_file, moved, folder)
    return resolved


@contextmanager
def input_context(ckpt_path: str, model: Any, datamodule_cls: Any) -> Iterator[None]:
    """Say which kind of checkpoint this is and what it predicts from, when an input does not fit.

    Why: a stock checkpoint given a sentence otherwise answers "file not found", which does not
    tell the user that they picked the wrong checkpoint.
    """
    try:
        yield
    except LstmkitError as err:
        if isinstance(err, DataError) and err.readable:
            raise  # a file of the right kind was read, and a row or its content is wrong: the checkpoint is fine
        task = model.hparams.get("task") or "?"
        raise DataError(
            f"{err} (the checkpoint {ckpt_path} is a model of task {task!r}, which predicts from "
            f"{datamodule_cls.predict_input})"
        ) from None


def prefixed_labels(cfg: DictConfig, spec: DataSpec, data: Any) -> frozenset[str] | None:
    """A text classifier's labels as its training files wrote them (``data.label_names``' keys for the
    classes it renames), when its training read ``input_file`` as ``<label> <text>`` lines: its
    ``data.format`` is ``prefixed``, or ``auto`` with no ``data.delimiter`` and the file no table, and
    its training files were such lines (``spec.extra["read_as"]``; a model trained on a CSV or on the
    generated corpus reads every line of a ``.txt`` whole).
    ``data.format=lines`` (predict's own): none; every line is a text, whatever it starts with, and a
    ``.csv`` / ``.tsv`` / ``.jsonl`` ``input_file`` is read as lines too, not as a table."""
    if spec.input_kind != "tokens" or not spec.classes or not cfg.get("input_file"):
        return None
    fmt = str(data.get("format") or "auto")
    suffix = Path(str(cfg.input_file)).suffix.lower()
    if not (fmt == "prefixed" or (fmt == "auto" and not data.get("delimiter")
                                  and suffix not in {*TABLE_SUFFIXES, ".jsonl", ".json"})):
        return None
    read_as = spec.extra.get("read_as")  # how the training files were read (checkpoints since 2026-12)
    if read_as is not None and "prefixed" not in read_as and fmt != "prefixed":
        return None  # trained on tables or the generated corpus: a line "1 star is too many" is a text
    renamed = {str(raw) for raw, name in (plain(data.get("label_names")) or {}).items() if str(name) in spec.classes}
    return frozenset({*map(str, spec.classes), *renamed})


def reading_spec(spec: DataSpec, datamodule_cls: type, data: Any) -> DataSpec:
    """The checkpoint's spec with ``data.*`` reading settings of the command line, for input files only.

    Why: the readers take their settings (an ECG file's label column, a stock file's date format)
    from the checkpoint, and their errors suggest ``data.label_column=...`` or ``data.date_format=...``
    for a file written otherwise; predict must accept what its errors suggest. Only the settings the
    datamodule names in ``predict_read_options`` may change: the model's own (window, samples per
    beat, vocabulary) stay the checkpoint's.
    """
    options = {k: v for k, v in (plain(data) or {}).items() if v is not None}
    if not options:
        return spec
    allowed: dict[str, tuple[str, ...] | None] = dict(getattr(datamodule_cls, "predict_read_options", {}))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        can = ", ".join(f"data.{k}" for k in allowed) or "no data.* setting"
        raise ConfigError(f"data.{unknown[0]}={options[unknown[0]]!r}: this checkpoint's data "
                          f"({datamodule_cls.__name__}) reads its input files with {can}")
    options = {k: str(v) for k, v in options.items()}  # Hydra reads data.date_format=123 as a number
    for key, value in options.items():
        values = allowed[key]
        if values is not None and value not in values:
            raise ConfigError(f"data.{key}={value!r}: expected one of {', '.join(map(repr, values))}")
    return dataclasses.replace(spec, extra={**(spec.extra or {}), **options})


def _output(cfg: DictConfig) -> Path | None:
    """``output=``, checked before the predictions are printed: never one of the files read."""
    if not cfg.get("output"):
        return None
    read: list[tuple[str, Any]] = []
    with contextlib.suppress(LstmkitError):  # a checkpoint that is not there is reported when it is loaded
        read += [("ckpt_path", p) for p in checkpoint_paths(cfg.ckpt_path)]
    read += [("input_file", cfg.input_file)] if cfg.get("input_file") else []
    given = plain(cfg.get("input"))
    read += [("input", item) for item in (given if isinstance(given, list) else [given]) if isinstance(item, str)]
    return check_output_file(cfg.output, inputs=read)


def _items(cfg: DictConfig, model: Any, datamodule_cls: Any, spec: DataSpec, output: Path | None, named: str
           ) -> tuple[list[Any], list[tuple[str, int] | None]]:
    """The items to predict (a file of beats: one per row; a folder of recordings: one per clip) and
    where each came from (``None``: a row of an input file), read as the checkpoint's data was."""
    data = model.hparams.get("data") or {}
    given = plain(cfg.get("data")) or {}
    whole_lines = str(given.get("format")) == "lines"  # every line whole, a table's too
    text_column = given.get("text_column") or data.get("text_column")
    text_column = text_column if model.spec.classes and not whole_lines else None
    tokens = model.spec.input_kind == "tokens"
    raw_inputs, origins = collect_inputs_and_origins(cfg, text_column if tokens else None, paths=not tokens,
                                                     delimiter=data.get("delimiter"),
                                                     given_delimiter=check_delimiter(given.get("delimiter")),
                                                     manifests=bool(cfg.get("input_file")) and
                                                     datamodule_cls.predict_file_is_one_input(Path(cfg.input_file)),
                                                     labels=prefixed_labels(cfg, model.spec, {**data, **given}))
    if output is not None and not tokens:  # the files an input_file lists are read too
        check_output_file(cfg.output, inputs=[("input", item) for item in raw_inputs if isinstance(item, str)])
    inputs: list[Any] = []
    item_origins: list[tuple[str, int] | None] = []
    with input_context(named, model, datamodule_cls):
        for raw, origin in zip(raw_inputs, origins, strict=True):
            items = datamodule_cls.predict_items(spec, [raw])  # a file of beats: one item per row
            inputs.extend(items)
            item_origins.extend([origin] if len(items) == 1 and items[0] is raw else [None] * len(items))
    if output is not None and not tokens and len(inputs) != len(raw_inputs):
        # the recordings a folder or manifest gave: none of them may be written over either
        check_output_file(cfg.output, inputs=[("input", item) for item in inputs if type(item) is str])
    return inputs, item_origins


def _predicted(model: Any, datamodule_cls: Any, spec: DataSpec, inputs: list[Any],
               item_origins: list[tuple[str, int] | None], batch_size: int, named: str) -> list[dict[str, Any]]:
    """``predict_step`` over batches of the items; an item's error names its file line or input item."""
    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            with input_context(named, model, datamodule_cls):
                try:
                    batch = datamodule_cls.make_predict_batch(spec, chunk)
                except DataError as err:  # "<input>, row k" of this chunk -> the file's line, or the item
                    origin = (item_origins[start + err.row - 1] if str(err.path) == "<input>" and err.row is not None
                              and 0 < err.row <= len(chunk) else None)
                    if origin is None:
                        raise
                    source, number = origin
                    raise (err.at(f"input item {number}", None) if source == "input"
                           else err.at(source, number)) from None
            batch.inputs = batch.inputs.to(model.device)
            batch.lengths = batch.lengths.to(model.device)
            for raw, result in zip(chunk, model.predict_step(batch, 0), strict=True):  # a lost row: an error
                results.append({"input": raw, **result})
    return results


def _write(results: list[dict[str, Any]], output: Path | None, given: str) -> None:
    """Print the results as JSON lines, and write them to ``output`` (a table for ``.csv`` / ``.tsv``)."""
    lines = [json_text(r, ensure_ascii=False) for r in results]
    print("\n".join(lines))
    if output is None:
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output, table_text(results, TABLE_SUFFIXES[output.suffix.lower()])
                     if output.suffix.lower() in TABLE_SUFFIXES else "\n".join(lines) + "\n")
    except OSError as err:
        raise ConfigError(f"output={given}: cannot write it ({err.strerror or err})") from None


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """``lstmkit predict``: the checkpoint's predictions for ``input`` / ``input_file``, printed (and written)."""
    from lstmkit.suggest import PREDICT_KEYS, PREDICT_TAKES

    check_command_keys(cfg, "predict", PREDICT_KEYS, PREDICT_TAKES)
    output = _output(cfg)
    batch_size = int_option(cfg, "batch_size", minimum=1) or 1
    n_words = int_option(cfg, "generate")
    seed = int_option(cfg, "seed")
    if not n_words and float(cfg.get("temperature") or 0.0) > 0:
        log.warning("temperature=%s is used with generate=<number of words> only; ignored", cfg.temperature)
    check_torch_device(cfg.get("device"))
    paths = checkpoint_paths(cfg.ckpt_path)
    model = load_models(paths, map_location=cfg.get("device", "cpu"))  # several: their ensemble
    apply_decoding(model, cfg.get("decode"))
    datamodule_cls = trusted_object(model.spec.datamodule)
    spec = reading_spec(model.spec, datamodule_cls, cfg.get("data"))  # how the inputs are read
    data = model.hparams.get("data") or {}
    if data.get("path_column") and "path_column" not in (spec.extra or {}):  # a speech checkpoint that predates
        spec = dataclasses.replace(spec, extra={**(spec.extra or {}), "path_column": data["path_column"]})  # it
    named = paths[0] if len(paths) == 1 else f"ensemble of {', '.join(paths)}"  # how input errors name it
    inputs, item_origins = _items(cfg, model, datamodule_cls, spec, output, named)
    if n_words:
        generate = getattr(model.head, "generate", None)
        if generate is None:
            raise ConfigError(f"generate={cfg.generate}: this checkpoint's {type(model.head).__name__} cannot generate")
        results = [{"input": raw, **generate(model, str(raw), n_words,
                                            temperature=float(cfg.get("temperature") or 0.0), seed=seed)}
                   for raw in inputs]
    else:
        results = _predicted(model, datamodule_cls, spec, inputs, item_origins, batch_size, named)
    _write(results, output, str(cfg.output))
    return results
