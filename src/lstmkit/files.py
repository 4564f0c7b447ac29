"""Writing run artefacts so that a reader never finds half of one.

Why one helper: result records, CSV logs, metrics and prediction files are read by other processes
(a sweep's summary, dashboards, a user's script) and a run can be killed, or the disk fill up, while
one is written. Text written to a side file in the same folder and moved into place with
``os.replace`` (atomic within a file system) leaves either the earlier file whole or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a side file: never half of it on a kill or a full disk."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        partial.write_text(text, encoding="utf-8", newline="")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
