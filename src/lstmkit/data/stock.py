"""Stock price forecasting data: daily OHLCV series -> windows of ``window`` days -> the next closes.

Sources: a generated market by default (:func:`generate_ohlcv`), or CSV files with ``data.path``
(one file, a file holding many tickers in a ``Name``/``Ticker`` column, or a folder of
``*.csv`` / ``*.csv.gz`` / ``.bz2`` / ``.zip`` / ``.xz``, one per ticker). Columns are matched
case-insensitively: ``date``, ``open``, ``high``, ``low``, ``close``, ``volume``, optionally
``Adj Close`` (``adj_close``).

Splits are chronological per ticker (first 70 / 15 / 15 % of its days, or ``val_start`` /
``test_start`` dates). A window belongs to the split that holds its *targets*; val and test
windows may read the end of the previous split as input history (the forecaster would have
it), train windows never read val or test days, and the normaliser is fitted on train days
only. Batches carry raw values; the model normalises them itself
(:class:`~lstmkit.encoders.features.FeatureEncoder`) from the statistics stored in
``DataSpec.normaliser``, so a checkpoint alone turns a new CSV into a forecast in dollars.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import math
import re
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lstmkit.data.base import PadCollate, SequenceDataModule
from lstmkit.data.text import check_unicode_bom, csv_records, declared_delimiter, not_utf8, read_text
from lstmkit.encoders.features import KINDS, fit_feature_normaliser
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.regression import to_target_space
from lstmkit.progress import track
from lstmkit.types import Batch, DataSpec

log = logging.getLogger("lstmkit")

DEFAULT_FEATURES = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")
_CANONICAL = {
    "adjclose": "adj_close", "adjusted_close": "adj_close", "adj_close": "adj_close",
    "name": "ticker", "symbol": "ticker", "ticker": "ticker", "datetime": "date", "timestamp": "date",
    "close/last": "close", "vol": "volume",  # Nasdaq.com's historical-data export; Stooq's <VOL>
}
_GAP_DAYS = 10  # calendar days; longer gaps than a long weekend + holiday are reported
SYNTHETIC_TICKERS = ("SYNA", "SYNB", "SYNC", "SYND", "SYNE", "SYNF", "SYNG", "SYNH")
# the compressions pandas reads by file extension; ``.csv.gz`` etc. in a folder are read like ``.csv``
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zip": None}
CSV_SUFFIXES = (".csv", *(f".csv{ext}" for ext in _OPENERS))
DECIMALS = (".", ",")  # data.decimal: the decimal point of the files' numbers (the other mark groups thousands)


def canonical(column: str) -> str:
    """``"Adj Close"`` -> ``adj_close``, ``"Name"`` -> ``ticker``, ``"Open"`` -> ``open``, ``"Close/Last"``
    (Nasdaq.com) -> ``close``, ``"<DATE>"`` (Stooq) -> ``date``."""
    # Stooq's bulk files write <DATE>,<OPEN>,...: the brackets are no part of the name
    key = re.sub(r"[\s\-_.]+", "_", str(column).strip().lower().removeprefix("<").removesuffix(">")).strip("_")
    return _CANONICAL.get(key, key)


# -- the embedded default: a generated market --------------------------------------------------
def generate_ohlcv(
    num_tickers: int = 4, num_days: int = 1200, seed: int = 0, start: str = "2016-01-04"
) -> pd.DataFrame:
    """Seeded daily OHLCV of ``num_tickers`` synthetic tickers, in the real files' long format.

    A pure random walk cannot be forecast better than persistence, so the generator plants a
    learnable signal on top of realistic dynamics — and says so:

    * a hidden *fundamental* log-price follows a geometric Brownian motion whose drift and
      volatility switch between three Markov regimes (calm bull, normal, turbulent bear), with
      mild momentum (AR(1) 0.1 on its daily returns);
    * the **close overshoots** the fundamental by a transient error of about one daily
      volatility that reverts the next day (short-term overreaction) — the learnable part;
    * the intraday range is centred on the fundamental, so the high/low midpoint reveals the
      overshoot; the open starts from the previous close; low <= open, close <= high always;
    * volume rises with the regime's volatility and with the size of the overshoot.

    A least-squares fit on ten days of normalised features reaches a test MASE of 0.82-0.87
    (seeds 0 and 42; persistence = 1). On real daily prices expect MASE ~1.
    """
    if num_tickers > len(SYNTHETIC_TICKERS):
        raise ConfigError(f"data.num_tickers={num_tickers}: at most {len(SYNTHETIC_TICKERS)} generated tickers")
    drift = np.array([6e-4, 2e-4, -1.2e-3])
    vol = np.array([0.008, 0.013, 0.024])
    transition = np.array([[0.985, 0.012, 0.003], [0.010, 0.980, 0.010], [0.010, 0.030, 0.960]])
    cumulative = transition.cumsum(axis=1)
    dates = pd.bdate_range(start, periods=num_days).strftime("%Y-%m-%d")
    frames = []
    for k in range(num_tickers):
        rng = np.random.default_rng([seed, k])
        scale = rng.uniform(0.7, 1.2)  # each ticker's own volatility level
        level = np.log(rng.uniform(20.0, 300.0))
        volume0 = np.log(rng.uniform(2e5, 2e7))
        draws = rng.random(num_days)
        noise = rng.standard_normal((num_days, 6))
        regime, fundamental, overshoot, previous_return = 1, level, 0.0, 0.0
        rows = np.empty((num_days, 5))
        for t in range(num_days):
            regime = int(np.searchsorted(cumulative[regime], draws[t]))
            sigma = vol[regime] * scale
            previous_close = fundamental + overshoot
            step = drift[regime] + 0.1 * (previous_return - drift[regime]) + sigma * noise[t, 0]
            previous_return = step
            fundamental += step
            overshoot = sigma * noise[t, 1]
            open_ = np.exp(previous_close + 0.3 * sigma * noise[t, 2])
            close = np.exp(fundamental + overshoot)
            reach = abs(0.5 * sigma * noise[t, 3]) + 0.3 * sigma
            high = max(open_, close, np.exp(fundamental + reach))
            low = min(open_, close, np.exp(fundamental - reach))
            volume = np.exp(volume0 + np.log(sigma / 0.013) + 0.4 * abs(overshoot) / sigma + 0.3 * noise[t, 4])
            rows[t] = (open_, high, low, close, round(volume))
        frame = pd.DataFrame(rows.round(4), columns=list(DEFAULT_FEATURES))
        frame.insert(0, "date", dates)
        frame["Name"] = SYNTHETIC_TICKERS[k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# -- reading and validating --------------------------------------------------------------------
@dataclass
class Series:
    """One ticker's validated rows, sorted by date.

    Attributes:
        ticker: the ticker (``Name``/``Ticker`` column, else the file name).
        source: the file it came from (or ``<generated>``), for messages.
        dates: ``(N,)`` ``datetime64[D]``.
        values: ``(N, F)`` float64 in the spec's feature order.
    """

    ticker: str
    source: str
    dates: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.dates)


def read_ohlcv(path: str | Path, features: list[str], date_format: str | None = None, decimal: str = ".",
               ) -> list[Series]:
    """All tickers of a CSV file, or of every CSV (plain or compressed) in a folder.

    ``date_format``: see :func:`parse_dates`; ``decimal``: see :func:`parse_numbers`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("file or folder not found", path=path)
    files = _folder_files(path) if path.is_dir() else [path]
    series: list[Series] = []
    seen: dict[str, Series] = {}  # by the ticker in capitals: AAPL and aapl are one ticker written two ways
    for file in track(files, "reading price files"):
        frame, lines, sep = _read_csv(file)
        for item in validate_frame(frame, str(file), features, default_ticker=ticker_of(file), lines=lines,
                                   date_format=date_format, decimal=decimal, sep=sep):
            twin = seen.get(item.ticker.upper())
            if twin is not None and twin.ticker != item.ticker:
                raise DataError(f"tickers {twin.ticker!r} and {item.ticker!r} differ only in case: one ticker written "
                                "two ways? write it one way", path=file, field="ticker", readable=True)
            if twin is not None:
                raise DataError(f"ticker {item.ticker!r} appears in two files ({twin.source} and this "
                                "one); give each ticker one file", path=file, field="ticker", readable=True)
            seen[item.ticker.upper()] = item
            series.append(item)
    return series


