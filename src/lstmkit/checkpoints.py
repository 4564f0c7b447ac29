"""Write checkpoints atomically; load them safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import glob
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lstmkit.build import check_targets, config_targets
from lstmkit.ensemble import SequenceEnsemble, same_run_groups
from lstmkit.errors import CheckpointError, ConfigError
from lstmkit.module import SequenceModel
from lstmkit.types import IDENTITY, IDENTITY_EXTRA, IDENTITY_TOKENIZER, stored_part  # what a resume must keep

log = logging.getLogger("lstmkit")


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
        if head.startswith(b"PK"):  # a zip without its central directory: cut short
            raise CheckpointError(f"{path}: a damaged or truncated checkpoint ({path.stat().st_size} bytes; the zip "
                                  "archive has no end): it was probably cut short while being written or copied")
        if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ONNX: a protobuf ModelProto (ir_version first)
            raise CheckpointError(f"{path}: an exported ONNX model, not a checkpoint: predict, eval and export read the "
                                  ".ckpt it was exported from; run the ONNX model with onnxruntime (README, Export)")
        raise CheckpointError(f"{path}: not a PyTorch checkpoint: expected a zip archive written by torch.save, "
                              f"found {path.stat().st_size} bytes starting with {head!r}")
    with zipfile.ZipFile(path) as archive:  # TorchScript's zip holds code/ and constants.pkl, not data.pkl only
        scripted = any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())
    if scripted:
        raise CheckpointError(f"{path}: an exported TorchScript model, not a checkpoint: predict, eval and export read "
                              "the .ckpt it was exported from; load it with torch.jit.load (README, Export)")
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


def check_resumable(path: str | Path, model: SequenceModel, ckpt: dict[str, Any] | None = None) -> None:
    """Refuse to continue ``model``'s run from a checkpoint of other data or model sizes.

    Why: Lightning restores any state dict whose shapes fit. A vocabulary of the same size in
    another order (another corpus, another ``data.num_examples``) would silently pair the
    embedding's rows with other words, and a size mismatch would end in a torch traceback.
    Compared: the data spec's fields that map data onto weights (numbers to a relative 1e-6, as
    float sums differ in their last bits between thread counts; a field an older checkpoint
    lacks is not compared) and the weights' names and shapes. ``ckpt``: the checkpoint, if already read.
    """
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    spec, new_spec = dict(ckpt["hyper_parameters"].get("spec") or {}), dict(model.hparams.get("spec") or {})
    fields = [(key, spec.get(key), new_spec.get(key)) for key in IDENTITY if key in spec]
    for part, keys in (("tokenizer", IDENTITY_TOKENIZER), ("extra", IDENTITY_EXTRA)):
        old_part, new_part = stored_part(spec, part), stored_part(new_spec, part)
        fields += [(f"{part}.{key}", old_part.get(key), new_part.get(key)) for key in keys if key in old_part]
    problems: list[str] = []
    for key, old, new in fields:
        if _same(old, new):
            continue
        if key == "tokenizer.version":  # the one a setting restores: it splits the same text otherwise
            problems.append(f"another tokenizer version ({old} against {new}; data.tokenizer_version={old} reads "
                            "the text as it did)")
            continue
        if isinstance(old, list) and isinstance(new, list):
            gone, added = [x for x in old if x not in new], [x for x in new if x not in old]
            how = (f"{len(old)} entries in another order" if sorted(map(str, old)) == sorted(map(str, new))
                   else f"{len(old)} entries against {len(new)}; only in the checkpoint: {_short(gone)}, "
                        f"only in this run: {_short(added)}")
            problems.append(f"another data spec: {key} ({how})")
        elif isinstance(old, dict) and isinstance(new, dict):
            differ = sorted(str(k) for k in set(old) | set(new) if not _same(old.get(k), new.get(k)))
            problems.append(f"another data spec: {key} (its {', '.join(differ)} differ)")
        else:
            problems.append(f"another data spec: {key} ({_short(old)} against {_short(new)})")
    state, own = ckpt["state_dict"], model.state_dict()
    shapes = [f"{name} {tuple(state[name].shape)} against {tuple(tensor.shape)}"
              for name, tensor in own.items() if name in state and state[name].shape != tensor.shape]
    if shapes:
        problems.append(f"other weight shapes: {'; '.join(shapes[:3])}" + (" ..." if len(shapes) > 3 else ""))
    missing = sorted(set(own) ^ set(state))
    if missing:
        problems.append(f"other weights ({', '.join(missing[:3])}" + (" ...)" if len(missing) > 3 else ")"))
    problems += _optimizer_differences(ckpt, model)
    if problems:
        raise CheckpointError(
            f"{path}: cannot resume this run from it, it was trained with {'; '.join(problems)}. Resuming continues "
            "the same run (same data and model settings): give ckpt_path= of such a run, or "
            f"init_from.ckpt_path={path} to start a new run from its weights")
    _warn_restored_settings(path, ckpt["hyper_parameters"], dict(model.hparams))


def _optimizer_differences(ckpt: dict[str, Any], model: SequenceModel) -> list[str]:
    """What stops the checkpoint's optimiser state from loading into this run's optimiser: another
    optimiser class (its state has other keys), another schedule, or other parameter groups (another
    ``lr_scale`` merges, splits or freezes parts). Lightning fails on these deep in ``load_state_dict``,
    or silently restarts the schedule."""
    saved = ckpt.get("optimizer_states") or []
    if not saved:  # a weights-only checkpoint: nothing to restore
        return []
    old_target = str((ckpt["hyper_parameters"].get("optimizer") or {}).get("_target_", ""))
    new_target = str((model.hparams.get("optimizer") or {}).get("_target_", ""))
    if old_target and new_target and old_target != new_target:
        return [f"another optimizer ({old_target} against {new_target})"]
    # another schedule: Lightning loads the saved one's state into it (plateau into cosine: KeyError
    # 'lr_lambdas'; cosine into step: its batch count read as epochs) or, with none saved, starts it at
    # its step 0 mid-run, while the warning below said the new settings were not used
    old_schedule = str((ckpt["hyper_parameters"].get("scheduler") or {}).get("_target_", "none"))
    new_schedule = str((model.hparams.get("scheduler") or {}).get("_target_", "none"))
    if old_schedule != new_schedule:
        return [f"another scheduler ({old_schedule} against {new_schedule})"]
    old_groups = [len(group.get("params", [])) for group in saved[0].get("param_groups", [])]
    new_groups = [len(group["params"]) for group in model.param_groups(1.0)]
    if old_groups != new_groups:
        return [(f"other optimizer parameter groups ({len(old_groups)} groups of {old_groups} tensors against "
                 f"{len(new_groups)} of {new_groups}: another lr_scale merges, splits or freezes parts)")]
    return []


def _warn_restored_settings(path: str | Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Warn when the optimiser or schedule settings differ from the checkpoint's: a resume restores
    the optimiser's state (learning rate and weight decay included) and the schedule's, so the new
    values would otherwise be silently ignored."""
    changed = [f"{part}.{key} {_short(was)} -> {_short(now)}"
               for part in ("optimizer", "scheduler", "lr_scale")
               for key, was, now in _differences(old.get(part) or {}, new.get(part) or {})]
    if changed:
        log.warning("resuming %s: %s differ from the checkpoint's run; the optimiser and schedule continue as "
                    "they were saved, so these new values are not used (init_from.ckpt_path= starts a new run "
                    "from its weights with them)", path, "; ".join(changed))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(str(key), old.get(key), new.get(key)) for key in sorted(set(old) | set(new), key=str)
            if not _same(old.get(key), new.get(key))]


