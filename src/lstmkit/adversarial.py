"""Adversarial and virtual adversarial training terms, taken on the encoder's output.

Adversarial training (Goodfellow et al. 2015; Miyato et al. 2017) moves the encoder's output (for
text: the word vectors, which an input-space attack could not move continuously) in the direction
that raises the loss most, and adds the loss there to the clean one. Virtual adversarial training
(Miyato et al. 2016, 2017) needs no label: it moves the output where the model's own prediction
changes most and adds that change. :class:`~lstmkit.module.SequenceModel` adds them to its training
loss when ``adversarial`` / ``virtual_adversarial`` are above 0; the functions here are the mathematics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lstmkit.module import SequenceModel


def unit(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` scaled to unit L2 norm per sequence (the first dimension)."""
    return tensor / tensor.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (tensor.dim() - 1)))


def scaled_gradient(loss: torch.Tensor, wrt: torch.Tensor, scaler: Any = None,
                    retain_graph: bool = False) -> torch.Tensor:
    """The gradient of ``loss`` with respect to ``wrt``, for a direction (its scale does not matter).

    Under 16-mixed it is taken of the loss scaled by the run's GradScaler (``scaler``), as backward
    does, so that fp16 gradients do not underflow. A scale that overflows fp16 (GradScaler raises it
    until one does) gives inf, and inf / inf a NaN loss that StopOnNonFiniteLoss would take for
    divergence; zeroed, the step goes on, and the main backward's own overflow makes the scaler skip
    it as usual (no host sync).
    """
    (grad,) = torch.autograd.grad(scaler.scale(loss) if scaler is not None else loss, wrt, retain_graph=retain_graph)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def worst_direction(loss: torch.Tensor, features: torch.Tensor, scaler: Any = None) -> torch.Tensor:
    """The unit (L2 per sequence) direction of ``features`` that raises ``loss`` most, to first order;
    a constant (the graph is kept for the clean loss's own backward)."""
    return unit(scaled_gradient(loss, features, scaler, retain_graph=True))


def virtual_adversarial_loss(model: SequenceModel, features: torch.Tensor, lengths: torch.Tensor,
                             host: Sequence[int] | None, reference: torch.Tensor, size: float,
                             scaler: Any = None) -> torch.Tensor:
    """How far ``model``'s prediction moves from ``reference`` (the clean one, a constant) when the
    encoder's output moves by ``size`` (L2 per sequence) in the direction that moves it most.

    Why: unlike :func:`worst_direction` it needs no label, so it smooths the model around every
    input rather than only towards the right answer. The direction is one power iteration from a
    random one (its finite difference of size ``0.1`` times the perturbation); padded steps get none.
    In training mode each pass (the reference, the probe and the perturbed one) draws its own dropout
    masks in the LSTM and the head, so the direction is found through that noise and the divergence
    also holds the dropout gap between two passes (a consistency term, as in R-Drop); the encoder's
    dropout, before the perturbation, is shared as in Miyato et al. 2017. The SST-2 figures measure
    this variant; with no dropout in the VAT passes instead (a probe, seeds 1-3) val was level with it.
    """
    head = model.head
    mask = (torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]).to(features.dtype)
    mask = mask.view(*mask.shape, *([1] * (features.dim() - 2)))
    probe = unit(torch.randn_like(features) * mask).mul_(0.1 * size).requires_grad_()
    moved = head(model.pool(features.detach() + probe, lengths, host_lengths=host), lengths)
    # a second-order gradient (~1e-10): unscaled, most of it is zero in fp16 under 16-mixed
    direction = unit(scaled_gradient(head.divergence(reference, moved, lengths), probe, scaler) * mask)
    moved = head(model.pool(features + direction * size, lengths, host_lengths=host), lengths)
    return head.divergence(reference, moved, lengths)
