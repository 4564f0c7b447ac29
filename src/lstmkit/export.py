"""Export a trained model to ONNX or TorchScript, with a parity check against eager PyTorch.

Packed sequences do not export (a known failure in torch.onnx and onnxruntime), so export
runs the LSTM core's unpacked kernel (:meth:`LSTMCore.run_unpacked`): the same weights over
padded tensors, the backward direction reading each sequence reversed *within its own length*
(an index gather), padded steps zeroed. That is mathematically the packed computation, and the
parity check proves it on inputs with another batch size and length than the ones traced, against
the eager model run with the packed kernel.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lstmkit.build import trusted_object
from lstmkit.core import LSTMCore, summarise
from lstmkit.errors import LstmkitError
from lstmkit.files import json_text
from lstmkit.module import SequenceModel
from lstmkit.types import DataSpec


class ExportError(LstmkitError):
    """The model could not be exported, or the exported model disagrees with PyTorch."""


class UnpackedLSTM(nn.Module):
    """An exportable, exact stand-in for :class:`LSTMCore` in eval mode: its unpacked kernel.

    The core's ``forward`` chooses a kernel from the data (a Python branch a trace would freeze),
    so export calls the unpacked computation directly, for every batch.
    """

    def __init__(self, core: LSTMCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs = self.core.run_unpacked(x, lengths.to(x.device))
        return self.core.padding_zeroed(self.core.norm(outputs), lengths)


class ExportModule(nn.Module):
    """encoder -> unpacked LSTM -> pooling -> head: ``(outputs, lengths)`` from ``(inputs, lengths)``.

    ``outputs`` are the head's raw outputs; ``lengths`` their valid steps per row: the encoder's, which
    a server cannot always recompute (a speech model's frames after silence trimming depend on the
    clip), and past which a per-step head's outputs are padding.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.core = UnpackedLSTM(model.core)
        self.head = model.head
        self.pooling = model.head.pooling
        self.num_directions = model.core.num_directions

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, lengths = self.encoder(inputs, lengths)
        outputs = self.core(features, lengths)
        return self.head(summarise(outputs, lengths, self.pooling, self.num_directions), lengths), lengths


