"""Next-word prediction: generator, BPTT streams, loaders and their errors, head, CLI, notebook."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from lstmkit.data.language_model import NextWordDataModule, TokenStream, batchify, generate_corpus
from lstmkit.data.sentiment import SentimentDataModule
from lstmkit.data.text import EOS, PAD, UNK, Subwords
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.language_model import LanguageModelHead, generate
from lstmkit.heads.losses import IGNORE, linear_cross_entropy
from lstmkit.module import SequenceModel
from lstmkit.types import Batch, DataSpec

from .conftest import run_here, run_notebook

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "lm"
HEAD = "lstmkit.heads.language_model.LanguageModelHead"


def tiny_module(path: Path | str | None = None, **options) -> NextWordDataModule:
    settings = {"num_tokens": 6000, "batch_size": 4, "bptt": 5, **options}
    dm = NextWordDataModule(path=str(path) if path else None, **settings)
    dm.setup()
    return dm


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tiny_model(spec: DataSpec, dim: int = 8, hidden: int = 8, **head) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(spec.to_dict(), {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": dim},
                         {"hidden_size": hidden, "stateful": True}, {"_target_": HEAD, **head}).eval()


# -- the generated corpus ----------------------------------------------------------------------
def test_generator_is_deterministic_english_like_and_zipfian() -> None:
    lines = generate_corpus(200_000, seed=3)
    assert lines == generate_corpus(200_000, seed=3)
    assert lines[:50] != generate_corpus(200_000, seed=4)[:50]
    tokens = [w for line in lines for w in line.split()]
    assert 190_000 <= len(tokens) + len(lines) <= 202_000  # <eos> included
    counts = Counter(tokens)
    assert 2000 <= len(counts) <= 5000
    ranked = [c for _, c in counts.most_common()]
    assert ranked[0] > 5 * ranked[20] > 5 * ranked[300]  # a steep head and a long tail
    assert sum(1 for c in ranked if c <= 3) > 200  # rare words exist
    text = "\n".join(lines)
    assert all(line.endswith((" .", " ?")) for line in lines)
    # agreement: never "they is", "do he", "does they"; the relative clause keeps the head noun's number
    assert not re.search(r"\b(they (is|was)|(he|she) (are|were)|do (he|she)|does they)\b", text)
    relative = r"^(?:the|these|some|this|a|an)(?: \w+)? (\w+) that \w+ \w+ (is|are) "
    relatives = re.findall(relative, text, re.MULTILINE)
    assert len(relatives) > 500
    plural_nouns = {n for n, verb in relatives if verb == "are"}
    assert not plural_nouns & {n for n, verb in relatives if verb == "is"}


def test_pronouns_refer_back_to_the_protagonist() -> None:
    lines = generate_corpus(20_000, seed=0)
    female = {"mary", "sarah", "emma", "anna", "maria", "julia", "alice", "clara", "grace", "olivia"}
    male = {"james", "john", "robert", "michael", "william", "david", "thomas", "peter", "paul", "mark"}
    checked = 0
    for i, line in enumerate(lines):
        first = line.split()[0]
        if first in female | male and re.match(rf"{first} \w+ , an? ", line):
            surname = line.split()[1]
            for follow in lines[i + 1 : i + 4]:
                if follow.startswith(f"{surname} ") and re.search(r" (his|her) ", follow):
                    assert (" her " in follow) == (first in female), (line, follow)
                    checked += 1
    assert checked > 10


# -- streams and windows -----------------------------------------------------------------------
def test_windows_continue_each_stream_and_targets_are_the_next_tokens() -> None:
    dm = tiny_module()
    stream = dm.splits["train"].ids
    batches = list(dm.train_dataloader())
    # no shuffling: the same windows every epoch
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, dm.train_dataloader()))
    per_row = len(stream) // 4
    rows = stream[: per_row * 4].view(4, per_row)
    for i, batch in enumerate(batches):
        assert batch.inputs.shape == batch.targets.shape and batch.inputs.shape[0] == 4
        assert torch.equal(batch.lengths, torch.full((4,), batch.inputs.shape[1]))
        torch.testing.assert_close(batch.inputs, rows[:, i * 5 : i * 5 + batch.inputs.shape[1]])
        torch.testing.assert_close(batch.targets, rows[:, i * 5 + 1 : i * 5 + 1 + batch.inputs.shape[1]])
        if i:
            assert torch.equal(batch.inputs[:, 0], batches[i - 1].targets[:, -1])
    assert sum(b.inputs.shape[1] for b in batches) == per_row - 1  # every token but the last is read
    assert len(dm.train_dataloader()) == len(batches) == math.ceil((per_row - 1) / 5)


def test_each_ddp_rank_reads_its_own_contiguous_part() -> None:
    dm = tiny_module()
    ids = dm.splits["val"].ids
    parts = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        batches = list(dm.val_dataloader())
        parts.append(torch.cat([b.inputs for b in batches], dim=1))  # (B, L-1) per rank
    dm.trainer = None
    assert parts[0].shape == parts[1].shape  # equal window counts: no rank waits for the other
    half = len(ids) // 2
    assert torch.equal(parts[0][0], ids[: parts[0].shape[1]])
    assert torch.equal(parts[1][0], ids[half : half + parts[1].shape[1]])


def test_lines_end_with_eos_and_the_vocabulary_comes_from_train_only(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    body = "the cat sat on the mat .\n\nthe dog sat .\n" * 40
    write(folder / "ptb.train.txt", body)
    write(folder / "ptb.valid.txt", "the zebra sat .\n" * 40)
    write(folder / "ptb.test.txt", body)
    write(folder / "README.md", "not a split")
    with caplog.at_level("INFO", logger="lstmkit"):
        dm = tiny_module(folder)
    vocab = dm.spec.vocab
    assert vocab[:3] == [PAD, UNK, EOS] and "zebra" not in vocab and "the" in vocab
    # the log says what was read, as the other pipelines do: tokens per split, vocabulary, <unk> share
    assert (f"{{'train': 520, 'val': 200, 'test': 520}} tokens, vocabulary {len(vocab)}, <unk> train 0.0%, "
            "val 20.0%, test 0.0%") in caplog.text
    ids = dm.splits["train"].ids.tolist()
    assert ids.count(2) == 80 and len(ids) == 40 * (8 + 5)  # blank lines skipped
    assert [vocab[i] for i in dm.splits["val"].ids[:5]] == ["the", UNK, "sat", ".", EOS]
    assert dm.splits["val"].source.endswith("ptb.valid.txt")


def test_a_missing_split_is_cut_from_the_end_of_train(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    words = " ".join(f"w{i % 50}" for i in range(2000))
    write(folder / "train.txt", words)
    write(folder / "valid.txt", words)
    dm = tiny_module(folder, test_fraction=0.25)
    assert len(dm.splits["test"].ids) == int(2001 * 0.25)
    assert len(dm.splits["train"].ids) == 2001 - int(2001 * 0.25)
    assert len(dm.splits["val"].ids) == 2001


def test_one_file_is_cut_into_contiguous_parts(tmp_path: Path) -> None:
    lines = [" ".join(f"t{i}" for i in range(k, k + 9)) for k in range(300)]
    file = write(tmp_path / "book.txt", "\n".join(lines))
    dm = tiny_module(file, min_count=1)
    streams = {s: [dm.spec.vocab[i] for i in dm.splits[s].ids] for s in ("train", "val", "test")}
    total = sum(len(s) for s in streams.values())
    assert total == 3000 and len(streams["val"]) == len(streams["test"]) == 300
    whole = [t for line in lines for t in [*line.split(), EOS]]
    assert streams["train"] == whole[:2400]  # contiguous, in order, not shuffled lines
    assert streams["val"] == [t if t in dm.spec.vocab else UNK for t in whole[2400:2700]]
    assert UNK in streams["val"]  # words first seen after the train part


def test_char_level_and_lowercase_options(tmp_path: Path) -> None:
    file = write(tmp_path / "abc.txt", "Abc ab\n" * 500)
    dm = tiny_module(file, tokenizer="char", lowercase=True)
    assert dm.spec.vocab == [PAD, UNK, EOS, "a", "b", " ", "c"]
    assert [dm.spec.vocab[i] for i in dm.splits["train"].ids[:7]] == ["a", "b", "c", " ", "a", "b", EOS]
    # a prompt's trailing space is kept: "ab " asks for the next word's first letter, "ab" for the rest of it
    for prompt, tokens in (("ab ", [EOS, "a", "b", " "]), ("  ab", [EOS, "a", "b"])):
        batch = NextWordDataModule.make_predict_batch(dm.spec, [prompt])
        assert [dm.spec.vocab[i] for i in batch.inputs[0].tolist()] == tokens, prompt


def test_fixed_spec_reuses_vocabulary_and_tokenizer(tmp_path: Path) -> None:
    trained = tiny_module(tokenizer="whitespace", lowercase=True)
    file = write(tmp_path / "new.txt", "The He Said sharply .\n" * 200)
    dm = tiny_module(file, spec=trained.spec.to_dict())
    assert dm.spec.vocab == trained.spec.vocab
    assert dm.tokenizer == {"level": "whitespace", "lowercase": True, "version": 2}
    vocab = dm.spec.vocab
    assert [vocab[i] for i in dm.splits["train"].ids[:6]] == ["the", "he", "said", UNK, ".", EOS]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "nope", "data.path does not exist"),
    (lambda d: write(d / "empty.txt", "  \n\n"), "empty.txt: file is empty (its 4 bytes are blank lines and spaces)"),
    (lambda d: (d / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n") and d / "bad.txt",
     "bad.txt, row 2: not valid UTF-8"),
    (lambda d: write(d / "short.txt", "just a few words\n"), "short.txt (train part): too little text"),
])
def test_bad_inputs_name_the_file(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        tiny_module(make(tmp_path))


def test_folder_errors_list_what_was_found(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "a b c\n" * 100)
    with pytest.raises(DataError, match=r"no training file.*notes\.txt"):
        tiny_module(tmp_path)
    write(tmp_path / "a.train.txt", "a b c\n" * 100)
    write(tmp_path / "b.train.txt", "a b c\n" * 100)
    with pytest.raises(DataError, match="several files look like the train split"):
        tiny_module(tmp_path)


def test_eval_scores_a_folder_that_holds_only_a_test_file(tmp_path: Path) -> None:
    """The vocabulary is the checkpoint's: a held-out folder needs no training file, and its file is
    scored whole (nothing carved out of it), as a sentiment folder's is."""
    trained = tiny_module(tokenizer="whitespace")
    folder = tmp_path / "held_out"
    folder.mkdir()
    write(folder / "wiki.test.txt", "the company said its shares rose .\n" * 40)
    dm = NextWordDataModule(path=str(folder), batch_size=4, bptt=5, spec=trained.spec.to_dict())
    dm.setup("test")
    assert len(dm.splits["test"].ids) == 40 * 8 and len(dm.splits["train"]) == len(dm.splits["val"]) == 0
    assert sum(1 for _ in dm.test_dataloader()) > 0
    with pytest.raises(DataError, match=r"folder has no training file"):  # training still needs one
        tiny_module(folder)