def _folder_files(folder: Path) -> list[Path]:
    """The folder's CSV files, sorted; the other entries are named in a warning.

    Why: a folder of ``AAA.csv BBB.csv CCC.csv.gz DDD.txt`` trained on two tickers without a word.
    Hidden entries (``.DS_Store``, macOS' ``._AAA.csv``) are skipped silently: they are not data.
    """
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.name.lower().endswith(CSV_SUFFIXES)]
    others = [f"{p.name}/" if p.is_dir() else p.name for p in entries if p not in files]
    kinds = ", ".join(f"*{suffix}" for suffix in CSV_SUFFIXES)
    if not files:
        found = f"; it holds {', '.join(others[:10])}{' ...' if len(others) > 10 else ''}" if others else ""
        raise DataError(f"folder has no CSV files ({kinds}; expected one OHLCV file per ticker){found}", path=folder)
    if others:
        log.warning("%s: %d entr%s not read (only %s are): %s%s", folder, len(others),
                    "y" if len(others) == 1 else "ies", kinds, ", ".join(others[:10]),
                    f" and {len(others) - 10} more" if len(others) > 10 else "")
    return files


def ticker_of(file: Path) -> str:
    """A file's ticker (when it has no ticker column): its name less ``.csv[.gz]`` etc., ``CCC.csv.gz`` -> ``CCC``."""
    for suffix in sorted(CSV_SUFFIXES, key=len, reverse=True):
        if file.name.lower().endswith(suffix) and len(file.name) > len(suffix):
            return file.name[: -len(suffix)]
    return file.stem


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    """The bytes of the CSV a file holds: itself, or the CSV inside ``.gz`` / ``.bz2`` / ``.xz`` / ``.zip``
    (a zip's one data member; macOS' ``__MACOSX/`` entries are not data)."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    if opener is not None:
        with opener(path, "rb") as stream:
            yield stream
        return
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
        if len(names) != 1:
            raise ValueError(f"expected one CSV file in the archive, found {len(names)}")
        with archive.open(names[0]) as member:
            yield member


def _file_text(path: Path) -> str:
    """The text of a file, decompressed first when pandas reads it so (``.gz``, ``.bz2``, ``.xz``, ``.zip``).

    Why: the checks that reread a file (bad UTF-8, rows wider than the header) must see the lines of
    the CSV inside, not the compressed bytes.
    """
    if path.suffix.lower() not in _OPENERS:
        return read_text(path)
    with _opened(path) as stream:
        raw = stream.read()
    check_unicode_bom(raw, path, what="decompressed text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise not_utf8(raw, err, path, " of the decompressed text") from None


def _delimiter(path: Path) -> str:
    """The one of ``,``, ``;`` and tab that the header line holds most of (``,`` when it holds none).

    Why: spreadsheets in locales whose decimal mark is a comma write ``;`` between fields; read
    with ``,`` such a file was one column ("missing columns") or, with decimal commas, rows of
    several fields ("quote a field that contains the delimiter"). A tab-separated export named
    ``.csv`` was one column too.
    """
    try:
        _, header, declared = _header(path)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        return ","  # pandas reports the file's own problem
    if declared is not None:  # Excel's "sep=;" first line
        return declared
    return max((",", ";", "\t"), key=header.count) if any(sep in header for sep in ";\t") else ","


def _header(path: Path) -> tuple[int, str, str | None]:
    """The lines before the header of a (possibly compressed) CSV (blank ones, and Excel's ``sep=;``),
    the header line, and the delimiter such a ``sep=`` line declares (``None`` without one)."""
    declared = None
    with _opened(path) as stream:
        lines = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace")
        for number, line in enumerate(lines):
            if line.strip() and declared is None and (declared := declared_delimiter(line)) is not None:
                continue
            if line.strip():
                return number, line, declared
    return 0, "", declared


def _read_csv(path: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The table, each row's line in the file (the header is line 1) for the errors, and the delimiter.

    Blank lines are dropped but counted, so the line numbers stay the file's. A trailing delimiter
    on every row (a common export quirk) is one empty field too many: pandas would take the first
    column as the index and shift every column left (a price read as the date); ``index_col=False``
    drops the extra field instead, after a check that it is empty everywhere (no data is lost).
    """
    sep = _delimiter(path)
    try:
        skip = _header(path)[0]  # blank lines above the header: pandas would take the first for it
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        skip = 0  # pandas reports the file's own problem
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                                skip_blank_lines=False, index_col=False, skiprows=skip)
    except pd.errors.EmptyDataError:
        raise DataError("empty file; expected a CSV with a header row date,open,high,low,close,volume",
                        path=path) from None
    except UnicodeDecodeError:
        _file_text(path)  # raises with the row and byte offset (pandas' message names neither)
        raise
    except pd.errors.ParserError as err:
        # the csv module's reading names the row and what is wrong (a quote never closed, a row too wide);
        # pandas' "Error tokenizing data. C error: EOF inside string starting at row 4" counts from 0
        deque(csv_records(_file_text(path), sep, path, (), "the header", skipinitialspace=True), maxlen=0)
        raise DataError(f"not a readable CSV file ({str(err).strip().splitlines()[-1]})", path=path,
                        readable=True) from None
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as err:  # a damaged .gz / .zip / ...
        raise DataError(f"cannot read the file ({type(err).__name__}: {err})", path=path) from None
    except ValueError as err:  # pandas: a .zip holding several files
        if path.suffix.lower() != ".zip":
            raise
        raise DataError(f"cannot read the archive ({err}); expected one CSV file in it", path=path) from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):  # rows wider than the header:
        deque(csv_records(_file_text(path), sep, path, (), "the header", skipinitialspace=True), maxlen=0)
    lines = np.arange(len(frame)) + 2 + skip
    blank = frame.apply(lambda column: column.str.strip().eq("")).all(axis=1).to_numpy()
    frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
    if _yfinance_header(frame):
        frame, lines = _flatten_yfinance(frame, lines, path)
    return frame, lines, sep


