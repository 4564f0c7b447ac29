"""lstmkit: LSTM pipelines — an encoder, an LSTM and a head, composed by Hydra, trained by Lightning."""

from lstmkit.core import LSTMCore
from lstmkit.module import SequenceModel
from lstmkit.types import Batch, DataSpec

__all__ = ["Batch", "DataSpec", "LSTMCore", "SequenceModel"]
__version__ = "0.1.0"
