"""lstmkit: LSTM pipelines — an encoder, an LSTM and a head, composed by Hydra, trained by Lightning.

The package's names are imported on first use (PEP 562): importing torch and Lightning takes several
seconds, and ``lstmkit --help``, ``--version`` and the command-line errors Hydra reports before a job
starts (a typo in an override) need neither.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lstmkit.sweeps import register_resolvers

if TYPE_CHECKING:
    from lstmkit.core import LSTMCore
    from lstmkit.module import SequenceModel
    from lstmkit.types import Batch, DataSpec

register_resolvers()  # the configs' ${lstmkit_sweep_name:}, for any code that composes and resolves them

_LAZY = {"Batch": "lstmkit.types", "DataSpec": "lstmkit.types", "LSTMCore": "lstmkit.core",
         "SequenceModel": "lstmkit.module"}

__all__ = ["Batch", "DataSpec", "LSTMCore", "SequenceModel"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name.startswith("__"):  # probes such as __wrapped__ or __test__ are not submodules
        raise AttributeError(f"module 'lstmkit' has no attribute {name!r}")
    else:  # a submodule (``lstmkit.module``), as the eager imports made available before
        try:
            value = import_module(f"lstmkit.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"lstmkit.{name}":
                raise
            raise AttributeError(f"module 'lstmkit' has no attribute {name!r}") from None
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