def test_too_little_text_for_a_window_explains_the_fix(tmp_path: Path) -> None:
    stream = TokenStream(torch.arange(40), "tiny.txt")
    assert batchify(stream, 4, 9).shape == (4, 10)
    with pytest.raises(DataError, match=r"tiny\.txt: too little text: 40 tokens.*needs 44 tokens.*bptt"):
        batchify(stream, 4, 10)
    with pytest.raises(DataError, match=r"per process \(2 processes\)"):
        batchify(stream, 4, 9, rank=1, world_size=2)
    with pytest.raises(ConfigError, match="data.bptt"):
        NextWordDataModule(bptt=0)
    with pytest.raises(ConfigError, match="data.tokenizer='bpe'"):
        NextWordDataModule(tokenizer="bpe")


def test_real_ptb_loads_with_the_standard_vocabulary() -> None:
    if not REAL.exists():
        pytest.skip(f"real data not found at {REAL} (clone the repo beside shared/ to run this test)")
    dm = tiny_module(REAL, tokenizer="whitespace", batch_size=20, bptt=35)
    assert len(dm.spec.vocab) == 10_001  # PTB's 10k (incl. <unk>, <eos>) + <pad>
    assert {s: len(dm.splits[s].ids) for s in ("train", "val", "test")} == {
        "train": 929_589, "val": 73_760, "test": 82_430}
    assert dm.splits["train"].source.endswith("ptb.train.txt")
    assert (dm.splits["val"].ids == 1).sum() > 0  # PTB's own <unk> maps to ours


