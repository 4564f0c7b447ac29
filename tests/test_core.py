"""LSTMCore: packing is exact, carried state works, shapes for every variant."""

from __future__ import annotations

import pytest
import torch

from lstmkit.core import LSTMCore, summarise


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_output_equals_each_sequence_unpadded(bidirectional: bool) -> None:
    torch.manual_seed(0)
    core = LSTMCore(input_size=5, hidden_size=7, num_layers=2, bidirectional=bidirectional, kernel="packed").eval()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 5)
    x[1, 2:] = 99.0  # padding garbage must not leak into anything
    x[2, 4:] = -99.0
    outputs, (h, _) = core(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, (h_alone, _) = core(x[b : b + 1, :n], torch.tensor([n]))
        torch.testing.assert_close(outputs[b, :n], alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h[:, b], h_alone[:, 0], rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(outputs[b, n:]) == 0
    pooled = summarise(outputs, lengths, "last", core.num_directions)
    final = torch.cat([h[-2], h[-1]], dim=-1) if bidirectional else h[-1]
    torch.testing.assert_close(pooled, final, rtol=1e-5, atol=1e-6)


def test_stateful_carries_and_resets_state() -> None:
    torch.manual_seed(0)
    core = LSTMCore(input_size=3, hidden_size=4, stateful=True).eval()
    stream = torch.randn(2, 10, 3)
    lengths5 = torch.tensor([5, 5])
    whole, _ = core(stream, torch.tensor([10, 10]))  # no stream name: nothing carried
    first, _ = core(stream[:, :5], lengths5, stream="train")
    second, _ = core(stream[:, 5:], lengths5, stream="train")
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)
    core.reset_state("train")
    fresh, _ = core(stream[:, 5:], lengths5, stream="train")
    assert not torch.allclose(fresh, second)
    # streams are independent, and a ragged batch starts fresh instead of failing
    core(stream[:, :5], lengths5, stream="val")
    ragged, _ = core(stream[:1, 5:], torch.tensor([5]), stream="val")
    alone, _ = core(stream[:1, 5:], torch.tensor([5]))
    torch.testing.assert_close(ragged, alone)


def test_state_is_detached_between_batches() -> None:
    core = LSTMCore(input_size=3, hidden_size=4, stateful=True)
    x = torch.randn(2, 4, 3)
    core(x, torch.tensor([4, 4]), stream="train")
    h, c = core._states["train"]
    assert not h.requires_grad and not c.requires_grad


@pytest.mark.parametrize(
    ("bidirectional", "proj_size", "expected"), [(False, 0, 8), (True, 0, 16), (False, 3, 3), (True, 3, 6)]
)
def test_output_shapes(bidirectional: bool, proj_size: int, expected: int) -> None:
    core = LSTMCore(input_size=5, hidden_size=8, num_layers=2, bidirectional=bidirectional, proj_size=proj_size,
                    layer_norm=True, kernel="packed")
    out, (h, c) = core(torch.randn(4, 7, 5), torch.tensor([7, 3, 1, 5]))
    assert core.out_features == expected
    assert out.shape == (4, 7, expected)
    dirs = 2 if bidirectional else 1
    assert h.shape == (2 * dirs, 4, proj_size or 8)
    assert c.shape == (2 * dirs, 4, 8)


def test_pooling_ignores_padding() -> None:
    out = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [-100.0], [-100.0]]])
    lengths = torch.tensor([2, 1])
    assert summarise(out, lengths, "mean").flatten().tolist() == [2.0, 2.0]
    assert summarise(out, lengths, "max").flatten().tolist() == [3.0, 2.0]
    assert summarise(out, lengths, "last").flatten().tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match="unknown pooling"):
        summarise(out, lengths, "median")


def test_invalid_combinations_are_rejected() -> None:
    with pytest.raises(ValueError, match="stateful"):
        LSTMCore(input_size=3, bidirectional=True, stateful=True)
    with pytest.raises(ValueError, match="proj_size"):
        LSTMCore(input_size=3, hidden_size=4, proj_size=4)


@pytest.mark.parametrize(("bidirectional", "proj_size", "layer_norm"), [(False, 0, False), (True, 0, False),
                                                                       (True, 3, True), (False, 2, False)])