def example_inputs(spec: DataSpec, batch: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic inputs of the right kind and shape for tracing and parity checks."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(steps, max(2, steps // 2), batch).round().to(torch.int64)
    if spec.input_kind == "tokens":
        inputs = torch.randint(2, spec.vocab_size, (batch, steps), generator=g)
        return inputs.masked_fill(torch.arange(steps)[None] >= lengths[:, None], spec.pad_id), lengths
    if spec.input_kind == "waveform":
        samples = steps * 400
        return 0.1 * torch.randn(batch, samples, generator=g), lengths * 400
    if spec.input_kind == "features":
        width = int(spec.num_features or 1)
        window = int(spec.extra.get("window", steps))
        return torch.randn(batch, window, width, generator=g).abs() + 1.0, torch.full((batch,), window)
    raise ExportError(f"cannot make example inputs for input_kind={spec.input_kind!r}")


def export(model: SequenceModel, path: str | Path, fmt: str = "onnx", tolerance: float = 1e-4) -> dict[str, Any]:
    """Export ``model`` to ``path`` and check it against eager outputs on differently shaped inputs."""
    model = model.eval().cpu()
    unsupported = getattr(model.encoder, "onnx_unsupported", None) if fmt == "onnx" else None
    if unsupported:
        raise ExportError(f"format=onnx: {type(model.encoder).__name__}: {unsupported}; format=torchscript works")
    module = ExportModule(model).eval()
    traced_inputs = example_inputs(model.spec, batch=3, steps=12)
    check_inputs = example_inputs(model.spec, batch=5, steps=20, seed=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written and checked under another name, then moved into place with its spec: a failed export
    # leaves an earlier model and its spec.json as they were (never one model beside another's spec)
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        result = _export_checked(model, module, staged, fmt, tolerance, traced_inputs, check_inputs)
        spec_path = write_spec(model, staged)
        os.replace(staged, path)
        os.replace(spec_path, spec_file(path))
    finally:
        for leftover in (staged, spec_file(staged)):
            leftover.unlink(missing_ok=True)
    return {"path": str(path), "format": fmt, **result, "spec_path": str(spec_file(path))}


def _export_checked(model: SequenceModel, module: nn.Module, path: Path, fmt: str, tolerance: float,
                    traced_inputs: tuple[torch.Tensor, torch.Tensor],
                    check_inputs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Write ``module`` to ``path`` in ``fmt``, load it back and compare it with eager outputs."""
    # the reference runs the packed kernel (what cuDNN runs), not the unpacked one the export is made
    # of: on CPU ``auto`` would pick the unpacked one, and the check would compare it with itself
    kernel, model.core.kernel = model.core.kernel, "packed"
    try:
        with torch.no_grad():
            expected, expected_lengths = model(*check_inputs)
    finally:
        model.core.kernel = kernel
    with torch.no_grad():
        try:
            if fmt == "torchscript":
                scripted = torch.jit.trace(module, traced_inputs, check_trace=False)
                scripted.save(str(path))
                actual, actual_lengths = torch.jit.load(str(path))(*check_inputs)
            elif fmt == "onnx":
                import onnxruntime

                with warnings.catch_warnings():
                    # torch's caution that an LSTM traced at one batch size may fail at another: the graph
                    # is traced at batch 3 and checked below at batch 5 (the check is the answer)
                    warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other")
                    torch.onnx.export(
                        module, traced_inputs, str(path), dynamo=False, input_names=["inputs", "lengths"],
                        output_names=["outputs", "output_lengths"], opset_version=17,
                        dynamic_axes={"inputs": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                      "outputs": {0: "batch", 1: "time"}, "output_lengths": {0: "batch"}},
                    )
                session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                feeds = {"inputs": check_inputs[0].numpy(), "lengths": check_inputs[1].numpy()}
                actual, actual_lengths = (torch.from_numpy(a) for a in session.run(None, feeds))
            else:
                raise ExportError(f"format={fmt!r}: expected onnx or torchscript")
        except ExportError:
            raise
        except Exception as err:
            other = (" (format=torchscript is the other format: try it)"
                     if fmt == "onnx" and not isinstance(err, OSError) else "")
            raise ExportError(f"{fmt} export of {type(model.encoder).__name__} -> LSTM -> "
                              f"{type(model.head).__name__} failed: "
                              f"{str(err).splitlines()[0].split(' [Caused by', 1)[0]}{other}") from err
    if actual.shape != expected.shape:
        raise ExportError(f"exported output shape {tuple(actual.shape)} != eager {tuple(expected.shape)}")
    if not torch.equal(actual_lengths.long().cpu(), expected_lengths.long().cpu()):
        raise ExportError(f"exported output lengths {actual_lengths.tolist()} != eager {expected_lengths.tolist()}")
    diff = float((actual.float() - expected.float()).abs().max())
    if diff > tolerance:
        raise ExportError(f"exported {fmt} model differs from PyTorch by {diff:.3g} (> {tolerance})")
    return {"max_abs_diff": diff, "checked_shape": list(expected.shape)}


def spec_file(path: Path) -> Path:
    """Where the spec of the model at ``path`` is written: beside it, ``<name>.spec.json``."""
    return path.with_name(path.name + ".spec.json")


def serving_inputs(spec: DataSpec) -> dict[str, Any]:
    """How the model's datamodule prepares inputs (empty for a spec that does not name one)."""
    return trusted_object(spec.datamodule).serving_inputs(spec) if spec.datamodule else {}


def write_spec(model: SequenceModel, path: Path) -> Path:
    """Write the DataSpec (vocabulary, classes, normaliser statistics, ids) and the head's serving
    record (e.g. an anomaly head's threshold and score) as plain JSON beside ``path``.

    Why: an exported graph maps ids/features to scores; serving it needs the same vocabulary and
    normaliser the model was trained with, and the learnt values its decisions use, readable
    without lstmkit, torch or pickle.
    """
    spec_path = spec_file(path)
    record = {"task": model.hparams.get("task", ""), "spec": model.spec.to_dict(),
              "inputs": ["inputs", "lengths"], "outputs": ["outputs", "output_lengths"],
              "prepare": serving_inputs(model.spec), "head": model.head.serving()}
    spec_path.write_text(json_text(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return spec_path
