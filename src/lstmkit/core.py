"""The LSTM core: ``nn.LSTM`` with packing, optional layer norm and optional carried state.

Why a wrapper at all: three things every LSTM pipeline needs and ``nn.LSTM`` leaves to the
caller — (1) packing by lengths so that padded steps never enter the recurrence (otherwise the
final state of a short sequence is the state after reading its padding); (2) Keras-style
``stateful`` training (truncated BPTT over contiguous streams), which Lightning 2 removed; and
(3) a uniform summary of the sequence (last valid step / mean / max) for heads that classify
or regress a whole sequence.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit.errors import ConfigError, check_probability

State = tuple[torch.Tensor, torch.Tensor]
POOLINGS = ("none", "last", "mean", "max")
log = logging.getLogger("lstmkit")
KERNELS = ("auto", "packed", "unpacked")


@functools.cache
def _onednn_lstm_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN's LSTM runs in ``dtype`` on this CPU (bf16: AVX-512 or newer; fp16: AVX-512 FP16/AMX)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def cpu_autocast_lacks_lstm(x: torch.Tensor) -> bool:
    """Whether the LSTM must leave CPU autocast and run in float32: the CPU has no instructions for
    the autocast dtype, and the LSTM is the one op that then fails.

    Why: ``trainer.precision=bf16-mixed`` on an AVX2-only CPU stopped at the first step with oneDNN's
    "could not create a primitive descriptor for the LSTM forward propagation primitive", a traceback
    deep inside torch. The LSTM runs in float32 there (said once); the rest of the step stays in bf16.
    """
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    dtype = torch.get_autocast_dtype("cpu")
    if _onednn_lstm_supports(dtype):
        return False
    if not _SAID_FLOAT32:
        _SAID_FLOAT32.append(dtype)
        name = str(dtype).removeprefix("torch.")
        log.warning("this CPU (%s) has no %s instructions for oneDNN's LSTM: under CPU autocast the LSTM runs in "
                    "float32, the rest of the model in %s (trainer.precision=32-true runs it all in float32)",
                    torch.backends.cpu.get_cpu_capability(), name, name)
    return True


_SAID_FLOAT32: list[torch.dtype] = []  # the warning above, once per process


def lstm_precision(x: torch.Tensor, state: State | None = None
                   ) -> tuple[torch.Tensor, State | None, contextlib.AbstractContextManager[Any]]:
    """``x`` and ``state`` as an LSTM can take them under the autocast in force, and the context to run
    it in: unchanged, or in float32 outside CPU autocast where the CPU lacks the instructions
    (:func:`cpu_autocast_lacks_lstm`). Every ``nn.LSTM`` call goes through it: the core's, and a
    head's own (the ECG autoencoder's decoder)."""
    if not cpu_autocast_lacks_lstm(x):
        return x, state, contextlib.nullcontext()
    state = None if state is None else (state[0].float(), state[1].float())
    return x.float(), state, torch.autocast("cpu", enabled=False)


def dropout_layers(p: float, option: str) -> list[nn.Module]:
    """``[nn.Dropout(p)]``, or no layer when ``p`` is 0, after checking that ``p`` is a probability
    (``option`` names it in the error).

    A list, to splice into an ``nn.Sequential``: a stand-in layer at ``p`` = 0 would renumber the
    layers after it, and the checkpoints written without dropout would no longer load.
    """
    p = check_probability(p, option)
    return [nn.Dropout(p)] if p > 0 else []


def dropout_layer(p: float, option: str) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity()`` when ``p`` is 0: a module's own dropout, checked as above."""
    layers = dropout_layers(p, option)
    return layers[0] if layers else nn.Identity()


