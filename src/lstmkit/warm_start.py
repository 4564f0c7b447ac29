"""Warm start: initialise a new model's encoder / LSTM (/ head) from another lstmkit checkpoint.

Why: with a few thousand labelled sentences, an LSTM that has first learnt to predict the next
word of the same text classifies better than one started from random weights (Dai & Le 2015,
"Semi-supervised sequence learning"). The usual way is to train ``task=next_word`` on the text,
then ``lstmkit train task=sentiment init_from.ckpt_path=<its best.ckpt>``. Unlike ``ckpt_path``
(resume: same model, optimiser state and epoch), this copies weights only, and only those that
fit; training starts at epoch 0 with a fresh optimiser.

What is copied, for every parameter of the included parts (``init_from.include``, by default
``encoder`` and ``core``):

* an embedding table is copied *row by row by token string*, so two datamodules that built
  their vocabularies differently (other min_count, other files) still line up; tokens the
  checkpoint does not know keep their initial vectors, the ``<pad>`` row stays zero;
* any other tensor of the same name and shape is copied as it is (the forward direction of a
  bidirectional LSTM from a unidirectional language model, for instance);
* from the second layer on, a bidirectional LSTM's layer reads both directions' outputs of the layer
  below, so its input weights (``weight_ih_l{k}``, k >= 1) are twice as wide as a unidirectional
  checkpoint's: the checkpoint's columns fill the half that reads the same direction, and the half
  that reads the other direction is set to zero, so that each direction's stack starts out computing
  exactly what the checkpoint's LSTM computed (copied by shape this was a mismatch for every
  bidirectional model of 2 or more layers, and no setting could make the shapes match);
* a tensor the checkpoint lacks keeps its initial value (the reverse direction there, a layer
  the checkpoint does not have); a checkpoint tensor this model has no place for (a layer more) is
  reported as not used;
* only parameters: buffers (a Mel filter bank, an STFT window) are this model's config, and a
  parameter tied to another (a tied output layer) is copied once, under its first name;
* the head only when its outputs are the same (classes, and for a language model the same
  vocabulary in the same order), since its rows are not matched by token;
* the same name with another shape is an error that names both shapes and, for the LSTM, the
  settings to change (``model.hidden_size``, ``model.proj_size``, the encoder's ``dim`` or ``project``...):
  a silent skip would leave the user thinking the model was initialised.
* feature inputs (``data.features``) in another order are an error: the weights that read them
  have a column per feature.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lstmkit.checkpoints import read_checkpoint
from lstmkit.errors import ConfigError
from lstmkit.types import DataSpec, stored_part

log = logging.getLogger("lstmkit")

PARTS = ("encoder", "core", "head")


@dataclass
class WarmStart:
    """What :func:`init_from_checkpoint` did, for the log and for tests."""

    copied: list[str] = field(default_factory=list)
    by_token: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (rows found, rows)
    kept: list[str] = field(default_factory=list)  # included tensors the checkpoint does not have
    # bi-LSTM input weights of layer >= 1 (also in copied): the checkpoint's unidirectional weights fill the
    # half of the columns that reads the same direction, the other half is zero
    halves: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # checkpoint tensors of the included parts with no place here

    def summary(self) -> str:
        parts = [f"{len(self.copied)} tensors copied"]
        if self.halves:
            parts.append(f"{len(self.halves)} of them into the half of a bidirectional layer's input weights that "
                         f"reads its own direction, the half that reads the other direction set to zero "
                         f"({_shown(self.halves)})")
        parts += [f"{name}: {found:,} of {rows:,} tokens found in the checkpoint's vocabulary"
                  for name, (found, rows) in self.by_token.items()]
        if self.kept:
            parts.append(f"{len(self.kept)} kept at their initial values ({_shown(self.kept)})")
        if self.unused:
            parts.append(f"{len(self.unused)} of the checkpoint not used, this model has no such tensor "
                         f"({_shown(self.unused)})")
        return "; ".join(parts)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def init_from_checkpoint(
    model: nn.Module, ckpt_path: str | Path, include: Sequence[str] = ("encoder", "core"),
    filled: Collection[str] = (),
) -> WarmStart:
    """Copy the included parts' weights from ``ckpt_path`` into ``model`` (a SequenceModel), in place.

    ``filled``: parameters another warm start has set already (the reverse direction, from
    :func:`init_reverse_from_checkpoint`): neither copied over nor reported as kept.
    """
    unknown = sorted(set(include) - set(PARTS))
    if unknown or not include:
        raise ConfigError(f"init_from.include={list(include)}: expected a non-empty subset of {list(PARTS)}")
    ckpt = read_checkpoint(ckpt_path)
    source_state: dict[str, torch.Tensor] = ckpt["state_dict"]
    source_spec = DataSpec.from_dict(ckpt["hyper_parameters"]["spec"])
    source_vocab, target_vocab = source_spec.vocab, model.spec.vocab
    if "head" in include:
        _check_head_outputs(source_spec, model.spec, ckpt_path)
    _check_feature_order(source_spec, model, include, ckpt_path)
    rows = _row_map(source_vocab, target_vocab) if source_vocab and target_vocab else None
    if rows is not None:
        _note_tokenizer_versions(source_spec, model.spec, ckpt_path)
    result = WarmStart()
    done: set[int] = set()  # parameters shared under two names (a tied output layer) are copied once
    # parameters only: buffers (a Mel filter bank, an STFT window) follow this model's config
    with torch.no_grad():
        for name, target in model.named_parameters(remove_duplicate=False):
            if name.split(".", 1)[0] not in include:
                continue
            if id(target) in done or name in filled:  # set by another warm start: not overwritten
                continue
            source = source_state.get(name)
            if source is None:
                result.kept.append(name)
                continue
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            if (rows is not None and isinstance(owner, nn.Embedding) and len(target) == len(rows)
                    and source.shape[1:] == target.shape[1:]):
                found = rows >= 0
                if not bool(found.any()):
                    raise ConfigError(
                        f"init_from.ckpt_path={ckpt_path}: none of this model's {len(rows):,} tokens is in the "
                        f"checkpoint's vocabulary (first ones: {target_vocab[:5]} against {source_vocab[:5]}); "
                        "were they tokenized differently (data.tokenizer, data.lowercase)?")
                target.data[found] = source[rows[found]].to(target.dtype)
                result.by_token[name] = (int(found.sum()), len(rows))
            elif source.shape == target.shape:
                target.data.copy_(source.to(target.dtype))
            elif _fill_half(owner, name, source, target, source_state, reverse=False):
                result.halves.append(name)
            elif rows is not None and isinstance(owner, nn.Embedding) and len(target) == len(rows):
                raise ConfigError(  # rows are matched by token: only the vector size has to agree
                    f"init_from.ckpt_path={ckpt_path}: {name} has {source.shape[1]}-dim vectors in the checkpoint "
                    f"but {target.shape[1]}-dim ones in this model; set encoder.dim={source.shape[1]} (the "
                    f"vocabularies may differ: {len(source):,} and {len(target):,} tokens are matched by token)")
            else:
                raise ConfigError(
                    f"init_from.ckpt_path={ckpt_path}: {name} has shape {tuple(source.shape)} in the checkpoint "
                    f"but {tuple(target.shape)} in this model; "
                    + (_lstm_advice(owner, name, source_state, _encoders(model, ckpt))
                       if isinstance(owner, nn.LSTM) else
                       "make the sizes match (encoder.dim, model.hidden_size...)")
                    + f", or leave {name.split('.', 1)[0]} out of init_from.include")
            done.add(id(target))
            result.copied.append(name)
        own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
        result.unused = [name for name in source_state if name.split(".", 1)[0] in include and name not in own]
        for module in model.modules():  # a copied <pad> row would no longer be zero
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
    if not result.copied:
        raise ConfigError(f"init_from.ckpt_path={ckpt_path}: no tensor of {list(include)} found in the checkpoint "
                          "(is it a checkpoint of another kind of model?)")
    log.info("init_from %s: %s", ckpt_path, result.summary())
    return result


def init_reverse_from_checkpoint(model: nn.Module, ckpt_path: str | Path) -> WarmStart:
    """Copy a backward language model's LSTM into the reverse direction of ``model``'s bi-LSTM core.

    Why: :func:`init_from_checkpoint` can fill a bidirectional classifier's forward direction
    from a language model, but its reverse direction reads sentences from the end and would start
    from random weights. A language model trained on reversed text (``data.reverse=true``)
    has learnt exactly that reading (the forward and backward models of Peters et al. 2018), so
    its layer ``k`` becomes the core's ``weight_*_l{k}_reverse``. Both directions read the
    same embedding: train the backward model on the forward model's embedding, frozen
    (``init_from.include=[encoder] lr_scale.encoder=0``), so its LSTM expects those vectors.
    """
    ckpt = read_checkpoint(ckpt_path)
    spec = DataSpec.from_dict(ckpt["hyper_parameters"]["spec"])
    if not spec.extra.get("reverse"):
        raise ConfigError(f"init_from.reverse_ckpt_path={ckpt_path}: that model did not read its text backwards; "
                          "train it with data.reverse=true (a backward language model)")
    lstm = getattr(getattr(model, "core", None), "lstm", None)
    if not isinstance(lstm, nn.LSTM) or not lstm.bidirectional:
        raise ConfigError("init_from.reverse_ckpt_path needs a bidirectional core: set model.bidirectional=true")
    state: dict[str, torch.Tensor] = ckpt["state_dict"]
    result = WarmStart()
    with torch.no_grad():
        for name, target in lstm.named_parameters():
            if not name.endswith("_reverse"):
                continue
            source = state.get(f"core.lstm.{name.removesuffix('_reverse')}")
            if source is None:
                result.kept.append(f"core.lstm.{name}")
                continue
            if _fill_half(lstm, name, source, target, state, reverse=True, prefix="core.lstm."):
                result.halves.append(f"core.lstm.{name}")
            elif source.shape != target.shape:
                raise ConfigError(
                    f"init_from.reverse_ckpt_path={ckpt_path}: core.lstm.{name.removesuffix('_reverse')} has shape "
                    f"{tuple(source.shape)} there but the reverse direction here is {tuple(target.shape)}; "
                    + _lstm_advice(lstm, f"core.lstm.{name}", state, _encoders(model, ckpt))
                    + " (the backward language model's sizes must be the forward direction's)")
            else:
                target.copy_(source.to(target.dtype))
            result.copied.append(f"core.lstm.{name}")
    if not result.copied:
        raise ConfigError(f"init_from.reverse_ckpt_path={ckpt_path}: no LSTM weights found in the checkpoint")
    log.info("init_from.reverse_ckpt_path %s: %s", ckpt_path, result.summary())
    return result


def _check_head_outputs(source: DataSpec, target: DataSpec, ckpt_path: str | Path) -> None:
    """A head's rows are classes (or, for an adaptive softmax, frequency-ranked words): copy only if equal."""
    if source.classes and target.classes and list(source.classes) != list(target.classes):
        raise ConfigError(
            f"init_from.ckpt_path={ckpt_path}: the head's outputs differ (checkpoint {list(source.classes)[:6]}, "
            f"this model {list(target.classes)[:6]}); leave head out of init_from.include")
    old_target = (source.normaliser or {}).get("target") or {}
    new_target = (target.normaliser or {}).get("target") or {}
    same = ("feature", "name", "relative")
    if (old_target or new_target) and ([old_target.get(k) for k in same] != [new_target.get(k) for k in same]
                                       or list(source.target_names or []) != list(target.target_names or [])):
        raise ConfigError(
            f"init_from.ckpt_path={ckpt_path}: the head forecasts another target (checkpoint "
            f"{old_target.get('name')!r} {list(source.target_names or [])[:3]}, this model {new_target.get('name')!r} "
            f"{list(target.target_names or [])[:3]}); leave head out of init_from.include")
    # a language model's head rows are its vocabulary; a classifier's are its classes (checked above),
    # whatever words its embedding knows
    if (not (source.classes or target.classes) and source.vocab and target.vocab
            and list(source.vocab) != list(target.vocab)):
        raise ConfigError(
            f"init_from.ckpt_path={ckpt_path}: with head in init_from.include the vocabularies must be the same "
            f"(checkpoint {len(source.vocab):,} tokens, this model {len(target.vocab):,}, or another order); "
            "the embedding is matched by token without the head")


