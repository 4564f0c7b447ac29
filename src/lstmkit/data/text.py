"""Text utilities: tokenizer, vocabulary, and readers for labelled-text files.

Readers check every row and raise :class:`~lstmkit.errors.DataError` naming the file, the row
and the field, instead of dropping rows silently.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lstmkit.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
_WORD = re.compile(r"<[a-z]+>|[\w']+|[^\w\s]", re.UNICODE)


# typographic quotes as the ASCII ones: text pasted from a web page or a word processor ("it’s")
# must read as typed text does ("it's"), in training and in predict alike
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})


def normalise_text(text: str) -> str:
    """NFC (a letter and its combining accent, "cafe\u0301", become one character, "café") and
    typographic quotes as ASCII ones, before any tokenizer splits the text."""
    if text.isascii():  # nothing to change, and most text is: skip the two passes
        return text
    return unicodedata.normalize("NFC", text).translate(_QUOTES)


# The tokenizer's version, recorded in every new checkpoint's spec (``DataSpec.tokenizer["version"]``);
# a spec without one (checkpoints written before versions existed) is version 1 and is read as it was
# trained. Version 2 (new runs): ``word`` splits the single quotes around a word off it ("'twist'" is
# "'", "twist", "'", not a vocabulary entry beside "twist"), and a token that starts with ``##`` (the
# continuation mark of a subword piece) as written in the text is escaped with a backslash (``\##tag``).
TOKENIZER_VERSION = 2
TOKENIZER_VERSIONS = (1, 2)

# words that start with an apostrophe of their own: clitics as PTB-style text writes them ("it 's",
# "they 're") and common elisions ("'em", "'til"); a number after it is a year or a decade ("'70s")
_ELISIONS = frozenset({"s", "re", "ve", "ll", "d", "m", "t", "em", "til", "tis", "twas", "cause", "n", "bout"})
_WHOLE = frozenset({"'n'"})  # "rock 'n' roll": its quotes are part of it
_MARK = re.compile(r"\\*##")  # "##..." (and, so that the escape is reversible, "\##...", "\\##"...)


def check_tokenizer_version(version: Any) -> int:
    """``data.tokenizer_version``: one of :data:`TOKENIZER_VERSIONS` (new runs: the latest)."""
    if isinstance(version, bool) or version not in TOKENIZER_VERSIONS:
        raise ConfigError(f"data.tokenizer_version={version!r}: expected one of {list(TOKENIZER_VERSIONS)} "
                          f"({TOKENIZER_VERSION}, the default, for new runs; 1 reads text as lstmkit did before "
                          "versions were recorded, e.g. to resume a run of that time)")
    return int(version)


def tokenize(text: str, level: str = "word", lowercase: bool = True, subwords: str | None = None,
             prompt: bool = False, version: int = 1) -> list[str]:
    r"""Split text into word tokens (words, numbers, punctuation marks) or characters; with
    ``subwords`` (a :class:`Subwords` model as JSON), split each word further into its pieces.

    ``prompt``: the text is the start of a line to continue (predict, generate): at character level
    its trailing spaces are kept, since "the cat " asks for the next word's first letter and "the cat"
    for the rest of "cat" (training lines are stripped at both ends, as their ends are ``<eos>``).

    ``version``: the tokenizer's version (:data:`TOKENIZER_VERSION`), as the spec records it; 1, the
    default, is a spec without one (a checkpoint written before versions), read exactly as it was
    trained. Version 2 splits a word's surrounding single quotes off it at ``word`` level, keeping
    contractions and clitics ("don't", "it's", PTB's "'s" and "n't", "'em", "'70s") as version 1 did, and
    escapes a token that starts with ``##`` at ``word`` and ``whitespace`` level (``\##tag``, so that it
    is not read as a subword piece's continuation; :func:`unescape` undoes it)."""
    text = normalise_text(text)
    if lowercase:
        text = text.lower()
    if level == "char":
        return list(text.lstrip().rstrip("\r\n") if prompt else text.strip())
    if level == "whitespace":
        tokens = text.split()
    elif level == "word":
        tokens = _WORD.findall(text)
        if version >= 2:
            tokens = _split_quotes(tokens)
    else:
        raise ValueError(f"unknown tokenizer level {level!r}; expected word, whitespace or char")
    if version >= 2:
        tokens = [f"\\{t}" if _MARK.match(t) else t for t in tokens]
    return Subwords.from_json(subwords).split(tokens) if subwords else tokens


def tokenizer_recipe(settings: dict[str, Any], prompt: bool = False) -> dict[str, Any]:
    r"""How :func:`tokenize` splits a text with ``settings`` (a spec's ``tokenizer``), as data and exact
    words, for an exported model's ``spec.json``: a server without lstmkit must split text as training
    did (splitting on ``\w+|[^\w\s]`` read "it's" as three tokens, and "it’s" with a typographic
    quote as others again). ``steps`` are applied in order; ``reference`` is the implementation."""
    level = settings.get("level", "word")
    version = int(settings.get("version", 1))
    quotes = {chr(k): v for k, v in sorted(_QUOTES.items())}
    steps: list[dict[str, Any]] = [
        {"step": "normalise", "unicode": "NFC", "quotes": quotes,
         "rule": "unicodedata.normalize('NFC', text), then each character that is a key of quotes replaced by its "
                 "value (typographic quotes as ASCII ones); an ASCII text is unchanged by both"},
    ]
    if settings.get("lowercase", True):
        steps.append({"step": "lowercase", "rule": "Python's str.lower() of the whole text"})
    if level == "char":
        strip = ("text.lstrip().rstrip('\r\n'): the prompt's trailing spaces are kept" if prompt
                 else "text.strip()")
        steps.append({"step": "characters", "rule": f"the characters of {strip}, each a token"})
    elif level == "whitespace":
        steps.append({"step": "split", "rule": "Python's str.split(): runs of whitespace separate tokens"})
    else:
        steps.append({"step": "match", "pattern": _WORD.pattern, "flags": ["UNICODE"],
                      "rule": "the tokens are the pattern's non-overlapping matches, left to right (Python's "
                              "re.findall; \\w is Unicode word characters, letters of every script and digits and _)"})
        if version >= 2:
            steps.append({
                "step": "split_quotes", "elisions": sorted(_ELISIONS), "whole": sorted(_WHOLE),
                "rule": "for each token: kept as it is when neither its first nor its last character is ' , when it "
                        "is made of ' alone, or when its lowercase form (str.casefold) is in whole. Otherwise lead is "
                        "its run of ' at the start, trail its run of ' at the end of the rest, and core what is "
                        "between. When lead is exactly one ' and trail is empty and (core.casefold() is in elisions "
                        "or core's first character is a digit, str.isdigit), the token is kept as it is ('s, 'em, "
                        "'70s). Otherwise it becomes lead, core, trail, in that order, leaving out the empty ones",
            })
    if version >= 2 and level != "char":
        steps.append({"step": "escape", "pattern": _MARK.pattern,
                      "rule": "a token on which the pattern matches at its start (re.match) gets a backslash "
                              "before it: ##tag is \\##tag, so that it is not read as a subword's continuation"})
    if settings.get("subwords"):
        steps.append({"step": "subwords", "model": "spec.tokenizer.subwords",
                      "rule": "each token split into byte-pair pieces by the SentencePiece model stored (base64, "
                              "with its known pieces) in spec.tokenizer.subwords, as lstmkit.data.text.Subwords.split "
                              "does: pieces after a word's first carry ## before them; a token such as <unk> is kept whole"})
    if settings.get("max_length"):
        steps.append({"step": "truncate", "max_length": settings["max_length"],
                      "rule": "the first max_length tokens only"})
    return {"level": level, "version": version, "lowercase": bool(settings.get("lowercase", True)),
            "steps": steps, "reference": "lstmkit.data.text.tokenize"}


def unescape(words: list[str], version: int = 1) -> list[str]:
    r"""Words of a version-2 tokenizer as the text wrote them: ``\##tag`` is ``##tag`` again (version 1
    escaped nothing). For display (generated text), not for looking tokens up in the vocabulary."""
    if version < 2:
        return list(words)
    return [w[1:] if w.startswith("\\") and _MARK.match(w) else w for w in words]


def _split_quotes(tokens: list[str]) -> list[str]:
    """Version 2's ``word`` tokens: the single quotes around a word split off it (a run of them is one
    token, as PTB's "''" is), an apostrophe inside it or starting a clitic or elision kept."""
    out: list[str] = []
    for token in tokens:
        if not (token[0] == "'" or token[-1] == "'") or not token.strip("'") or token.casefold() in _WHOLE:
            out.append(token)  # no quote at either end, quotes alone ("'", "''"), or "'n'"
            continue
        word = token.lstrip("'")
        lead = token[: len(token) - len(word)]
        core = word.rstrip("'")
        trail = word[len(core):]
        # an apostrophe that starts a word ("'s", "'em", "'70s") stays on it, unless the word is quoted
        # (quotes at both ends: "'em'" is "'", "em", "'")
        if lead == "'" and not trail and (core.casefold() in _ELISIONS or core[0].isdigit()):
            out.append(token)
            continue
        out += [part for part in (lead, core, trail) if part]
    return out


class Subwords:
    """Words -> subword pieces by byte-pair encoding (Sennrich et al. 2016), learnt on the train split.

    Why: a word vocabulary built on a small training set leaves many test words unknown (SST-2:
    9.5 % of test tokens are ``<unk>`` at ``min_count=2``, 0.01 % as pieces), and a model learns
    nothing from ``<unk>``. Pieces of an unseen word ("unw ##atch ##able") are known and carry its
    meaning, while frequent words stay whole (and keep their word-level spelling, so a word-level
    checkpoint still warm-starts their rows). Pieces after the first of a word carry the ``##``
    prefix, so word boundaries survive.

    Only the pieces of the vocabulary are *known* (:func:`learn_subwords`): BPE's intermediate merges
    are pieces no training word may end up with, and ``min_count`` drops rare ones, so no embedding
    row learns them; such a piece of a word is split again, longest known prefix first (as
    subword-nmt's vocabulary filter does), so words meet only trained rows. Characters never seen in
    training become one ``<unk>`` per run (``##<unk>`` inside a word, so the word boundary survives).

    The model is SentencePiece's BPE (deterministic: the same train split gives the same pieces,
    so a language model and the classifier warm-started from it split alike; Hugging Face
    ``tokenizers`` breaks ties in hash order and is not), stored with the known pieces in the
    checkpoint (``DataSpec.tokenizer["subwords"]``, JSON) so that predict splits words as training did.
    """

    PREFIX = "##"
    _WORD_START = "\u2581"  # SentencePiece's word-start mark

    def __init__(self, proto: bytes, known: Iterable[str] | None = None) -> None:
        import sentencepiece as spm

        self._proto = proto
        self._model = spm.SentencePieceProcessor(model_proto=proto)
        self._known = set(known) if known is not None else None  # SentencePiece's own spelling
        # no known piece is longer: the prefix search of _resplit starts here, not at the whole rest
        self._longest = max(map(len, self._known), default=0) if self._known is not None else 0
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def learn(cls, words: Iterable[str], vocab_size: int) -> Subwords:
        """BPE with at most ``vocab_size`` pieces from a stream of words (specials such as ``<eos>``
        are left out: they are never split). Every piece is known until :meth:`restricted`
        (:func:`learn_subwords` restricts it to the vocabulary)."""
        import sentencepiece as spm

        kept = [w for w in words if not _is_special(w)]
        if not kept:
            raise DataError("data.subwords: the train split has no words to learn subword pieces from")
        characters = len(set("".join(kept)))
        if vocab_size <= characters + 1:
            raise ConfigError(f"data.subwords={vocab_size}: the train split has {characters:,} distinct characters, "
                              f"each a piece of its own; set data.subwords above {characters + 1:,}")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(kept), model_writer=model, vocab_size=vocab_size, model_type="bpe",
                hard_vocab_limit=False,  # a small corpus may have fewer pieces to offer
                character_coverage=1.0, normalization_rule_name="identity", split_digits=False,
                unk_piece=UNK, unk_id=0, pad_id=-1, bos_id=-1, eos_id=-1,
                input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2,
            )
        except RuntimeError as err:  # SentencePiece's checks, e.g. on a degenerate train split
            raise DataError(f"data.subwords={vocab_size}: SentencePiece could not learn pieces from the train "
                            f"split ({str(err).strip().splitlines()[0]})") from None
        return cls(model.getvalue())

    @property
    def size(self) -> int:
        """Pieces in the learnt model (``<unk>`` included)."""
        return int(self._model.get_piece_size())

    def known_pieces(self) -> list[str] | None:
        """The known pieces in this class's ``##`` spelling, sorted (``None``: every piece is known)."""
        if self._known is None:
            return None
        return sorted(p.removeprefix(self._WORD_START) if p.startswith(self._WORD_START) else self.PREFIX + p
                      for p in self._known)

    def restricted(self, vocab: Iterable[str]) -> Subwords:
        """The same model with only the pieces of ``vocab`` known (in this class's ``##`` spelling)."""
        known = {p.removeprefix(self.PREFIX) if p.startswith(self.PREFIX) else self._WORD_START + p
                 for p in vocab if not _is_special(p)}
        return Subwords(self._proto, known)

    @classmethod
    def from_json(cls, text: str) -> Subwords:
        return _subwords_from_text(text)

    def to_json(self) -> str:
        """The model (base64) and its known pieces as JSON text, for the checkpoint's DataSpec."""
        return json.dumps({"model": base64.b64encode(self._proto).decode("ascii"),
                           "known": sorted(self._known) if self._known is not None else None})

    def split(self, tokens: list[str]) -> list[str]:
        """Each token's pieces, in order; specials (``<eos>``, ``<unk>``...) stay whole."""
        pieces: list[str] = []
        for token in tokens:
            known = self._cache.get(token)
            if known is None:
                known = [token] if _is_special(token) else self._pieces(token)
                self._cache[token] = known
            pieces.extend(known)
        return pieces

    def _pieces(self, word: str) -> list[str]:
        pieces: list[str] = []
        for raw in self._model.encode(word, out_type=str):
            text = raw.removeprefix(self._WORD_START)
            if text:
                pieces += self._resplit(text, not pieces)  # the first piece is written as a word start
        pieces = [p for i, p in enumerate(pieces) if not (p == UNK and i and pieces[i - 1] == UNK)]  # one per run
        # an unseen run inside a word is "##<unk>": the word boundary survives ("catz mat" is not
        # "cat zz mat"; join gives two words back); without a row of its own it reads as <unk>
        return [p if i == 0 else self.PREFIX + p for i, p in enumerate(pieces)] or [UNK]

    def _resplit(self, text: str, start: bool) -> list[str]:
        """``text`` as known pieces: itself if known, else its longest known prefix and then the rest
        likewise; a run of characters that no known piece starts with is one ``<unk>``.

        A loop, not recursion, and the prefixes tried are at most as long as the longest known piece:
        recursing per unseen character overflowed Python's stack on a paragraph of ~1,500 unseen ones
        (CJK text, a pasted base64 blob) and trying every prefix of the rest took cubic time."""
        if self._known is None:
            return [text]
        pieces: list[str] = []
        i = 0
        while i < len(text):
            first = start and i == 0  # only the word's first piece carries the word-start mark
            for end in range(min(len(text), i + self._longest), i, -1):
                if (self._WORD_START + text[i:end] if first else text[i:end]) in self._known:
                    pieces.append(text[i:end])
                    i = end
                    break
            else:  # an unseen character: one <unk> for a run of them
                if not pieces or pieces[-1] != UNK:
                    pieces.append(UNK)
                i += 1
        return pieces

    @classmethod
    def join(cls, pieces: list[str]) -> list[str]:
        """Pieces back into words (the inverse of :meth:`split`), e.g. for generated text."""
        words: list[str] = []
        for piece in pieces:
            if piece.startswith(cls.PREFIX) and words:
                words[-1] += piece[len(cls.PREFIX):]
            else:
                words.append(piece.removeprefix(cls.PREFIX))
        return words


