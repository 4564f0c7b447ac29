"""Sentiment analysis data: a generated review corpus by default, the user's files with ``path``.

The embedded corpus is generated (seeded, deterministic) with the structure that makes
sentiment hard for bag-of-words models and learnable for an LSTM: aspect clauses with graded
adjectives, intensifiers, negation that flips polarity (``not bad``), contrast where the
clause after ``but`` dominates, neutral filler sentences and varied length.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch

from lstmkit.data.base import (
    SPLIT_NAMES,
    PadCollate,
    SequenceDataModule,
    SequenceDataset,
    check_fractions,
    path_not_found,
    split_files,
)
from lstmkit.data.text import (
    PAD,
    TOKENIZER_VERSION,
    UNK,
    build_vocab,
    check_delimiter,
    check_subwords,
    check_tokenizer_version,
    encode,
    labelled_format,
    learn_subwords,
    read_labelled_text,
    read_text,
    tokenize,
    tokenizer_recipe,
)
from lstmkit.errors import DataError
from lstmkit.types import Batch, DataSpec

_ASPECTS = [
    "the acting", "the plot", "the script", "the soundtrack", "the cinematography", "the ending",
    "the dialogue", "the cast", "the pacing", "the visual effects", "the story", "the humour",
    "the lead performance", "the direction", "the editing", "the score", "the characters",
    "the set design", "the costumes", "the final act", "the opening scene", "this film",
    "this movie", "the sequel", "the premise", "the villain", "the twist",
]
# (word, strength)
_POSITIVE = [
    ("wonderful", 2), ("brilliant", 2), ("excellent", 2), ("superb", 2), ("moving", 1),
    ("gripping", 1), ("charming", 1), ("delightful", 2), ("clever", 1), ("beautiful", 1),
    ("solid", 1), ("enjoyable", 1), ("good", 1), ("great", 2), ("fantastic", 2),
    ("memorable", 1), ("stunning", 2), ("funny", 1), ("fresh", 1), ("touching", 1),
    ("masterful", 2), ("engaging", 1), ("likeable", 1), ("witty", 1),
]
_NEGATIVE = [
    ("dull", 1), ("boring", 1), ("awful", 2), ("terrible", 2), ("clumsy", 1),
    ("predictable", 1), ("weak", 1), ("bland", 1), ("messy", 1), ("tedious", 1),
    ("forgettable", 1), ("bad", 1), ("poor", 1), ("disappointing", 1), ("lifeless", 2),
    ("dreadful", 2), ("painful", 2), ("shallow", 1), ("confusing", 1), ("lazy", 1),
    ("unbearable", 2), ("flat", 1), ("silly", 1), ("pointless", 2),
]
_INTENSIFIERS = [("very", 1.5), ("really", 1.5), ("truly", 1.5), ("incredibly", 2.0), ("quite", 1.2),
                 ("rather", 1.0), ("somewhat", 0.6), ("absolutely", 2.0), ("a bit", 0.6), ("", 1.0)]
_NEGATIONS = ["not", "never", "hardly", "not at all", "far from"]
_CLAUSES = [
    "{a} was {i} {adj}", "{a} is {i} {adj}", "i found {a} {i} {adj}", "{a} felt {i} {adj}",
    "honestly , {a} was {i} {adj}", "{a} turned out {i} {adj}", "overall {a} seemed {i} {adj}",
]
_NEG_CLAUSES = ["{a} was {n} {adj}", "{a} is {n} {adj}", "i would {n} call {a} {adj}",
                "{a} felt {n} {adj}"]
_FILLERS = [
    "i saw it on a rainy sunday afternoon", "my friends recommended it to me last week",
    "it runs a little over two hours", "the trailer had been everywhere for months",
    "we went to the late show downtown", "i had read the novel years ago",
    "the theater was half empty", "it is based on a true story",
    "the director also made a documentary about the war", "my sister dragged me along",
    "it was released in the spring", "there were a lot of children in the audience",
    "i watched it at home with the family", "the film is set in a small coastal town",
    "the studio spent a fortune on marketing", "it opened the festival this year",
    "the running time surprised me", "i went in knowing very little about it",
]
_ENDINGS_POS = ["highly recommended", "i would watch it again", "worth every minute", "go see it"]
_ENDINGS_NEG = ["save your money", "i would not watch it again", "a waste of an evening", "skip it"]

log = logging.getLogger(__name__)


def _clause(rng: random.Random) -> tuple[str, float]:
    polarity = rng.choice((1, -1))
    adj, strength = rng.choice(_POSITIVE if polarity > 0 else _NEGATIVE)
    aspect = rng.choice(_ASPECTS)
    if rng.random() < 0.25:
        template = rng.choice(_NEG_CLAUSES)
        # "not bad" is mildly positive, "not great" mildly negative
        return template.format(a=aspect, n=rng.choice(_NEGATIONS), adj=adj), -0.6 * polarity * strength
    intens, weight = rng.choice(_INTENSIFIERS)
    text = rng.choice(_CLAUSES).format(a=aspect, i=intens, adj=adj).replace("  ", " ")
    return text, polarity * strength * weight


def generate_reviews(n: int, seed: int = 0, noise: float = 0.02) -> list[tuple[str, str]]:
    """``n`` (review, label) pairs; labels follow the weighted clause polarities.

    The clause after ``but`` counts double; ``noise`` of the labels are flipped, as in real
    annotations, so accuracy saturates below 100 %.
    """
    rng = random.Random(seed)
    reviews: list[tuple[str, str]] = []
    while len(reviews) < n:
        sentences: list[str] = []
        score = 0.0
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.35:
                sentences.append(rng.choice(_FILLERS))
            text, value = _clause(rng)
            if rng.random() < 0.3:
                second, value2 = _clause(rng)
                text, value = f"{text} , but {second}", value + 2.0 * value2
            sentences.append(text)
            score += value
        if abs(score) < 0.5:
            continue  # genuinely mixed reviews carry no clear label
        if rng.random() < 0.15:
            sentences.append(rng.choice(_ENDINGS_POS if score > 0 else _ENDINGS_NEG))
        label = "positive" if score > 0 else "negative"
        if rng.random() < noise:
            label = "negative" if label == "positive" else "positive"
        reviews.append((" . ".join(sentences) + " .", label))
    return reviews




def _label_key(label: str) -> str | float:
    """What two spellings of one label share: the number (``1``, ``1.0``, ``+1``) or the casefolded text."""
    try:
        number = float(label)
    except ValueError:
        return label.casefold()
    return number if math.isfinite(number) else label.casefold()


Row = tuple[str, int, str, str]  # (source, row, text, label)
UNLABELLED = {"unsup", "unlabeled", "unlabelled"}  # aclImdb/train/unsup: reviews without a label


def class_folders(folder: Path) -> dict[str, list[Row]] | list[Row] | None:
    """A folder of ``.txt`` texts sorted into one subfolder per class (``pos/``, ``neg/``: Keras'
    ``text_dataset_from_directory`` layout), or split folders of such (``train/``, ``test/``: the
    IMDB ``aclImdb`` archive as unpacked); ``None`` for a folder of another layout.

    Each file is one example whose label is its folder's name; the HTML line breaks of IMDB reviews
    (``<br />``) become spaces. A split folder lacking class folders is an error; a folder of
    unlabelled texts (``unsup``) is left out, said in the log.
    """
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = {split: [d for d in subfolders if d.name.lower() in names] for split, names in SPLIT_NAMES.items()}
    if not any(splits.values()):
        return _class_rows(folder) if subfolders else None
    found: dict[str, list[Row]] = {}
    for split, named in splits.items():
        if len(named) > 1:
            raise DataError(f"several folders look like the {split} split: {[d.name for d in named]}", path=folder)
        if named:
            rows = _class_rows(named[0])
            if rows is None:
                raise DataError("expected one subfolder of .txt files per class in this split folder (e.g. pos/, "
                                "neg/)", path=named[0])
            found[split] = rows
    return found


def _class_rows(folder: Path) -> list[Row] | None:
    """The texts of a folder's class subfolders, or ``None`` if they hold no ``.txt`` files."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {d.name: sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() == ".txt") for d in classes}
    if sum(bool(texts) for name, texts in files.items() if name.lower() not in UNLABELLED) < 2:
        return None  # one folder of .txt files beside others (glove/) is no class layout
    unread = [p for d in classes if d.name.lower() not in UNLABELLED for p in d.rglob("*")
              if p.is_file() and not p.name.startswith(".") and (p.parent != d or p.suffix.lower() != ".txt")]
    if unread:  # Keras reads nested folders too; here a class folder's texts are its own .txt files
        log.warning("%s: %d file(s) in its class folders are not read (not .txt, or in a subfolder), e.g. %s",
                    folder, len(unread), unread[0])
    skipped = [name for name in files if name.lower() in UNLABELLED]
    if skipped:
        log.info("%s: %s left out (texts without a label)", folder, ", ".join(f"{name}/" for name in skipped))
    empty = [name for name, texts in files.items() if not texts and name not in skipped]
    if empty:
        raise DataError(f"class folder {empty[0]}/ holds no .txt files; each class folder holds its texts",
                        path=folder)
    return [(str(file), 1, read_text(file).replace("<br />", " ").strip(), label)
            for label, texts in files.items() if label not in skipped for file in texts]