def _yfinance_header(frame: pd.DataFrame) -> bool:
    """The three header rows ``yf.download(...).to_csv()`` writes: ``Price,Close,...``, ``Ticker,AAPL,...``
    and ``Date,,,...`` (yfinance's column MultiIndex of price and ticker)."""
    if len(frame) < 2 or len(frame.columns) < 2 or str(frame.columns[0]).strip().lower() != "price":
        return False
    first, second = frame.iloc[0], frame.iloc[1]
    return (str(first.iloc[0]).strip().lower() == "ticker" and str(second.iloc[0]).strip().lower() in {"date", "datetime"}
            and all(not str(v).strip() for v in second.iloc[1:]))


def _flatten_yfinance(frame: pd.DataFrame, lines: np.ndarray, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """yfinance's wide table (a column per price and ticker) as the long one the reader reads: a row per
    date and ticker, with a ``Ticker`` column; a ticker's rows before it was listed (every field blank)
    are left out. Why: its header was "missing column(s) ['date']", and the user had to flatten it."""
    columns = [str(c) for c in frame.columns]
    names = [re.sub(r"\.\d+$", "", c) if re.sub(r"\.\d+$", "", c) in columns else c for c in columns]  # pandas' Close.1
    tickers_row = [str(v).strip() for v in frame.iloc[0]]
    body, body_lines = frame.iloc[2:].reset_index(drop=True), lines[2:]
    parts, part_lines = [], []
    for ticker in dict.fromkeys(t for t in tickers_row[1:] if t):
        own = [j for j in range(1, len(columns)) if tickers_row[j] == ticker]
        part = pd.DataFrame({"Date": body.iloc[:, 0].to_numpy(), "Ticker": ticker,
                             **{names[j]: body.iloc[:, j].to_numpy() for j in own}})
        listed = ~part[[names[j] for j in own]].apply(lambda c: c.str.strip().eq("")).all(axis=1).to_numpy()
        parts.append(part[listed])
        part_lines.append(body_lines[listed])
    log.info("%s: yfinance's three header rows (price, ticker, date): %d ticker(s) read as a long table",
             path, len(parts))
    return pd.concat(parts, ignore_index=True), np.concatenate(part_lines)


def validate_frame(
    frame: pd.DataFrame, source: str, features: list[str], default_ticker: str, lines: np.ndarray | None = None,
    date_format: str | None = None, decimal: str = ".", sep: str = ",",
) -> list[Series]:
    """Check one table row by row and split it per ticker.

    Raises :class:`DataError` naming the file, the row (line number, header = 1) and the
    column for: a missing column, a bad date, a non-numeric / NaN / infinite value, a
    non-positive price, a negative volume, a duplicate date of a ticker. Unsorted dates are
    sorted with a warning (files exported newest-first are common and unambiguous). ``lines``:
    each row's line in the file, when it is not simply the row's position + 2. ``decimal``: the
    numbers' decimal point, ``sep`` the file's delimiter (see :func:`parse_numbers`).
    """
    columns: dict[str, str] = {}
    for name in frame.columns:
        key = canonical(name)
        if key in columns:
            raise DataError(f"columns {columns[key]!r} and {name!r} both mean {key!r}", path=source, field=name,
                            readable=True)
        columns[key] = str(name)
    missing = [c for c in ("date", *features) if c not in columns]
    if missing:
        present = [f for f in features if f in columns]
        # a close-only export (date, close): the features it has are a setting away (the target among them;
        # this reader is not told which column that is, so the hint says it)
        fewer = (f"; to train a model on the columns it has, set data.features=[{','.join(present)}] (data.target, "
                 "close by default, must be one of them)" if "date" in columns and present else "")
        raise DataError(
            f"missing column(s) {missing}; found {[str(c) for c in frame.columns]}; expected "
            f"date, {', '.join(features)} (any case; 'Date', 'Datetime' or 'Timestamp' for date, 'Adj Close' for "
            f"adj_close; an optional 'Ticker', 'Symbol' or 'Name' column){fewer}",
            path=source, field=missing[0],
        )
    if frame.empty:
        raise DataError("no data rows below the header", path=source, readable=True)
    lines = np.arange(len(frame)) + 2 if lines is None else lines  # header is line 1

    raw_dates = frame[columns["date"]].astype(str).str.strip()
    dates = parse_dates(raw_dates, lines, source, columns["date"], date_format)

    tickers = frame[columns["ticker"]].astype(str).str.strip().to_numpy() if "ticker" in columns else None
    values = np.empty((len(frame), len(features)))
    for j, feature in enumerate(features):
        raw = frame[columns[feature]]
        numbers = parse_numbers(raw, lines, source, columns[feature], decimal, price=feature in PRICE_COLUMNS,
                                sep=sep, tickers=tickers)
        _first_bad(~np.isfinite(numbers), raw, lines, source, columns[feature], "a finite number")
        if feature in PRICE_COLUMNS:
            _first_bad(numbers <= 0, raw, lines, source, columns[feature], "a positive price")
        else:
            _first_bad(numbers < 0, raw, lines, source, columns[feature], "a non-negative number")
        values[:, j] = numbers
    _check_range(values, features, frame, columns, lines, source)

    if tickers is not None:
        _first_bad(tickers == "", pd.Series(tickers), lines, source, columns["ticker"], "a ticker name")
    else:
        tickers = np.full(len(frame), default_ticker)
    out = []
    for ticker in sorted(set(tickers)):
        idx = np.flatnonzero(tickers == ticker)
        out.append(_one_ticker(str(ticker), source, dates[idx], values[idx], lines[idx], columns["date"]))
    return out


def parse_numbers(raw: pd.Series, lines: np.ndarray, source: str, column: str, decimal: str = ".",
                  price: bool = False, sep: str = ",", tickers: np.ndarray | None = None) -> np.ndarray:
    """A numeric column as float64 (NaN where a value is no number), ``decimal`` being the decimal point.

    Why: stripping every comma as a thousands separator read a decimal comma (``67,7142``, from a
    spreadsheet in a European locale) as ``677142``, a scale that changed from row to row. The
    other mark (``,`` for ``decimal="."``, ``.`` for ``decimal=","``) is only a thousands separator
    where it groups three digits (``1,234,567.89`` / ``1.234.567,89``); anywhere else the value is an
    error that suggests the other ``data.decimal``. ``1,234`` alone reads both ways: a price column
    with such values and no decimal point anywhere is read as thousands, with a warning, unless that
    makes it ~1000x the ticker's row beside it (``tickers``: each row's ticker, ``None`` for one).
    A space or an apostrophe between groups of digits (French ``1 234,56``, Swiss ``1'234.56``) is a
    thousands mark that no locale writes as a decimal point: never ambiguous.
    """
    group = "," if decimal == "." else "."
    # a currency sign before a price, as Nasdaq.com's export writes ($189.84) and spreadsheets format them
    stripped = raw.astype(str).str.strip().str.replace(r"^([+-]?)[$€£¥]\s*", r"\1", regex=True)
    spaced = stripped.str.contains(r"\d[ \u00a0\u202f']\d", regex=True).to_numpy()
    # checked as the locale's own group mark (the messages quote the file's value, raw)
    text = stripped.str.replace(r"(?<=\d)[ \u00a0\u202f'](?=\d)", group, regex=True) if spaced.any() else stripped
    g, d = re.escape(group), re.escape(decimal)
    has_group = text.str.contains(group, regex=False).to_numpy()
    grouped = np.zeros(len(text), dtype=bool)
    marked = np.flatnonzero(has_group)  # only these can be wrong: the pattern is matched on them alone
    if len(marked):
        grouped[marked] = text.iloc[marked].str.fullmatch(rf"[+-]?\d{{1,3}}(?:{g}\d{{3}})+(?:{d}\d*)?").to_numpy()
    other = """'data.decimal=","'""" if decimal == "." else "data.decimal=."  # quoted: Hydra refuses a bare ","
    bad = np.flatnonzero(has_group & ~grouped)
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"expected a number with {decimal!r} as the decimal point and {group!r} only between groups of three "
            f"digits ({'1,234.56' if decimal == '.' else '1.234,56'}), found {raw.iloc[i]!r} (is {group!r} the "
            f"decimal point? then set {other})", path=source, row=int(lines[i]), field=column)
    # exactly "d{1,3}<group>ddd", written with the mark itself: the only values that read both ways
    ambiguous = np.zeros(len(text), dtype=bool)
    if price and len(marked):
        ambiguous[marked] = text.iloc[marked].str.fullmatch(rf"[+-]?\d{{1,3}}{g}\d{{3}}").to_numpy()
        ambiguous &= ~spaced
    if ambiguous.any() and not text.str.contains(decimal, regex=False).any():
        i = int(np.flatnonzero(ambiguous)[0])
        if sep == ";" and decimal == ".":
            # ';' between fields is the habit of the locales whose decimal mark is ',': "67,714" is 67.714
            raise DataError(f"{text.iloc[i]!r} could be {text.iloc[i].replace(',', '')} (',' between thousands) or "
                            f"{text.iloc[i].replace(',', '.')} (a decimal comma), and this ';'-separated file's "
                            "prices have no '.' anywhere: set 'data.decimal=\",\"' if ',' is the decimal point",
                            path=source, row=int(lines[i]), field=column)
        log.warning("%s, row %d, field %r: %r is read as %s (%r as a thousands separator), and no value of the "
                    "column has a decimal point %r; if %r is the decimal point, set %s", source,
                    int(lines[i]), column, text.iloc[i], text.iloc[i].replace(group, ""), group, decimal,
                    group, other)
    plain = text.str.replace(group, "", regex=False)
    if decimal != ".":
        plain = plain.str.replace(decimal, ".", regex=False)
    values = pd.to_numeric(plain, errors="coerce").to_numpy(dtype=float)
    if ambiguous.any() and not ambiguous.all():
        _check_thousands_scale(raw, values, ambiguous, tickers, lines, source, column, group, decimal)
    return values