def _same(old: Any, new: Any) -> bool:
    """Equal, with numbers equal to a relative 1e-6 (the last bits of a float sum depend on threads)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return old == new
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return set(old) == set(new) and all(_same(old[k], new[k]) for k in old)
    return bool(old == new)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SequenceModel:
    """Rebuild a trained :class:`SequenceModel` from a checkpoint alone."""
    ckpt = read_checkpoint(path)
    hparams = dict(ckpt["hyper_parameters"])
    encoder = hparams.get("encoder")
    if isinstance(encoder, dict) and encoder.get("pretrained"):
        # the vectors are in the state dict: the file they came from need not be read again, nor exist
        hparams["encoder"] = {**encoder, "pretrained": None}
    spec = hparams.get("spec") if isinstance(hparams.get("spec"), dict) else {}
    try:  # every target the commands build from it, before any work (export traced the model first)
        check_targets([*config_targets({k: hparams.get(k) for k in ("encoder", "head", "data")}),
                       *([spec["datamodule"]] if spec.get("datamodule") else [])])
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    try:
        model = SequenceModel(**hparams)
        model.load_state_dict(ckpt["state_dict"])
        if hparams.get("encoder") is not encoder:
            model.hparams["encoder"] = encoder  # as trained: the record says where the vectors came from
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: checkpoint does not match this lstmkit version ({err})") from None
    return model.to(map_location).eval()


def checkpoint_paths(ckpt_path: str | Path | Sequence[str | Path]) -> list[str]:
    """The checkpoint files ``ckpt_path`` names: one path, a list of paths, or glob patterns
    (``logs/sentiment_real/runs/*/checkpoints/best.ckpt``), each pattern's matches sorted.

    A path that exists is taken as it is, before it is read as a pattern: a Hydra sweep's folders
    hold brackets (``optimizer.lr=[0.1]``), which glob reads as a character class, so the file
    itself was "no checkpoint matches this pattern".

    A pattern that matches two checkpoints of one run (``runs/*/checkpoints/*.ckpt``: each run's
    ``best.ckpt`` and ``last.ckpt``) is refused: each would be an ensemble member, and that run's
    model would weigh double in the mean without a word. Listed by name they are taken (with a
    warning: :class:`~lstmkit.ensemble.SequenceEnsemble`), as a snapshot ensemble may mean it."""
    entries = [ckpt_path] if isinstance(ckpt_path, (str, Path)) else list(ckpt_path)
    paths: list[str] = []
    for entry in entries:
        entry = str(entry)
        if glob.has_magic(entry) and not os.path.exists(os.path.expanduser(entry)):
            matches = sorted(glob.glob(os.path.expanduser(entry)))
            if not matches:
                hint = " (in a pattern, [...] is a character class: write [[] for a literal [)" if "[" in entry else ""
                raise CheckpointError(f"{entry}: no checkpoint matches this pattern{hint}")
            groups = same_run_groups(matches)
            if groups:
                run, same = next(iter(groups.items()))
                raise ConfigError(
                    f"ckpt_path={entry}: matches {len(same)} checkpoints of one run ({run}: "
                    f"{', '.join(os.path.basename(p) for p in same)}); each would be an ensemble member, so that "
                    "run's model would count several times in the mean. Match one file per run (e.g. "
                    "runs/*/checkpoints/best.ckpt), or list the files by name if that is meant")
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
