"""Waveform -> normalised log-Mel / MFCC frames, with SpecAugment and frame stacking."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from torch import nn

from lstmkit.errors import ConfigError
from lstmkit.types import DataSpec


def check_frontend(sample_rate: int, n_fft: int, win_length: int | None, hop: int, n_mels: int, f_min: float,
                   f_max: float | None) -> None:
    """Refuse STFT / Mel settings that torch would reject mid-batch (a traceback from ``stft``) or that
    train on degenerate features (a Mel band above the Nyquist frequency, or narrower than one FFT bin,
    is all zeros; torchaudio only warns)."""
    nyquist = sample_rate / 2
    if n_fft < 2 or hop < 1:
        raise ConfigError(f"encoder.n_fft={n_fft} and encoder.hop={hop}: expected n_fft >= 2 and hop >= 1 samples")
    if win_length is not None and not 0 < win_length <= n_fft:
        raise ConfigError(f"encoder.win_length={win_length}: expected 1..encoder.n_fft ({n_fft}) samples "
                          "(or null = n_fft)")
    top = nyquist if f_max is None else f_max
    if not 0 <= f_min < top <= nyquist:
        raise ConfigError(f"encoder.f_min={f_min} / encoder.f_max={f_max}: expected 0 <= f_min < f_max <= "
                          f"{nyquist:g} Hz (half the {sample_rate} Hz sample rate)")
    bins = n_fft // 2 + 1
    if n_mels > bins:
        raise ConfigError(f"encoder.n_mels={n_mels}: more Mel bands than the {bins} frequency bins of "
                          f"encoder.n_fft={n_fft}, so some bands would be empty; use n_mels <= {bins} or a larger n_fft")


class SpectrogramEncoder(nn.Module):
    """Padded waveforms ``(B, S)`` + sample counts -> feature frames ``(B, T', F)`` + frame counts.

    The front end lives inside the model (not in the datamodule) so that ``predict`` and
    ``export`` feed raw audio to a checkpoint and get the features it was trained on.

    Steps, each the usual choice in CTC recognisers:

    0. level normalisation (``level=peak``): each waveform loses its DC offset (some sound
       cards record one, and it lands in the lowest Mel band) and is scaled to a peak of 1, so
       quiet and loud microphones meet the log's floor alike (the mean normalisation below
       removes a gain anyway, but not where the signal sits near the floor); optional
       pre-emphasis ``y[t] = x[t] - a x[t-1]`` (Kaldi's and HTK's 0.97) flattens the spectral
       tilt that differs between voices and microphones;
       speed perturbation (Ko et al. 2015), in training mode only: each batch is resampled to
       play at one of ``speed_factors`` (e.g. 0.9 / 1.0 / 1.1), which changes tempo and pitch
       together, as a different speaker would (resampling, as ``torchaudio.functional.speed``);
       vocal tract length perturbation (``vtlp``, Jaitly & Hinton 2013), in training mode only:
       each utterance's spectrum is stretched along the frequency axis by its own random
       factor (formants move as in a shorter or longer vocal tract; tempo and pitch period do
       not), the piecewise-linear warp that keeps the band edges in place;
       channel perturbation, in training mode only: a random spectral tilt per utterance
       (``tilt``: ``y[t] = x[t] - a x[t-1]`` with ``a`` drawn in ``[-tilt, tilt]``, up to
       +-9.5 dB between the lowest and highest frequency at 0.5), as another microphone
       colours a voice, and white noise at a random signal-to-noise ratio per utterance
       (``noise_snr``: a ``[low, high]`` range in dB over the utterance's mean power), as
       another room's noise floor. Per-utterance CMVN removes a fixed colouring anyway, but the
       global branch of ``normalise=global|both`` keeps it; the silence trimming still reads the
       waveform before both, as a voice activity detector would;
    1. log-Mel spectrogram (``torchaudio.transforms.MelSpectrogram``, ``log(x + 1e-6)``) or MFCC
       (``torchaudio.transforms.MFCC`` over log-Mels; not dB, whose ``top_db`` clamp would
       depend on the loudest utterance of the batch);
    2. silence trimming (``trim_db``): leading and trailing frames quieter than the
       utterance's loudest by more than ``trim_db`` dB are dropped (``trim_margin`` frames
       kept either side), as ``librosa.effects.trim`` does. A recording with long pauses
       around the word would otherwise shift the normalisation statistics and show the
       LSTM silences the training speakers never had;
       then mean/variance normalisation over the *valid* frames only, so padding does not leak into
       the features: per utterance (``normalise=utterance``, cepstral mean and variance
       normalisation: loudness and the microphone's colouring go, but so does a one-word
       utterance's average spectrum, which is mostly its vowel), or with the training data's
       statistics (``normalise=global``: moving averages of each training batch's mean and
       (biased) variance over its valid frames, augmented frames included, frozen outside
       training), which keep it; or both side by side (``normalise=both``: twice the features);
       optional dynamic features (``deltas``, as Kaldi's ``add-deltas`` after CMVN): the first
       (and second) time derivatives of every coefficient, regression over +-2 frames
       (``torchaudio.functional.compute_deltas``' formula, in slices that trace at any batch
       size), each utterance's frames clamped to its own
       first and last valid frame, so the batch's padding does not reach its deltas;
    3. SpecAugment (Park et al. 2019) frequency and time masks, in training mode only;
    4. optional frame stacking with a stride (Sak et al. 2015's low frame rate): ``stack``
       neighbouring frames are concatenated and every ``stride``-th kept, which shortens the
       LSTM's sequence by ``stride`` at no loss of information.

    Frame counts: with ``center=True`` an utterance of ``s`` samples has ``s // hop + 1``
    frames, and ``ceil(frames / stride)`` after stacking.

    Args:
        spec: gives the sample rate.
        features: ``logmel`` or ``mfcc``.
        n_mels: Mel bands. n_mfcc: cepstral coefficients kept (``mfcc`` only).
        n_fft / win_length / hop: STFT size, window and hop in samples (25 ms / 10 ms at
            8 kHz: 200 / 80).
        f_min / f_max: Mel filter-bank range in Hz (``None`` = Nyquist).
        normalise: ``utterance`` (``true``), ``global``, ``both`` or ``none`` (``false``):
            mean/variance normalisation of each coefficient over each utterance's frames, or over
            the training data's frames (running statistics), both side by side (twice the
            features), or none.
        batch_stats: in training, the global branch normalises each batch with the batch's own
            statistics (the running ones still follow them, for val, eval and predict), as batch
            norm does, though no gradient flows through them (nothing is learnt in this branch).
            With ``data.group_batches`` every batch is one speaker, so the model trains on
            per-speaker normalised features, which is what ``adapt=true`` gives an unseen speaker
            at test time (Kaldi's per-speaker CMVN, in training as well as test).
        tilt: largest first-order tilt coefficient, e.g. 0.5 draws ``a`` in ``[-0.5, 0.5]``
            per utterance (0 = off).
        noise_snr: ``[low, high]`` signal-to-noise ratios in dB for the added white noise, drawn
            per utterance (``None`` = off).
        deltas: 0 (off), 1 (add deltas) or 2 (add deltas and delta-deltas); multiplies the
            feature size by ``1 + deltas``.
        freq_mask / time_mask: SpecAugment maximum mask widths (bins / frames; 0 = off),
            ``num_freq_masks`` / ``num_time_masks`` masks each, a time mask covering at most
            ``time_mask_ratio`` of the (padded) frames.
        stack / stride: frames concatenated / frame step after stacking (1 / 1 = off).
        speed_factors: speeds a training batch is played at, one drawn per batch (empty = off).
        level: ``none`` or ``peak`` (remove the DC offset and scale every waveform to a peak of 1).
        preemphasis: pre-emphasis coefficient (0 = off; 0.97 as in Kaldi / HTK).
        trim_db: trim leading / trailing frames this many dB below the loudest (``None`` = off);
            ``trim_margin`` frames are kept on either side of the sound.
        vtlp: largest relative frequency warp, e.g. 0.1 draws factors in ``[0.9, 1.1]`` per
            utterance (0 = off). ``vtlp_boundary``: share of the band warped linearly; above it
            a second linear piece maps the top of the band onto itself.
    """

    # why `lstmkit export format=onnx` refuses this encoder before trying (torch.onnx fails deep inside, with a
    # dump of its graph): said in one line, with the format that works
    onnx_unsupported = "torch.onnx cannot export the complex STFT of its spectrogram front end"

    def __init__(
        self,
        spec: DataSpec,
        features: str = "logmel",
        n_mels: int = 40,
        n_mfcc: int = 13,
        n_fft: int = 200,
        win_length: int | None = None,
        hop: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        normalise: bool | str = "utterance",
        batch_stats: bool = False,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_freq_masks: int = 2,
        num_time_masks: int = 2,
        time_mask_ratio: float = 0.2,
        stack: int = 1,
        stride: int = 1,
        speed_factors: list[float] | tuple[float, ...] = (),
        level: str = "none",
        preemphasis: float = 0.0,
        trim_db: float | None = None,
        trim_margin: int = 2,
        vtlp: float = 0.0,
        vtlp_boundary: float = 0.8,
        deltas: int = 0,
        tilt: float = 0.0,
        noise_snr: list[float] | tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if not spec.sample_rate:
            raise ConfigError("SpectrogramEncoder needs a DataSpec with sample_rate (a waveform datamodule)")
        if stack < 1 or stride < 1:
            raise ConfigError(f"encoder.stack ({stack}) and encoder.stride ({stride}) must be >= 1")
        check_frontend(int(spec.sample_rate), n_fft, win_length, hop, n_mels, f_min, f_max)
        mel_options = {"n_fft": n_fft, "win_length": win_length, "hop_length": hop, "n_mels": n_mels,
                       "f_min": f_min, "f_max": f_max, "center": True}
        if features == "logmel":
            self.frontend: nn.Module = AT.MelSpectrogram(sample_rate=spec.sample_rate, **mel_options)
            size = n_mels
        elif features == "mfcc":
            self.frontend = AT.MFCC(sample_rate=spec.sample_rate, n_mfcc=n_mfcc, log_mels=True,
                                    melkwargs=mel_options)
            size = n_mfcc
        else:
            raise ConfigError(f"encoder.features={features!r}: expected logmel or mfcc")
        bank = (self.frontend.mel_scale if features == "logmel" else self.frontend.MelSpectrogram.mel_scale).fb
        empty = (bank.sum(0) == 0).nonzero().flatten().tolist()
        if empty:  # a band between two FFT bins: constant features (torchaudio only warns)
            raise ConfigError(f"encoder.n_mels={n_mels}: Mel band(s) {empty} fall between the frequency bins of "
                              f"encoder.n_fft={n_fft} at {spec.sample_rate} Hz and would be all zeros; use fewer "
                              "n_mels, a larger n_fft or a higher f_min")
        # torch.stft has no bfloat16 / float16 kernel (MKL: "doesn't support tensors of type: BFloat16"), so
        # under trainer.precision=bf16-true / 16-true the front end runs in float32, on this float32 copy of
        # its window and filter bank: kept outside the module's buffers, .to(bfloat16) leaves it as it is
        object.__setattr__(self, "_float_frontend", copy.deepcopy(self.frontend).float())
        self.log_mel = features == "logmel"
        self.hop = hop
        modes = {True: "utterance", False: "none", **{m: m for m in ("utterance", "global", "both", "none")}}
        if normalise not in modes:
            raise ConfigError(f"encoder.normalise={normalise!r}: expected utterance, global, both or none")
        self.normalise = modes[normalise]
        if self.normalise in {"global", "both"}:  # only then: checkpoints of the other modes keep their keys
            self.register_buffer("running_mean", torch.zeros(size))
            self.register_buffer("running_var", torch.ones(size))
            self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        if batch_stats and self.normalise not in {"global", "both"}:
            raise ConfigError(f"encoder.batch_stats=true normalises the global branch with each training batch's "
                              f"statistics; encoder.normalise={self.normalise} has no global branch (use global or both)")
        self.batch_stats = bool(batch_stats)
        self.momentum = 0.05
        self.augment = nn.Sequential(
            *[AT.FrequencyMasking(freq_mask, iid_masks=True) for _ in range(num_freq_masks if freq_mask else 0)],
            *[AT.TimeMasking(time_mask, iid_masks=True, p=time_mask_ratio)
              for _ in range(num_time_masks if time_mask else 0)],
        )
        if deltas not in (0, 1, 2):
            raise ConfigError(f"encoder.deltas={deltas}: expected 0 (off), 1 (deltas) or 2 (deltas and delta-deltas)")
        self.deltas = int(deltas)
        self.stack, self.stride = stack, stride
        self.out_features = size * (2 if self.normalise == "both" else 1) * (1 + self.deltas) * stack
        self.sample_rate = int(spec.sample_rate)
        self.speed_factors = [float(f) for f in speed_factors or ()]
        if any(not 0.5 <= f <= 2.0 for f in self.speed_factors):
            raise ConfigError(f"encoder.speed_factors={self.speed_factors}: expected factors between 0.5 and 2")
        if level not in {"none", "peak"}:
            raise ConfigError(f"encoder.level={level!r}: expected none or peak")
        if trim_db is not None and trim_db <= 0:
            raise ConfigError(f"encoder.trim_db={trim_db}: expected a positive number of dB (or null = off)")
        if trim_margin < 0:
            raise ConfigError(f"encoder.trim_margin={trim_margin}: expected >= 0 frames")
        if not 0.0 <= preemphasis < 1.0:
            raise ConfigError(f"encoder.preemphasis={preemphasis}: expected a coefficient in [0, 1)")
        if not 0.0 <= vtlp < 0.5:
            raise ConfigError(f"encoder.vtlp={vtlp}: expected a largest relative warp in [0, 0.5)")
        if not 0.0 < vtlp_boundary < 1.0:
            raise ConfigError(f"encoder.vtlp_boundary={vtlp_boundary}: expected a share of the band in (0, 1)")
        self.vtlp, self.vtlp_boundary = float(vtlp), float(vtlp_boundary)
        if not 0.0 <= tilt < 1.0:
            raise ConfigError(f"encoder.tilt={tilt}: expected a largest tilt coefficient in [0, 1)")
        if noise_snr is not None and (len(noise_snr) != 2 or not float(noise_snr[0]) <= float(noise_snr[1])):
            raise ConfigError(f"encoder.noise_snr={list(noise_snr)}: expected [low, high] in dB with low <= high "
                              "(or null = off)")
        self.tilt = float(tilt)
        self.noise_snr = None if noise_snr is None else (float(noise_snr[0]), float(noise_snr[1]))
        self.level, self.preemphasis = level, float(preemphasis)
        self.trim_db, self.trim_margin = trim_db, int(trim_margin)
        self.n_fft = int(n_fft)

    def _reflect_tails(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each utterance's padding, for the half window after its end, as the reflection of its tail.

        Why: the STFT centres its windows (``center=True``) and reflects only the end of the
        *batch*, so a shorter utterance's last frames read zeros (log power about -13.8) where alone
        they would read its own reflection: its features (and through the per-utterance mean, all
        of them) depended on what else was in the batch. With this, an utterance's features are
        the same alone and batched (tested); beyond the half window the frames are masked anyway.
        """
        steps = inputs.shape[-1]
        j = torch.arange(steps, device=inputs.device)[None, :]
        end = lengths.to(inputs.device)[:, None]
        reflected = (2 * end - 2 - j).clamp(min=0)  # position end + k reads end - 2 - k, as torch's reflect pad
        index = torch.where((j >= end) & (j < end + self.n_fft // 2), reflected, j)
        return inputs.gather(-1, index.expand(inputs.shape[0], -1))

    def _frames(self, inputs: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms -> the front end's frames before normalisation ``(B, F, T)``, frame counts and the
        valid-frame mask ``(B, 1, T)``: steps 0-2 up to the trimming (augmented in training mode).
        Computed in the default dtype (float64 under ``trainer.precision=64-true``), or in float32 when the
        module is in a 16-bit one, and returned in the default dtype."""
        dtype, frontend = torch.get_default_dtype(), self.frontend
        if next(self.frontend.buffers()).dtype in (torch.bfloat16, torch.float16):  # bf16-true, 16-true
            frontend = self._float_frontend.to(inputs.device)  # no copy once it is there
        inputs = inputs.to(torch.float32 if frontend is not self.frontend else dtype)
        if self.level == "peak" or self.preemphasis:
            inputs = self._condition(inputs, lengths)
        if self.training and self.speed_factors:
            factor = self.speed_factors[int(torch.randint(len(self.speed_factors), ()))]
            if factor != 1.0:
                inputs, lengths = self._play_at(inputs, lengths, factor)
        # room after the longest clip for its own reflected tail (_reflect_tails), and for the STFT's reflect
        # padding when a batch is shorter than half a window (predict of one short clip). Always, not only
        # then: a branch on the shape is frozen by torch.jit.trace at the traced length, and the exported
        # model failed on short clips that the eager one took. The frames the padding adds are cut below.
        samples = inputs.shape[-1]
        clean = inputs  # what the silence trimming reads: the waveform before the channel perturbation
        perturb = self.training and (self.tilt > 0 or self.noise_snr is not None)
        if perturb:
            inputs = self._perturb_channel(inputs, lengths)
        inputs = nn.functional.pad(inputs, (0, self.n_fft // 2 + 1))
        inputs = self._reflect_tails(inputs, lengths)
        heard = inputs
        if perturb and self.trim_db is not None:
            heard = self._reflect_tails(nn.functional.pad(clean, (0, self.n_fft // 2 + 1)), lengths)
        if self.training and self.vtlp:
            feats = self._warped_features(inputs, frontend)
        else:
            feats = frontend(inputs)  # (B, F, T)
        feats = feats[..., : samples // self.hop + 1]  # the frames of the batch as given (a traced size)
        if self.log_mel:
            feats = torch.log(feats + 1e-6)
        frames = torch.div(lengths.to(feats.device), self.hop, rounding_mode="floor") + 1
        frames = frames.clamp(max=feats.shape[-1])
        if self.trim_db is not None:
            feats, frames = self._trim(heard, feats, frames)
        mask = torch.arange(feats.shape[-1], device=feats.device)[None, :] < frames[:, None]  # (B, T)
        mask = mask[:, None, :]  # (B, 1, T)
        return feats.to(dtype), frames, mask

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames, mask = self._frames(inputs, lengths)
        if self.normalise == "utterance":
            feats = self._utterance_norm(feats, frames, mask)
        elif self.normalise == "global":
            feats = self._global_norm(feats, mask)
        elif self.normalise == "both":  # side by side: the LSTM reads each utterance's shape and its level
            feats = torch.cat([self._utterance_norm(feats, frames, mask), self._global_norm(feats, mask)], dim=1)
        if self.deltas:
            feats = self._add_deltas(feats, frames)
        feats = feats * mask  # padded frames are exactly zero
        if self.training and len(self.augment):
            feats = self.augment(feats)  # masks fill with 0 = the utterance mean
        feats = feats.transpose(1, 2)  # (B, T, F)
        if self.stack > 1 or self.stride > 1:
            feats = self._stack(feats)  # (B, ceil(T / stride), F * stack)
        out_lengths = torch.div(frames + self.stride - 1, self.stride, rounding_mode="floor")
        return feats, out_lengths.to(lengths.device)

    @staticmethod
    def _utterance_norm(feats: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each coefficient to zero mean and unit variance over the utterance's valid frames (CMVN)."""
        count = frames.clamp(min=1)[:, None, None].to(feats.dtype)
        mean = (feats * mask).sum(-1, keepdim=True) / count
        var = (((feats - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        return (feats - mean) / torch.sqrt(var + 1e-5)

    def _global_norm(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalise with running statistics of the training batches' valid frames (per coefficient).

        In training they are updated first (the first batch sets them, then an exponential
        average with ``momentum``) and applied without gradient through them, as batch norm's
        running statistics are at evaluation; outside training they are read only, so eval,
        predict and export normalise every utterance alike whatever the batch holds.
        """
        if self.training:
            with torch.no_grad():  # in float32 whatever the autocast dtype; no host sync (no int())
                dtype = self.running_mean.dtype  # float32 (float64 with precision=64) under any autocast
                frames, valid = feats.to(dtype), mask.to(dtype)
                count = valid.sum().clamp(min=1)
                mean = (frames * valid).sum((0, 2)) / count
                var = (((frames - mean[None, :, None]) * valid) ** 2).sum((0, 2)) / count
                first = (self.batches_seen == 0).to(dtype)
                rate = first + (1.0 - first) * self.momentum  # the first batch sets them
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var, rate)
                self.batches_seen += 1
            if self.batch_stats:  # this batch's own statistics (one speaker's, with data.group_batches)
                return ((feats.to(dtype) - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + 1e-5)).to(feats.dtype)
        scale = torch.rsqrt(self.running_var[None, :, None] + 1e-5)
        return ((feats - self.running_mean[None, :, None]) * scale).to(feats.dtype)

    def check_adapt(self) -> None:
        """``adapt=true`` needs the running statistics of ``normalise=global|both``: a ConfigError otherwise."""
        if self.normalise not in {"global", "both"}:
            raise ConfigError(f"adapt=true re-estimates the running statistics of encoder.normalise=global|both; "
                              f"this model was trained with encoder.normalise={self.normalise}, which has none")

    @torch.no_grad()
    def adapt_normalisation(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                            reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
        """Re-estimate the global branch's statistics on unlabelled audio; returns the frames read.

        Test-time adaptation (AdaBN, Li et al. 2016, applied to feature normalisation as per-speaker
        CMVN is in Kaldi): the running mean and variance become the exact mean and (biased) variance
        of every valid frame of ``batches`` (waveforms and sample counts, e.g. one unseen speaker's
        recordings), read in evaluation mode (no augmentation). Only the inputs are read, never a
        transcript, so scoring afterwards stays honest; what moves is the microphone's and the
        voice's average colouring, which the training speakers' statistics would otherwise keep.
        ``reduce`` sums a tensor over processes (DDP: each rank reads its shard of the split).
        """
        self.check_adapt()
        was_training = self.training
        self.eval()
        device, size = self.running_mean.device, self.running_mean.numel()
        dtype = _accumulation_dtype(device)

        def frames_of(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            feats, _, mask = self._frames(batch[0].to(device), batch[1].to(device))
            return feats.to(dtype), mask.to(dtype)

        def total(value: torch.Tensor) -> torch.Tensor:
            return value if reduce is None else reduce(value)

        try:
            read = (frames_of(batch) for batch in batches)
            first = next(read, None)
            # the sums are taken around the first batch's mean (every rank's first, under DDP): E[x^2] - E[x]^2
            # of raw log-Mels (means far from 0, small variances) cancels in float32 (MPS), and so would a
            # shift by the stored training mean when the scored audio is louder or quieter
            seed = torch.zeros(size + 1, dtype=dtype, device=device)
            if first is not None:
                seed[:size], seed[size] = (first[0] * first[1]).sum((0, 2)), first[1].sum()
            seed = total(seed)
            shift = seed[:size] / seed[size].clamp(min=1)
            sums = torch.zeros(size, dtype=dtype, device=device)
            squares = torch.zeros(size, dtype=dtype, device=device)
            count = torch.zeros((), dtype=dtype, device=device)
            for frames, valid in itertools.chain([first] if first is not None else [], read):
                centred = frames - shift[None, :, None]
                sums += (centred * valid).sum((0, 2))
                squares += (centred.pow(2) * valid).sum((0, 2))
                count += valid.sum()
        finally:
            self.train(was_training)
        stats = total(torch.cat([sums, squares, count[None]]))
        sums, squares, count = stats[:size], stats[size : 2 * size], stats[-1]
        if count < 2:
            raise ConfigError("adapt=true: the scored data has no audio frames to re-estimate the normalisation on")
        offset = sums / count
        self.running_mean.copy_((shift + offset).to(self.running_mean.dtype))
        self.running_var.copy_((squares / count - offset.pow(2)).clamp(min=0.0).to(self.running_var.dtype))
        return int(count)

    def _perturb_channel(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A random tilt and white noise per utterance (``tilt``, ``noise_snr``); the padding stays 0."""
        batch = inputs.shape[0]
        valid = torch.arange(inputs.shape[-1], device=inputs.device)[None, :] < lengths.to(inputs.device)[:, None]
        if self.tilt:
            a = (torch.rand(batch, 1, device=inputs.device) * 2 - 1) * self.tilt
            inputs = torch.cat([inputs[:, :1], inputs[:, 1:] - a * inputs[:, :-1]], dim=-1) * valid
        if self.noise_snr is not None:
            low, high = self.noise_snr
            snr = low + (high - low) * torch.rand(batch, 1, device=inputs.device)
            power = inputs.pow(2).sum(-1, keepdim=True) / lengths.to(inputs.device).clamp(min=1)[:, None]
            scale = torch.sqrt(power * 10.0 ** (-snr / 10.0))
            inputs = inputs + torch.randn_like(inputs) * scale * valid
        return inputs

    def _condition(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """DC removal and peak level (``level=peak``), then pre-emphasis; the padding stays 0."""
        valid = torch.arange(inputs.shape[-1], device=inputs.device)[None, :] < lengths.to(inputs.device)[:, None]
        if self.level == "peak":
            mean = inputs.sum(-1, keepdim=True) / lengths.to(inputs.device).clamp(min=1)[:, None]
            inputs = (inputs - mean) * valid
            inputs = inputs / inputs.abs().amax(-1, keepdim=True).clamp(min=1e-8)
        if self.preemphasis:
            inputs = torch.cat([inputs[:, :1], inputs[:, 1:] - self.preemphasis * inputs[:, :-1]], dim=-1) * valid
        return inputs

    def _trim(self, inputs: torch.Tensor, feats: torch.Tensor, frames: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop leading / trailing quiet frames: shift each row left, shorten its frame count.

        A frame's energy is that of the waveform around its centre (the ``hop`` samples either
        side), measured on the waveform so that log-Mel and MFCC front ends trim alike. Shapes
        stay as they are (no data-dependent sizes), so the encoder still traces for export.
        """
        steps = feats.shape[-1]
        padded = nn.functional.pad(inputs, (self.hop, self.hop + steps * self.hop - inputs.shape[-1]))
        blocks = padded[:, : (steps + 1) * self.hop].reshape(inputs.shape[0], steps + 1, self.hop)
        power = blocks.pow(2).mean(-1)  # (B, T + 1): block t spans samples [(t - 1) hop, t hop)
        energy = 10 * torch.log10(torch.maximum(power[:, :-1], power[:, 1:]) + 1e-10)  # (B, T)
        index = torch.arange(steps, device=feats.device)
        valid = index[None, :] < frames[:, None]
        energy = energy.masked_fill(~valid, float("-inf"))
        active = energy >= energy.amax(-1, keepdim=True) - self.trim_db
        first = active.float().argmax(-1)  # first loud frame
        last = steps - 1 - active.flip(-1).float().argmax(-1)  # last loud frame
        first = (first - self.trim_margin).clamp(min=0)
        last = torch.minimum(last + self.trim_margin, frames - 1)
        source = (first[:, None] + index[None, :]).clamp(max=steps - 1)  # (B, T)
        shifted = feats.gather(-1, source[:, None, :].expand(-1, feats.shape[1], -1))
        return shifted, last - first + 1

    def _play_at(self, inputs: torch.Tensor, lengths: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample so the batch plays ``factor`` times faster (``torchaudio.functional.speed``'s
        method), with the source rate rounded to a multiple of 50 Hz: an exact ``factor * rate``
        such as 0.95 x 22,050 shares no divisor with the rate and would need a huge filter."""
        source = max(50, round(self.sample_rate * factor / 50.0) * 50)
        out = AF.resample(inputs, source, self.sample_rate)
        new_lengths = torch.ceil(lengths.to(inputs.device).double() * self.sample_rate / source).long()
        return out, new_lengths.clamp(max=out.shape[-1])

    def _warped_features(self, inputs: torch.Tensor, frontend: nn.Module) -> torch.Tensor:
        """The front end's output with each utterance's power spectrum warped in frequency (VTLP).

        The same steps as ``MelSpectrogram`` / ``MFCC``, with the warp between the STFT and the
        Mel filter bank: frequency ``f`` of the warped spectrum reads the original at
        ``w^-1(f)``, where ``w(f) = a f`` up to ``boundary * min(a, 1) / a`` of the band and a
        straight line to the band's top above it (Jaitly & Hinton 2013), interpolated linearly
        between STFT bins.
        """
        mel = frontend if self.log_mel else frontend.MelSpectrogram
        power = mel.spectrogram(inputs)  # (B, K, T)
        bins = power.shape[-2]
        factors = 1.0 + (torch.rand(power.shape[0], 1, device=power.device) * 2.0 - 1.0) * self.vtlp  # (B, 1)
        top = float(bins - 1)
        f = torch.arange(bins, device=power.device, dtype=power.dtype)[None, :]  # (1, K) target bins
        knee = self.vtlp_boundary * top * torch.clamp(factors, max=1.0)  # (B, 1): w(knee / a) = knee
        knee_source = knee / factors
        # inverse warp: below the knee f / a; above, the line from (knee, knee / a) to (top, top)
        upper = knee_source + (f - knee) * (top - knee_source) / (top - knee)
        source = torch.where(f <= knee, f / factors, upper).clamp(0.0, top)  # (B, K)
        low = source.floor().long().clamp(max=bins - 2)
        weight = (source - low.to(source.dtype))[..., None]  # (B, K, 1)

        def rows(index: torch.Tensor) -> torch.Tensor:  # (B, K) bin indices -> (B, K, T)
            return power.gather(1, index[..., None].expand(-1, -1, power.shape[-1]))

        warped = rows(low) * (1.0 - weight) + rows(low + 1) * weight
        feats = mel.mel_scale(warped)  # (B, n_mels, T)
        if self.log_mel:
            return feats
        log_mel = torch.log(feats + 1e-6)  # torchaudio.transforms.MFCC with log_mels=True
        return torch.matmul(log_mel.transpose(-1, -2), frontend.dct_mat).transpose(-1, -2)

    def _add_deltas(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``(B, F, T)`` -> ``(B, F * (1 + deltas), T)``: statics, deltas (and delta-deltas).

        As Kaldi's ``add-deltas``: every order reads the statics with the frame index clamped to
        the utterance (its first / last valid frame repeated), so a row's deltas do not depend on
        the batch's padding; ``2 * deltas`` clamped frames are added at either end, then cropped.
        """
        pad = 2 * self.deltas  # compute_deltas(win_length=5) reaches 2 frames per order
        last = (frames.to(feats.device) - 1).clamp(min=0)[:, None, None]
        steps = torch.arange(-pad, feats.shape[-1] + pad, device=feats.device)[None, None, :]
        index = torch.minimum(steps.clamp(min=0), last).expand(*feats.shape[:2], -1)
        blocks = [feats.gather(-1, index)]
        for _ in range(self.deltas):
            blocks.append(_deltas(blocks[-1]))
        return torch.cat(blocks, dim=1)[..., pad : pad + feats.shape[-1]]

    def _stack(self, feats: torch.Tensor) -> torch.Tensor:
        batch, steps, size = feats.shape
        out_steps = -(-steps // self.stride)
        # zero frames at the end, enough for any length, then the windows cut to ceil(steps / stride): a pad
        # computed with Python's max() would be frozen by torch.jit.trace at the traced length
        padded = nn.functional.pad(feats, (0, 0, 0, self.stack + self.stride))
        windows = padded.unfold(1, self.stack, self.stride)[:, :out_steps]  # (B, T', F, stack)
        return windows.transpose(2, 3).reshape(batch, out_steps, size * self.stack)


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for ``adapt_normalisation``'s sums, where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _deltas(x: torch.Tensor) -> torch.Tensor:
    """``torchaudio.functional.compute_deltas(x, win_length=5)`` over the last axis, as slices.

    ``d[t] = (x[t+1] - x[t-1] + 2 (x[t+2] - x[t-2])) / 10`` with the edge frames repeated.
    torchaudio's version is a grouped ``conv1d`` whose group count is batch x features, which a
    traced (exported) model would freeze at the batch size it was traced with.
    """
    p = nn.functional.pad(x, (2, 2), mode="replicate")
    return (p[..., 3:-1] - p[..., 1:-3] + 2 * (p[..., 4:] - p[..., :-4])) / 10