def _check_thousands_scale(raw: pd.Series, values: np.ndarray, ambiguous: np.ndarray, tickers: np.ndarray | None,
                           lines: np.ndarray, source: str, column: str, group: str, decimal: str) -> None:
    """Refuse a price read as thousands (``47.000`` -> 47000) that is ~1000x its ticker's row beside it.

    Why: ``47.000`` among ``46,5`` and ``47,2`` (a file whose decimal marks are mixed, or ``"100,410"``
    quoted in a '.' file) is a valid number with a thousands separator, and was read as 47000, a
    1000-fold jump in one day that no price makes: the forecast was trained on it, unsaid. The row
    beside it is the same ticker's (in a file of many, AMZN's 2,501 follows F's 12.1).
    """
    beside = pd.Series(np.where(ambiguous | ~np.isfinite(values) | (values <= 0), np.nan, values))
    keys = pd.Series(tickers if tickers is not None else np.zeros(len(values)))
    before = beside.groupby(keys).ffill().to_numpy()
    after = beside.groupby(keys).bfill().to_numpy()
    near = np.where(np.isfinite(before), before, after)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = values / near
    wrong = np.flatnonzero(ambiguous & (ratio > 100) & (ratio < 10_000))  # read / 1000 within 10x of its neighbour
    if len(wrong):
        i = int(wrong[0])
        raise DataError(f"{raw.iloc[i]!r} is read as {values[i]:g} ({group!r} between thousands, the decimal point "
                        f"being {decimal!r}), {ratio[i]:.0f} times the price of the row beside it ({near[i]:g}); is "
                        f"{group!r} its decimal point? Write every price of the file with one decimal point",
                        path=source, row=int(lines[i]), field=column)


