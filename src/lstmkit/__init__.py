"""lstmkit: LSTM pipelines — an encoder, an LSTM and a head, composed by Hydra, trained by Lightning."""

from lstmkit.core import LSTMCore
from lstmkit.module import SequenceModel
from lstmkit.sweeps import register_resolvers
from lstmkit.types import Batch, DataSpec

register_resolvers()  # the configs' ${lstmkit_sweep_name:}, for any code that composes and resolves them

__all__ = ["Batch", "DataSpec", "LSTMCore", "SequenceModel"]
__version__ = "0.1.0"