class SentimentDataModule(SequenceDataModule):
    """Labelled texts -> token ids; classes from the train split.

    Args:
        path: ``None`` for the generated corpus; a file (CSV/TSV/JSONL/``<label> <text>``
            lines), split by ``val_fraction``/``test_fraction``; or a folder whose file names
            contain ``train``/``dev|valid|val``/``test`` (their split is kept).
        text_column / label_column: column or key names in CSV/TSV/JSONL files.
        format: ``auto`` (by extension; a file of ``<text><TAB><label>`` lines without a header is found
            by its lines), ``csv``, ``tsv``, ``jsonl``, ``prefixed`` or ``suffixed`` (``<text><TAB><label>``).
        delimiter: the character between a delimited file's fields when it is not the format's
            own (``;`` from a spreadsheet of some locales, ``|``); the files are then read as CSV.
        label_names: optional mapping from raw labels to class names (e.g. ``{0: negative}``).
        num_examples: size of the generated corpus (train + val + test).
        min_count / max_vocab: vocabulary built on the train split only.
        tokenizer: ``word``, ``whitespace`` (pre-tokenized files) or ``char``.
        tokenizer_version: the tokenizer's version (:data:`~lstmkit.data.text.TOKENIZER_VERSION`, the
            latest, by default), recorded in the spec; 1 reads text as runs did before versions were
            recorded (to resume one). A checkpoint's spec decides it for eval and predict.
        subwords: split words into byte-pair-encoded pieces, learnt on the train split with about
            this many pieces (:class:`~lstmkit.data.text.Subwords`); ``None``: whole words.
        max_length: truncate longer texts to this many tokens (``None`` keeps all).
        seed: seed for generation and for splitting a single file.
    """

    predict_input = "texts"  # what `lstmkit predict input=...` expects (named in errors)
    # predict's input_file: a table's text column may be named otherwise than the training files' was
    # data.format=lines: predict scores every line of an input_file whole (no '<label> <text>' reading)
    # data.delimiter: a table input_file written with another separator than the training files' (';')
    predict_read_options: ClassVar[dict[str, tuple[str, ...] | None]] = {"text_column": None, "format": ("lines",),
                                                                          "delimiter": None}
    spec_settings = ("tokenizer", "tokenizer_version", "lowercase", "max_length", "subwords", "min_count", "max_vocab")

    def __init__(
        self,
        path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        format: str = "auto",
        delimiter: str | None = None,
        label_names: dict[str, str] | None = None,
        num_examples: int = 8000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        min_count: int = 1,
        max_vocab: int | None = 30000,
        tokenizer: str = "word",
        lowercase: bool = True,
        max_length: int | None = None,
        seed: int = 0,
        subwords: int | None = None,
        tokenizer_version: int = TOKENIZER_VERSION,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.subwords = check_subwords(subwords, tokenizer)
        self.path = path
        self.text_column, self.label_column, self.format = text_column, label_column, format
        self.delimiter = check_delimiter(delimiter)
        self.read_as: set[str] = set()  # how the files were read (csv, tsv, jsonl, prefixed), for the spec
        self.label_names = {str(k): str(v) for k, v in (label_names or {}).items()}
        self.num_examples = num_examples
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)
        self.min_count, self.max_vocab = min_count, max_vocab
        self.tokenizer = {"level": tokenizer, "lowercase": lowercase,
                          "version": check_tokenizer_version(tokenizer_version)}
        self.max_length = max_length
        self.seed = seed
        self.collate = PadCollate(pad_value=0)

    # -- reading --------------------------------------------------------------------------
    def _read_splits(self) -> dict[str, list[tuple[str, int, str, str]]]:
        """Split name -> list of (source, row, text, label)."""
        if self.path is None:
            pairs = generate_reviews(self.num_examples, seed=self.seed)
            rows = [("<generated>", i + 1, t, y) for i, (t, y) in enumerate(pairs)]
            return self._split(rows)
        path = Path(self.path).expanduser()
        if not path.exists():
            raise path_not_found(path)
        if path.is_file():
            return self._split(self._read_file(path))
        try:
            found = split_files(path, "stsa.binary.train, train.csv, or class folders pos/ neg/",
                                require_train=self.fixed_spec is None)
        except DataError:  # no split files: aclImdb/train/pos/*.txt, Keras' text_dataset_from_directory layout
            classes = class_folders(path)
            if classes is None:
                raise
            splits = classes if isinstance(classes, dict) else {"train": classes}
        else:  # (outside the try: a bad row of a split file is its own error, not a cue to try class folders)
            splits = {}
            for split, file in found.items():
                try:
                    splits[split] = self._read_file(file)
                except DataError as err:
                    if not self._unlabelled_split(split, err):
                        raise
                    log.warning("%s: the %s file has no %r column (GLUE's test.tsv is unlabelled): left out, and "
                                "a %s split is carved from train instead", file, split, self.label_column, split)
        if "train" not in splits:  # eval of a folder of held-out files: nothing to carve, nothing to fit
            return {"train": [], "val": splits.get("val", []), "test": splits.get("test", [])}
        if "val" not in splits or "test" not in splits:
            # carve only the missing splits out of train, keeping the given ones (no train row is dropped)
            carved = self._split(splits["train"], val="val" not in splits, test="test" not in splits)
            splits = {**carved, **splits, "train": carved["train"]}
        return splits

    def _unlabelled_split(self, split: str, err: DataError) -> bool:
        """A val or test file without the label column at all, as GLUE's SST-2 ``test.tsv`` (its labels are
        withheld): training leaves it out, as it leaves IMDB's ``unsup/`` out. Why: the folder as downloaded
        was refused with "no column 'label'", a hint to rename columns that it has not. ``eval`` (a model's
        spec) still refuses it: there is nothing to score."""
        return (self.fixed_spec is None and split != "train" and err.field == self.label_column
                and err.message.startswith(f"no column {self.label_column!r}"))

    def _read_file(self, path: Path) -> list[tuple[str, int, str, str]]:
        auto = labelled_format(path, self.format, self.delimiter) == "prefixed" and self.format == "auto"
        self.read_as.add(labelled_format(path, self.format, self.delimiter, read_text(path) if auto else None))
        return [(str(path), row, text, label) for row, text, label in
                read_labelled_text(path, self.text_column, self.label_column, self.format, self.delimiter)]

    def _split(self, rows: list[Any], val: bool = True, test: bool = True) -> dict[str, list[Any]]:
        """Shuffled (seeded) val / test / train parts; ``val`` / ``test`` False: that part stays empty."""
        rows = list(rows)
        random.Random(self.seed).shuffle(rows)
        n_val = round(len(rows) * self.val_fraction) if val else 0
        n_test = round(len(rows) * self.test_fraction) if test else 0
        return {"val": rows[:n_val], "test": rows[n_val : n_val + n_test], "train": rows[n_val + n_test :]}

    # -- building -------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[str]:
        tokens = tokenize(text, **self.tokenizer)
        return tokens[: self.max_length] if self.max_length else tokens

    def _tokenized(self, splits: dict[str, list[tuple[str, int, str, str]]]) -> dict[str, list[list[str]]]:
        """Every split's texts as tokens, once: the vocabulary and the ids are both built from these."""
        return {split: [self._tokens(text) for _, _, text, _ in rows] for split, rows in splits.items()}

    def build(self) -> DataSpec:
        splits = self._read_splits()
        if self.whole:
            splits = self.merged(splits)
        if self.fixed_spec is not None:
            spec = self.fixed_spec
            stored = dict(spec.tokenizer or {})
            self.max_length = stored.pop("max_length", self.max_length)
            self.tokenizer = stored or self.tokenizer
            tokens = self._tokenized(splits)
        else:
            known: list[str] = []
            if self.subwords:
                # the known pieces are counted in the first max_length pieces of each text, as the vocabulary
                # below is: counted in whole texts, a piece seen only past the cut was never split again yet
                # had no row, so it was <unk> even in train
                words = [tokenize(text, **self.tokenizer) for _, _, text, _ in splits["train"]]
                pieces = learn_subwords(words, self.subwords, self.min_count, self.max_vocab, (PAD, UNK),
                                        max_length=self.max_length)
                self.tokenizer["subwords"] = pieces.to_json()
                known = pieces.known_pieces() or []
            tokens = self._tokenized(splits)
            vocab = build_vocab(tokens["train"], self.min_count, self.max_vocab, specials=(PAD, UNK))
            # a known piece that re-split neighbours pushed past max_length in every train text still gets a
            # row (after the others: without max_length none is missing, and the vocabulary is as before)
            have = set(vocab)
            vocab += [piece for piece in known if piece not in have]
            raw = {y for *_, y in splits["train"]}
            unmapped = sorted(raw - set(self.label_names))
            if self.label_names and unmapped:  # a partial map would mix names and raw labels as classes
                raise DataError(f"data.label_names maps {sorted(self.label_names)}, but the training labels "
                                f"{unmapped} are not among them; name every label (or none)", path=self.path)
            labels = sorted({self.label_names.get(y, y) for y in raw})
            counts = Counter(self.label_names.get(y, y) for *_, y in splits["train"])
            single = sorted(name for name, n in counts.items() if n == 1 < len(splits["train"]) // 100)
            for label in single[:5]:  # a few, then a count: a file read in the wrong layout has hundreds
                source, row = next((src, r) for src, r, _, y in splits["train"] if self.label_names.get(y, y) == label)
                log.warning("class %r has a single training example (%s, row %d): a row whose label is wrong or "
                            "missing? It is kept as a class of its own", label, source, row)
            if len(single) > 5:
                log.warning("%d more classes have a single training example (%d of %d classes in all): is the file "
                            "read in its layout? (data.format, data.text_column / data.label_column)",
                            len(single) - 5, len(single), len(counts))
            alike: dict[str | float, list[str]] = {}
            for label in labels:  # "Positive" beside "positive", or 1 beside 1.0 (a column pandas once held a
                alike.setdefault(_label_key(label), []).append(label)  # NaN in): an edit, not a class of its own
            for group in (g for g in alike.values() if len(g) > 1):
                source, row = next((src, r) for src, r, _, y in splits["train"] if self.label_names.get(y, y) == group[1])
                how = "are the same number" if isinstance(_label_key(group[0]), float) else "differ only in upper/lower case"
                log.warning("labels %s %s, so each is a class of its own (%d examples of %r, e.g. %s, row %d); if "
                            "they mean one class, write them alike or map them with data.label_names", group, how,
                            counts[group[1]], group[1], source, row)
            if len(labels) < 2:
                raise DataError(f"the training split has only the label(s) {labels}; need two or more",
                                path=self.path)
            # how the training files were read: predict reads an input_file as '<label> <text>' lines only
            # for a model trained on such (a CSV-trained model's "1 star is too many" is a text)
            spec = DataSpec(input_kind="tokens", vocab=vocab, classes=labels, pad_id=0,
                            tokenizer={**self.tokenizer, "max_length": self.max_length},
                            extra={"read_as": sorted(self.read_as)})
        index = {tok: i for i, tok in enumerate(spec.vocab or [])}
        class_index = {c: i for i, c in enumerate(spec.classes or [])}
        unknown = sorted((str(source), row, label) for rows in splits.values() for source, row, _, label in rows
                         if self.label_names.get(label, label) not in class_index)
        if unknown:  # the file's first such row, whichever split it fell into
            source, row, label = unknown[0]
            learnt = "the checkpoint's" if self.fixed_spec is not None else "learnt from the training split"
            raise DataError(f"label {label!r} is not one of the classes {list(class_index)} ({learnt}); "
                            f"{len(unknown)} row(s) have such labels", path=source, row=row, field=self.label_column)
        for split, rows in splits.items():
            inputs, targets = [], []
            for (_, _, _, label), text_tokens in zip(rows, tokens[split], strict=True):
                name = self.label_names.get(label, label)
                ids = encode(text_tokens, index, unk_id=1) or [1]
                inputs.append(torch.tensor(ids, dtype=torch.int64))
                targets.append(torch.tensor(class_index[name]))
            self.splits[split] = SequenceDataset(inputs, targets)
        files = {str(source) for rows in splits.values() for source, *_ in rows}
        sources = sorted(files) if len(files) <= 3 else [f"{len(files)} files in {self.path}"]  # class folders' texts
        log.info("sentiment examples from %s: %s", ", ".join(sources) or "nothing", self.split_sizes())
        return spec

    @classmethod
    def serving_inputs(cls, spec: DataSpec) -> dict[str, Any]:
        return {"inputs": "(batch, time) int64: the text's ids, padded with spec.pad_id",
                "tokens": "the text tokenised as tokenizer says (its max_length tokens at most), each token's "
                          "index in spec.vocab (<unk> if absent); an empty text is one <unk>",
                "tokenizer": tokenizer_recipe(spec.tokenizer or {}),
                "lengths": "(batch,) int64: ids per row"}

    @classmethod
    def make_predict_batch(cls, spec: DataSpec, inputs: list[Any]) -> Batch:
        settings = dict(spec.tokenizer or {})
        max_length = settings.pop("max_length", None)
        index = {tok: i for i, tok in enumerate(spec.vocab or [])}
        examples = []
        for text in inputs:
            tokens = tokenize(str(text), **settings)[: max_length or None]
            ids = encode(tokens, index, unk_id=1) or [1]
            examples.append((torch.tensor(ids, dtype=torch.int64), torch.tensor(0)))
        return PadCollate(pad_value=spec.pad_id)(examples)