# a UTC offset (or zone) after a time of day: "00:00:00-05:00", "09:30+0900", "00:00:00Z", "00:00 UTC"
_OFFSET = re.compile(r"(\d:\d\d(?::\d\d(?:[.,]\d+)?)?)\s*(?:Z|UTC|GMT|(?:UTC|GMT)?[+-]\d\d(?::?\d\d)?)$",
                     re.IGNORECASE)
# what a date column may hold, one format per file: ISO first, then the spreadsheet exports; "%d/%m/%Y"
# and "%m/%d/%Y" both read "05/10/2017", which is what the per-file choice below is for
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%Y-%m-%d %H:%M:%S", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y",
                "%d-%m-%Y", "%m-%d-%Y", "%d-%b-%Y", "%d %b %Y", "%b %d, %Y", "%m/%d/%y", "%d/%m/%y")


def _mixed_formats(readings: dict[str, pd.Series], raw: pd.Series, lines: np.ndarray, source: str, column: str
                   ) -> None:
    """Refuse a date column written in two formats (ISO, then DD/MM/YYYY after an edit), naming the row
    where the format changes.

    Why: the first row that the format reading the most rows cannot read was named, which for a file
    mostly in the second format is row 2, a valid ISO date ("expected a date ..., found '2013-02-08'").
    """
    best = max(readings, key=lambda fmt: int(readings[fmt].notna().sum()))
    unread = readings[best].isna().to_numpy()
    other = next((fmt for fmt in readings if fmt != best and readings[fmt].notna().to_numpy()[unread].all()), None)
    if other is None or not unread.any():
        return
    first = best if not unread[0] else other  # the format the file starts in
    change = int(np.flatnonzero(readings[first].isna().to_numpy())[0])
    then = other if first == best else best
    raise DataError(f"the dates are written in two formats: {first!r} from row {int(lines[0])} ({raw.iloc[0]!r}), "
                    f"then {then!r} from here ({raw.iloc[change]!r}); write one format for the whole file (a day "
                    "such as 05/10/2017 would read two ways)", path=source, row=int(lines[change]), field=column)


def parse_dates(raw: pd.Series, lines: np.ndarray, source: str, column: str, date_format: str | None = None
                ) -> np.ndarray:
    """A date column as ``datetime64[D]``, read with one format for the whole file.

    Why: a parser that guesses row by row (pandas' ``format="mixed"``) reads ``29/11/2016`` day-first
    but ``05/10/2017`` month-first in the same file, which scrambles a day-first series without an
    error. The format is ``date_format`` when given (``data.date_format``), else the one of
    :data:`DATE_FORMATS` (or ISO 8601 with a time or zone) that reads every row; when two read every
    row to different dates (every day of the file is 12 or less) the file is ambiguous and refused.

    A UTC offset after a time of day (yfinance writes ``2013-02-08 00:00:00-05:00``, ``-04:00`` in
    summer) is dropped before parsing: a trading day is the exchange's local date, the date written
    in the file. Converting to UTC moved every day of a ``+09:00`` file back by one, and mixed
    offsets were a pandas error without the file or row.
    """
    local = raw.astype(str).str.strip()
    if local.str.contains(":", regex=False).any():  # a time of day somewhere: perhaps with an offset
        local = local.str.replace(_OFFSET, r"\1", regex=True)

    def read(fmt: str) -> pd.Series:
        try:
            parsed = pd.to_datetime(local, errors="coerce", format=fmt)
        except ValueError:  # zones that _OFFSET does not know, mixed: this format reads no row
            return pd.Series(pd.NaT, index=local.index, dtype="datetime64[ns]")
        return parsed.dt.tz_localize(None) if getattr(parsed.dtype, "tz", None) is not None else parsed

    if date_format:
        parsed = read(re.sub(r"\s*%[zZ]", "", date_format))  # the offsets are gone from the values
        _first_bad(parsed.isna().to_numpy(), raw, lines, source, column, f"a date in data.date_format={date_format!r}")
        return parsed.to_numpy().astype("datetime64[D]")
    readings: dict[str, pd.Series] = {}
    for fmt in (*DATE_FORMATS, "ISO8601"):
        readings[fmt] = read(fmt)
        if fmt.startswith("%Y") and not readings[fmt].isna().any():  # year first: no day/month ambiguity
            return readings[fmt].to_numpy().astype("datetime64[D]")
    complete = {fmt: parsed for fmt, parsed in readings.items() if not parsed.isna().any()}
    if not complete:  # name the first row that the format reading the most rows cannot read
        _mixed_formats(readings, raw, lines, source, column)
        best = max(readings.values(), key=lambda parsed: int(parsed.notna().sum()))
        _first_bad(best.isna().to_numpy(), raw, lines, source, column,
                   "a date (YYYY-MM-DD, or one format for the whole file such as DD/MM/YYYY; data.date_format "
                   "sets it)")
    days = {fmt: parsed.to_numpy().astype("datetime64[D]") for fmt, parsed in complete.items()}
    first = next(iter(days))
    differing = [fmt for fmt in days if not np.array_equal(days[fmt], days[first])]
    if differing:
        i = int(np.flatnonzero(days[first] != days[differing[0]])[0])
        raise DataError(
            f"dates such as {raw.iloc[i]!r} read as {days[first][i]!s} with the format {first!r} and as "
            f"{days[differing[0]][i]!s} with {differing[0]!r}, and both read every row of the file; set "
            f"data.date_format (e.g. data.date_format='{differing[0]}')",
            path=source, row=int(lines[i]), field=column)
    return days[first]


