"""``lstmkit export``: a checkpoint -> ONNX or TorchScript, parity-checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lstmkit.checkpoints import load_model
from lstmkit.export import export as export_model


def export(cfg: DictConfig) -> dict[str, Any]:
    model = load_model(cfg.ckpt_path)
    suffix = {"onnx": ".onnx", "torchscript": ".ts.pt"}.get(str(cfg.format), f".{cfg.format}")
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.ckpt_path).with_suffix(suffix)
    result = export_model(model, output, fmt=str(cfg.format), tolerance=float(cfg.tolerance))
    print(json.dumps(result))
    return result
