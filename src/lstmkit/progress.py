"""A progress bar for long data-preparation loops (decoding audio, reading many files).

Lightning's ``RichProgressBar`` covers training and evaluation; preparing data happens before
the trainer exists, so it gets rich's own ``track``. The bar shows only on a terminal and only
for loops long enough to be worth one, so logs and tests stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
MIN_ITEMS = 200


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items``, with a transient rich progress bar on interactive terminals."""
    size = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if not sys.stderr.isatty() or (size is not None and size < MIN_ITEMS):
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=size, transient=True,
                          console=Console(stderr=True))
