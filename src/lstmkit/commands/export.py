"""``lstmkit export``: a checkpoint -> ONNX or TorchScript, parity-checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lstmkit.checkpoints import checkpoint_paths, load_model
from lstmkit.commands.common import check_command_keys, check_output_file
from lstmkit.errors import ConfigError
from lstmkit.export import export as export_model
from lstmkit.files import json_text
from lstmkit.suggest import EXPORT_KEYS, EXPORT_TAKES


def export(cfg: DictConfig) -> dict[str, Any]:
    check_command_keys(cfg, "export", EXPORT_KEYS, EXPORT_TAKES)  # `export +foo=1` was ignored, exit 0
    paths = checkpoint_paths(cfg.ckpt_path)
    if len(paths) != 1:
        raise ConfigError(f"export writes one model; ckpt_path names {len(paths)}: {paths} "
                          f"(an ensemble is evaluated and served from its checkpoints: lstmkit eval / predict)")
    suffix = {"onnx": ".onnx", "torchscript": ".ts.pt"}.get(str(cfg.format), f".{cfg.format}")
    # checked before the checkpoint is loaded (a folder, a file on the way, a folder not writable)
    output = check_output_file(cfg.output if cfg.get("output") else Path(paths[0]).with_suffix(suffix),
                               inputs=[("ckpt_path", paths[0])])
    model = load_model(paths[0])
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output={output}: cannot write it ({err.strerror or err})") from None
    try:
        tolerance = float(cfg.tolerance)
    except (TypeError, ValueError):
        tolerance = float("nan")
    if not tolerance >= 0:  # NaN too
        raise ConfigError(f"tolerance={cfg.tolerance}: expected a number >= 0 (the largest difference allowed "
                          "between the exported model's outputs and PyTorch's)")
    result = export_model(model, output, fmt=str(cfg.format), tolerance=tolerance)
    print(json_text(result))
    return result