def _check_feature_order(source: DataSpec, model: nn.Module, include: Sequence[str], ckpt_path: str | Path) -> None:
    """Refuse feature inputs read in another order, or other columns, than the checkpoint's.

    Why: the first layer that reads the features (the encoder's projection, else the LSTM's input
    weights) has a column per feature; copied by shape, ``data.features=[close, open, ...]`` onto a
    model of ``[open, close, ...]`` would silently read each price with another price's weights.
    """
    old, new = source.extra.get("features"), model.spec.extra.get("features")
    if not (old and new) or list(old) == list(new):
        return
    core_reads_features = getattr(model.encoder, "out_features", None) == model.spec.num_features
    if "encoder" in include or ("core" in include and core_reads_features):
        raise ConfigError(
            f"init_from.ckpt_path={ckpt_path}: the checkpoint's model reads the features {', '.join(old)}, "
            f"this one {', '.join(new)}; their weights are per feature, in that order: set "
            f"data.features=[{','.join(old)}]")


def _row_map(source_vocab: list[str], target_vocab: list[str]) -> torch.Tensor:
    """For each target token, its row in the source vocabulary (-1: unknown there)."""
    index = {token: i for i, token in enumerate(source_vocab)}
    return torch.tensor([index.get(token, -1) for token in target_vocab], dtype=torch.long)


