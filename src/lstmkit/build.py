"""Build components from plain ``{"_target_": ..., **options}`` dicts stored in checkpoints.

Checkpoints carry the encoder / head / optimiser specs as plain dicts so a model can be rebuilt
without the original config. Instantiating an arbitrary ``_target_`` from a file would let a
checkpoint run any importable callable, so only targets under the allowed prefixes are built.
"""

from __future__ import annotations

import functools
from typing import Any

from hydra.utils import get_object

from lstmkit.errors import CheckpointError

ALLOWED_PREFIXES = ("lstmkit.", "torch.optim.")


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
    factory = get_object(component["_target_"])
    if component.get("_partial_", False):
        return functools.partial(factory, **options, **kwargs)
    return factory(**options, **kwargs)
