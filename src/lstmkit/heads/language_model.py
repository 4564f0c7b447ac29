"""Dense -> softmax over the vocabulary at every step: next-word prediction.

Language models are reported by cross-entropy (nats per token) and perplexity, its
exponential. Both are token-weighted means over a whole split, so the metrics below accumulate
summed per-token losses and token counts (synced across processes) and exponentiate only at
the end; a mean of per-batch perplexities would be a different, larger number.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric, Metric, MetricCollection

from lstmkit.build import trusted_object
from lstmkit.core import LSTMCore, dropout_layer
from lstmkit.data.text import EOS, Subwords, unescape
from lstmkit.errors import ConfigError
from lstmkit.heads.base import Head, mean_probabilities
from lstmkit.heads.losses import IGNORE, linear_cross_entropy
from lstmkit.types import Batch, DataSpec


# -- metrics: all take (nll, targets, correct, valid), each (N,) over the batch's steps ------------
class TokenCrossEntropy(MeanMetric):
    """Mean next-token cross-entropy in nats over every valid token seen."""

    higher_is_better = False

    def update(  # type: ignore[override]
        self, nll: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor
    ) -> None:
        super().update(nll, valid)


class TokenPerplexity(TokenCrossEntropy):
    """``exp`` of the token-weighted mean cross-entropy (= ``torchmetrics.text.Perplexity``,
    without a second softmax over the vocabulary)."""

    def compute(self) -> torch.Tensor:
        return super().compute().exp()


class TokenAccuracy(MeanMetric):
    """Share of valid tokens whose most probable next word is the right one."""

    higher_is_better = True

    def update(  # type: ignore[override]
        self, nll: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor
    ) -> None:
        super().update(correct.float(), valid)


class FrequencyBandLoss(Metric):
    """Summed cross-entropy and token count per frequency band of the target word.

    Vocabulary ids are ranks by training frequency (after the specials), so a band is an id
    range: specials (``<unk>``, ``<eos>``), the 10 most frequent words, ranks 11-100, 101-1000...
    """

    full_state_update = False

    def __init__(self, vocab_size: int, num_specials: int = 3) -> None:
        super().__init__()
        edges, self.names = [num_specials], ["<unk> <eos>"]
        rank = 10
        while edges[-1] < vocab_size:
            edges.append(min(vocab_size, num_specials + rank))
            low = 1 if rank == 10 else rank // 10 + 1
            self.names.append(f"{low}-{edges[-1] - num_specials}")
            rank *= 10
        self.register_buffer("edges", torch.tensor(edges), persistent=False)  # band b: [edges[b-1], edges[b])
        self.add_state("nll_sum", default=torch.zeros(len(edges)), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(len(edges)), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self, nll: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor
    ) -> None:
        band = torch.bucketize(targets.clamp(min=0), self.edges, right=True)  # specials -> 0
        self.nll_sum.scatter_add_(0, band, (nll * valid).to(self.nll_sum.dtype))  # float64 under 64-true
        self.count.scatter_add_(0, band, valid.to(self.count.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        return {"nll_sum": self.nll_sum, "count": self.count}


class LanguageModelHead(Head):
    """Next-token distribution at every step: ``(B, T, D)`` LSTM outputs -> ``(B, T, V)`` logits.

    Causal: step t predicts token t + 1, so a bidirectional core (whose backward direction has
    read it) is refused.

    Args:
        spec: gives the vocabulary (the output classes) and the padding id.
        in_features: size of the LSTM output.
        tie_weights: share the output matrix with the input embedding (Press & Wolf 2017;
            Inan et al. 2017): fewer parameters and usually lower perplexity. The vector fed to
            the output layer must then have the embedding size: use ``model.proj_size`` or
            ``model.hidden_size`` equal to ``encoder.dim``, or ``projection``.
        projection: if > 0, a linear layer from the LSTM output to this size before the output
            layer (set it to ``encoder.dim`` to tie weights with any LSTM size).
        dropout: dropout on the LSTM outputs before the output layer.
        top_k: how many next words :meth:`decode` returns.
        fused_loss: train with the output layer and the cross-entropy fused into one autograd
            node (:func:`~lstmkit.heads.losses.linear_cross_entropy`): same loss and gradients,
            fewer passes over the ``(N, V)`` logits. ``false`` runs the two plain calls.
        adaptive_cutoffs: e.g. ``[2000, 6000]``: an adaptive softmax (Grave et al. 2017,
            ``torch.nn.AdaptiveLogSoftmaxWithLoss``) instead of the full output layer. Words are
            ids ranked by frequency, so the head cluster holds the frequent words most tokens
            are, and the rare words sit in tail clusters behind smaller projections that only
            the (few) tokens of those words pay for in training. Still a proper distribution
            over the whole vocabulary, so perplexity stays exact; on CPU the output layer, most
            of an LM's step, gets several times cheaper, which buys a larger LSTM in the same time.
        adaptive_div_value: each tail cluster's projection is this many times smaller.
    """

    pooling = "none"
    monitor = "val/perplexity"
    mode = "min"

    causal = True

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        tie_weights: bool = False,
        projection: int = 0,
        dropout: float = 0.0,
        top_k: int = 5,
        fused_loss: bool = True,
        adaptive_cutoffs: list[int] | None = None,
        adaptive_div_value: float = 4.0,
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ConfigError(f"head.top_k must be >= 1, got {top_k}")
        cutoffs = [int(c) for c in adaptive_cutoffs or []]
        if cutoffs and not (all(a < b for a, b in zip([0, *cutoffs], cutoffs)) and cutoffs[-1] < spec.vocab_size):
            raise ConfigError(f"head.adaptive_cutoffs={cutoffs}: expected increasing word ranks between 1 and "
                              f"the vocabulary size - 1 ({spec.vocab_size - 1})")
        size = projection or in_features
        if cutoffs and int(size // adaptive_div_value ** len(cutoffs)) < 1:
            raise ConfigError(f"head.adaptive_div_value={adaptive_div_value}: the last of {len(cutoffs)} tail clusters "
                              f"would project {size} features to {size / adaptive_div_value ** len(cutoffs):.2g}; "
                              "use a smaller div value or fewer cutoffs")
        if cutoffs and tie_weights:
            raise ConfigError("head.adaptive_cutoffs and head.tie_weights=true cannot be combined: the adaptive "
                              "softmax has no single output matrix to share with the embedding")
        self.vocab = list(spec.vocab or [])
        self.backward = bool(spec.extra.get("reverse"))  # trained on reversed text (data.reverse)
        self.pad_id = spec.pad_id
        self.in_features = in_features
        self.tie_weights = tie_weights
        self.top_k = top_k
        self.fused_loss = fused_loss
        self.dropout = dropout_layer(dropout, "head.dropout")
        self.projection = nn.Linear(in_features, projection) if projection > 0 else nn.Identity()
        self.adaptive = bool(cutoffs)
        self.decoder: nn.Module = (
            nn.AdaptiveLogSoftmaxWithLoss(size, spec.vocab_size, cutoffs, div_value=adaptive_div_value)
            if cutoffs else nn.Linear(size, spec.vocab_size))

    def bind(self, encoder: nn.Module) -> None:
        """Tie the output layer to the encoder's embedding matrix when asked to."""
        if not self.tie_weights:
            return
        weight = getattr(encoder, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise ConfigError(f"head.tie_weights=true needs an encoder with an embedding matrix (.weight), "
                              f"such as EmbeddingEncoder; got {type(encoder).__name__}")
        dim = weight.shape[1]
        if tuple(weight.shape) != tuple(self.decoder.weight.shape):
            raise ConfigError(
                f"head.tie_weights=true: the output layer would share the embedding matrix "
                f"{tuple(weight.shape)} (vocabulary x encoder.dim), so it needs {dim} inputs, but it gets "
                f"{self.decoder.in_features} (the LSTM output size). Set model.proj_size={dim} "
                f"(needs model.hidden_size > {dim}), model.hidden_size={dim} (unidirectional), "
                f"or head.projection={dim}"
            )
        self.decoder.weight = weight

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.projection(self.dropout(features))
        if self.adaptive:  # log-probabilities: logits whose log-softmax is themselves
            with torch.autocast(hidden.device.type, enabled=False):
                log_probs = self.decoder.log_prob(hidden.flatten(0, 1).float())
            return log_probs.view(*hidden.shape[:-1], -1)
        return self.decoder(hidden)  # (B, T, V) logits

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The members' mean next-token distribution, as log-probabilities: the perplexity of the
        ensemble is that of the averaged distribution, as language-model ensembles report it."""
        return mean_probabilities(outputs)

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over every valid step: one call on ``(B*T, V)`` logits."""
        targets = self._targets(batch.targets, lengths)
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    def loss_weight(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor | int:
        """The valid steps: a short last stream batch then counts for its tokens, as ``ce`` does."""
        return (self._targets(batch.targets, lengths) != IGNORE).sum()

    def training_loss(self, features: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The same mean cross-entropy as :meth:`loss`, without materialising logits twice over."""
        if not (self.fused_loss or self.adaptive):
            return super().training_loss(features, lengths, batch)
        hidden = self.projection(self.dropout(features))
        targets = self._targets(batch.targets, lengths)
        if self.adaptive:
            return self._adaptive_loss(hidden, targets)
        return linear_cross_entropy(hidden.flatten(0, 1), self.decoder.weight, self.decoder.bias, targets.flatten())

    def _adaptive_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the adaptive softmax over the valid steps (it takes no ignore index).

        It runs in float32 with autocast off: ``AdaptiveLogSoftmaxWithLoss`` writes the tail
        clusters' log-probabilities, which CUDA autocast computes in float32, into a buffer of the
        input's dtype, and fails on a bf16 input (pytorch/pytorch#44724). A tail cluster with no
        target in the batch gets no gradient, which DDP (``find_unused_parameters=False``) refuses,
        so every decoder weight joins the loss with a zero factor.
        """
        valid = targets.flatten() != IGNORE
        untouched = sum(p.sum() for p in self.decoder.parameters()) * 0.0
        if not bool(valid.any()):
            return hidden.sum() * 0.0 + untouched  # nothing to predict: a zero loss that still backpropagates
        with torch.autocast(hidden.device.type, enabled=False):
            loss = self.decoder(hidden.flatten(0, 1)[valid].float(), targets.flatten()[valid]).loss
        return loss + untouched

    def metrics(self) -> MetricCollection:
        return MetricCollection({"ce": TokenCrossEntropy(), "perplexity": TokenPerplexity(),
                                 "acc": TokenAccuracy()})

    def figure_metrics(self) -> MetricCollection:
        return MetricCollection({"by_frequency": FrequencyBandLoss(len(self.vocab))})

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        logits = outputs.detach().flatten(0, 1)  # (B*T, V)
        targets = self._targets(batch.targets, lengths).flatten()  # (B*T,)
        nll = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")  # 0 where ignored
        valid = (targets != IGNORE).to(nll.dtype)
        correct = logits.argmax(dim=-1) == targets
        metrics.update(nll, targets, correct, valid)

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        import matplotlib.pyplot as plt

        metric = next(iter(figure_metrics.values()))
        state = metric.compute()
        count = state["count"].cpu()
        keep = count > 0
        if not bool(keep.any()):
            return {}
        ppl = (state["nll_sum"].cpu()[keep] / count[keep]).exp()
        names = [n for n, k in zip(metric.names, keep.tolist()) if k]
        share = count[keep] / count.sum()
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        bars = ax.bar(names, ppl.tolist(), color="tab:blue")
        for bar, s in zip(bars, share.tolist()):
            ax.annotate(f"{100 * s:.0f}% of tokens", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("target word's frequency rank in the training text")
        ax.set_ylabel(f"{self.figure_split} perplexity")
        total = float((state["nll_sum"].sum() / count.sum()).exp())
        ax.set_title(f"Perplexity by word frequency (overall {total:.1f})")
        fig.tight_layout()
        return {"perplexity_by_frequency": fig}

    def serving(self) -> dict[str, Any]:
        kind = "log-probabilities (adaptive softmax)" if self.adaptive else "logits"
        words = "previous_words (the words before the prompt)" if self.backward else "next_words"
        return {**super().serving(), "outputs": f"(batch, time, vocab) {kind} over spec.vocab at every step",
                words: f"outputs[row, output_lengths[row] - 1] with spec.pad_id left out: its top {self.top_k} "
                       "of softmax over the rest"}

    def decode(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
        """The ``top_k`` most probable next words after each sequence's last valid step
        (``previous_words`` for a backward model: the words before the prompt)."""
        rows = torch.arange(len(outputs), device=outputs.device)
        last = outputs.detach()[rows, lengths.to(outputs.device) - 1]  # (B, V) after the last valid step
        last = last.float()
        last[:, self.pad_id] = float("-inf")  # never a next word; the others' probabilities sum to 1, as in generate
        probs = last.softmax(dim=-1)
        best = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        return [
            {"previous_words" if self.backward else "next_words": [self.vocab[int(i)] for i in ids],
             "probabilities": [round(float(p), 4) for p in values]}
            for ids, values in zip(best.indices, best.values)
        ]

    def generate(
        self, model: nn.Module, prompt: str, n_words: int = 20, temperature: float = 0.0, seed: int | None = None
    ) -> dict[str, Any]:
        """:func:`generate` with this head's model: a hook a generic ``predict`` command can look for."""
        return generate(model, model.spec, prompt, n_words, temperature=temperature, seed=seed)

    def _targets(self, targets: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` target ids with padded steps set to :data:`IGNORE`."""
        if targets is None:
            raise ValueError("LanguageModelHead needs next-token targets (B, T) in the batch")
        steps = torch.arange(targets.shape[1], device=targets.device)
        return targets.masked_fill(steps[None, :] >= lengths.to(targets.device)[:, None], IGNORE)


def generate(
    model: nn.Module,
    spec: DataSpec,
    prompt: str,
    n_words: int = 20,
    temperature: float = 0.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Continue ``prompt`` by ``n_words`` tokens (characters for a char-level model).

    ``temperature=0`` picks the most probable token each step (greedy); ``> 0`` samples from
    the softmax of ``logits / temperature`` with a generator seeded by ``seed``. The prompt is read
    once and each new token is fed alone with the LSTM state carried from the step before (the core's
    stream ``"generate"``), so generation costs one step per token, not a rerun over the text so far;
    the model is causal (an LM core is unidirectional, its encoder per token), so both give the same
    logits. ``<eos>`` is rendered as a line break. A backward model (``data.reverse``) writes the text
    *before* the prompt: ``words`` nearest first, ``text`` in reading order.
    """
    if n_words < 0:
        raise ConfigError(f"n_words must be >= 0, got {n_words}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    vocab = list(spec.vocab or [])
    datamodule = trusted_object(spec.datamodule)
    batch = datamodule.make_predict_batch(spec, [prompt])
    device = next(model.parameters()).device
    ids = batch.inputs[0].to(device)  # (T,)
    generator = torch.Generator(device=device).manual_seed(
        seed if seed is not None else random.SystemRandom().randrange(2**31))
    words: list[str] = []
    one = torch.ones(1, dtype=torch.long, device=device)
    with torch.inference_mode(), _carried_state(model, GENERATE_STREAM), _in_eval_mode(model):
        step_inputs, step_lengths = ids[None, :], torch.tensor([len(ids)], device=device)
        for _ in range(n_words):
            logits, _ = model(step_inputs, step_lengths, stream=GENERATE_STREAM)
            last = logits[0, -1].float()  # (V,)
            last[spec.pad_id] = float("-inf")
            if temperature == 0:
                next_id = int(last.argmax())
            else:
                probs = (last / temperature).softmax(dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            words.append(vocab[next_id])
            step_inputs, step_lengths = torch.tensor([[next_id]], device=device), one
    joiner = "" if (spec.tokenizer or {}).get("level") == "char" else " "
    backward = bool(spec.extra.get("reverse"))
    ordered = words[::-1] if backward else words
    if (spec.tokenizer or {}).get("subwords"):  # pieces back into words: "un ##watch ##able" -> "unwatchable"
        ordered = Subwords.join(ordered)
    ordered = unescape(ordered, (spec.tokenizer or {}).get("version", 1))  # "\\##tag" as written: "##tag"
    text = joiner.join("\n" if w == EOS else w for w in ordered)
    return {"prompt": prompt, "words": words, "text": _tidy_lines(text),
            "direction": "before" if backward else "after"}


GENERATE_STREAM = "generate"


@contextlib.contextmanager
def _carried_state(model: nn.Module, stream: str) -> Iterator[None]:
    """Every LSTM core of ``model`` (an ensemble's members' too) carries its state on ``stream`` for
    the duration, then forgets it and is as stateful as before."""
    cores = [m for m in model.modules() if isinstance(m, LSTMCore)]
    if any(core.lstm.bidirectional for core in cores):
        raise ConfigError("generate needs a unidirectional LSTM (a bidirectional one reads the text's future)")
    before = [core.stateful for core in cores]
    for core in cores:
        core.stateful = True
        core.reset_state(stream)
    try:
        yield
    finally:
        for core, stateful in zip(cores, before, strict=True):
            core.reset_state(stream)
            core.stateful = stateful


@contextlib.contextmanager
def _in_eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the duration, then back in the mode it was in, also after an error."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _tidy_lines(text: str) -> str:
    """Generated words joined by spaces, with the spaces around each ``<eos>`` line break removed
    (also at the start, and between several in a row)."""
    return re.sub(r" *\n *", "\n", text)