def test_unpacked_kernel_equals_packing_in_outputs_and_gradients(bidirectional: bool, proj_size: int,
                                                                 layer_norm: bool) -> None:
    torch.manual_seed(0)
    packed = LSTMCore(input_size=5, hidden_size=6, num_layers=2, bidirectional=bidirectional, proj_size=proj_size,
                      layer_norm=layer_norm, kernel="packed")
    unpacked = LSTMCore(input_size=5, hidden_size=6, num_layers=2, bidirectional=bidirectional,
                        proj_size=proj_size, layer_norm=layer_norm, kernel="unpacked")
    unpacked.load_state_dict(packed.state_dict())
    lengths = torch.tensor([7, 2, 5, 1])
    x = torch.randn(4, 7, 5)
    x[1, 2:], x[2, 5:], x[3, 1:] = 50.0, -50.0, 9.0  # padding garbage
    for core in (packed, unpacked):
        core.train()
    out_p, state = packed(x, lengths)
    out_u, none = unpacked(x, lengths)
    assert state is not None and none is None
    torch.testing.assert_close(out_u, out_p, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(out_p)
    (out_p * weights).sum().backward()
    (out_u * weights).sum().backward()
    for (name, a), (_, b) in zip(packed.named_parameters(), unpacked.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert LSTMCore(input_size=5, hidden_size=6)._unpacked(x)  # auto: unpacked on CPU


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packing_sorted_on_the_host_equals_torch_unsorted_packing(bidirectional: bool) -> None:
    """The core sorts rows by their host lengths itself (no device round trip); outputs and final states
    equal ``pack_padded_sequence(enforce_sorted=False)``'s, and stale host lengths are not trusted."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    core = LSTMCore(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional, kernel="packed").eval()
    x, lengths = torch.randn(4, 6, 3), torch.tensor([3, 6, 1, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected_out, (h, c) = core.lstm(packed)
    expected, _ = pad_packed_sequence(expected_out, batch_first=True, total_length=6)
    outputs, (h2, c2) = core(x, lengths, host_lengths=(3, 6, 1, 4))
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)
    stale, _ = core(x, lengths, host_lengths=(3, 6, 1))  # a batch edited after it was made: the device's lengths
    torch.testing.assert_close(stale, expected)


@pytest.mark.parametrize("kernel", ["packed", "unpacked"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_norm_keeps_padded_steps_zero(kernel: str, bidirectional: bool) -> None:
    """Layer norm's bias moved padded steps off zero; the forward's contract (and export's) is zeros."""
    from lstmkit.export import UnpackedLSTM

    torch.manual_seed(0)
    core = LSTMCore(input_size=5, hidden_size=7, num_layers=2, bidirectional=bidirectional, layer_norm=True,
                    kernel=kernel).eval()
    with torch.no_grad():
        core.norm.bias.uniform_(0.5, 1.0)
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 2, 4])
    padded = torch.arange(6)[None, :] >= lengths[:, None]
    with torch.no_grad():
        out, _ = core(x, lengths)
        exported = UnpackedLSTM(core)(x, lengths)
    assert out[padded].abs().max() == 0 and exported[padded].abs().max() == 0
    assert out[~padded].abs().min() > 0  # the valid steps are normalised, not masked
    torch.testing.assert_close(exported, out)


@pytest.mark.parametrize(("bidirectional", "proj_size", "layers"), [(False, 0, 1), (True, 0, 2), (True, 3, 2)])
def test_last_summary_from_the_final_state_equals_pooling_the_outputs(bidirectional: bool, proj_size: int,
                                                                      layers: int) -> None:
    """Packed batches pool ``last`` from nn.LSTM's final state: the same values and gradients, no padded outputs."""
    torch.manual_seed(0)
    core = LSTMCore(input_size=5, hidden_size=7, num_layers=layers, bidirectional=bidirectional,
                    proj_size=proj_size, kernel="packed").eval()
    x, lengths = torch.randn(4, 6, 5, requires_grad=True), torch.tensor([6, 2, 4, 1])
    fast = core.last_summary(x, lengths)
    assert fast is not None
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), x)
    slow = summarise(core(x, lengths)[0], lengths, "last", core.num_directions)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_fast, grad_slow)
    # where it does not apply, the caller pools the outputs
    assert LSTMCore(input_size=5, hidden_size=7, kernel="unpacked").last_summary(x, lengths) is None
    assert LSTMCore(input_size=5, hidden_size=7, kernel="packed", layer_norm=True).last_summary(x, lengths) is None
    assert core.last_summary(x, torch.full((4,), 6)) is None  # equal lengths: no packing


@pytest.mark.parametrize("kernel", ["packed", "unpacked"])
def test_cpu_autocast_without_lstm_instructions_runs_the_lstm_in_float32(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kernel: str) -> None:
    """bf16-mixed on an AVX2-only CPU stopped at the first step with oneDNN's "could not create a primitive
    descriptor for the LSTM forward propagation primitive"; the LSTM now leaves autocast there, and says so."""
    import logging

    from lstmkit import core

    monkeypatch.setattr(core, "_onednn_lstm_supports", lambda dtype: False)  # as on an AVX2-only CPU
    monkeypatch.setattr(core, "_SAID_FLOAT32", [])
    torch.manual_seed(0)
    model = LSTMCore(input_size=4, hidden_size=6, bidirectional=True, kernel=kernel)
    x, lengths = torch.randn(3, 5, 4), torch.tensor([5, 2, 4])
    expected, _ = model(x, lengths)
    with caplog.at_level(logging.WARNING, logger="lstmkit"), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, _ = model(x.bfloat16(), lengths)
        model(x, lengths)
    assert outputs.dtype == torch.float32
    torch.testing.assert_close(outputs, expected, atol=2e-2, rtol=0)  # the input was rounded to bf16
    assert caplog.text.count("no bfloat16 instructions for oneDNN's LSTM") == 1
    assert not core.cpu_autocast_lacks_lstm(x)  # outside autocast nothing changes


@pytest.mark.parametrize("kernel", ["packed", "unpacked"])
def test_a_row_without_steps_is_refused_by_every_kernel(kernel: str) -> None:
    """Packing refused it deep in torch (GPU); the CPU kernel gave the row zeros (max pooling: -inf) silently."""
    model = LSTMCore(input_size=3, hidden_size=4, kernel=kernel)
    with pytest.raises(ValueError, match=r"LSTMCore: a row of 0 steps \(lengths \[4, 0, 2\]\); every row needs"):
        model(torch.randn(3, 4, 3), torch.tensor([4, 0, 2]))
    if kernel == "packed":  # (the unpacked kernel has no last_summary: its caller pools forward's outputs)
        with pytest.raises(ValueError, match="a row of 0 steps"):
            model.last_summary(torch.randn(3, 4, 3), torch.tensor([4, 0, 2]), host_lengths=[4, 0, 2])
