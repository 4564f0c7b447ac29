"""Save task figures into the run directory and send them to every active logger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless: runs on servers and in CI; notebooks keep inline plots
import matplotlib.pyplot as plt


def save_and_log(figures: dict[str, Any], out_dir: str | Path, loggers: list[Any], step: int = 0) -> list[Path]:
    """Write each figure to ``out_dir/plots/<name>.png`` and log it (TensorBoard, W&B)."""
    paths = []
    plot_dir = Path(out_dir) / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        path = plot_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
        for logger in loggers:
            kind = type(logger).__name__
            if kind == "TensorBoardLogger":
                logger.experiment.add_figure(name, fig, global_step=step)
            elif kind == "WandbLogger":
                logger.log_image(key=f"plots/{name}", images=[str(path)])
        plt.close(fig)
    return paths
