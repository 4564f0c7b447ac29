"""Load checkpoints safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lstmkit.errors import CheckpointError
from lstmkit.module import SequenceModel


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without pickle code execution."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: expected a .ckpt file, found a folder (look in {path}/checkpoints)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable lstmkit checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not an lstmkit checkpoint (no state_dict / hyper_parameters)")
    hparams = ckpt["hyper_parameters"]
    if not {"spec", "encoder", "core", "head"} <= set(hparams):
        raise CheckpointError(f"{path}: checkpoint was not written by lstmkit's SequenceModel")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SequenceModel:
    """Rebuild a trained :class:`SequenceModel` from a checkpoint alone."""
    ckpt = read_checkpoint(path)
    try:
        model = SequenceModel(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: checkpoint does not match this lstmkit version ({err})") from None
    return model.to(map_location).eval()