def _check_range(values: np.ndarray, features: Sequence[str], frame: pd.DataFrame, columns: dict[str, str],
                 lines: np.ndarray, source: str) -> None:
    """A row whose high is below its low is refused: no trading day has one, and its usual cause, the
    two columns swapped (by a header or a join), would train on a range turned inside out."""
    if "high" not in features or "low" not in features:
        return
    high, low = values[:, list(features).index("high")], values[:, list(features).index("low")]
    bad = np.flatnonzero(high < low)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"high {frame[columns['high']].iloc[i]!r} is below low {frame[columns['low']].iloc[i]!r} "
                        f"({len(bad)} row(s) so; are the high and low columns swapped?)",
                        path=source, row=int(lines[i]), field=columns["high"])


def _first_bad(bad: np.ndarray, raw: pd.Series, lines: np.ndarray, source: str, column: str, expected: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = raw.iloc[i]
        found = "an empty value" if str(value).strip() == "" else repr(value)
        raise DataError(f"expected {expected}, found {found}", path=source, row=int(lines[i]), field=column)


def _one_ticker(
    ticker: str, source: str, dates: np.ndarray, values: np.ndarray, lines: np.ndarray, date_column: str
) -> Series:
    order = np.argsort(dates, kind="stable")
    if (order != np.arange(len(order))).any():
        log.warning("%s: ticker %s: rows are not in date order; sorted them by date", source, ticker)
        dates, values, lines = dates[order], values[order], lines[order]
    repeated = np.flatnonzero(dates[1:] == dates[:-1])
    if len(repeated):
        i = int(repeated[0]) + 1
        raise DataError(f"duplicate date {dates[i]} for ticker {ticker!r} (also on row {lines[i - 1]}); "
                        "expected one row per ticker and day", path=source, row=int(lines[i]), field=date_column)
    gaps = np.diff(dates).astype(int)
    if len(gaps) and gaps.max() > _GAP_DAYS:
        k = int(gaps.argmax())
        log.warning("%s: ticker %s: %d gap(s) longer than %d days (largest: %s -> %s); windows step over "
                    "trading rows, so a gap counts as one day", source, ticker, int((gaps > _GAP_DAYS).sum()),
                    _GAP_DAYS, dates[k], dates[k + 1])
    return Series(ticker, source, dates, values)


# -- windows ----------------------------------------------------------------------------------
class WindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows cut on the fly from whole series: ``(window, F)`` raw inputs, ``(horizon,)`` targets.

    Args:
        series: one ``(N_k, F)`` tensor per ticker.
        anchors: ``(M, 2)`` rows ``(ticker index, t)``; ``t`` is the window's last day.
    """

    def __init__(self, series: list[torch.Tensor], anchors: torch.Tensor, window: int, horizon: int,
                 target: int) -> None:
        self.series, self.anchors = series, anchors
        self.window, self.horizon, self.target = window, horizon, target
        self.lengths = [window] * len(anchors)
        self._rows: list[list[int]] = anchors.tolist()  # plain ints: no tensor indexing per sample

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, t = self._rows[index]
        values = self.series[k]
        return values[t - self.window + 1 : t + 1], values[t + 1 : t + 1 + self.horizon, self.target]


class StockDataModule(SequenceDataModule):
    """OHLCV series -> chronological splits -> windows of raw values; normaliser fitted on train days.

    Args:
        path: ``None`` for the generated market; a CSV file or a folder of ``*.csv`` (``.csv.gz``,
            ``.bz2``, ``.zip``, ``.xz`` too; other files of the folder are named in a warning).
        features: input columns per day, in order (add ``adj_close`` if the files have it).
        target: the column to forecast (must be one of ``features``).
        window: days per input window.
        horizon: days ahead to forecast (the next ``horizon`` values of ``target``).
        normalise: ``log_returns`` (scale free: each price relative to the previous close,
            volume relative to the previous volume, then z-scored; targets are log-returns from
            the last close), ``zscore`` or ``minmax`` (one set of statistics over all train
            rows: suits one ticker or tickers at similar price levels).
        train_fraction / val_fraction: chronological split of each ticker's days.
        val_start / test_start: split by dates instead (``YYYY-MM-DD``; both or neither).
        tickers: keep only these tickers (``None`` = all).
        num_tickers / num_days: size of the generated market.
        seed: generator seed.
        date_format: the date column's ``strftime`` format (e.g. ``%d/%m/%Y``); ``None``: the one
            format that reads every row of a file, an error when day-first and month-first both do.
        decimal: the numbers' decimal point: ``"."`` (``1,234.56``) or ``","`` (``1.234,56``, files
            from spreadsheets in European locales). Stored in the spec: ``predict`` reads new files
            of a checkpoint with it, unless its ``data.decimal`` says otherwise.
    """

    predict_input = "OHLCV CSV file paths"  # what `lstmkit predict input=...` expects (named in errors)
    spec_settings = ("features", "target", "window", "horizon", "normalise")
    # `lstmkit predict data.<option>=`: how its input files are read, and the values each may take (None: a format)
    predict_read_options: ClassVar[dict[str, tuple[str, ...] | None]] = {"date_format": None, "decimal": DECIMALS}

    def __init__(
        self,
        path: str | None = None,
        features: list[str] | None = None,
        target: str = "close",
        window: int = 30,
        horizon: int = 1,
        normalise: str = "log_returns",
        train_fraction: float = 0.7,
        val_fraction: float = 0.15,
        val_start: str | None = None,
        test_start: str | None = None,
        tickers: list[str] | None = None,
        num_tickers: int = 4,
        num_days: int = 1200,
        seed: int = 0,
        date_format: str | None = None,
        decimal: str = ".",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.date_format = date_format or None
        self.decimal = decimal
        self.features = [canonical(f) for f in (features or DEFAULT_FEATURES)]
        self.target = canonical(target)
        self.window, self.horizon = int(window), int(horizon)
        self.normalise = normalise
        self.train_fraction, self.val_fraction = train_fraction, val_fraction
        self.val_start, self.test_start = val_start, test_start
        self.tickers = [str(t) for t in tickers] if tickers else None
        self.num_tickers, self.num_days, self.seed = num_tickers, num_days, seed
        self.collate = PadCollate(pad_value=0.0)
        self.series: list[Series] = []

    # -- building -------------------------------------------------------------------------
    def build(self) -> DataSpec:
        if self.fixed_spec is not None:  # eval: the checkpoint decides what the model reads
            extra = self.fixed_spec.extra
            self.features, self.target = list(extra["features"]), extra["target"]
            self.window, self.horizon = int(extra["window"]), int(extra["horizon"])
        self._check_options()
        self.series = self._read()
        if self.whole:  # every window of every ticker is scored
            spec = self.fixed_spec
            anchor_sets = {"test": self._all_anchors()}
        else:
            bounds = [self._bounds(s) for s in self.series]
            self._check_split_overlap(bounds)
            spec = self.fixed_spec or self._fit_spec(bounds)
            anchor_sets = self._anchors(bounds)
        tensors = [torch.tensor(s.values, dtype=torch.float32) for s in self.series]
        target = self.features.index(self.target)
        for split, anchors in anchor_sets.items():
            self.splits[split] = WindowDataset(tensors, anchors, self.window, self.horizon, target)
        sizes = self.split_sizes()  # (split=all's windows are "all", as its metrics are named)
        log.info("stock windows (%d ticker%s, window %d, horizon %d): %s", len(self.series),
                 "s" if len(self.series) != 1 else "", self.window, self.horizon, sizes)
        return spec

    def _check_options(self) -> None:
        if self.decimal not in DECIMALS:
            raise ConfigError(f"data.decimal={self.decimal!r}: expected '.' (1,234.56) or ',' (1.234,56; on the "
                              """command line: 'data.decimal=","')""")
        if self.normalise not in KINDS:
            raise ConfigError(f"data.normalise={self.normalise!r}: expected one of {KINDS}")
        if self.target not in self.features:
            raise ConfigError(f"data.target={self.target!r} must be one of data.features {self.features}")
        if self.window < 2 or self.horizon < 1:
            raise ConfigError(f"data.window must be >= 2 and data.horizon >= 1 (got {self.window}, {self.horizon})")
        if (self.val_start is None) != (self.test_start is None):
            raise ConfigError("give both data.val_start and data.test_start (dates), or neither (fractions)")
        if self.val_start is not None:
            try:
                starts = [np.datetime64(str(d), "D") for d in (self.val_start, self.test_start)]
            except ValueError:
                raise ConfigError(f"data.val_start={self.val_start!r} / data.test_start={self.test_start!r}: "
                                  "expected dates YYYY-MM-DD") from None
            if starts[0] >= starts[1]:
                raise ConfigError("data.val_start must come before data.test_start")
        if not (0 < self.train_fraction and 0 < self.val_fraction and self.train_fraction + self.val_fraction < 1):
            raise ConfigError("data.train_fraction and data.val_fraction must be > 0 and sum to < 1")

    def _read(self) -> list[Series]:
        if self.path is None:
            frame = generate_ohlcv(self.num_tickers, self.num_days, self.seed)
            series = validate_frame(frame, "<generated>", self.features, default_ticker="SYN")
        else:
            series = read_ohlcv(self.path, self.features, self.date_format, self.decimal)
        if self.tickers:
            missing = sorted(set(self.tickers) - {s.ticker for s in series})
            if missing:
                raise DataError(f"data.tickers {missing} not found; the data has {[s.ticker for s in series]}",
                                path=self.path)
            series = [s for s in series if s.ticker in self.tickers]
        return series

    def _check_split_overlap(self, bounds: list[tuple[int, int]]) -> None:
        """Say so when fractions split tickers of different periods so that one's test days come
        before another's last train day: the model then trains on market-wide moves of days it is
        scored on (one date split for all, ``data.val_start`` / ``data.test_start``, cannot)."""
        if self.val_start is not None or len(self.series) < 2:
            return
        train_end = max(range(len(bounds)), key=lambda k: self.series[k].dates[bounds[k][0] - 1])
        test_start = min(range(len(bounds)), key=lambda k: self.series[k].dates[bounds[k][1]])
        last_train = self.series[train_end].dates[bounds[train_end][0] - 1]
        first_test = self.series[test_start].dates[bounds[test_start][1]]
        if first_test <= last_train:
            log.warning("data.train_fraction / val_fraction split each ticker over its own dates, and they differ: "
                        "ticker %r's test days start %s, before ticker %r's train days end %s, so the model trains "
                        "on days it is tested on (market-wide moves leak). Split every ticker at the same dates "
                        "with data.val_start=YYYY-MM-DD data.test_start=YYYY-MM-DD",
                        self.series[test_start].ticker, first_test, self.series[train_end].ticker, last_train)

    def _bounds(self, series: Series) -> tuple[int, int]:
        """``(n_train, n_train + n_val)`` of one ticker; checked long enough for the window."""
        n = len(series)
        if self.val_start is not None:
            n_train = int(np.searchsorted(series.dates, np.datetime64(str(self.val_start), "D")))
            val_end = int(np.searchsorted(series.dates, np.datetime64(str(self.test_start), "D")))
        else:
            n_train = int(n * self.train_fraction)
            val_end = n_train + int(n * self.val_fraction)
        w, h = self.window, self.horizon
        # two train windows at least: the target's spread (its normaliser's scale) needs two values
        if n_train < w + h + 1 or val_end - n_train < h or n - val_end < h:
            needed = math.ceil((w + h + 1) / self.train_fraction) if self.val_start is None else w + 3 * h + 1
            # eval (a checkpoint's spec): the normaliser is the model's, so no train rows are needed, but the
            # split still wants them; split=all scores every window. Why: a file of dates after the checkpoint's
            # test_start (new data to score, the usual case) was told it needs train rows
            whole = ("; eval needs no train rows (the model's normaliser is the checkpoint's): split=all scores "
                     "every window of the data" if self.fixed_spec is not None else "")
            if self.val_start is not None and n and whole and n_train == 0 and val_end == 0:
                raise DataError(
                    f"ticker {series.ticker!r}: all of its dates ({series.dates[0]} to {series.dates[-1]}) are on or "
                    f"after the checkpoint's data.test_start={self.test_start}, so the split the model was trained "
                    f"with puts every row in test and none in train or val (data.val_start={self.val_start}){whole} "
                    "(or set data.val_start / data.test_start to dates of this data)", path=series.source)
            if self.val_start is not None and n:
                raise DataError(
                    f"ticker {series.ticker!r}: data.val_start={self.val_start} / data.test_start={self.test_start} "
                    f"leave {n_train} train / {val_end - n_train} val / {n - val_end} test rows of its dates "
                    f"{series.dates[0]} to {series.dates[-1]}; a window of {w} days with horizon {h} needs at least "
                    f"{w + h + 1} train rows (two windows) and {h} in val and in test{whole}", path=series.source)
            raise DataError(
                f"ticker {series.ticker!r} is too short: {n} rows ({n_train} train / {val_end - n_train} val / "
                f"{n - val_end} test); a window of {w} days with horizon {h} needs at least {w + h + 1} train rows "
                f"(two windows) and {h} in val and in test (about {needed} rows in all){whole}",
                path=series.source,
            )
        return n_train, val_end

    def _anchors(self, bounds: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Last input day ``t`` of every window, per split, chosen by where its targets lie."""
        w, h = self.window, self.horizon
        out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
        for k, (series, (n_train, val_end)) in enumerate(zip(self.series, bounds)):
            ranges = {"train": (w - 1, n_train - h), "val": (max(w - 1, n_train - 1), val_end - h),
                      "test": (max(w - 1, val_end - 1), len(series) - h)}
            for split, (first, stop) in ranges.items():
                out[split].extend((k, t) for t in range(first, stop))
        return {split: torch.tensor(rows, dtype=torch.int64).reshape(-1, 2) for split, rows in out.items()}

    def _all_anchors(self) -> torch.Tensor:
        """``data.whole``: the last input day of every complete window (inputs and targets) of every ticker."""
        w, h = self.window, self.horizon
        for series in self.series:
            if len(series) < w + h:
                others = [s.ticker for s in self.series if s is not series]
                leave = (f". To score the others, leave it out: data.tickers=[{','.join(others[:3])}"
                         f"{',...' if len(others) > 3 else ''}]" if others else "")
                raise DataError(f"ticker {series.ticker!r} has {len(series)} rows; a window of {w} days with "
                                f"horizon {h} needs at least {w + h}{leave}", path=series.source)
        rows = [(k, t) for k, series in enumerate(self.series) for t in range(w - 1, len(series) - h)]
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2)

    def _fit_spec(self, bounds: list[tuple[int, int]]) -> DataSpec:
        """The normaliser, from train days only."""
        train = [torch.tensor(s.values[:n_train]) for s, (n_train, _) in zip(self.series, bounds)]
        close = self.features.index("close") if "close" in self.features else None
        base = [close if f in ("open", "high", "low", "close") and close is not None else j
                for j, f in enumerate(self.features)]
        offset = [0.0 if f in PRICE_COLUMNS else 1.0 for f in self.features]
        normaliser = fit_feature_normaliser(self.normalise, train, base=base, offset=offset)
        normaliser["target"] = self._fit_target(train, normaliser)
        return DataSpec(
            input_kind="features",
            num_features=len(self.features),
            target_names=[f"{self.target}_t+{h + 1}" for h in range(self.horizon)],
            normaliser=normaliser,
            extra={"features": self.features, "target": self.target, "window": self.window,
                   "horizon": self.horizon, "tickers": [s.ticker for s in self.series],
                   "date_format": self.date_format, "decimal": self.decimal},
        )

    def _fit_target(self, train: list[torch.Tensor], normaliser: dict[str, Any]) -> dict[str, Any]:
        j = self.features.index(self.target)
        relative = self.normalise == "log_returns"
        if relative:  # log-returns from the last day of each train window, per horizon step
            w, h = self.window, self.horizon
            values = torch.cat([
                to_target_space(s[w:].unfold(0, h, 1)[:, j], s[w - 1 : len(s) - h, j], relative=True)
                for s in train
            ])  # (N, H)
            shift, scale = values.mean(dim=0).tolist(), values.std(dim=0).tolist()
        elif self.normalise == "minmax":
            low, high = normaliser["min"][j], normaliser["max"][j]
            shift, scale = [low] * self.horizon, [high - low] * self.horizon
        else:
            shift, scale = [normaliser["mean"][j]] * self.horizon, [normaliser["std"][j]] * self.horizon
        if not all(math.isfinite(v) and v > 1e-12 for v in scale):  # the loss would divide by it
            raise DataError(f"data.target={self.target!r} does not vary over the train days ({self.normalise} scale "
                            f"{scale}): there is nothing to forecast; check the {self.target!r} column or use "
                            "other train dates", path=self.path)
        return {"feature": j, "name": self.target, "relative": relative, "shift": shift, "scale": scale}

    # -- predict --------------------------------------------------------------------------
    @classmethod
    def serving_inputs(cls, spec: DataSpec) -> dict[str, Any]:
        window = spec.extra.get("window")
        return {"inputs": f"(batch, {window}, {len(spec.extra.get('features', []))}) float32: the last {window} "
                          f"days of one ticker, oldest first, raw values of {spec.extra.get('features')} in that "
                          "order (the model normalises them inside)",
                "lengths": f"(batch,) int64: {window} for every row"}

    @classmethod
    def make_predict_batch(cls, spec: DataSpec, inputs: list[Any]) -> Batch:
        """CSV paths (or folders) -> the last ``window`` days of each ticker in them.

        One input may hold several tickers, giving several batch rows; ``inputs`` is rewritten
        in place to one label per row (``{"file", "ticker", "last_date"}``) so that a caller
        pairing inputs with predictions stays aligned and prints which forecast is which.
        """
        features, window = list(spec.extra["features"]), int(spec.extra["window"])
        horizon = int(spec.extra["horizon"])
        examples, labels = [], []
        decimal = spec.extra.get("decimal", ".")  # "." in checkpoints from before data.decimal
        for item in inputs:
            for series in read_ohlcv(str(item), features, spec.extra.get("date_format"), decimal):
                if len(series) < window:
                    raise DataError(f"ticker {series.ticker!r} has {len(series)} rows; the model reads windows "
                                    f"of {window} days", path=series.source, readable=True)
                x = torch.tensor(series.values[-window:], dtype=torch.float32)  # (window, F)
                examples.append((x, torch.zeros(horizon)))
                labels.append({"file": series.source, "ticker": series.ticker, "last_date": str(series.dates[-1])})
        inputs[:] = labels
        return PadCollate(pad_value=0.0)(examples)