_INPUT_WEIGHT = re.compile(r"weight_ih_l(\d+)(_reverse)?$")


def _fill_half(lstm: nn.Module, name: str, source: torch.Tensor, target: torch.Tensor,
               state: dict[str, torch.Tensor], reverse: bool, prefix: str = "") -> bool:
    """A bi-LSTM's input weights of layer k >= 1 from a unidirectional checkpoint's: ``True`` if filled.

    Layer k of a bidirectional ``nn.LSTM`` reads ``[forward outputs, reverse outputs]`` of layer k-1,
    so its ``weight_ih_l{k}`` has twice the columns of a unidirectional one. The checkpoint's weights go
    into the columns that read the same direction (the first half for the forward direction, the
    second for the reverse one, from a backward LM), and the other half is set to zero: each direction's
    stack then computes what the checkpoint's LSTM computed, and training learns what to take from the
    other direction (the zero weights get gradients, as their inputs are not zero).
    """
    match = _INPUT_WEIGHT.search(name)
    if not (isinstance(lstm, nn.LSTM) and lstm.bidirectional and match and int(match.group(1)) >= 1):
        return False
    if bool(match.group(2)) != reverse:
        return False
    owner = name[: match.start()] if not prefix else prefix
    source_bidirectional = f"{owner}weight_ih_l0_reverse" in state
    width = source.shape[-1] if source.dim() == 2 else 0
    if (source_bidirectional or source.dim() != 2 or source.shape[0] != target.shape[0]
            or target.shape[1] != 2 * width):
        return False
    start = width if reverse else 0
    target.zero_()
    target[:, start : start + width] = source.to(target.dtype)
    return True


