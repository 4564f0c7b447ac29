"""Linear layer + softmax cross-entropy in one autograd node, for large output vocabularies.

Why: in a word LM the ``(N, V)`` logits of a 10k-word vocabulary are the largest tensors of
the step, and the usual ``F.cross_entropy(F.linear(h, W, b), y)`` walks over them five times
beyond the matrix products: log-softmax forward, the NLL backward's zero fill and scatter,
and the log-softmax backward (reading two ``(N, V)`` tensors, writing a third). The gradient
of the mean cross-entropy with respect to the logits has a closed form,
``(softmax(z) - onehot(y)) / n_valid``, so this function turns the log-softmax it already
computed into that gradient in place (one ``exp_``) and the backward pass is only the two
matrix products and a column sum. The mathematics is unchanged: loss and gradients match the
two-call version to float rounding (tested), and the step of a PTB-size LM is measurably
faster on CPU (``scripts/bench_speed.py``).

Under autocast (``precision=bf16-mixed`` / ``16-mixed``) the same node runs with autocast's
dtypes: the two matrix products of each pass in the low-precision dtype (as autocast's
``F.linear`` and its backward would), the log-softmax and the loss in float32 (as autocast's
``F.cross_entropy``), and the ``(N, V)`` gradient kept in the low-precision dtype for the backward
products. With bf16 on a CPU with AMX it made the PTB-size LM step faster than the two-call
path under the same autocast, where lstmkit had been slower than a plain loop
(``scripts/bench_speed.py``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

IGNORE = -100  # F.cross_entropy's default ignore_index


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``targets`` (``IGNORE`` rows skipped).

    ``dtype`` (under autocast): the matrix products in that dtype, the log-softmax and the loss in
    float32, and the ``(N, V)`` gradient kept in that dtype, as autocast's two calls compute them.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the dtypes below are chosen here
            low_x, low_w = (x.to(dtype), weight.to(dtype)) if dtype is not None else (x, weight)
            logits = (torch.addmm(bias.to(low_x.dtype), low_x, low_w.t()) if bias is not None
                      else torch.mm(low_x, low_w.t()))
            log_probs = torch.log_softmax(logits, dim=1, dtype=torch.float32 if dtype is not None else None)
            del logits
            valid = targets != IGNORE
            count = valid.sum()
            rows = torch.arange(len(targets), device=targets.device)
            safe = targets.clamp(min=0)
            # 0/0 = nan with no valid row, as F.cross_entropy
            loss = (-log_probs[rows, safe]).masked_fill(~valid, 0.0).sum() / count
            grad = log_probs.exp_()  # softmax, in place: d loss / d logits before the 1/n scale
            grad[rows, safe] -= 1.0
            grad = grad.to(low_x.dtype)  # under autocast: in dtype, as autocast's F.linear backward reads it
        # ignored rows keep their (meaningless) softmax: the backward masks the (N, D) factors it
        # multiplies instead of the (N, V) gradient, which would cost a pass over the logits
        ctx.save_for_backward(low_x, low_w, grad, valid, count)
        ctx.has_bias = bias is not None
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    @once_differentiable  # second derivatives raise instead of coming out wrong
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, grad, valid, count = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss / count.clamp(min=1)  # no valid row: zero gradients (the loss is nan, as F.cross_entropy's)
        keep = valid.to(grad.dtype)
        with torch.autocast(x.device.type, enabled=False):
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.mm(grad, weight).to(x_dtype).mul_(keep[:, None]).mul_(scale)
            if ctx.needs_input_grad[1]:
                grad_w = torch.mm(grad.t(), x * keep[:, None]).to(w_dtype).mul_(scale)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = torch.mm(keep[None, :], grad)[0].to(b_dtype).mul_(scale)
        return grad_x, grad_w, grad_b, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(x, weight, bias), targets, ignore_index=-100)``, fused when it pays.

    Args:
        x: ``(N, D)`` inputs of the output layer.
        weight: ``(V, D)`` output matrix (may be tied to an embedding).
        bias: ``(V,)`` or ``None``.
        targets: ``(N,)`` class ids, ``-100`` for steps that do not count.
    """
    if not torch.is_grad_enabled():  # evaluation: nothing to fuse into
        return F.cross_entropy(F.linear(x, weight, bias), targets, ignore_index=IGNORE)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return _LinearCrossEntropy.apply(x, weight, bias, targets, torch.get_autocast_dtype(device))
    return _LinearCrossEntropy.apply(x, weight, bias, targets)