class LSTMCore(nn.Module):
    """Multi-layer LSTM over padded batches.

    Args:
        input_size: features per step coming out of the encoder.
        hidden_size: LSTM cell size.
        num_layers: stacked layers.
        bidirectional: read the sequence both ways (not with ``stateful``).
        dropout: dropout between stacked layers (``nn.LSTM``'s ``dropout``) and on the output.
        proj_size: if > 0, project hidden states to this size (LSTMP, Sak et al. 2014).
        layer_norm: layer-normalise the per-step outputs.
        stateful: carry ``(h, c)`` from one batch to the next (detached), per stream; the
            datamodule must then yield contiguous streams (row ``b`` of batch ``i+1``
            continues row ``b`` of batch ``i``). Reset with :meth:`reset_state`.
        kernel: how variable-length batches run. ``packed``: ``pack_padded_sequence`` (what
            cuDNN is fast at). ``unpacked``: the same mathematics over the padded tensor, layer by
            layer — forward directions read the padded rows as they are (padding comes after
            the valid steps, so it cannot reach them), backward directions read each row
            reversed within its own length, and padded outputs are zeroed. On CPU the packed
            path runs a slow per-step loop while the unpacked one uses the fused oneDNN kernel:
            bi-LSTM classifier training measured 2.2x faster with bucketing (1 thread;
            ``bench/results/speed_1thread.md``). ``auto``
            (default): unpacked on CPU, packed elsewhere. Stateful cores always use packing
            (their batches have equal lengths, so neither is needed).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        proj_size: int = 0,
        layer_norm: bool = False,
        stateful: bool = False,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        output_dropout = dropout_layer(dropout, "model.dropout")  # checked before nn.LSTM takes the rate
        if kernel not in KERNELS:
            raise ConfigError(f"model.kernel={kernel!r}: expected one of {KERNELS}")
        if stateful and bidirectional:
            raise ConfigError("model.stateful=true cannot be combined with bidirectional=true: "
                             "the backward direction would need the future of the stream")
        if proj_size and proj_size >= hidden_size:
            raise ConfigError(f"model.proj_size ({proj_size}) must be smaller than model.hidden_size ({hidden_size})")
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
            proj_size=proj_size,
        )
        self.num_directions = 2 if bidirectional else 1
        self.step_size = proj_size or hidden_size
        self.out_features = self.step_size * self.num_directions
        self.norm = nn.LayerNorm(self.out_features) if layer_norm else nn.Identity()
        self.dropout = output_dropout
        self.stateful = stateful
        self.kernel = kernel
        self._states: dict[str, State] = {}

    def reset_state(self, stream: str | None = None) -> None:
        """Forget carried state (all streams, or one)."""
        if stream is None:
            self._states.clear()
        else:
            self._states.pop(stream, None)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
        host_lengths: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, State | None]:
        """Run the LSTM.

        Args:
            x: ``(B, T, input_size)`` padded inputs.
            lengths: ``(B,)`` valid steps per row.
            stream: name of the carried-state stream (``"train"``, ``"val"``...); only used
                when ``stateful``. ``None`` starts from zeros and carries nothing.
            host_lengths: the same lengths as Python ints, when the caller has them on the host
                (:attr:`Batch.host_lengths`). Packing needs them there; without them they are
                copied from ``lengths``, which on a GPU waits for the work queued before.

        Returns:
            outputs ``(B, T, out_features)`` (zeros at padded steps) and the final ``(h, c)``,
            each ``(num_layers * num_directions, B, size)``; ``None`` instead of the final state
            when the unpacked kernel ran a variable-length batch (it does not track each row's
            final cell state; the outputs, which are all the heads read, are exact).
        """
        state = self._initial_state(x.shape[0], stream)
        steps = x.shape[1]
        host_lengths = _on_host(lengths, host_lengths, x)
        final: State | None
        x, state, precision = lstm_precision(x, state)
        with precision:
            if all(n == steps for n in host_lengths):
                # Equal lengths (LM streams, fixed windows): packing would only cost time.
                outputs, final = self.lstm(x, state)
            elif self._unpacked(x):
                outputs, final = self.run_unpacked(x, lengths.to(x.device)), None
            else:
                outputs, final = self._run_packed(x, host_lengths, state)
        self._carry(stream, final)
        outputs = self.dropout(self.padding_zeroed(self.norm(outputs), lengths, host_lengths))
        return outputs, final

    def _carry(self, stream: str | None, final: State | None) -> None:
        """Keep the final state (detached) for the stream's next batch, when the core is stateful."""
        if self.stateful and stream is not None and final is not None:
            self._states[stream] = (final[0].detach(), final[1].detach())

    def padding_zeroed(self, outputs: torch.Tensor, lengths: torch.Tensor,
                       host_lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Layer norm's output with padded steps zero again (its bias moves them off zero)."""
        if isinstance(self.norm, nn.Identity) or (host_lengths is not None
                                                  and all(n == outputs.shape[1] for n in host_lengths)):
            return outputs
        steps = torch.arange(outputs.shape[1], device=outputs.device)
        return outputs * (steps[None, :] < lengths.to(outputs.device)[:, None]).unsqueeze(-1).to(outputs.dtype)

    def last_summary(self, x: torch.Tensor, lengths: torch.Tensor, stream: str | None = None,
                     host_lengths: Sequence[int] | None = None) -> torch.Tensor | None:
        """``summarise(forward(...), "last")`` from the final hidden state alone, when packing runs.

        Why: over a packed batch ``nn.LSTM`` returns each direction's final state, which *is* the
        ``last`` summary; building the padded per-step outputs (``pad_packed_sequence``) and picking
        one step out of them cost 15-20 % of a packed bi-LSTM classifier's step on CPU (the padded
        tensor's zero fills in the backward pass), and kernels on a GPU. ``None`` where this does not
        apply (the unpacked kernel or equal lengths, which have no such cost; layer norm, which acts
        on the outputs): the caller then pools ``forward``'s outputs.
        """
        if not isinstance(self.norm, nn.Identity) or self._unpacked(x):
            return None
        host_lengths = _on_host(lengths, host_lengths, x)
        if all(n == x.shape[1] for n in host_lengths):
            return None
        _, final = self._run_packed(x, host_lengths, self._initial_state(x.shape[0], stream), outputs=False)
        self._carry(stream, final)
        last = final[0][-self.num_directions:]  # (directions, B, size): the top layer, forward then backward
        return self.dropout(last.transpose(0, 1).reshape(x.shape[0], self.out_features))

    def _run_packed(self, x: torch.Tensor, host_lengths: Sequence[int], state: State | None, outputs: bool = True
                    ) -> tuple[torch.Tensor, State]:
        """``nn.LSTM`` over a packed batch, with the rows sorted by length on the host.

        ``pack_padded_sequence(enforce_sorted=False)`` would sort on the device and copy the order
        back and forth (``pad_packed_sequence`` reads it on the host), which on a GPU waits for
        the queued work twice per call; here the order is computed from the host lengths and
        sent once, without waiting.
        """
        order = sorted(range(len(host_lengths)), key=lambda i: -host_lengths[i])
        inverse = [0] * len(order)
        for position, row in enumerate(order):
            inverse[row] = position
        to_device, back = _to_device(order, x.device), _to_device(inverse, x.device)
        if state is not None:
            state = (state[0].index_select(1, to_device), state[1].index_select(1, to_device))
        packed = pack_padded_sequence(x.index_select(0, to_device), torch.tensor([host_lengths[i] for i in order]),
                                      batch_first=True, enforce_sorted=True)
        packed_out, (h, c) = self.lstm(packed, state)
        final = (h.index_select(1, back), c.index_select(1, back))
        if not outputs:  # the caller reads the final state only (last_summary)
            return x.new_zeros(0), final
        padded, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return padded.index_select(0, back), final

    def _unpacked(self, x: torch.Tensor) -> bool:
        if self.stateful or self.kernel == "packed":
            return False
        return self.kernel == "unpacked" or x.device.type == "cpu"

    def run_unpacked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The packed computation over the padded tensor, one layer and direction at a time."""
        lstm = self.lstm
        steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
        mask = steps < lengths[:, None]  # (B, T)
        # position of each step when the row is reversed within its own length (padding stays)
        reverse = torch.where(mask, lengths[:, None] - 1 - steps, steps)
        keep = mask[..., None].to(x.dtype)
        for layer in range(lstm.num_layers):
            if layer > 0 and lstm.dropout > 0 and self.training:
                x = nn.functional.dropout(x, lstm.dropout, training=True)
            outputs = []
            for suffix in ("", "_reverse")[: self.num_directions]:
                weights = [getattr(lstm, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh",
                                                                                  "bias_ih", "bias_hh")]
                if lstm.proj_size:
                    weights.append(getattr(lstm, f"weight_hr_l{layer}{suffix}"))
                source = x if not suffix else torch.gather(x, 1, reverse[..., None].expand(-1, -1, x.shape[-1]))
                zeros_h = source.new_zeros(1, x.shape[0], self.step_size)
                zeros_c = source.new_zeros(1, x.shape[0], lstm.hidden_size)
                out = torch.lstm(source, (zeros_h, zeros_c), weights, True, 1, 0.0, self.training, False, True)[0]
                if suffix:
                    out = torch.gather(out, 1, reverse[..., None].expand(-1, -1, out.shape[-1]))
                outputs.append(out)
            x = (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)) * keep
        return x

    def _initial_state(self, batch_size: int, stream: str | None) -> State | None:
        if not (self.stateful and stream is not None) or stream not in self._states:
            return None
        h, c = self._states[stream]
        if h.shape[1] != batch_size:
            # A ragged last batch cannot continue the streams; start it fresh.
            return None
        return h, c


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """Host ints as an index tensor on ``device``; pinned first on a GPU, so the copy does not wait."""
    tensor = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def summarise(
    outputs: torch.Tensor, lengths: torch.Tensor, how: str, num_directions: int = 1
) -> torch.Tensor:
    """Reduce per-step outputs ``(B, T, D)`` to one vector per sequence ``(B, D)``.

    ``last`` takes the last *valid* step of the forward direction and the first step of the
    backward direction (each direction's final state), never a padded step.
    ``mean`` / ``max`` pool over valid steps only.
    """
    if how == "none":
        return outputs
    batch, steps, dim = outputs.shape
    idx = (lengths.to(outputs.device, torch.int64) - 1).clamp(min=0)
    if how == "last":
        fwd = outputs[torch.arange(batch, device=outputs.device), idx]
        if num_directions == 1:
            return fwd
        half = dim // 2
        return torch.cat([fwd[:, :half], outputs[:, 0, half:]], dim=-1)
    mask = torch.arange(steps, device=outputs.device)[None, :] < lengths.to(outputs.device)[:, None]
    if how == "mean":
        total = (outputs * mask[..., None]).sum(dim=1)
        return total / lengths.to(outputs.device).clamp(min=1)[:, None].to(outputs.dtype)
    if how == "max":
        return outputs.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")


def _on_host(lengths: torch.Tensor, host_lengths: Sequence[int] | None, x: torch.Tensor) -> Sequence[int]:
    """The batch's lengths as Python ints: the caller's host copy, or (none, or stale) the device's,
    read with a copy even on CPU so that lstmkit.syncs' CPU stand-in sees the read."""
    if host_lengths is None or len(host_lengths) != x.shape[0] or max(host_lengths, default=0) > x.shape[1]:
        host_lengths = lengths.detach().to("cpu", torch.int64, copy=True).tolist()
    if min(host_lengths, default=1) < 1:
        # packing refuses it with a RuntimeError deep in torch on a GPU; the CPU kernel gave its row zeros (max
        # pooling: -inf) without a word
        raise ValueError(f"LSTMCore: a row of {min(host_lengths)} steps (lengths {list(host_lengths)[:8]}"
                         f"{' ...' if len(host_lengths) > 8 else ''}); every row needs at least one step")
    return host_lengths