def learn_subwords(
    train: list[list[str]], size: int, min_count: int, max_size: int | None, specials: tuple[str, ...],
    max_length: int | None = None,
) -> Subwords:
    """:class:`Subwords` learnt on the train split's words, knowing only the pieces that the
    vocabulary built from the split pieces keeps (``min_count`` / ``max_size``, as
    :func:`build_vocab`): a piece it drops is split again instead of becoming ``<unk>``.

    ``max_length``: only each text's first ``max_length`` pieces are counted, as a classifier that
    truncates its texts (``data.max_length``) reads them and builds its vocabulary from them. Counted
    whole, a piece seen only past the cut was known (never split again) but had no row in that
    vocabulary, so it was ``<unk>``, in the train split too."""
    pieces = Subwords.learn((w for words in train for w in words), size)
    vocab = build_vocab([pieces.split(words)[: max_length or None] for words in train], min_count, max_size,
                        specials)
    log.info("data.subwords=%d: %d pieces learnt on the train split, %d kept in the vocabulary",
             size, pieces.size, len(vocab) - len(specials))
    return pieces.restricted(vocab)


def _is_special(token: str) -> bool:
    return token.startswith("<") and token.endswith(">")


@functools.lru_cache(maxsize=8)
def _subwords_from_text(text: str) -> Subwords:
    try:
        stored = json.loads(text)
        return Subwords(base64.b64decode(stored["model"].encode("ascii"), validate=True), stored["known"])
    except Exception as err:  # noqa: BLE001 - a damaged model in a checkpoint
        raise CheckpointError(f"the checkpoint's subword model (DataSpec.tokenizer['subwords']) cannot be read "
                              f"({type(err).__name__}: {err})") from None


