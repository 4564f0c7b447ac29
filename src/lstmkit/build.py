"""Build components from plain ``{"_target_": ..., **options}`` dicts stored in checkpoints.

Checkpoints carry the encoder / head / optimiser specs as plain dicts so a model can be rebuilt
without the original config. Instantiating an arbitrary ``_target_`` from a file would let a
checkpoint run any importable callable, so only targets under the allowed prefixes are built.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from hydra.utils import get_object

from lstmkit.errors import CheckpointError

ALLOWED_PREFIXES = ("lstmkit.", "torch.optim.")


class _FailedLookup(logging.Filter):
    """Drops the ERROR records of ``hydra.utils`` (its failed lookups) while :func:`locate` runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def locate(target: str) -> Any:
    """``hydra.utils.get_object`` without the ERROR record it logs when the lookup fails.

    Why: the exception is raised to the caller, which turns it into lstmkit's one-line error (or
    skips the target on purpose, as the option-type check does and the build reports later);
    Hydra's own record ("[hydra.utils][ERROR] - Error getting object at ...", three lines) printed
    the same failure before it, once per lookup. Only that logger, only during the lookup.
    """
    logger = logging.getLogger("hydra.utils")
    quiet = _FailedLookup()
    logger.addFilter(quiet)
    try:
        return get_object(target)
    finally:
        logger.removeFilter(quiet)


def check_target(target: str) -> str:
    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIXES):
        raise CheckpointError(
            f"refusing to build {target!r}: component targets must start with one of {ALLOWED_PREFIXES}"
        )
    return target


def build(component: dict[str, Any], **kwargs: Any) -> Any:
    """Call a component spec's (checked) target with its options and extra keyword arguments.

    Plain Python objects (a DataSpec, a parameter list) pass through untouched, which
    ``hydra.utils.instantiate`` would turn into configs; ``_partial_: true`` returns a partial.
    """
    if "_target_" not in component:
        raise CheckpointError(f"component spec has no _target_: {component}")
    check_target(component["_target_"])
    options = {k: v for k, v in component.items() if not k.startswith("_")}
    factory = locate(component["_target_"])
    if component.get("_partial_", False):
        return functools.partial(factory, **options, **kwargs)
    return factory(**options, **kwargs)
