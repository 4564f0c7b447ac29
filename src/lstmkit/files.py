"""Writing run artefacts so that a reader never finds half of one, nor JSON it cannot parse.

Why one helper: result records, CSV logs, metrics and prediction files are read by other processes
(a sweep's summary, dashboards, a user's script) and a run can be killed, or the disk fill up, while
one is written. Text written to a side file in the same folder and moved into place with
``os.replace`` (atomic within a file system) leaves either the earlier file whole or the new one.
JSON goes through :func:`json_text`, which writes a diverged metric's NaN / inf as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a side file: never half of it on a kill or a full disk."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        partial.write_text(text, encoding="utf-8", newline="")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (at any depth of dicts, lists, tuples) as ``None``.

    Why: ``json.dumps`` writes them as ``NaN`` / ``Infinity``, which is not JSON: strict readers
    (``jq``, JavaScript's ``JSON.parse``, Python's with ``parse_constant`` raising) reject the whole file,
    and a diverged run's metrics (``val/loss`` = nan, ``val/mase`` = inf) are exactly when one is read.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """``value`` as strict JSON (``json.dumps`` options in ``kwargs``): a non-finite number is ``null``.

    The one way lstmkit writes JSON that may hold a computed number (``metrics.json``, ``result.json``,
    predictions, export records, benchmark reports); ``allow_nan=False`` makes anything
    :func:`json_safe` missed an error here rather than a file no strict reader accepts.
    """
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