def check_subwords(subwords: int | None, level: str) -> int | None:
    """``data.subwords``: a piece count for word-level tokenizers, or ``None``."""
    if subwords is None:
        return None
    if level == "char":
        raise ConfigError("data.subwords splits words into pieces; it does not apply to data.tokenizer=char")
    if isinstance(subwords, bool) or not isinstance(subwords, int):
        raise ConfigError(f"data.subwords={subwords!r}: expected a number of pieces (e.g. 8000), or null")
    if subwords < 100:
        raise ConfigError(f"data.subwords={subwords}: expected a vocabulary of pieces of at least 100 "
                          "(e.g. 8000), or null for whole words")
    return subwords


def build_vocab(
    token_lists: Iterable[list[str]],
    min_count: int = 1,
    max_size: int | None = None,
    specials: tuple[str, ...] = (PAD, UNK),
) -> list[str]:
    """Vocabulary from the train split: specials first, then tokens by frequency (ties by text)."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    for special in specials:
        counts.pop(special, None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - len(specials))]
    return list(specials) + words


def encode(tokens: list[str], index: dict[str, int], unk_id: int) -> list[int]:
    return [index.get(tok, unk_id) for tok in tokens]


_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"\xfd7zXZ\x00", "xz"))  # magic numbers


# byte-order marks of the Unicode encodings other than UTF-8; UTF-32 first: its little-endian mark
# starts with UTF-16's (FF FE)
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32", "little-endian"), (b"\x00\x00\xfe\xff", "UTF-32", "big-endian"),
               (b"\xff\xfe", "UTF-16", "little-endian"), (b"\xfe\xff", "UTF-16", "big-endian"))


def _iconv(encoding: str, path: Path) -> str:
    """The ``iconv`` command that converts ``path`` (as the user gave it) to a UTF-8 copy beside it."""
    return f"iconv -f {encoding} -t UTF-8 '{path}' > '{path.with_name(f'{path.stem}-utf8{path.suffix}')}'"


def check_unicode_bom(raw: bytes, path: Path, what: str = "file") -> None:
    """Refuse a text that starts with a UTF-16 or UTF-32 byte-order mark, saying how to convert it.

    Why: Windows Notepad and Excel save "Unicode text" as UTF-16 with a byte-order mark; decoded as
    UTF-8 it failed at its first byte with "not valid UTF-8 (byte 0xff at offset 0)", which does not
    say what the file is nor how to fix it. A UTF-8 byte-order mark (EF BB BF) is read as UTF-8."""
    for bom, encoding, order in _OTHER_BOMS:
        if raw.startswith(bom):
            origin = ", as Windows Notepad and Excel save 'Unicode text'" if encoding == "UTF-16" else ""
            if what == "file":  # the path as given: the command works from where the user typed it
                fix = f"convert it, e.g. {_iconv(encoding, Path(path))}, or re-save it as UTF-8"
            else:
                fix = f"decompress it and convert the text, e.g. with iconv -f {encoding} -t UTF-8, or re-save it as UTF-8"
            raise DataError(f"the {what} is {encoding} ({order}, with a byte-order mark{origin}), not UTF-8; {fix}",
                            path=path, readable=False)


def _nul_bytes(raw: bytes, text: str, path: Path) -> DataError:
    """The error for a text with NUL bytes: UTF-16 without a byte-order mark (``iconv -t UTF-16LE``: every
    other byte of a mostly-ASCII text is NUL, at odd offsets little-endian, at even ones big-endian), or
    stray NULs (padding after a crash, a binary file), for which converting would be the wrong advice."""
    line = text.count("\n", 0, text.index("\x00")) + 1
    head = raw[:4096]
    odd, even = head[1::2].count(0), head[0::2].count(0)
    if max(odd, even) > 0.3 * (len(head) // 2) and min(odd, even) < 0.2 * max(odd, even):  # one side only
        order = "LE" if odd > even else "BE"
        return DataError("NUL bytes in every other position, as in a UTF-16 file without a byte-order mark; convert it, "
                         f"e.g. {_iconv(f'UTF-16{order}', path)}", path=path, row=line, readable=False)
    return DataError("a NUL byte, which no text has: a binary file, or one padded with NULs (after a crash, by some "
                     "exporters)? remove them, e.g. tr -d '\\000'", path=path, row=line, readable=False)


def legacy_text(raw: bytes) -> bool:
    """Whether bytes that are not UTF-8 read as text in Windows-1252 / Latin-1 (no NUL, hardly a control
    character): a text file saved in an older encoding, not a file of another kind (audio, an archive)."""
    sample = raw[:65536].rstrip(b"\x1a")  # DOS's end-of-file mark (^Z), which old tools still write
    if b"\x00" in sample:
        return False
    controls = sum(b < 32 and b not in (9, 10, 13) for b in sample)
    return controls <= len(sample) // 1000


def not_utf8(raw: bytes, err: UnicodeDecodeError, path: Path | str, where: str = "") -> DataError:
    """The error for bytes that are not UTF-8: a text in a legacy encoding names the character it reads
    as there (``0xe9``: ``'é'`` in Windows-1252) and is a readable file of the right kind (no "a model
    of another task?" hint in predict); other bytes are a file of another kind.

    Why: a Latin-1 manifest or CSV got predict's "the checkpoint is a model of task ..., which predicts
    from ..." as if the user had picked the wrong checkpoint."""
    start = err.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)  # utf-8-sig counts after its BOM
    byte = raw[start]
    line = len(re.split(rb"\r\n|\r|\n", raw[:start]))  # the line ends the text will have
    if legacy_text(raw):
        try:  # the character it is in the encoding older Excel and Windows tools save text in, when it is one
            shown = f", {bytes([byte]).decode('cp1252')!r} in Windows-1252 / Latin-1"
        except UnicodeDecodeError:
            shown = ""
        return DataError(f"not valid UTF-8 (byte 0x{byte:02x} at offset {start}{where}{shown}): a text saved in another "
                         "encoding, as older Excel and Windows tools save it; re-save the file as UTF-8",
                         path=path, row=line, readable=True)
    return DataError(f"not valid UTF-8 (byte 0x{byte:02x} at offset {start}{where}); re-save the file as UTF-8",
                     path=path, row=line, readable=False)  # not a text: of another kind


