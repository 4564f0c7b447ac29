"""Per-beat normalisation of ECG (or any short, fixed-window) signals, inside the model."""

from __future__ import annotations

import torch
from torch import nn

from lstmkit.errors import ConfigError
from lstmkit.types import DataSpec


class BeatEncoder(nn.Module):
    """Raw beats ``(B, T)`` or ``(B, T, C)`` -> z-normalised beats ``(B, T, C)`` [+ differences].

    Each beat is z-normalised on its own (mean and standard deviation over its *valid* samples,
    per channel), the convention of the UCR archive: electrode gain and baseline offset vary
    from recording to recording and carry no diagnosis, while the beat's shape does. Living in
    the model (not in the datamodule), it is applied identically at train, predict and export time.

    Args:
        spec: gives the number of channels (``num_features``, 1 for single-lead ECG).
        normalise: z-normalise each beat (off: pass the samples through unchanged).
        difference: append the first difference ``x[t] - x[t-1]`` (0 at ``t = 0``) of the
            normalised signal as extra channels: slopes make QRS width and onset explicit.
        eps: lower bound of the standard deviation, so a flat beat stays flat instead of
            amplifying its noise.
        jitter: training only: add Gaussian noise of this standard deviation (in units of the
            normalised beat) to every valid sample (Um et al. 2017). A few hundred beats are
            few for an LSTM; noise keeps it from memorising the exact samples of each one, while
            the shapes that make a beat anomalous (QRS width, P and T waves) stay. A
            reconstruction head then reconstructs the noisy beat (it reads these channels).
        shift: training only: move each beat by a random whole number of samples in
            ``[-shift, shift]`` (edge values fill the gap). Beats are cut around the R peak, but
            not to the sample, so the model should not depend on where exactly the peak falls.

    Output ``(B, T, C)`` or ``(B, T, 2C)`` with zeros at padded steps; lengths unchanged. The
    first :attr:`signal_channels` channels are the normalised signal, the target that a
    reconstruction head learns to predict.
    """

    def __init__(
        self,
        spec: DataSpec,
        normalise: bool = True,
        difference: bool = False,
        eps: float = 1e-3,
        jitter: float = 0.0,
        shift: int = 0,
    ) -> None:
        super().__init__()
        if jitter < 0:
            raise ConfigError(f"encoder.jitter must be >= 0, got {jitter}")
        if shift < 0:
            raise ConfigError(f"encoder.shift must be >= 0 samples, got {shift}")
        self.jitter = float(jitter)
        self.shift = int(shift)
        self.signal_channels = int(spec.num_features or 1)
        self.normalise = normalise
        self.difference = difference
        self.eps = eps
        self.out_features = self.signal_channels * (2 if difference else 1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = inputs.to(torch.get_default_dtype())  # float64 under trainer.precision=64-true (its forward context)
        if x.dim() == 2:
            x = x.unsqueeze(-1)  # (B, T, 1)
        steps = x.shape[1]
        mask = torch.arange(steps, device=x.device)[None, :] < lengths.to(x.device)[:, None]
        mask = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        if self.normalise:
            count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
            mean = (x * mask).sum(dim=1, keepdim=True) / count  # (B, 1, C)
            var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
            x = (x - mean) / var.sqrt().clamp(min=self.eps)
        if self.training and self.shift:
            x = self._shift(x, lengths.to(x.device))
        if self.training and self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        x = x * mask
        if self.difference:
            diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)  # (B, T, C)
            x = torch.cat([x, diff * mask], dim=-1)  # (B, T, 2C)
        return x, lengths

    def _shift(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each beat moved by its own random offset within its valid samples, edges repeated."""
        batch, steps = x.shape[:2]
        offsets = torch.randint(-self.shift, self.shift + 1, (batch, 1), device=x.device)
        source = torch.arange(steps, device=x.device)[None, :] - offsets  # (B, T): read x[source]
        last = (lengths.to(torch.int64) - 1).clamp(min=0)[:, None]
        source = torch.minimum(source.clamp(min=0), last)
        return torch.gather(x, 1, source[..., None].expand(-1, -1, x.shape[-1]))