# -- head --------------------------------------------------------------------------------------
def test_head_shapes_loss_ignores_padding_and_decodes_top_k() -> None:
    spec = DataSpec(input_kind="tokens", vocab=[PAD, UNK, EOS, "a", "b", "c", "d"])
    head = LanguageModelHead(spec, in_features=4, top_k=3)
    logits = head(torch.randn(2, 5, 4), torch.tensor([5, 3])).detach()
    assert logits.shape == (2, 5, 7)
    targets = torch.randint(1, 7, (2, 5))
    batch = Batch(torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]), targets)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(head.loss(logits, batch.lengths, batch), expected)

    logits[1, 2, 0] = 3.0  # mass on <pad>: left out, and the other words' probabilities sum to 1 (a review)
    decoded = head.decode(logits, torch.tensor([5, 3]))
    probs = logits[1, 2, 1:].softmax(-1)
    top = probs.topk(3)
    top.indices.add_(1)
    assert decoded[1]["next_words"] == [spec.vocab[i] for i in top.indices]
    assert decoded[1]["probabilities"] == [round(float(p), 4) for p in top.values]
    assert all(PAD not in d["next_words"] and d["probabilities"] == sorted(d["probabilities"], reverse=True)
               for d in decoded)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_cross_entropy_equals_the_two_plain_calls(bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, 11, (30,))
    targets[[3, 17]] = IGNORE
    inputs = [t for t in (x, weight, b) if t is not None]
    expected = F.cross_entropy(F.linear(x, weight, b), targets, ignore_index=IGNORE)
    fused = linear_cross_entropy(x, weight, b, targets)
    torch.testing.assert_close(fused, expected)
    scale = torch.tensor(2.5, dtype=torch.float64)  # a loss weight reaches the gradients
    for got, want in zip(torch.autograd.grad(scale * fused, inputs), torch.autograd.grad(scale * expected, inputs)):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda *a: linear_cross_entropy(*a, targets) if bias else
                                    linear_cross_entropy(a[0], a[1], None, targets), tuple(inputs))


@pytest.mark.parametrize("bias", [True, False])
def test_fused_loss_under_bf16_autocast_matches_autocasts_two_calls(bias: bool) -> None:
    """Under ``bf16-mixed`` the fused node computes as autocast would (products in bf16, softmax and
    loss in float32): the loss equals the two autocast calls' to float32 rounding, gradients to bf16's."""
    torch.manual_seed(0)
    x = torch.randn(64, 16, requires_grad=True)
    weight = (0.3 * torch.randn(50, 16)).requires_grad_()
    b = torch.randn(50, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (64,))
    targets[[3, 17]] = IGNORE
    inputs = [t for t in (x, weight, b) if t is not None]

    def loss_and_grads(function):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = function()
        return loss, torch.autograd.grad(3.0 * loss, inputs)

    plain, plain_grads = loss_and_grads(lambda: F.cross_entropy(F.linear(x, weight, b), targets, ignore_index=IGNORE))
    fused, fused_grads = loss_and_grads(lambda: linear_cross_entropy(x, weight, b, targets))
    assert fused.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
        assert float((got - want).norm() / want.norm()) < 1e-2


def test_fused_loss_edge_cases() -> None:
    x, weight = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    ignored = torch.full((4,), IGNORE)
    loss = linear_cross_entropy(x, weight, None, ignored)  # nothing to learn from: nan, as F.cross_entropy
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x @ weight.T, ignored))
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(weight.grad, torch.zeros_like(weight))
    loss = linear_cross_entropy(x, weight, None, torch.tensor([0, 1, 2, 3]))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        grad.sum().backward()  # second derivatives are refused, not wrong


def test_fused_training_step_matches_the_plain_one_tied_and_untied() -> None:
    """One optimiser step with ``head.fused_loss`` true and false: same loss, same gradients."""
    dm = tiny_module()
    batch = next(iter(dm.train_dataloader()))
    for tie in (False, True):
        grads, losses = [], []
        for fused in (True, False):
            model = tiny_model(dm.spec, tie_weights=tie, fused_loss=fused, dropout=0.0).train()
            loss = model.training_step(batch, 0)
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        torch.testing.assert_close(losses[0], losses[1])
        assert grads[0].keys() == grads[1].keys() and "encoder.embedding.weight" in grads[0]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_adaptive_softmax_is_a_distribution_and_trains_on_valid_steps_only() -> None:
    dm = tiny_module()
    vocab = dm.spec.vocab_size
    batch = next(iter(dm.train_dataloader()))
    model = tiny_model(dm.spec, adaptive_cutoffs=[20, 60], adaptive_div_value=2.0, dropout=0.0).train()
    assert isinstance(model.head.decoder, torch.nn.AdaptiveLogSoftmaxWithLoss)
    logp, lengths = model(batch.inputs, batch.lengths)
    assert logp.shape == (*batch.inputs.shape, vocab)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(batch.inputs.shape), rtol=1e-5, atol=1e-5)
    # the fast training loss is the mean NLL of the full distribution over the valid steps
    short = torch.full_like(batch.lengths, 3)
    loss = model.training_step(Batch(batch.inputs, short, batch.targets), 0)
    want = F.nll_loss(logp[:, :3].flatten(0, 1), batch.targets[:, :3].flatten())
    torch.testing.assert_close(loss, want)
    cut = Batch(batch.inputs[:, :3], short, batch.targets[:, :3])
    torch.testing.assert_close(model.head.loss(logp[:, :3], short, cut), want)  # eval's loss agrees
    loss.backward()
    assert model.head.decoder.head.weight.grad is not None and model.encoder.embedding.weight.grad is not None
    nothing = model.head.training_loss(torch.zeros(2, 3, 8, requires_grad=True), torch.zeros(2, dtype=torch.long),
                                       Batch(batch.inputs[:2, :3], torch.zeros(2, dtype=torch.long),
                                             batch.targets[:2, :3]))
    assert float(nothing.detach()) == 0.0
    assert model.head.decode(logp.detach(), lengths)[0]["next_words"]  # top-k works on log-probabilities
    with pytest.raises(ConfigError, match="adaptive_cutoffs"):
        tiny_model(dm.spec, adaptive_cutoffs=[60, 20])
    with pytest.raises(ConfigError, match="adaptive_cutoffs"):
        tiny_model(dm.spec, adaptive_cutoffs=[vocab])
    with pytest.raises(ConfigError, match="cannot be combined"):
        tiny_model(dm.spec, adaptive_cutoffs=[20], tie_weights=True)
    with pytest.raises(ConfigError, match="adaptive_div_value"):
        tiny_model(dm.spec, adaptive_cutoffs=[20, 60])  # 8 features / 4**2 < 1


