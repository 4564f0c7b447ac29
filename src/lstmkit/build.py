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
_TRUSTED: set[str] = set()  # trust(): this process's trusted modules (or targets)


def trust(*modules: str) -> None:
    """Build targets under these modules (``"mypkg"``, ``"mypkg.parts"``; a target: itself) in this process.

    Why: an encoder, head or datamodule of the user's own package is refused from a checkpoint unless
    trusted, as a checkpoint that names code runs it when loaded; ``train`` trusts its own config's.
    """
    _TRUSTED.update(module.strip().rstrip(".") for module in modules if module.strip())


def trusted_names() -> tuple[str, ...]:
    """The modules (or targets) of ``LSTMKIT_TRUSTED_MODULES`` and :func:`trust`, beside lstmkit's own."""
    named = [m.rstrip(".") for m in re.split(r"[,:;\s]+", os.environ.get(TRUST_ENV, "")) if m]
    return tuple(sorted({*named, *_TRUSTED}))


def is_trusted(name: str) -> bool:
    """Whether a target (or a module name) is lstmkit's own or under a trusted module."""
    return name.startswith(ALLOWED_PREFIXES) or any(name == t or name.startswith(f"{t}.") for t in trusted_names())


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
    if not isinstance(target, str) or not is_trusted(target):
        raise CheckpointError(_refusal([str(target)]))
    return target


def _refusal(targets: list[str]) -> str:
    packages = ",".join(dict.fromkeys([*trusted_names(), *(t.split(".")[0] for t in targets)]))
    return (f"refusing to build {', '.join(map(repr, targets))}: a checkpoint names the code it is rebuilt with, and "
            f"runs it when loaded, so only lstmkit's own ({', '.join(ALLOWED_PREFIXES)}) and trusted modules are "
            f"built; if it is your own code (a model you trained with it), set {TRUST_ENV}={packages} (module names, "
            f"comma-separated), or call lstmkit.build.trust(...) in Python")


def check_targets(targets: Iterable[str]) -> None:
    """Every target trusted (the refusal names all that are not), and each importable, its object defined
    under a trusted module: ``lstmkit.build.os.system`` starts with ``lstmkit.`` but is not lstmkit's code."""
    targets = list(dict.fromkeys(targets))
    refused = [t for t in targets if not isinstance(t, str) or not is_trusted(t)]
    if refused:
        raise CheckpointError(_refusal(refused))
    for target in targets:
        try:
            trusted_object(target)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - not importable: its own one line
            cause = err.__cause__ or err
            raise CheckpointError(f"cannot import {target!r} ({type(cause).__name__}: {cause}); the code a model "
                                  "was built with must be importable here (installed, or on PYTHONPATH)") from None


def trusted_object(target: str) -> Any:
    """The object ``target`` names, refused unless both its name and the module defining it are trusted.

    Why: a name is resolved attribute by attribute, so any module lstmkit imports is reachable under
    ``lstmkit.`` (``lstmkit.commands.train.instantiate`` is Hydra's ``instantiate``, which runs any target
    of its config); the object's own ``__module__`` says whose code it is.
    """
    check_target(target)
    found = locate(target)
    module = getattr(found, "__module__", None) or ""
    if not is_trusted(f"{module}.") and target not in trusted_names():  # (trusted by its own name: the user's word)
        raise CheckpointError(f"refusing to build {target!r}: it is {module or 'an object of no module'}'s code, not "
                              f"lstmkit's or a trusted module's")
    return found


def build(component: dict[str, Any], **kwargs: Any) -> Any:
    """Call a component spec's (checked) target with its options and extra keyword arguments.

    Plain Python objects (a DataSpec, a parameter list) pass through untouched, which
    ``hydra.utils.instantiate`` would turn into configs; ``_partial_: true`` returns a partial.
    """
    if "_target_" not in component:
        raise CheckpointError(f"component spec has no _target_: {component}")
    options = {k: v for k, v in component.items() if not k.startswith("_")}
    factory = trusted_object(component["_target_"])
    if component.get("_partial_", False):
        return functools.partial(factory, **options, **kwargs)
    return factory(**options, **kwargs)
