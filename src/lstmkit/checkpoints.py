"""Write checkpoints atomically; load them safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lstmkit.ensemble import SequenceEnsemble
from lstmkit.errors import CheckpointError, ConfigError
from lstmkit.module import SequenceModel


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without pickle code execution."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: expected a .ckpt file, found a folder (look in {path}/checkpoints)")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:
            head = fh.read(16)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint: expected a zip archive written by torch.save, "
                              f"found {path.stat().st_size} bytes starting with {head!r}")
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


def checkpoint_paths(ckpt_path: str | Path | Sequence[str | Path]) -> list[str]:
    """The checkpoint files ``ckpt_path`` names: one path, a list of paths, or glob patterns
    (``logs/sentiment_real/runs/*/checkpoints/best.ckpt``), each pattern's matches sorted."""
    entries = [ckpt_path] if isinstance(ckpt_path, (str, Path)) else list(ckpt_path)
    paths: list[str] = []
    for entry in entries:
        entry = str(entry)
        if glob.has_magic(entry):
            matches = sorted(glob.glob(os.path.expanduser(entry)))
            if not matches:
                raise CheckpointError(f"{entry}: no checkpoint matches this pattern")
            paths += matches
        else:
            paths.append(entry)
    if not paths:
        raise ConfigError("ckpt_path: no checkpoint given")
    resolved = [os.path.realpath(os.path.expanduser(p)) for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"ckpt_path: a checkpoint is listed twice in {paths}")
    return paths


def load_models(ckpt_path: str | Path | Sequence[str | Path], map_location: str | torch.device = "cpu"
                ) -> SequenceModel:
    """One model, or a :class:`~lstmkit.ensemble.SequenceEnsemble` when ``ckpt_path`` names several."""
    paths = checkpoint_paths(ckpt_path)
    if len(paths) == 1:
        return load_model(paths[0], map_location)
    # moved as a whole too, so that its own .device (which predict sends batches to) is the members'
    return SequenceEnsemble([load_model(p, map_location) for p in paths], names=paths).to(map_location).eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync, then rename over the target.

    Why: Lightning writes local checkpoints through an fsspec transaction whose temporary file
    lives in the system temp dir; when that is another filesystem the final step is a copy,
    and a run killed during the copy leaves a truncated ``last.ckpt`` that cannot be resumed.
    ``os.replace`` within one directory is atomic, so the target is always either the previous
    complete checkpoint or the new complete one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with tmp.open("wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        try:  # make the rename itself durable
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