def test_adaptive_softmax_under_mixed_precision_and_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = tiny_module()
    batch = next(iter(dm.train_dataloader()))
    model = tiny_model(dm.spec, adaptive_cutoffs=[20, 60], adaptive_div_value=2.0, dropout=0.0).train()
    head = model.head
    # only head-cluster words as targets: the tail clusters still get a (zero) gradient, as DDP needs
    targets = batch.targets.clamp(max=10)
    hidden = torch.randn(*batch.inputs.shape, 8, requires_grad=True)
    head.training_loss(hidden, batch.lengths, Batch(batch.inputs, batch.lengths, targets)).backward()
    assert all(p.grad is not None for p in head.decoder.parameters())
    # CUDA autocast computes log_softmax in float32 while the LSTM hands over bf16 (pytorch#44724)
    log_softmax = F.log_softmax
    monkeypatch.setattr(F, "log_softmax", lambda x, *a, **k: log_softmax(x.float(), *a, **k))
    low = hidden.detach().to(torch.bfloat16)
    loss = head.training_loss(low, batch.lengths, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    logp = head(low, batch.lengths)
    assert logp.dtype == torch.float32  # exact perplexity: log-probabilities stay float32
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(batch.inputs.shape), rtol=1e-5, atol=1e-5)


def test_fused_loss_runs_under_autocast_and_steps_aside_without_gradients() -> None:
    """bf16 autocast runs the fused node too (in autocast's dtypes, tested above); evaluation, with no
    gradient to fuse into, takes the two plain calls."""
    x, weight = torch.randn(8, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    targets = torch.randint(0, 5, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(x, weight, None, targets)
    assert "_LinearCrossEntropy" in type(loss.grad_fn).__name__
    assert "_LinearCrossEntropy" in type(linear_cross_entropy(x, weight, None, targets).grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, weight, None, targets), F.cross_entropy(x @ weight.T, targets))


def test_perplexity_is_exp_of_the_token_mean_over_the_split_not_a_mean_of_batches() -> None:
    spec = DataSpec(input_kind="tokens", vocab=[PAD, UNK, EOS, *"abcdefghij"])
    head = LanguageModelHead(spec, in_features=3)
    metrics = head.metrics()
    torch.manual_seed(1)
    all_nll = []
    per_batch_ppl = []
    for steps, valid in [(4, [4, 4]), (7, [7, 2])]:
        logits = 3 * torch.randn(2, steps, len(spec.vocab))
        targets = torch.randint(1, len(spec.vocab), (2, steps))
        lengths = torch.tensor(valid)
        head.update_metrics(metrics, logits, lengths, Batch(targets, lengths, targets))
        mask = torch.arange(steps)[None] < lengths[:, None]
        nll = F.cross_entropy(logits[mask], targets[mask], reduction="none")
        all_nll.append(nll)
        per_batch_ppl.append(nll.mean().exp())
    values = metrics.compute()
    token_mean = torch.cat(all_nll).mean()
    torch.testing.assert_close(values["ce"], token_mean)
    torch.testing.assert_close(values["perplexity"], token_mean.exp())
    assert not torch.isclose(values["perplexity"], torch.stack(per_batch_ppl).mean())


def test_weight_tying_shares_the_embedding_or_explains_the_size_mismatch() -> None:
    spec = tiny_module().spec
    tied = tiny_model(spec, dim=8, hidden=8, tie_weights=True)
    assert tied.head.decoder.weight is tied.encoder.weight
    n_untied = sum(p.numel() for p in tiny_model(spec).parameters())
    assert n_untied - sum(p.numel() for p in tied.parameters()) == len(spec.vocab) * 8
    with pytest.raises(ConfigError, match=r"model\.proj_size=8.*head\.projection=8"):
        tiny_model(spec, dim=8, hidden=12, tie_weights=True)
    projected = tiny_model(spec, dim=8, hidden=12, tie_weights=True, projection=8)
    assert projected.head.decoder.weight is projected.encoder.weight
    state = projected.state_dict()
    reloaded = tiny_model(spec, dim=8, hidden=12, tie_weights=True, projection=8)
    reloaded.load_state_dict(state)
    assert reloaded.head.decoder.weight is reloaded.encoder.weight


def test_predict_batch_prompts_and_generation() -> None:
    spec = tiny_module().spec
    batch = NextWordDataModule.make_predict_batch(spec, ["The said", "", "zzzqx the"])
    vocab = spec.vocab
    assert batch.lengths.tolist() == [3, 1, 3]
    assert [vocab[i] for i in batch.inputs[0]] == [EOS, UNK, "said"]  # case kept: lowercase=false
    assert [vocab[i] for i in batch.inputs[2]] == [EOS, UNK, "the"]
    model = tiny_model(spec)
    (result, *_) = model.predict_step(batch, 0)
    assert len(result["next_words"]) == 5 and len(set(result["next_words"])) == 5

    greedy = generate(model, spec, "the said", n_words=30)
    assert greedy == model.head.generate(model, "the said", n_words=30) and len(greedy["words"]) == 30
    sampled = generate(model, spec, "the said", n_words=30, temperature=1.5, seed=5)
    assert sampled == generate(model, spec, "the said", n_words=30, temperature=1.5, seed=5)
    assert sampled["words"] != greedy["words"]
    assert sampled["words"] != generate(model, spec, "the said", n_words=30, temperature=1.5, seed=6)["words"]
    assert PAD not in sampled["words"] and EOS not in sampled["text"]
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, spec, "the", n_words=2, temperature=-1)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_generation_carries_the_state_and_matches_rereading_the_whole_text(layer_norm: bool) -> None:
    """Each new token is fed alone with the carried state; rereading the text so far gives the same
    choice at every step, and the core is left as stateless as it was."""
    spec = tiny_module().spec
    torch.manual_seed(0)
    model = SequenceModel(spec.to_dict(), {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 8},
                          {"hidden_size": 8, "num_layers": 2, "layer_norm": layer_norm}, {"_target_": HEAD}).eval()
    ids = NextWordDataModule.make_predict_batch(spec, ["the said"]).inputs[0]
    expected = []
    with torch.inference_mode():
        for _ in range(25):
            logits, _ = model(ids[None, :], torch.tensor([len(ids)]))
            last = logits[0, -1].clone()
            last[spec.pad_id] = float("-inf")
            expected.append(int(last.argmax()))
            ids = torch.cat([ids, torch.tensor([expected[-1]])])
    out = generate(model, spec, "the said", n_words=25)
    assert out["words"] == [spec.vocab[i] for i in expected]
    assert not model.core.stateful and not model.core._states


