"""``lstmkit eval``: test a checkpoint, or an ensemble of several, on its data (or other files: ``data.path=``)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lstmkit.adaptation import AdaptToScoredData
from lstmkit.build import build, locate
from lstmkit.checkpoints import checkpoint_paths, load_models
from lstmkit.commands.common import (
    apply_decoding,
    bool_option,
    check_command_keys,
    check_device,
    check_option_types,
    config_stage,
    instantiate_group,
    int_option,
    plain,
    report,
    scalar_metrics,
)
from lstmkit.data.base import as_list
from lstmkit.ensemble import SequenceEnsemble, setting_differences
from lstmkit.errors import CheckpointError, ConfigError, DataError
from lstmkit.loggers import configure_wandb
from lstmkit.module import SequenceModel
from lstmkit.self_train import SelfTraining
from lstmkit.types import stored_data

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "all")  # all: every example of the data (data.whole), e.g. a new file's


def split_fingerprint(datamodule: Any, split: str) -> str:
    """A digest of the examples of ``split``, independent of their order and of batching.

    A token stream (next-word data) is digested as the stream itself; other splits example by
    example (inputs and targets as the dataset holds them, before any padding)."""
    dataset = datamodule.splits[split]
    ids = getattr(dataset, "ids", None)
    if isinstance(ids, torch.Tensor):
        return hashlib.sha1(ids.contiguous().numpy().tobytes()).hexdigest()
    rows: list[str] = []
    for index in range(len(dataset)):
        item = dataset[index]
        digest = hashlib.sha1()
        for part in item if isinstance(item, (tuple, list)) else (item,):
            if isinstance(part, torch.Tensor):
                digest.update(part.contiguous().cpu().numpy().tobytes())
            else:
                digest.update(repr(part).encode())
        rows.append(digest.hexdigest())
    return hashlib.sha1("".join(sorted(rows)).encode()).hexdigest()


def check_members_split(model: SequenceEnsemble, names: list[str], split: str) -> None:
    """Refuse an ensemble whose members' data settings put other examples in the evaluated split.

    Why: runs of several seeds are the usual members, and ``data.seed`` also seeds the split of a
    single file or of generated data: each member's held-out examples are then others' training
    examples, and the ensemble's metrics would be optimistic. Fixed splits (train / val / test
    files, held-out speakers) give every member the same examples, which is what is checked.
    """
    def fingerprint(member: SequenceModel) -> str:
        # each member's own settings: an eval override (data.seed=1) would make them look alike; the first
        # member's spec for all, as the ensemble reads the data: a batching setting it decides
        # (tokenizer.max_length) is then not taken for other examples
        with config_stage("data"):
            datamodule = build(dict(member.hparams.get("data") or {}), spec=model.members[0].hparams.spec)
        datamodule.setup("test")
        return split_fingerprint(datamodule, split)

    first = model.members[0]
    reference: str | None = None
    for name, member in zip(names[1:], model.members[1:]):
        differ = setting_differences(first, member)
        if not differ:  # the same settings, batching aside: the same examples
            continue
        reference = reference or fingerprint(first)
        if fingerprint(member) != reference:
            raise ConfigError(
                f"ensemble: {name} and {names[0]} were trained with other data settings ({', '.join(differ)}) "
                f"that put other examples in the {split} split, so some members trained on examples it is "
                f"scored on. Ensemble runs whose {split} split is the same: fixed train / val / test files, "
                f"or the same data.seed")


def check_spec_settings(stored: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Refuse ``+data.<setting>=`` for a setting the model's spec decides (its vocabulary's tokenizer, a
    forecaster's window): the datamodule reads the data as the model was trained, so the override was
    ignored without a word, and the scores were not of what was asked for."""
    target = str(stored.get("_target_") or "")
    try:
        datamodule_cls = locate(target)
    except Exception:  # noqa: BLE001 - building the datamodule reports a bad target itself
        return
    fixed = getattr(datamodule_cls, "spec_settings", ())
    stored = stored_data(stored)  # a checkpoint from before tokenizer versions: version 1, not None
    changed = {k: v for k, v in overrides.items() if k in fixed and plain(v) != plain(stored.get(k))}
    if changed:
        key, value = next(iter(changed.items()))
        may = sorted(k for k in stored if k not in fixed and not k.startswith("_"))
        raise ConfigError(
            f"data.{key}={value!r}: the model was trained with data.{key}={stored.get(key)!r}, which its vocabulary / "
            f"normaliser / input shape depend on, so eval reads the data that way ({', '.join(fixed)} are the "
            f"model's own). Train a model with the new setting; eval may change {', '.join(may)}")