# encoder settings that decide how many inputs per step the LSTM reads: EmbeddingEncoder's dim, FeatureEncoder's
# project, SpectrogramEncoder's features / n_mels / n_mfcc / stack / deltas, BeatEncoder's difference
ENCODER_SIZES = ("dim", "project", "features", "n_mels", "n_mfcc", "stack", "deltas", "difference")


def _encoders(model: nn.Module, ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """This model's encoder config and the checkpoint's (``{}`` where not recorded)."""
    ours = getattr(model, "hparams", {}).get("encoder") or {}
    return dict(ours), dict(ckpt.get("hyper_parameters", {}).get("encoder") or {})


def _lstm_advice(lstm: nn.Module, name: str, state: dict[str, torch.Tensor],
                 encoders: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> str:
    """What to set for an LSTM tensor whose shape differs: the checkpoint's sizes against this model's
    (``encoders``: this model's encoder config and the checkpoint's, for the LSTM's input size)."""
    owner = name[: name.rfind(".") + 1]
    source = _lstm_sizes(state, owner)
    if not isinstance(lstm, nn.LSTM) or source is None:
        return "make the sizes match (the encoder's output size, model.hidden_size, model.proj_size)"
    here = {"hidden_size": lstm.hidden_size, "proj_size": lstm.proj_size, "input": lstm.input_size,
            "bidirectional": lstm.bidirectional}
    fixes = [f"model.{key}={source[key]}" for key in ("hidden_size", "proj_size") if source[key] != here[key]]
    if source["input"] != here["input"]:
        # the encoder settings that decide the input size, as the checkpoint has them: encoder.dim is an
        # embedding's, and was advised for feature and audio encoders too, which have no such setting
        ours, theirs = encoders
        inputs = [f"encoder.{key}={_plain(theirs[key])}" for key in ENCODER_SIZES
                  if key in theirs and ours.get(key) != theirs[key]]
        if not inputs and "dim" in ours:  # an embedding's vectors are the LSTM's inputs
            inputs = [f"encoder.dim={source['input']}"]
        size = f"the LSTM's input size: {source['input']} there, {here['input']} here"
        if not inputs:
            return (f"this model's encoder gives the LSTM another input size ({size}): give it the checkpoint's "
                    f"encoder settings and data features" + (f", and set {' and '.join(fixes)}" if fixes else ""))
        fixes.append(f"{' and '.join(inputs)} ({size})")
    if fixes:
        return f"set {' and '.join(fixes)} as the checkpoint's LSTM has"
    if source["bidirectional"] and not here["bidirectional"]:
        # its layers from the second on read both directions of the layer below: no unidirectional layer fits
        return ("the checkpoint's LSTM is bidirectional, so from its second layer on each layer reads both "
                "directions: set model.bidirectional=true, or model.num_layers=1 (its first layer is copied)")
    return "make the sizes match (encoder.dim, model.hidden_size, model.proj_size)"


def _plain(value: Any) -> str:
    """A config value as an override writes it (``true``, ``[a,b]``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_plain, value)) + "]"
    return str(value)


def _lstm_sizes(state: dict[str, torch.Tensor], owner: str) -> dict[str, object] | None:
    """An ``nn.LSTM``'s sizes from its weights under ``owner`` (e.g. ``core.lstm.``) in a state dict."""
    ih, hh = state.get(f"{owner}weight_ih_l0"), state.get(f"{owner}weight_hh_l0")
    if ih is None or hh is None or ih.dim() != 2 or hh.dim() != 2:
        return None
    proj = state.get(f"{owner}weight_hr_l0")
    return {"hidden_size": int(hh.shape[0]) // 4, "proj_size": int(proj.shape[0]) if proj is not None else 0,
            "input": int(ih.shape[1]), "bidirectional": f"{owner}weight_ih_l0_reverse" in state}


def _note_tokenizer_versions(source: DataSpec, target: DataSpec, ckpt_path: str | Path) -> None:
    """Say so when the checkpoint's vocabulary was tokenized by another tokenizer version: rows are
    matched by token, so a token only one version makes (a word in single quotes: "'twist'" in version 1)
    starts from its initial vector."""
    if not (source.tokenizer and target.tokenizer):
        return
    old = stored_part({"tokenizer": source.tokenizer}, "tokenizer").get("version")
    new = stored_part({"tokenizer": target.tokenizer}, "tokenizer").get("version")
    if old != new:
        log.info("init_from %s: its text was tokenized by tokenizer version %s, this run's by %s; embedding rows "
                 "are matched by token, so a token only one of them makes (version 1 kept a word's single "
                 "quotes on it: 'twist') starts from its initial vector", ckpt_path, old, new)
