"""Per-frame dense -> log-softmax over characters + blank -> CTC loss; greedy or beam decoding."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchaudio.functional as AF
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import CharErrorRate, WordErrorRate

from lstmkit.data.text import read_text
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.base import Head, dense_layers, mean_probabilities
from lstmkit.types import Batch, DataSpec

log = logging.getLogger("lstmkit")
_KEEP = object()  # CTCHead.use_decoder: "keep the current lexicon"
_UNBUILT = "<unbuilt>"  # CTCHead._flashlight before the beam decoder is first needed (pickles by value)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. ``log_probs`` is ``(B, T, C)``."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for row, length in zip(best, lengths.cpu().tolist()):
        ids = torch.unique_consecutive(row[: int(length)])
        out.append([int(i) for i in ids if int(i) != blank])
    return out


def sequence_log_likelihood(log_probs: torch.Tensor, candidates: list[list[int]], blank: int) -> torch.Tensor:
    """``log p(y | x)`` of each candidate label sequence ``y`` under one utterance's ``(T, C)``
    frame log-probabilities: the CTC forward sum over every alignment (``F.ctc_loss``, one batched
    call). A sequence that needs more frames than there are gets ``-inf``."""
    frames = log_probs.shape[0]
    count = len(candidates)
    width = max(1, max(len(c) for c in candidates))
    targets = torch.full((count, width), 1 if blank == 0 else 0, dtype=torch.long)  # padding: read by no one
    for k, ids in enumerate(candidates):
        targets[k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    nll = F.ctc_loss(
        log_probs.detach().float().cpu()[:, None, :].expand(frames, count, -1),
        targets, torch.full((count,), frames, dtype=torch.long),
        torch.tensor([len(c) for c in candidates], dtype=torch.long),
        blank=blank, reduction="none", zero_infinity=False,
    )
    return -nll


def _ctc_decoder() -> Any:
    """torchaudio's ``ctc_decoder``, or an error saying that flashlight-text does not load."""
    try:
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError) as err:  # torchaudio raises RuntimeError when flashlight is missing
        raise ConfigError(f"head.decoder=beam needs the flashlight-text package, a dependency of lstmkit, which "
                          f"does not load here ({err}); reinstall it (pip install flashlight-text), or decode with "
                          "head.decoder=greedy (decode.decoder=greedy on eval / predict)") from None
    return ctc_decoder


def _flashlight_decoder(tokens: list[str], blank: str, beam_size: int, lexicon: str | None = None,
                        nbest: int = 1) -> Any:
    """torchaudio's flashlight beam decoder (lexicon-free, or over ``lexicon``, a flashlight
    lexicon file) returning ``nbest`` hypotheses per utterance.

    ``flashlight-text`` is a dependency of lstmkit; an install that lacks it (or whose build does not
    load) gets an error saying so, not another decoder of other results."""
    ctc_decoder = _ctc_decoder()
    sil = "|" if "|" in tokens else blank  # the word separator; our vocabulary always has a space
    return ctc_decoder(lexicon=lexicon, tokens=tokens, lm=None, nbest=nbest, beam_size=beam_size,
                       blank_token=blank, sil_token=sil, log_add=True)