def check_eval_keys(cfg: DictConfig) -> None:
    """``+head.threshold=0.99``, ``+model.hidden_size=3``, ``+foo=3``: eval ran with exit 0 and ignored them
    (the model and its head are the checkpoint's); a ConfigError naming the override and what eval takes."""
    from lstmkit.suggest import EVAL_KEYS, EVAL_TAKES

    check_command_keys(cfg, "eval", EVAL_KEYS, EVAL_TAKES)


def warn_trained_speakers(stored: dict[str, Any], overrides: dict[str, Any], split: str) -> None:
    """``+data.holdout_speakers=[george]`` on a model that trained on george scored (and, with ``self_train``,
    tuned on) recordings of a voice it had learnt, without a word: said as ``split=all``'s fit is."""
    if "holdout_speakers" not in overrides or overrides.get("path") or split == "all":
        return
    unseen = {str(s).lower() for s in as_list(stored.get("holdout_speakers")) + as_list(stored.get("val_speakers"))}
    trained = [str(s) for s in as_list(overrides["holdout_speakers"]) if str(s).lower() not in unseen]
    if trained:
        log.warning("data.holdout_speakers: the model trained on %s (its run held out %s): the %s score measures "
                    "fit on a known voice, not an unseen speaker", ", ".join(trained),
                    ", ".join(as_list(stored.get("holdout_speakers"))) or "no speaker", split)


def evaluate(cfg: DictConfig) -> float | None:
    check_eval_keys(cfg)
    adapt = bool_option(cfg, "adapt")
    check_device(cfg)
    seed = int_option(cfg, "seed")
    if seed is not None:
        L.seed_everything(seed, workers=True)
    paths = checkpoint_paths(cfg.ckpt_path)
    model = load_models(paths)  # several: their ensemble (lstmkit.ensemble)
    if len(paths) > 1:
        log.info("evaluating the ensemble of %d checkpoints:\n  %s", len(paths), "\n  ".join(paths))
    apply_decoding(model, cfg.get("decode"))
    if adapt:
        model.check_adaptable()
    with config_stage("self_train"):
        self_training = SelfTraining.from_config(cfg.get("self_train"))
    if self_training is not None:
        model.head.check_self_trainable()
    # the scored loop's inputs re-estimate the normalisation, and tune the model, before it scores them
    adapting = [AdaptToScoredData(adapt, self_training)] if adapt or self_training is not None else []
    data_cfg: dict[str, Any] = dict(model.hparams.get("data") or {})
    if not data_cfg:
        raise CheckpointError(f"{paths[0]}: checkpoint stores no data config to evaluate on")
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    overrides = {k: v for k, v in (plain(cfg.get("data")) or {}).items() if v is not None}
    check_spec_settings(data_cfg, overrides)
    warn_trained_speakers(data_cfg, overrides, split)
    data_cfg.update(overrides)
    check_option_types({"data": data_cfg})
    if split == "all":
        data_cfg["whole"] = True  # every example of the data is the test split (SequenceDataModule)
        if not overrides.get("path"):
            log.warning("split=all without data.path scores all of the run's own data, the examples it "
                        "trained on included: a measure of fit, not of generalisation")
    elif isinstance(model, SequenceEnsemble) and not overrides.get("path"):
        # (with data.path the user names the data: the members' own splits are not what is scored)
        check_members_split(model, paths, split)
    with config_stage("data"):  # +data.<typo>=...: one line, not the datamodule's TypeError
        datamodule = build(data_cfg, spec=model.hparams.spec)
    datamodule.setup("test")
    scored = datamodule.splits.get("test" if split == "all" else split)
    if scored is not None and len(scored) == 0:  # Lightning would score nothing and report an empty table
        raise DataError(f"the {split} split is empty ({datamodule.split_sizes()} examples), so there is nothing to score"
                        + ("; split=all scores every example of the data" if split != "all" else ""),
                        path=getattr(datamodule, "path", None))
    if split == "all":
        model.name_test_split("all")  # its loggers' keys too, not only the table's
    configure_wandb(cfg, job_type="eval")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False,
                                     callbacks=adapting)
    if split == "val":
        results = trainer.validate(model, datamodule=datamodule)
    else:
        results = trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(results[0] if results else {})
    if not metrics:  # an empty table and metrics.json with exit status 0 read as a success
        raise ConfigError(f"eval scored no batches of the {split} split (trainer.limit_{'val' if split == 'val' else 'test'}"
                          f"_batches={cfg.trainer.get('limit_val_batches' if split == 'val' else 'limit_test_batches')}"
                          "), so there are no metrics to report")
    what = paths[0] if len(paths) == 1 else f"ensemble of {len(paths)} checkpoints"
    report(metrics, HydraConfig.get().runtime.output_dir, title=f"eval on {split}: {what}")
    value = metrics.get(f"{split}/{model.head.monitor.split('/', 1)[-1]}")
    return value
