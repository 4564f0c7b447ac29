"""Build components from plain ``{"_target_": ..., **options}`` dicts stored in checkpoints.

Checkpoints carry the encoder / head / optimiser specs as plain dicts so a model can be rebuilt
without the original config. Instantiating an arbitrary ``_target_`` from a file would let a
checkpoint run any importable callable, so only lstmkit's own targets are built, and the modules
the user trusts: those named in ``LSTMKIT_TRUSTED_MODULES`` (``mypkg,lab_parts``) or passed to
:func:`trust`, and, in a ``train``, those its own config names (the user runs that code already).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object

from lstmkit.errors import CheckpointError

ALLOWED_PREFIXES = ("lstmkit.", "torch.optim.")
TRUST_ENV = "LSTMKIT_TRUSTED_MODULES"
_TRUSTED: set[str] = set()  # trust(): this process's trusted modules


def trust(*modules: str) -> None:
    """Build targets under these modules (``"mypkg"``, or a target: its top-level package) in this process.

    Why: an encoder, head or datamodule of the user's own package is refused from a checkpoint unless
    trusted, as a checkpoint that names code runs it when loaded; ``train`` trusts its own config's.
    """
    _TRUSTED.update(module.strip().split(".")[0] for module in modules if module.strip())


def trusted_prefixes() -> tuple[str, ...]:
    """lstmkit's own prefixes, then the modules of ``LSTMKIT_TRUSTED_MODULES`` and :func:`trust`."""
    named = [m for m in re.split(r"[,:;\s]+", os.environ.get(TRUST_ENV, "")) if m]
    return (*ALLOWED_PREFIXES, *sorted({f"{m.rstrip('.')}." for m in (*named, *_TRUSTED)}))


def config_targets(node: Any) -> Iterable[str]:
    """Every ``_target_`` in a plain config (nested dicts and lists)."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from config_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from config_targets(value)


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
    """``target`` if it may be built: lstmkit's own code, or a module the user trusts (see :func:`trust`)."""
    prefixes = trusted_prefixes()
    if not isinstance(target, str) or not target.startswith(prefixes):
        package = str(target).split(".")[0]
        raise CheckpointError(
            f"refusing to build {target!r}: a checkpoint names the code it is rebuilt with, and runs it when loaded, "
            f"so only lstmkit's own ({', '.join(ALLOWED_PREFIXES)}) and trusted modules are built; if it is your own "
            f"code (a model you trained with it), set {TRUST_ENV}={package} (module names, comma-separated), or "
            f"call lstmkit.build.trust({package!r}) in Python"
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