def read_text(path: Path) -> str:
    """Read a whole UTF-8 file with clear errors for missing, empty or non-UTF-8 files.

    Line ends are ``\n``: ``\r\n`` (Windows) and a lone ``\r`` (classic Mac OS, some exports) become
    ``\n``, since every reader splits lines at ``\n`` alone. A file of lone ``\r`` ends was read as one
    line without a word (one language-model sentence, one labelled row); the CSV reader already
    ended lines at ``\r``."""
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        raise DataError("expected a file, found a folder", path=path)
    raw = path.read_bytes()
    packed = next((name for magic, name in _COMPRESSED if raw.startswith(magic)), None)
    if packed:  # its bytes would be "not valid UTF-8 (byte 0x8b at offset 1)"
        raise DataError(f"a {packed} archive, not a text file; decompress it first", path=path)
    check_unicode_bom(raw, path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise not_utf8(raw, err, path) from None
    if not text.strip():
        raise DataError("file is empty" + (f" (its {len(text.encode())} bytes are blank lines and spaces)" if text else ""),
                        path=path)
    if "\x00" in text:  # valid UTF-8, but no text has NULs
        raise _nul_bytes(raw, text, path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def labelled_format(path: Path, fmt: str = "auto", delimiter: str | None = None, content: str | None = None) -> str:
    """How :func:`read_labelled_text` reads ``path``: ``csv``, ``tsv``, ``jsonl``, ``prefixed`` or
    ``suffixed`` (``<text><TAB><label>`` lines without a header, found in ``content`` for ``auto``).

    Why its own function: a text classifier records how its training files were read, so that
    predict reads an ``input_file`` of ``<label> <text>`` lines so only for a model trained on such.
    """
    if delimiter is not None and fmt in {"auto", "csv", "tsv"}:
        return "csv"
    if delimiter is not None:
        raise ConfigError(f"data.delimiter={delimiter!r} is for delimited files; data.format={fmt} has no "
                          "delimiter (set data.format=csv, or leave data.delimiter unset)")
    if fmt == "auto":
        found = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "prefixed")
        return "suffixed" if found == "prefixed" and content is not None and _label_after_a_tab(content) else found
    return fmt


def _label_after_a_tab(content: str) -> bool:
    """Lines of ``<text><TAB><label>`` with no header (UCI's "Sentiment Labelled Sentences",
    ``imdb_labelled.txt``): every line's last tab-separated field is one short word of a few values, where
    the first words, read as ``<label> <text>``, would be hundreds of classes of one example each."""
    lines = [line for line in content.split("\n") if line.strip()]
    if len(lines) < 4 or not all("\t" in line for line in lines):
        return False
    labels = [line.rsplit("\t", 1)[1].strip() for line in lines]
    if not all(labels) or any(len(label.split()) != 1 for label in labels):
        return False
    firsts = {line.split(None, 1)[0] for line in lines}
    return len(set(labels)) <= max(2, min(50, len(lines) // 10)) and len(firsts) > 2 * len(set(labels))


def read_labelled_text(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    fmt: str = "auto",
    delimiter: str | None = None,
) -> list[tuple[int, str, str]]:
    """Read ``(row, text, label)`` triples from CSV, TSV, JSONL or label-prefixed lines.

    ``fmt="auto"`` picks by extension: ``.csv``, ``.tsv``, ``.jsonl``/``.json``; anything else
    is read as ``<label> <text>`` lines (the SST-2 ``stsa.binary.*`` layout).
    ``delimiter``: the character between fields of a delimited file (``;`` as spreadsheets of
    some locales write, ``|``); the file is then read as CSV whatever its extension.
    Rows are numbered from 1, counting the header line of CSV/TSV files.
    """
    delimiter = check_delimiter(delimiter)
    content = read_text(path)
    fmt = labelled_format(path, fmt, delimiter, content)
    if fmt == "suffixed":
        log.info("%s: every line is '<text><TAB><label>' (no header), read so", path)
    pairs: list[tuple[int, str, str]] = []
    if fmt in {"csv", "tsv"}:
        try:
            for row, record in csv_records(content, delimiter or ("," if fmt == "csv" else "\t"), path,
                                           required=(text_column, label_column),
                                           hint="data.text_column / data.label_column"):
                pairs.append(_checked(record.get(text_column), record.get(label_column), path, row,
                                      text_column, label_column))
        except DataError as err:
            if err.row != 1 or fmt != "tsv" or not _label_after_a_tab(content):
                raise
            raise DataError(f"{err.message}; a file of '<text><TAB><label>' lines without a header reads with "
                            "data.format=suffixed", path=path, row=1, field=err.field, readable=err.readable) from None
    elif fmt == "jsonl":
        for row, record in jsonl_records(content, path, (text_column, label_column),
                                         "data.text_column / data.label_column"):
            if record.get(text_column) is not None and not isinstance(record[text_column], str):
                raise DataError(f"expected a string, found {type(record[text_column]).__name__} "
                                f"{record[text_column]!r}", path=path, row=row, field=text_column)
            pairs.append(_checked(record.get(text_column), record.get(label_column), path, row,
                                  text_column, label_column))
    elif fmt == "suffixed":
        for row, line in enumerate(content.split("\n"), start=1):
            if line.strip():
                text, label = line.rsplit("\t", 1)
                pairs.append(_checked(text.strip(), label.strip(), path, row, "text", "label"))
    elif fmt == "prefixed":
        for row, line in enumerate(content.split("\n"), start=1):
            if not line.strip():
                continue
            label, *rest = line.split(None, 1)  # "<label> <text>", any whitespace (a tab too) between
            text = rest[0].rstrip() if rest else ""
            try:
                pairs.append(_checked(text, label, path, row, "text", "label"))
            except DataError as err:
                if pairs or not any(sep in line for sep in ",\t{"):
                    raise
                raise DataError(f"{err.message}; the file is read as '<label> <text>' lines (its name ends in "
                                f"{path.suffix or 'no known extension'}): for CSV, TSV or JSON lines set "
                                "data.format=csv, tsv or jsonl", path=path, row=row, field=err.field) from None
    else:
        raise DataError(f"unknown format {fmt!r}; expected auto, csv, tsv, jsonl, prefixed or suffixed", path=path)
    if not pairs:
        raise DataError("no examples found", path=path)
    _check_label_kinds(pairs, path, "label" if fmt in {"prefixed", "suffixed"} else label_column,
                       prefixed=fmt == "prefixed")
    return pairs


def _check_label_kinds(pairs: list[tuple[int, str, str]], path: Path, field: str, prefixed: bool) -> None:
    """Labels that are numbers on most rows and words on a few (or the reverse).

    Why: such a row's label is often not a label, and it became a class of one example: a
    ``<label> <text>`` line that lost its label ("you" beside 0 and 1, found by a new user), a CSV header
    repeated where two files were joined (``label``), or the ``NaN`` that ``astype(str)`` writes for a
    missing value among numeric labels (test accuracy 0.48 -> 0.10). Those are refused; in a table,
    other odd labels (``unrated`` beside 1-5 stars, a class ``2020`` among topics) may be meant, and are
    named in a warning.
    """
    numeric = [_is_int(label) for _, _, label in pairs]
    mostly_numbers = sum(numeric) > len(numeric) / 2
    row, label = next(((r, y) for r, _, y in pairs if y.strip().lower() == "nan"), (0, ""))
    if row and mostly_numbers:  # ("nan" among words is a word: Min Nan's language code)
        raise DataError(f"label {label!r}: a missing value (NaN, as pandas writes one), not a class; give the row "
                        "its label or drop it", path=path, row=row, field=field)
    minority = not mostly_numbers  # the kind fewer rows have
    odd = [(row, label) for (row, _, label), kind in zip(pairs, numeric) if kind == minority]
    if not odd or len(odd) == len(pairs) or (not prefixed and len(odd) > max(1, len(pairs) // 200)):
        return
    usual = sorted({label for (_, _, label), kind in zip(pairs, numeric) if kind != minority})
    row, label = odd[0]
    shown = ", ".join(usual[:5]) + (", ..." if len(usual) > 5 else "")
    said = (f"label {label!r} is {'a number' if minority else 'not a number'}, unlike the file's other labels "
            f"({shown})")
    if prefixed:
        raise DataError(f"{said}; is this line missing its label? Lines are read as '<label> <text>' ({len(odd)} "
                        "such line(s))", path=path, row=row, field=field)
    if label.strip().lower() == field.lower():
        raise DataError(f"{said}: it is the column's name, a header line repeated where files were joined; drop "
                        "it", path=path, row=row, field=field)
    log.warning("%s, row %d, field %r: %s (%d such row(s)): a class of its own; if the row's label is wrong, fix it",
                path, row, field, said, len(odd))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _quoting_error(err: csv.Error, reader: csv.DictReader, path: Path, content: str, done: int,
                   above: int) -> DataError:
    """A CSV record the reader cannot parse (a stray or unclosed quote), at the line it stopped on; a
    quote never closed, at the record it opened in (``done``: the line the record before it ended on;
    ``above``: blank lines cut from the top of the file).

    Why: the reader fails at the end of the file for a quote opened rows before, and that row was
    named: the user looked at the last line, which is fine."""
    hint = ("a field that starts with a quote runs to its closing quote, over lines if need be; a quote "
            "inside a field is written twice (\"\"), and a field that holds a quote is quoted")
    if "end of data" not in str(err):
        return DataError(f"bad CSV quoting ({err}); {hint}", path=path, row=reader.reader.line_num + above)
    lines = content.split("\n")
    start = next((i for i in range(done, len(lines)) if lines[i].strip()), done)  # the record's first line
    shown = lines[start].strip() if start < len(lines) else ""
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DataError(f"a quote opened on this row is never closed: the rest of the file ({reader.reader.line_num - start} "
                     f"line(s)) was read as one field ({shown!r}); {hint}", path=path, row=start + 1 + above)


def check_delimiter(delimiter: Any) -> str | None:
    """``data.delimiter``: one character that can separate fields (``None``: the format's own)."""
    if delimiter is None:
        return None
    if isinstance(delimiter, str) and delimiter.lower() in {"tab", "\\t"}:
        return "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"" or delimiter.isalnum():
        raise ConfigError(f"data.delimiter={delimiter!r}: expected one character between fields, such as ';' or "
                          "'|' (quote it on the command line: 'data.delimiter=\";\"'), or tab")
    return delimiter


def match_columns(
    names: list[Any], wanted: Iterable[str], path: Path, row: int, hint: str, kind: str = "column"
) -> list[Any]:
    """``names`` (a header's, a JSON object's keys) with each ``wanted`` name that is there in another
    case renamed to it: ``data.text_column=text`` reads a column ``Text``, as stock reads ``Close``.

    A name given exactly as it is in the file wins over one that differs only in case; two names that
    differ from a wanted one only in case (``Text`` and ``TEXT``) are a :class:`DataError` (which one
    to read?). Why: only the exact case was found, so a spreadsheet's ``Text,Label`` header was "no
    column 'text'", while the stock reader matched its columns in any case."""
    names = list(names)
    for column in dict.fromkeys(wanted):
        if column in names:
            continue
        same = [i for i, name in enumerate(names) if isinstance(name, str) and name.casefold() == column.casefold()]
        if len(same) > 1:
            found = " and ".join(f"{names[i]!r}" + (f" ({kind} {i + 1})" if kind == "column" else "") for i in same)
            raise DataError(f"{kind}s {found} both match {column!r} (names are matched in any case when none is "
                            f"written exactly so); rename all but the one to read, or set {hint} to its exact name",
                            path=path, row=row, field=column)
        if same:
            names[same[0]] = column
    return names


_QUOTED_FIELD = re.compile(r'(?:^|(?<=[\t\n]))"((?:[^"]|"")*)"(?=[\t\r\n]|$)')


def tsv_quoting(content: str) -> int:
    """How to read a TSV: unquoted (``csv.QUOTE_NONE``), its usual form (GLUE's SST-2), where a text that
    starts with a quote (``"Twist" ending ...``) is text; or quoted (``csv.QUOTE_MINIMAL``) when the whole
    file reads as the quoted TSV that pandas' ``to_csv(sep="\\t")`` and spreadsheets write.

    Why: read unquoted, such a file kept its doubled quotes (``""hi""``) and cut a text holding a newline
    into two rows, the first without its label. Quoted is chosen only when a quoted field shows a quoting
    writer's hand (a doubled quote, a newline or a tab inside it) and the file then parses strictly into
    rows of one width with no tab inside a field; an unquoted text, whose quotes a writer would not have
    needed or do not pair up, stays as it is written, in every file alike.
    """
    # a quoting writer quotes a field only when it must: one holding a doubled quote, a tab or a newline.
    # '"the best film of the year"' alone is GLUE's unquoted text, quotes and all
    if not any('""' in m.group(1) or "\n" in m.group(1) or "\t" in m.group(1) for m in _QUOTED_FIELD.finditer(content)):
        return csv.QUOTE_NONE
    try:
        rows = [row for row in csv.reader(io.StringIO(content, newline=""), delimiter="\t",
                                          quoting=csv.QUOTE_MINIMAL, strict=True) if row]
    except csv.Error:
        return csv.QUOTE_NONE
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        return csv.QUOTE_NONE
    if not any("\t" in field for row in rows for field in row):
        return csv.QUOTE_MINIMAL
    # a tab inside a quoted field: quoted, when read unquoted the file's rows are not of one width (the tab
    # split a text in two); an unquoted file whose rows all fit stays as written
    unquoted = {len(row) for row in csv.reader(io.StringIO(content, newline=""), delimiter="\t",
                                               quoting=csv.QUOTE_NONE) if row}
    return csv.QUOTE_MINIMAL if len(unquoted) > 1 else csv.QUOTE_NONE


_EXCEL_SEP = re.compile(r'\s*"?sep=(.)"?\s*', re.IGNORECASE)


def declared_delimiter(line: str) -> str | None:
    """The delimiter a first line ``sep=;`` declares (Excel writes and reads it), or ``None``.

    Why: read as the header, such a file had one column, "sep=;", and every column was "missing"."""
    match = _EXCEL_SEP.fullmatch(line.rstrip("\r\n"))
    return match.group(1) if match else None


def csv_records(
    content: str, delimiter: str, path: Path, required: Iterable[str], hint: str, optional: Iterable[str] = (),
    skipinitialspace: bool = False,
) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(row, record)`` for each record of a CSV/TSV text; ``row`` is the record's first line in the
    file (the header is line 1), so blank lines and quoted newlines do not shift it. TSV is read
    unquoted (its usual form: GLUE's SST-2) unless the file is quoted throughout (:func:`tsv_quoting`),
    CSV with standard quoting.

    Read as a stream, not as split lines: a quoted field may hold a newline, which ``splitlines()``
    would cut into two records. A missing ``required`` column or a record with more fields than the
    header raises :class:`DataError`; ``hint`` names the options that choose the columns. The
    ``required`` and ``optional`` columns are found in any case (:func:`match_columns`), and the
    records are keyed by the names asked for.
    """
    # blank lines above the header (a file written with a leading newline): the header is the first line
    # with text, and rows keep their numbers in the file ("the header has []" otherwise)
    # and Excel's "sep=;" line above it: the file says its delimiter, and the header follows
    above, declared = 0, None
    while content:
        first, _, rest = content.partition("\n")
        if first.strip() and (declared is not None or (declared := declared_delimiter(first)) is None):
            break
        content, above = rest, above + 1
    if declared is not None and declared != delimiter:
        log.info("%s: its 'sep=' line declares the delimiter %r; read so", path, declared)
    delimiter = declared or delimiter
    quoting = tsv_quoting(content) if delimiter == "\t" else csv.QUOTE_MINIMAL
    # strict: a stray quote ('"great movie,1') is an error; unstrict, it swallowed the next line into
    # one text, with the second line's label (an example lost, another mislabelled, without a word)
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter, quoting=quoting, strict=True,
                            skipinitialspace=skipinitialspace)  # the stock reader's pandas reads "a, b" so
    try:
        header = reader.fieldnames or []
    except csv.Error as err:
        raise _quoting_error(err, reader, path, content, 0, above) from None
    # "text, label" (a space after the comma, as people type headers): the column is 'label', not ' label'
    header = [name.strip() if isinstance(name, str) else name for name in header]
    required = list(required)
    shown = header  # the messages show the file's own names
    header = reader.fieldnames = match_columns(header, [*required, *optional], path, 1 + above, hint)
    read_columns = [column for column in dict.fromkeys([*required, *optional]) if column in header]
    for column in dict.fromkeys(required):
        # DictReader keeps the last of two same-named columns: the first would be dropped silently
        if header.count(column) > 1:
            places = [str(i + 1) for i, name in enumerate(header) if name == column]
            raise DataError(f"the header names column {column!r} {len(places)} times (columns {', '.join(places)}); "
                            f"rename all but the one to read, or set {hint}", path=path, row=1 + above, field=column)
    for column in required:
        if column not in header:
            other_sep, other_name, other_fmt = ("\t", "tab", "tsv") if delimiter == "," else (",", "comma", "csv")
            fix = f"data.format={other_fmt}" if delimiter in ",\t" else "data.delimiter to it, or unset it"
            # split at the other separator, the header names the columns asked for: not a sentence's commas
            other = (f" (the header holds {other_name}s: set {fix})"
                     if any(column.casefold() in (name.strip().casefold() for h in header for name in str(h).split(other_sep))
                            for column in required) else "")
            if not other and len(header) == 1 and ";" in str(header[0]):
                other = (" (the header is one column with ';' in it: a ';'-separated file, as spreadsheets of "
                         "some locales write; set 'data.delimiter=\";\"')")
            elif not other and any(str(h).strip().lstrip("-").replace(".", "", 1).isdigit() or len(str(h)) > 40
                                   for h in header):
                other = (" (the first line looks like data, not a header: the first line must name the columns, "
                         f"{' and '.join(repr(c) for c in required)} among them)")
            raise DataError(f"no column {column!r}; the header has {shown}. Set {hint} to the right names{other}",
                            path=path, row=1 + above, field=column, readable=False)  # perhaps a table of another kind
    while True:
        done = reader.line_num  # the last line of the record before: an unclosed quote opened after it
        try:
            record = next(reader, None)  # skips blank lines, so the row is counted back from its last line
        except csv.Error as err:
            raise _quoting_error(err, reader, path, content, done, above) from None
        if record is None:
            return
        inside = sum(str(v).count("\n") for v in record.values() if isinstance(v, str))
        inside += sum(str(v).count("\n") for v in record.get(None) or ())  # type: ignore[union-attr]
        row = reader.line_num - inside + above  # the record's first line: its last, less its quoted newlines
        if any(str(v).strip() for v in record.get(None) or ()):  # DictReader's place for extra fields
            fields = len(header) + len(record[None])  # type: ignore[index]
            raise DataError(f"{fields} fields, but the header has {len(header)} ({shown}); quote a field "
                            "that contains the delimiter", path=path, row=row)
        # a column this reader reads, missing from the row (DictReader's restval): "wav/2_george_4.wav,tw" under
        # path,text,speaker,split was a cut-off row read as "tw"; a column it does not read may be left off
        if any(record.get(column) is None for column in read_columns):
            fields = sum(value is not None for key, value in record.items() if key is not None)
            raise DataError(f"{fields} field(s), but the header has {len(header)} ({shown}): the row is cut short "
                            "(a truncated file?) or lacks its delimiters; an empty field is still written with its "
                            "delimiter (a,,c)", path=path, row=row)
        yield row, record


def jsonl_records(
    content: str, path: Path, columns: Iterable[str] = (), hint: str = "the key options"
) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(row, object)`` for each non-blank line of a JSON-lines text; the keys ``columns`` are found in
    any case, as a CSV header's columns are (:func:`match_columns`; ``hint``: the options naming them).

    Split at ``\\n`` only: ``splitlines()`` also splits at characters JSON strings may hold raw
    (U+2028, form feed), which would cut a record and shift every later row number.

    A ``.json`` file that is one JSON array of objects (``json.dump(records, f)``, a NeMo-style export)
    is read too, its objects numbered from 1 as rows: its name promised JSON, not JSON Lines.
    """
    columns = list(columns)
    array = _is_json_array(content, path)
    if not array:
        _refuse_wrapped_array(content, path, columns)
    for row, record in _json_array(content, path) if array else _json_lines(content, path):
        if not isinstance(record, dict):
            kind = "in the JSON array" if array else "per line (JSON Lines)"
            looks = _LOOKS_LIKE_AN_ARRAY if isinstance(record, list) and not array else ""
            raise DataError(f"expected a JSON object {kind}, found {type(record).__name__}{looks}", path=path, row=row)
        if columns and not all(column in record for column in columns):
            record = dict(zip(match_columns(list(record), columns, path, row, hint, kind="key"), record.values()))
        yield row, record


_LOOKS_LIKE_AN_ARRAY = "; the file looks like one JSON array: write one object per line (JSON Lines), or name it .json"


def _is_json_array(content: str, path: Path) -> bool:
    return path.suffix.lower() == ".json" and content.lstrip().startswith("[")


def _refuse_wrapped_array(content: str, path: Path, columns: list[str]) -> None:
    """A ``.json`` file that is one object holding the records under a key (``{"data": [...]}``, a
    common export) is refused, naming the key: read as JSON Lines it was one record "missing" its
    text, which sent the user looking at the wrong thing."""
    if path.suffix.lower() != ".json" or not content.lstrip().startswith("{"):
        return
    try:
        whole = json.loads(content)
    except json.JSONDecodeError:
        return  # JSON Lines after all, or broken: the line reader names the row
    if not isinstance(whole, dict) or any(column.casefold() in map(str.casefold, map(str, whole)) for column in columns):
        return
    keys = [key for key, value in whole.items() if isinstance(value, list) and value and isinstance(value[0], dict)]
    if keys:
        found = ", ".join(f"{key!r} ({len(whole[key])} objects)" for key in keys)
        raise DataError(f"expected a JSON array of objects (or one object per line), found one object whose key "
                        f"{found} holds the records; write that list itself (json.dump(records, f))", path=path)


def _json_array(content: str, path: Path) -> Iterable[tuple[int, Any]]:
    """The items of a ``.json`` file that is one array, numbered from 1."""
    try:
        items = json.loads(content)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg}, line {err.lineno} column {err.colno})", path=path) from None
    if not isinstance(items, list):
        raise DataError(f"expected a JSON array of objects, found {type(items).__name__}", path=path)
    return enumerate(items, start=1)


def _json_lines(content: str, path: Path) -> Iterable[tuple[int, Any]]:
    """The objects of the non-blank lines of a JSON Lines text, with their line numbers."""
    for row, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield row, json.loads(line)
        except json.JSONDecodeError as err:
            looks = _LOOKS_LIKE_AN_ARRAY if line.lstrip().startswith("[") else ""
            raise DataError(f"invalid JSON ({err.msg}){looks}", path=path, row=row) from None


def _checked(
    text: Any, label: Any, path: Path, row: int, text_col: str, label_col: str
) -> tuple[int, str, str]:
    if text is None or not str(text).strip():
        raise DataError("empty or missing text", path=path, row=row, field=text_col)
    if label is None or str(label).strip() == "":
        raise DataError("empty or missing label", path=path, row=row, field=label_col)
    return row, str(text), str(label).strip()
