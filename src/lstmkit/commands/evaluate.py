"""``lstmkit eval``: test a checkpoint, or an ensemble of several, on its data (or other files: ``data.path=``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lstmkit.build import build
from lstmkit.checkpoints import checkpoint_paths, load_models
from lstmkit.commands.common import apply_decoding, instantiate_group, plain, report, scalar_metrics
from lstmkit.errors import CheckpointError, ConfigError


def evaluate(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    paths = checkpoint_paths(cfg.ckpt_path)
    model = load_models(paths)  # several: their ensemble (lstmkit.ensemble)
    apply_decoding(model, cfg.get("decode"))
    data_cfg: dict[str, Any] = dict(model.hparams.get("data") or {})
    if not data_cfg:
        raise CheckpointError(f"{paths[0]}: checkpoint stores no data config to evaluate on")
    data_cfg.update({k: v for k, v in (plain(cfg.get("data")) or {}).items() if v is not None})
    datamodule = build(data_cfg, spec=model.hparams.spec)
    datamodule.setup("test")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False)
    if cfg.split == "test":
        results = trainer.test(model, datamodule=datamodule)
    elif cfg.split == "val":
        results = trainer.validate(model, datamodule=datamodule)
    else:
        raise ConfigError(f"split={cfg.split!r}: expected test or val")
    metrics = scalar_metrics(results[0] if results else {})
    report(metrics, HydraConfig.get().runtime.output_dir, title=f"eval on {cfg.split}: {', '.join(paths)}")
    value = metrics.get(f"{cfg.split}/{model.head.monitor.split('/', 1)[-1]}")
    return value