# -- the console script and the notebook -------------------------------------------------------
def test_cli_train_plots_then_predict(tmp_path: Path) -> None:
    tiny = ["task=next_word", "data.num_tokens=20000", "data.batch_size=8", "encoder.dim=16",
            "model.hidden_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    run = run_here("train", *tiny, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (ckpt,) = (tmp_path / "logs" / "next_word" / "runs").glob("*/checkpoints/last.ckpt")
    run_dir = ckpt.parents[1]
    assert (run_dir / "plots" / "perplexity_by_frequency.png").stat().st_size > 10_000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/perplexity"] == pytest.approx(math.exp(metrics["test/ce"]), rel=1e-4)
    assert 1 < metrics["test/perplexity"] < 5000

    run = run_here("predict", f"ckpt_path={ckpt}", "input=[the company said,she]", cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["input"] for r in rows] == ["the company said", "she"]
    assert all(len(r["next_words"]) == 5 and len(r["probabilities"]) == 5 for r in rows)



def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_notebook("next_word", tmp_path, monkeypatch)
    assert list(tmp_path.glob("logs/next_word/runs/*/plots/perplexity_by_frequency.png"))


def test_skip_fields_reads_the_text_of_labelled_files(tmp_path: Path) -> None:
    """``data.skip_fields=1``: SST-style ``label sentence`` lines train an LM on the sentences only."""
    for split, lines in {"train": ["1 a gorgeous film .", "0 dull and long .", "1", "0 a long film ."] * 30,
                         "dev": ["1 a film .", "0 long ."] * 10, "test": ["0 dull film ."] * 10}.items():
        write(tmp_path / f"stsa.binary.{split}", "\n".join(lines) + "\n")
    dm = tiny_module(tmp_path, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3)
    assert "0" not in dm.spec.vocab and "1" not in dm.spec.vocab
    assert {"gorgeous", "dull", "film", "<eos>"} <= set(dm.spec.vocab)
    train = dm.splits["train"].ids
    assert len(train) == 30 * (5 + 5 + 5)  # 4 words + <eos> per sentence; the label-only line adds nothing
    labelled = tiny_module(tmp_path, tokenizer="whitespace", batch_size=2, bptt=3)
    assert "1" in labelled.spec.vocab
    with pytest.raises(ConfigError, match="skip_fields"):
        NextWordDataModule(path=str(tmp_path), skip_fields=-1)
    # lines end at "\n" only: a line separator, form feed or NEL inside a sentence is whitespace
    tokens = dm._tokens("1 a gorgeous\u2028film indeed\r\n0 dull\x0cand boring\x85movie\n")
    assert tokens == ["a", "gorgeous", "film", "indeed", EOS, "dull", "and", "boring", "movie", EOS]


def test_extra_train_text_joins_the_train_stream_only(tmp_path: Path) -> None:
    """``data.extra_train``: more text for the train stream; vocabulary, val and test stay the task's."""
    data = tmp_path / "sst"
    data.mkdir()
    for split, lines in {"train": ["1 a gorgeous film .", "0 dull and long ."] * 30,
                         "dev": ["1 a film .", "0 long ."] * 10, "test": ["0 dull film ."] * 10}.items():
        write(data / f"stsa.binary.{split}", "\n".join(lines) + "\n")
    extra = write(tmp_path / "news.txt", " the film was long and dull \n\n a <unk> rose N % .\n" * 20)
    base = tiny_module(data, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3)
    more = tiny_module(data, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3, extra_train=[str(extra)])
    assert more.spec.vocab == base.spec.vocab  # built from the train split alone
    index = {tok: i for i, tok in enumerate(more.spec.vocab)}
    extra_ids = more.splits["train"].ids[len(base.splits["train"].ids):]
    assert len(extra_ids) == 20 * ((6 + 1) + (6 + 1))  # every line whole (no field skipped) + <eos>
    assert torch.equal(more.splits["train"].ids[: len(base.splits["train"].ids)], base.splits["train"].ids)
    words = ["the", "film", "was", "long", "and", "dull", "<eos>"]
    assert extra_ids[:7].tolist() == [index.get(w, index["<unk>"]) for w in words]
    for split in ("val", "test"):
        assert torch.equal(more.splits[split].ids, base.splits[split].ids)
    with pytest.raises(DataError, match=r"missing\.txt.*extra_train: not a file"):
        tiny_module(data, tokenizer="whitespace", skip_fields=1, extra_train=[str(tmp_path / "missing.txt")])
    # eval / predict rebuild the datamodule with the checkpoint's spec: the extra text is not read
    again = tiny_module(data, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3,
                        extra_train=[str(tmp_path / "missing.txt")], spec=more.spec.to_dict())
    assert torch.equal(again.splits["test"].ids, base.splits["test"].ids)


def test_reverse_reads_every_split_backwards_and_so_does_predict(tmp_path: Path) -> None:
    """``data.reverse``: a backward language model, for the reverse direction of a bi-LSTM (init_from)."""
    for split, lines in {"train": ["a gorgeous film .", "dull and long ."] * 30,
                         "valid": ["a film ."] * 10, "test": ["long film ."] * 10}.items():
        write(tmp_path / f"text.{split}.txt", "\n".join(lines) + "\n")
    forward = tiny_module(tmp_path, tokenizer="whitespace", batch_size=2, bptt=3)
    backward = tiny_module(tmp_path, tokenizer="whitespace", batch_size=2, bptt=3, reverse=True)
    assert backward.spec.vocab == forward.spec.vocab and backward.spec.extra["reverse"]
    for split in ("train", "val", "test"):
        assert torch.equal(backward.splits[split].ids, forward.splits[split].ids.flip(0))
    index = {tok: i for i, tok in enumerate(forward.spec.vocab)}
    batch = NextWordDataModule.make_predict_batch(backward.spec, ["a gorgeous film"])
    assert batch.inputs[0].tolist() == [index[w] for w in ["<eos>", "film", "gorgeous", "a"]]
    batch = NextWordDataModule.make_predict_batch(forward.spec, ["a gorgeous film"])
    assert batch.inputs[0].tolist() == [index[w] for w in ["<eos>", "a", "gorgeous", "film"]]


def test_eval_reads_text_in_the_direction_the_model_was_trained(tmp_path: Path) -> None:
    """A backward LM was scored on forward text when eval's data.reverse was false: the spec decides,
    and an eval override of data.reverse is refused as the other spec-decided settings are."""
    from lstmkit.commands.evaluate import check_spec_settings

    backward = tiny_module(reverse=True)
    again = NextWordDataModule(num_tokens=6000, batch_size=4, bptt=5, reverse=False, spec=backward.spec.to_dict())
    again.setup("test")
    assert again.reverse and torch.equal(again.splits["test"].ids, backward.splits["test"].ids)
    stored = {"_target_": "lstmkit.data.language_model.NextWordDataModule", "reverse": True, "bptt": 5}
    with pytest.raises(ConfigError, match=r"^data\.reverse=False: the model was trained with data\.reverse=True"):
        check_spec_settings(stored, {"reverse": False})
    check_spec_settings(stored, {"reverse": True, "bptt": 7})


def test_a_backward_model_writes_the_text_before_the_prompt(tmp_path: Path) -> None:
    for split, lines in {"train": ["a gorgeous film .", "dull and long ."] * 30,
                         "valid": ["a film ."] * 10, "test": ["long film ."] * 10}.items():
        write(tmp_path / f"text.{split}.txt", "\n".join(lines) + "\n")
    dm = tiny_module(tmp_path, tokenizer="whitespace", batch_size=2, bptt=3, reverse=True)
    torch.manual_seed(0)
    model = SequenceModel(dm.spec.to_dict(), {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4},
                          {"hidden_size": 4}, {"_target_": "lstmkit.heads.language_model.LanguageModelHead"})
    out = generate(model, dm.spec, "film .", n_words=3)
    assert out["direction"] == "before"
    assert out["text"].split() == [w for w in out["words"][::-1] if w != "<eos>"]  # reading order
    batch = NextWordDataModule.make_predict_batch(dm.spec, ["film ."])
    outputs, lengths = model(batch.inputs, batch.lengths)
    assert "previous_words" in model.head.decode(outputs, lengths)[0]


def test_subwords_split_unseen_words_into_known_pieces_and_generation_joins_them(tmp_path: Path) -> None:
    """``data.subwords``: BPE pieces learnt on train, the same for the LM and the classifier of SST-style
    files (so that one warm-starts the other), deterministic, and joined back into words when generating."""
    words = ["watch", "watchable", "unfunny", "funny", "film", "films", "filmmaker", "enjoyable", "unbearable"]
    rng = random.Random(0)
    rare = ["".join(rng.choices("abcdefghilmnoprstuvwy", k=rng.randint(3, 9))) for _ in range(300)]  # seen once
    train = [f"{rng.randint(0, 1)} " + " ".join(rng.choices(words, k=6)) + f" {rare[i]} ." for i in range(300)]
    for split, lines in {"train": train, "dev": train[:20], "test": train[:20]}.items():
        write(tmp_path / f"stsa.binary.{split}", "\n".join(lines) + "\n")
    lm = tiny_module(tmp_path, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3, subwords=100)
    again = tiny_module(tmp_path, tokenizer="whitespace", skip_fields=1, batch_size=2, bptt=3, subwords=100)
    assert lm.spec.tokenizer["subwords"] == again.spec.tokenizer["subwords"]  # deterministic
    classifier = SentimentDataModule(path=str(tmp_path), tokenizer="whitespace", subwords=100, batch_size=4)
    classifier.setup()
    assert classifier.spec.tokenizer["subwords"] == lm.spec.tokenizer["subwords"]
    assert set(lm.spec.vocab) - set(classifier.spec.vocab) == {EOS}

    pieces = Subwords.from_json(lm.spec.tokenizer["subwords"])
    unseen = pieces.split(["unwatchable", "<eos>", "funny"])
    end = unseen.index(EOS)
    assert end >= 2 and unseen[end + 1:] == ["funny"]  # an unseen word: several pieces; specials stay whole
    assert not unseen[0].startswith("##") and all(p.startswith("##") for p in unseen[1:end])
    assert Subwords.join(unseen) == ["unwatchable", "<eos>", "funny"]
    batch = SentimentDataModule.make_predict_batch(classifier.spec, ["unwatchable unfunny film"])
    unk_id = classifier.spec.vocab.index(UNK)
    assert unk_id not in batch.inputs[0].tolist()  # every piece is known
    word_level = SentimentDataModule(path=str(tmp_path), tokenizer="whitespace", batch_size=4)
    word_level.setup()
    assert unk_id in SentimentDataModule.make_predict_batch(word_level.spec, ["unwatchable"]).inputs[0].tolist()

    torch.manual_seed(0)
    model = SequenceModel(lm.spec.to_dict(), {"_target_": "lstmkit.encoders.EmbeddingEncoder", "dim": 4},
                          {"hidden_size": 4}, {"_target_": "lstmkit.heads.language_model.LanguageModelHead"})
    out = generate(model, lm.spec, "a funny", n_words=12, temperature=1.0, seed=1)
    assert "##" not in out["text"] and out["text"].split() == [w for w in Subwords.join(out["words"]) if w != EOS]
    known = Subwords.from_json(classifier.spec.tokenizer["subwords"])
    probes = ["".join(rng.choices("abcdefghilmnoprstuvwyx", k=rng.randint(1, 12))) for _ in range(300)]
    vocab = set(classifier.spec.vocab)
    # every piece has a trained row, or is <unk> (##<unk> inside a word, read as <unk>)
    assert all(p in vocab or p == "##" + UNK for w in probes for p in known.split([w]))
    rare_pieces = SentimentDataModule(path=str(tmp_path), tokenizer="whitespace", subwords=100, min_count=3,
                                      batch_size=4)
    rare_pieces.setup()  # pieces dropped by min_count are split again, not <unk>
    assert unk_id not in SentimentDataModule.make_predict_batch(rare_pieces.spec, ["unwatchable"]).inputs[0].tolist()
    assert pieces.split(["日本"]) == [UNK]  # a run of unseen characters: one <unk>
    # inside a word, "##<unk>": the word boundary survives ("watch日本 x" is not "watch 日本 x")
    assert pieces.split(["watch日本"]) == ["watch", "##" + UNK] and pieces.split(["watch", "日本"]) == ["watch", UNK]
    assert Subwords.join(pieces.split(["watch日本", "film"])) == ["watch<unk>", "film"]
    with pytest.raises(ConfigError, match="distinct characters"):
        Subwords.learn([chr(0x4E00 + i) for i in range(150)], 120)  # 150 characters, each its own piece
    with pytest.raises(DataError, match="no words to learn"):
        Subwords.learn(["<eos>"], 1000)
    with pytest.raises(ConfigError, match="expected a number of pieces"):
        SentimentDataModule(subwords="8k")
    with pytest.raises(ConfigError, match="does not apply to data.tokenizer=char"):
        NextWordDataModule(path=str(tmp_path), tokenizer="char", subwords=1000)
    with pytest.raises(ConfigError, match="at least 100"):
        SentimentDataModule(subwords=10)


class _RecursiveSubwords(Subwords):
    """The re-split as it was (recursion per piece, every prefix of the rest tried): the reference."""

    def _resplit(self, text: str, start: bool) -> list[str]:
        if self._known is None:
            return [text]
        for end in range(len(text), 0, -1):
            if (self._WORD_START + text[:end] if start else text[:end]) in self._known:
                return [text[:end], *(self._resplit(text[end:], False) if end < len(text) else [])]
        return [UNK, *(self._resplit(text[1:], False) if len(text) > 1 else [])]


def test_a_long_run_of_unseen_characters_is_one_unk_and_other_words_split_as_before() -> None:
    """The re-split recursed per unseen character: a CJK paragraph of ~1,500 characters (one word to the
    tokenizer) raised RecursionError, in predict or in reading eval data. Words it handled split alike."""
    import base64

    from lstmkit.data.text import learn_subwords

    rng = random.Random(0)
    words = ["watch", "watchable", "unfunny", "funny", "film", "films", "filmmaker", "enjoyable", "unbearable"]
    train = [rng.choices(words, k=6) + ["".join(rng.choices("abcdefghilmnoprstuvwy", k=rng.randint(3, 9)))]
             for _ in range(300)]
    pieces = learn_subwords(train, 100, 3, None, (PAD, UNK, EOS))  # min_count 3: some pieces re-split
    stored = json.loads(pieces.to_json())
    reference = _RecursiveSubwords(base64.b64decode(stored["model"]), stored["known"])
    probes = ["".join(rng.choices("abcdefghilmnoprstuvwyxzqk日本", k=rng.randint(1, 30))) for _ in range(2000)]
    probes += words + ["日本語のテキスト", "watch日本film", "x" * 40]
    assert [pieces.split([w]) for w in probes] == [reference.split([w]) for w in probes]
    paragraph = "".join(chr(0x4E00 + i % 3000) for i in range(1500))
    assert pieces.split([paragraph]) == [UNK]
    mixed = pieces.split(["film" + paragraph + "film"])
    assert mixed[:2] == ["film", "##" + UNK] and UNK not in mixed and Subwords.join(mixed) == [f"film{UNK}film"]
    assert pieces.split(["film" + "q" * 5000]) == ["film", "##" + UNK]


def test_eval_with_subwords_cuts_a_single_file_where_training_cut_it(tmp_path: Path) -> None:
    """Training cuts a file into train / val / test by words, then splits them into pieces; eval (a
    checkpoint's spec) cut the pieces by fraction, which moved the borders: its test part was other text."""
    rng = random.Random(1)
    words = ["the", "market", "fell", "sharply", "unexpectedly", "investors", "worried", "about", "rates"]
    lines = [" ".join(rng.choices(words, k=8)) + " " + "".join(rng.choices("abcdefgh", k=9)) for _ in range(600)]
    file = write(tmp_path / "corpus.txt", "\n".join(lines) + "\n")
    trained = tiny_module(file, tokenizer="whitespace", subwords=100)
    evaluated = tiny_module(file, spec=trained.spec.to_dict())
    for split in ("train", "val", "test"):
        assert torch.equal(evaluated.splits[split].ids, trained.splits[split].ids), split
    assert evaluated.tokenizer == trained.spec.tokenizer


def test_a_missing_test_part_is_refused_before_training(make_cfg) -> None:
    """data.test_fraction=0 leaves no test part; with test=true that is said before an epoch is spent."""
    from lstmkit.commands.train import train
    from lstmkit.errors import DataError

    with pytest.raises(DataError, match=r"the test split is empty \(train \d+ / val \d+ examples\).*test=false"):
        train(make_cfg(["task=next_word", "data.num_tokens=20000", "data.test_fraction=0", "data.batch_size=4",
                        "data.eval_batch_size=4", "model.hidden_size=8", "encoder.dim=8", "head.tie_weights=false",
                        "logger=none"]))


def test_generated_text_has_no_space_around_line_breaks() -> None:
    """A generation that starts with <eos> (or has two in a row) left "\n the" behind."""
    from lstmkit.heads.language_model import _tidy_lines

    assert _tidy_lines(" \n the company \n \n shares \n") == "\nthe company\n\nshares\n"
    assert _tidy_lines("no breaks here") == "no breaks here"


def test_eval_checks_only_the_split_it_scores_for_too_little_text(tmp_path: Path) -> None:
    """A val part too short for one window stopped an evaluation of the test part (the only one scored)."""
    from lstmkit.data.language_model import NextWordDataModule
    from lstmkit.errors import DataError

    trained = NextWordDataModule(num_tokens=3000, bptt=5, batch_size=4)
    trained.setup()
    (tmp_path / "new.txt").write_text("\n".join("the company said its shares rose" for _ in range(60)) + "\n")
    options = {"path": str(tmp_path / "new.txt"), "bptt": 5, "batch_size": 2, "val_fraction": 0.01,
               "test_fraction": 0.5, "spec": trained.spec.to_dict()}
    dm = NextWordDataModule(**options)
    dm.setup("test")  # the val part (4 tokens) is too short for one window of 2 x 6: not an error here
    assert sum(1 for _ in dm.test_dataloader()) > 0
    with pytest.raises(DataError, match=r"new\.txt \(val part\): too little text"):
        dm.val_dataloader()  # where it is read, it is still refused
    with pytest.raises(DataError, match=r"\(val part\): too little text"):  # training checks every part first
        NextWordDataModule(**{**options, "spec": None}).setup()


def test_a_leading_double_hash_in_the_text_is_not_a_subword_continuation(tmp_path: Path) -> None:
    """``##`` marks a piece inside a word: version 1 read a word written "##tag" (whitespace-tokenized text)
    as one, so joining pieces lost it ("##tag" onto nothing, "##" glued to the word before); version 2
    escapes it (``\\##tag``), and generated text shows it as written."""
    from lstmkit.data.text import tokenize, unescape

    text = "trending ##tag and ## and \\##x #1"
    v1 = tokenize(text, level="whitespace")
    assert v1 == text.split() and Subwords.join(v1) != text.split()  # read as continuations
    v2 = tokenize(text, level="whitespace", version=2)
    assert v2 == ["trending", "\\##tag", "and", "\\##", "and", "\\\\##x", "#1"]
    assert unescape(Subwords.join(v2), 2) == text.split() and unescape(v1, 1) == v1
    assert tokenize(text, version=2) == tokenize(text)  # word level splits "#" off: nothing to escape
    lines = ["trending ##tag and ## #1 tag ##ing walking " + " ".join(random.Random(i).sample(["a", "b", "c", "d"], 4))
             for i in range(400)]
    write(tmp_path / "corpus.txt", "\n".join(lines) + "\n")
    for version in (1, 2):  # pieces learnt on text in which "##tag", "##" and "##ing" are frequent words
        lm = tiny_module(tmp_path / "corpus.txt", tokenizer="whitespace", subwords=100, batch_size=2, bptt=3,
                         tokenizer_version=version)
        pieces = Subwords.from_json(lm.spec.tokenizer["subwords"])
        split = pieces.split(tokenize("##tag ## ##ing tag", level="whitespace", version=version))
        if version == 1:  # the vocabulary's "##tag" is a continuation, and a word that starts "##" has no row
            assert UNK in split and Subwords.join(split) == [f"{UNK}tag", UNK, f"{UNK}ing", "tag"]
        else:  # a word start per word, each known
            assert UNK not in split and sum(not p.startswith("##") for p in split) == 4
            assert unescape(Subwords.join(split), 2) == ["##tag", "##", "##ing", "tag"]


def test_an_old_language_model_spec_reads_text_as_before(tmp_path: Path) -> None:
    """A checkpoint without a tokenizer version (written before them) is read as version 1 in eval and predict."""
    file = write(tmp_path / "quotes.txt", "the 'twist' was 'great' , they said\n" * 200)
    old = tiny_module(file, tokenizer_version=1)
    new = tiny_module(file)
    assert new.spec.tokenizer["version"] == 2 and "'twist'" in old.spec.vocab and "twist" in new.spec.vocab
    before = old.spec.to_dict()
    before["tokenizer"] = {k: v for k, v in before["tokenizer"].items() if k != "version"}
    evaluated = tiny_module(file, spec=before)
    assert all(torch.equal(evaluated.splits[s].ids, old.splits[s].ids) for s in ("train", "val", "test"))
    vocab = old.spec.vocab
    batch = NextWordDataModule.make_predict_batch(DataSpec.from_dict(before), ["they said the 'twist'"])
    assert [vocab[i] for i in batch.inputs[0]] == [EOS, "they", "said", "the", "'twist'"]
    batch = NextWordDataModule.make_predict_batch(new.spec, ["they said the 'twist'"])
    assert [new.spec.vocab[i] for i in batch.inputs[0]] == [EOS, "they", "said", "the", "'", "twist", "'"]


def test_real_ptb_reads_the_same_in_both_tokenizer_versions() -> None:
    """PTB is whitespace-tokenized already: versions 1 and 2 give the same vocabulary and the same streams
    (at word level too), so a PTB perplexity cannot change with the version."""
    if not REAL.exists():
        pytest.skip(f"real data not found at {REAL} (clone the repo beside shared/ to run this test)")
    for level in ("whitespace", "word"):
        v1, v2 = (tiny_module(REAL, tokenizer=level, batch_size=20, bptt=35, tokenizer_version=v) for v in (1, 2))
        assert v1.spec.vocab == v2.spec.vocab and len(v1.spec.vocab) == (10_001 if level == "whitespace" else 9_660)
        assert all(torch.equal(v1.splits[s].ids, v2.splits[s].ids) for s in ("train", "val", "test"))


def test_a_json_lines_or_csv_file_gives_its_text_column(tmp_path: Path) -> None:
    """A Hugging Face ``datasets`` export ({"text": ...} per line) was read as plain text: its braces,
    quotes and the key "text" were words of the vocabulary (tester-2)."""
    import json as _json

    folder = tmp_path / "hf"
    folder.mkdir()
    lines = [f"the {'cat' if i % 2 else 'dog'} sat on mat {i % 7} ." for i in range(120)]
    for split in ("train", "validation", "test"):
        write(folder / f"{split}.jsonl", "".join(_json.dumps({"text": line, "id": i}) + "\n" for i, line in enumerate(lines)))
    dm = tiny_module(folder)
    assert not {'"', "{", "}", ":", "text"} & set(dm.spec.vocab)
    assert [dm.spec.vocab[i] for i in dm.splits["train"].ids[:8]] == ["the", "dog", "sat", "on", "mat", "0", ".", EOS]
    table = tmp_path / "t.csv"
    write(table, "id,body\n" + "".join(f'{i},"{line}"\n' for i, line in enumerate(lines)))
    dm = tiny_module(table, text_column="body")
    assert "body" not in dm.spec.vocab and dm.spec.vocab[3:5] != ['"', ","]
    with pytest.raises(DataError, match=r"t\.csv, row 1, field 'text': no column 'text'; the header has \['id', 'body'\]"):
        tiny_module(table)