def read_lexicon(source: str, spec: DataSpec, option: str = "head.lexicon") -> list[str]:
    """The words decoding may produce: ``train`` (every word of the training transcripts, kept in
    the checkpoint's spec) or a text file with one word per line (``#`` comments, blank lines skipped).
    ``option``: the setting that named ``source``, for the errors (``decode.lexicon`` on eval / predict)."""
    if source == "train":
        words = (spec.extra or {}).get("words")
        if not words:
            raise ConfigError(f"{option}=train: this model's data spec lists no training words (a checkpoint "
                              f"from before lexicon support?); give {option}=<file with one word per line>")
        return list(words)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option}={source!r}: no such file (expected `train` or a file with one word per line)")
    words = []
    classes = list(spec.classes or [])
    blank = classes[spec.blank_id] if spec.blank_id is not None and spec.blank_id < len(classes) else None
    emitted = set(classes) - {" ", blank}
    # read_text: UTF-8 with or without a byte-order mark (Notepad writes one), a clear error otherwise;
    # split at "\n" only, as the data readers do
    for number, line in enumerate(read_text(path).split("\n"), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if len(word.split()) > 1:
            raise DataError(f"{path}, line {number}: expected one word per line, got {line.strip()!r}")
        word = word.lower() if (spec.extra or {}).get("lowercase") else word
        unknown = sorted(set(word) - emitted) if emitted else []
        if unknown:
            raise DataError(f"{path}, line {number}: lexicon word {word!r} has characters the model cannot emit: "
                            f"{unknown} (its characters: {''.join(sorted(emitted))!r})")
        words.append(word)
    if not words:
        raise DataError(f"{path}: the lexicon lists no words")
    return words


class TranscriptExamples(Metric):
    """Test-time collector for the figures: per-utterance errors and a few posteriorgrams."""

    full_state_update = False

    def __init__(self, max_examples: int = 4) -> None:
        super().__init__()
        self.max_examples = max_examples
        self.add_state("edits", default=[], dist_reduce_fx="cat")
        self.add_state("ref_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("posteriors", default=[], dist_reduce_fx=None)
        self.add_state("references", default=[], dist_reduce_fx=None)
        self.add_state("hypotheses", default=[], dist_reduce_fx=None)

    def update(self, log_probs: torch.Tensor, lengths: torch.Tensor, refs: list[list[int]],
               hyps: list[list[int]]) -> None:
        edits = [AF.edit_distance(r, h) for r, h in zip(refs, hyps)]
        self.edits.append(torch.tensor(edits, dtype=torch.float32, device=self.device))
        self.ref_lengths.append(torch.tensor([len(r) for r in refs], dtype=torch.float32, device=self.device))
        for k in range(min(len(refs), self.max_examples - len(self.posteriors))):
            self.posteriors.append(log_probs[k, : int(lengths[k])].detach().exp().float())
            self.references.append(torch.tensor(refs[k], dtype=torch.int64, device=self.device))
            self.hypotheses.append(torch.tensor(hyps[k], dtype=torch.int64, device=self.device))

    def compute(self) -> dict[str, Any]:
        def cat(state: Any) -> torch.Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        return {"edits": cat(self.edits) if len(self.edits) else torch.zeros(0),
                "ref_lengths": cat(self.ref_lengths) if len(self.ref_lengths) else torch.zeros(0),
                "posteriors": list(self.posteriors)[: self.max_examples],
                "references": list(self.references)[: self.max_examples],
                "hypotheses": list(self.hypotheses)[: self.max_examples]}


class CTCHead(Head):
    """Frame-wise character posteriors trained with CTC (Graves et al. 2006).

    ``forward`` returns log-probabilities ``(B, T', C)`` over ``spec.classes`` (blank at
    ``spec.blank_id``, space a character). The loss is ``F.ctc_loss`` with
    ``zero_infinity=True``; before it (:meth:`check`, once per batch), every utterance is
    checked: CTC needs at least as many frames as labels plus one blank per repeated pair
    ("ee"), and an utterance with fewer frames is impossible. ``too_short: error`` raises
    (naming the frame counts and transcripts, and what to change); ``skip`` drops those
    utterances from the loss and logs a running count. Nothing is dropped silently.

    Decoding: ``greedy`` (best path) or ``beam``: torchaudio's ``ctc_decoder`` (flashlight),
    lexicon-free or over ``lexicon``. CER/WER (``torchmetrics.text``) are measured on the
    decoded strings against the reference transcripts, with the configured decoder.

    Why ``rescore``: flashlight's beam score is an approximation of a hypothesis's probability
    (alignments pruned from the beam are lost, and merged ones can count twice; measured on FSDD
    with a lexicon: -7.6 for a word whose exact log-probability is -4.3, -0.22 for one at -0.73),
    so a wider beam could pick a *worse* word. The beam proposes its ``beam_size`` best
    hypotheses, and the one with the highest exact ``log p(y | x)`` (the CTC forward sum over
    all alignments, :func:`sequence_log_likelihood`) is kept.

    Args:
        spec: gives the characters and the blank id.
        in_features: size of the LSTM output per frame.
        hidden: optional hidden dense layer per frame (0 = a single linear layer).
        dropout: dropout before each dense layer.
        decoder: ``greedy`` or ``beam``. beam_size: hypotheses kept per frame.
        lexicon: with ``decoder=beam``, restrict the hypotheses to these words (flashlight's lexicon
            decoder): ``train`` for the words of the training transcripts, or a file with one word per
            line. ``None``: any character sequence (lexicon-free).
        rescore: with ``decoder=beam``, rescore the beam's hypotheses with their exact CTC
            log-likelihood and keep the best (see above); ``False`` keeps the beam's own best.
        too_short: ``error`` or ``skip`` for utterances with too few frames.
        plot_examples: test utterances drawn in the posteriorgram figure.
    """

    pooling = "none"
    monitor = "val/cer"
    mode = "min"

    def __init__(
        self,
        spec: DataSpec,
        in_features: int,
        hidden: int = 0,
        dropout: float = 0.0,
        decoder: str = "greedy",
        beam_size: int = 8,
        lexicon: str | None = None,
        rescore: bool = True,
        too_short: str = "error",
        plot_examples: int = 4,
    ) -> None:
        super().__init__()
        if spec.blank_id is None or not spec.classes:
            raise ConfigError("CTCHead needs a DataSpec with classes (characters) and blank_id")
        if too_short not in {"error", "skip"}:
            raise ConfigError(f"head.too_short={too_short!r}: expected error or skip")
        self.classes = list(spec.classes)
        self.blank = int(spec.blank_id)
        self.net = dense_layers(in_features, len(self.classes), hidden, dropout)
        self.too_short = too_short
        self.plot_examples = plot_examples
        self.skipped = 0
        self.spec = spec
        self.use_decoder(decoder, beam_size, lexicon, rescore)

    def use_decoder(self, decoder: str | None = None, beam_size: int | None = None, lexicon: Any = _KEEP,
                    rescore: bool | None = None) -> None:
        """Switch decoding (e.g. on a loaded checkpoint): ``greedy`` or ``beam`` with ``beam_size``,
        optionally over a ``lexicon``, with or without ``rescore`` (see the class docstring). What
        is not given is kept, with
        the one rule the CLI's ``decode.*`` options and Python callers share:

        - a lexicon implies beam search (``decoder`` left out -> ``beam``);
        - ``lexicon="none"`` (or ``None``) decodes without one;
        - ``decoder="greedy"`` with no lexicon given drops the model's lexicon.

        The beam decoder itself is built on first use, so a checkpoint loads (and can be switched to
        ``greedy``) even where its lexicon file or flashlight-text is missing.
        """
        current = getattr(self, "lexicon", None)
        if lexicon is not _KEEP or not hasattr(self, "lexicon_option"):
            self.lexicon_option = "head.lexicon"  # the setting that named it, for errors; apply_decoding: decode.*
        if lexicon is _KEEP:
            lexicon = None if decoder == "greedy" else current
        elif lexicon is None or str(lexicon).strip().lower() in {"none", "null", "", "false"}:
            lexicon = None
        if decoder is None:
            decoder = "beam" if lexicon else getattr(self, "decoder", "greedy")
        if decoder not in {"greedy", "beam"}:
            raise ConfigError(f"head.decoder={decoder!r}: expected greedy or beam")
        if lexicon and decoder != "beam":
            raise ConfigError(f"head.lexicon={lexicon!r} needs head.decoder=beam (greedy decoding has no lexicon)")
        if beam_size is not None and int(beam_size) < 1:  # 0 fell back to 8; a negative one decoded nothing
            raise ConfigError(f"head.beam_size={beam_size}: expected at least 1 hypothesis per frame")
        if decoder == "beam":
            _ctc_decoder()  # when the decoder is chosen, not at the first decode after an epoch of training
        self.decoder = decoder
        self.beam_size = int(beam_size or getattr(self, "beam_size", 8))
        self.lexicon = str(lexicon) if lexicon else None
        if rescore is not None and not isinstance(rescore, bool):
            raise ConfigError(f"head.rescore={rescore!r}: expected true or false")
        self.rescore = bool(getattr(self, "rescore", True) if rescore is None else rescore)
        self._flashlight: Any = _UNBUILT

    def _beam_decoder(self) -> Any | None:
        """The flashlight decoder for the current settings (built once)."""
        if not (isinstance(self._flashlight, str) and self._flashlight == _UNBUILT):
            return self._flashlight
        tokens = ["|" if c == " " else c for c in self.classes]
        option = getattr(self, "lexicon_option", "head.lexicon")
        lexicon_file = self._write_lexicon(read_lexicon(self.lexicon, self.spec, option)) if self.lexicon else None
        try:
            self._flashlight = _flashlight_decoder(tokens, self.classes[self.blank], self.beam_size, lexicon_file,
                                                   nbest=self.beam_size if self.rescore else 1)
        finally:
            if lexicon_file:
                os.unlink(lexicon_file)  # flashlight has read it into its trie
        return self._flashlight

    def __getstate__(self) -> dict[str, Any]:
        """Pickling / deep copies (DDP spawn, callbacks) leave out flashlight's decoder; it is rebuilt on use."""
        state = dict(self.__dict__)
        state["_flashlight"] = _UNBUILT
        return state

    def _write_lexicon(self, words: list[str]) -> str:
        """Write ``words`` as a flashlight lexicon (``word<TAB>s p e l l i n g``) to a temporary file."""
        known = set(self.classes) - {" "}
        lines = []
        for word in dict.fromkeys(words):
            unknown = sorted(set(word) - known)
            if unknown:
                raise DataError(f"lexicon word {word!r} has characters the model cannot emit: {unknown} "
                                f"(its characters: {''.join(sorted(known - {self.classes[self.blank]}))!r})")
            lines.append(f"{word}\t{' '.join(word)}")
        with tempfile.NamedTemporaryFile("w", suffix=".lexicon.txt", delete=False, encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return handle.name

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(features).log_softmax(dim=-1)  # (B, T', C)

    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The members' mean per-frame label posteriors, as log-probabilities (members must share
        the encoder's frame rate, so that frame ``t`` is the same instant for all of them).

        CTC models trained apart can place their label spikes a frame or two apart, which blurs
        the mean; bidirectional models of the same architecture and features (seeds of one recipe)
        spike at nearly the same frames."""
        return mean_probabilities(outputs)

    # -- loss -------------------------------------------------------------------------------------
    def check(self, lengths: torch.Tensor, batch: Batch) -> None:
        """Refuse (``too_short: error``) or count and report (``skip``) utterances too short for CTC."""
        targets, target_lengths = self._targets(batch)
        short = self._short(lengths, targets, target_lengths)
        if bool(short.any()):
            self._report_short(short, lengths, targets, target_lengths, batch.sources)

    def loss(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean CTC loss per label over the utterances with enough frames (``check`` reported the others)."""
        targets, target_lengths = self._targets(batch)
        lengths = lengths.to(outputs.device)
        target_lengths = target_lengths.to(outputs.device)
        keep = ~self._short(lengths, targets, target_lengths)
        per_utt = F.ctc_loss(
            outputs.transpose(0, 1).float(),  # (T', B, C)
            targets, lengths, target_lengths,
            blank=self.blank, reduction="none", zero_infinity=True,
        )
        per_utt = per_utt / target_lengths.clamp(min=1).to(per_utt.dtype)  # as reduction="mean"
        # the mean over the kept utterances, by a mask rather than boolean indexing (whose output
        # size the host would have to wait for); none kept: 0, with the graph kept
        return torch.where(keep, per_utt, 0.0).sum() / keep.sum().clamp(min=1)

    def loss_weight(self, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor | int:
        """The utterances :meth:`loss` averages over (those with enough frames)."""
        targets, target_lengths = self._targets(batch)
        return (~self._short(lengths.to(targets.device), targets, target_lengths)).sum()

    @staticmethod
    def _targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.targets is None or batch.target_lengths is None:
            raise ValueError("CTCHead needs padded label sequences with target_lengths")
        return batch.targets, batch.target_lengths

    def _short(self, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        device = targets.device
        return lengths.to(device) < self.required_frames(targets, target_lengths.to(device))

    @staticmethod
    def required_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """Fewest frames a CTC alignment needs: one per label, plus a blank per repeated pair."""
        valid = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
        repeats = ((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]).sum(dim=1)
        return target_lengths + repeats

    def _report_short(self, short: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                      target_lengths: torch.Tensor, sources: tuple[str, ...] | None = None) -> None:
        rows = short.nonzero().flatten().tolist()
        need = self.required_frames(targets, target_lengths)
        details = "; ".join(
            f"{sources[r] + ' ' if sources else ''}"
            f"{self._text(targets[r, : int(target_lengths[r])].tolist())!r}: {int(lengths[r])} frames, "
            f"needs {int(need[r])}" for r in rows[:5])
        if self.too_short == "error":
            raise DataError(
                f"{len(rows)} utterance(s) in this batch have fewer frames after the encoder's subsampling "
                f"than CTC needs for their transcript ({details}). Use less subsampling "
                "(encoder.stride / encoder.hop), trim less (a larger encoder.trim_db or encoder.trim_margin, if "
                "trimming is on), or set head.too_short=skip to leave them out of the loss"
            )
        self.skipped += len(rows)
        log.warning("CTC: skipped %d utterance(s) with too few frames (%d so far): %s",
                    len(rows), self.skipped, details)

    # -- decoding ---------------------------------------------------------------------------------
    def _text(self, ids: list[int]) -> str:
        return "".join(self.classes[i] for i in ids if i != self.blank)

    def decode_ids(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Label ids per utterance (blanks removed, repeats merged) with the configured decoder."""
        if self.decoder == "greedy":
            return greedy_decode(outputs, lengths, self.blank)
        hypotheses = self.nbest(outputs, lengths)
        if not self.rescore:
            return [hyps[0] for hyps in hypotheses]
        best = []
        for b, (hyps, n) in enumerate(zip(hypotheses, lengths.tolist())):
            if len(hyps) == 1:
                best.append(hyps[0])
                continue
            scores = sequence_log_likelihood(outputs[b, : int(n)], hyps, self.blank)
            best.append(hyps[int(scores.argmax())])  # ties: the beam's order
        return best

    def pseudo_labels(self, outputs: torch.Tensor, lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoded transcripts as padded label sequences, and minus the CTC loss of each per label
        (an empty transcript: length 0 and ``-inf``, never kept)."""
        ids = self.decode_ids(outputs, lengths)
        target_lengths = torch.tensor([len(labels) for labels in ids], dtype=torch.long)
        targets = pad_sequence([torch.tensor(labels, dtype=torch.long) for labels in ids], batch_first=True)
        if targets.shape[1] == 0:  # every transcript empty: one column of padding, as ctc_loss needs
            targets = targets.new_zeros(len(ids), 1)
        device = outputs.device
        loss = F.ctc_loss(outputs.transpose(0, 1).float(), targets.to(device), lengths.to(device),
                          target_lengths.to(device), blank=self.blank, reduction="none", zero_infinity=False)
        confidence = -loss / target_lengths.clamp(min=1).to(device)
        return targets, target_lengths, torch.where(target_lengths.to(device) > 0, confidence, -torch.inf)

    def nbest(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[list[list[int]]]:
        """The beam's distinct hypotheses per utterance as label ids, its best first (one unless
        ``rescore``: then up to ``beam_size``)."""
        emissions = outputs.detach().float().cpu().contiguous()
        decoded = self._beam_decoder()(emissions, lengths.detach().cpu().to(torch.int32))
        if self.lexicon:  # words from the lexicon, spelled with our characters
            index = {c: i for i, c in enumerate(self.classes)}
            texts = [[" ".join(h.words) for h in hyps] for hyps in decoded]
            rows = [[[index[c] for c in text] for text in dict.fromkeys(row)] for row in texts]
        else:
            rows = [[self._strip_silence([int(i) for i in h.tokens.tolist() if int(i) != self.blank])
                     for h in hyps] for hyps in decoded]
            rows = [[list(ids) for ids in dict.fromkeys(tuple(ids) for ids in row)] for row in rows]
        return [row or [[]] for row in rows]

    def _strip_silence(self, ids: list[int]) -> list[int]:
        """Flashlight brackets hypotheses with the word separator (our space): drop those, merge runs."""
        if " " not in self.classes:
            return ids
        space = self.classes.index(" ")
        out: list[int] = []
        for i in ids:
            if i == space and (not out or out[-1] == space):
                continue
            out.append(i)
        while out and out[-1] == space:
            out.pop()
        return out

    def transcripts(self, ids: list[list[int]]) -> list[str]:
        return [" ".join(self._text(row).split()) for row in ids]

    def serving(self) -> dict[str, Any]:
        return {**super().serving(), "outputs": "(batch, frames, classes) log-probabilities over spec.classes; "
                                                "frames past output_lengths are padding",
                "transcript": "greedy: per frame argmax over the first output_lengths frames, repeats merged, "
                              "spec.blank_id dropped, classes joined, runs of spaces collapsed",
                "decoder": self.decoder, "beam_size": self.beam_size, "lexicon": self.lexicon}

    def decode(self, outputs: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
        return [{"transcript": text} for text in self.transcripts(self.decode_ids(outputs, lengths))]

    # -- metrics and figures ----------------------------------------------------------------------
    def metrics(self) -> MetricCollection:
        # compute_groups off: CER and WER have same-named states that must never be merged
        return MetricCollection({"cer": CharErrorRate(), "wer": WordErrorRate()}, compute_groups=False)

    def figure_metrics(self) -> MetricCollection:
        return MetricCollection({"examples": TranscriptExamples(self.plot_examples)})

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, lengths: torch.Tensor, batch: Batch
    ) -> None:
        assert batch.targets is not None and batch.target_lengths is not None
        hyps = self.decode_ids(outputs.detach(), lengths)
        refs = [row[: int(n)].tolist() for row, n in zip(batch.targets, batch.target_lengths)]
        collected = [m for m in metrics.values() if isinstance(m, TranscriptExamples)]
        if collected:
            for metric in collected:
                metric.update(outputs.detach(), lengths, refs, hyps)
            return
        metrics.update(self.transcripts(hyps), self.transcripts(refs))

    def figures(self, figure_metrics: MetricCollection) -> dict[str, Any]:
        import matplotlib.pyplot as plt

        result = next(iter(figure_metrics.values())).compute()
        figures: dict[str, Any] = {}
        # compute() squeezes one-element tensors to scalars: reshape back to sequences
        edits, ref_lengths = result["edits"].cpu().reshape(-1), result["ref_lengths"].cpu().reshape(-1)
        if len(edits):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            sizes = sorted({int(n) for n in ref_lengths.tolist()})
            rates = [float(edits[ref_lengths == n].sum() / (n * (ref_lengths == n).sum())) for n in sizes]
            counts = [int((ref_lengths == n).sum()) for n in sizes]
            ax.bar(sizes, rates, color="tab:blue")
            for x, y, c in zip(sizes, rates, counts):
                ax.text(x, y, str(c), ha="center", va="bottom", fontsize=7)
            ax.set_xlabel("reference length (characters)")
            ax.set_ylabel("CER")
            ax.set_title(f"{self.figure_split} CER by transcript length (bar labels: utterances)")
            figures["cer_by_length"] = fig
        posteriors = result["posteriors"]
        if posteriors:
            fig, axes = plt.subplots(len(posteriors), 1, figsize=(8, 2.4 * len(posteriors)), squeeze=False)
            labels = ["∅" if i == self.blank else ("␣" if c == " " else c) for i, c in enumerate(self.classes)]
            for ax, probs, ref, hyp in zip(axes[:, 0], posteriors, result["references"], result["hypotheses"]):
                ax.imshow(probs.cpu().T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
                ax.set_yticks(range(len(labels)), labels, fontsize=6)
                ref_text, hyp_text = self._text(ref.reshape(-1).tolist()), self._text(hyp.reshape(-1).tolist())
                ax.set_title(f"ref: {ref_text!r}   hyp: {hyp_text!r}", fontsize=9)
            axes[-1, 0].set_xlabel("frame (after subsampling)")
            fig.suptitle(f"CTC posteriors on {self.figure_split} utterances")
            fig.tight_layout()
            figures["ctc_posteriors"] = fig
        return figures
