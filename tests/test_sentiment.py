"""Sentiment data: the generated corpus, the real-format loaders and their errors, bucketing."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

from lstmkit.data.base import BucketBatchSampler
from lstmkit.data.sentiment import SentimentDataModule, generate_reviews
from lstmkit.data.text import PAD, UNK, read_labelled_text
from lstmkit.encoders import EmbeddingEncoder
from lstmkit.errors import ConfigError, DataError
from lstmkit.types import DataSpec

from .conftest import run_notebook, shared_data


def test_generated_corpus_is_deterministic_and_varied() -> None:
    a, b = generate_reviews(500, seed=3), generate_reviews(500, seed=3)
    assert a == b
    assert generate_reviews(50, seed=4) != a[:50]
    labels = [y for _, y in a]
    assert 0.35 < labels.count("positive") / len(labels) < 0.65
    lengths = [len(t.split()) for t, _ in a]
    assert min(lengths) < 12 and max(lengths) > 40  # varied length
    assert any(" not " in t or " never " in t for t, _ in a)  # negation present
    assert any(" but " in t for t, _ in a)  # contrast present


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "prefixed"])
def test_loaders_read_every_format(tmp_path: Path, fmt: str) -> None:
    rows = [("a great film", "pos"), ("a dull film", "neg")] * 10
    if fmt == "csv":
        path = _write(tmp_path / "d.csv", "review,sentiment\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    elif fmt == "tsv":
        path = _write(tmp_path / "d.tsv", "review\tsentiment\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    elif fmt == "jsonl":
        path = _write(tmp_path / "d.jsonl", "".join(json.dumps({"review": t, "sentiment": y}) + "\n" for t, y in rows))
    else:
        path = _write(tmp_path / "d.txt", "".join(f"{y} {t}\n" for t, y in rows))
    dm = SentimentDataModule(path=str(path), text_column="review", label_column="sentiment", batch_size=4)
    dm.setup()
    assert dm.spec.classes == ["neg", "pos"]
    assert sum(len(s) for s in dm.splits.values()) == 20  # nothing lost
    batch = next(iter(dm.train_dataloader()))
    assert batch.inputs.dtype == torch.int64 and batch.lengths.max() == batch.inputs.shape[1]


def test_folder_keeps_its_splits_and_label_names(tmp_path: Path) -> None:
    for name, n in [("stsa.binary.train", 12), ("stsa.binary.dev", 3), ("stsa.binary.test", 5)]:
        _write(tmp_path / name, "".join(f"{i % 2} film number {i}\n" for i in range(n)))
    dm = SentimentDataModule(path=str(tmp_path), label_names={0: "negative", 1: "positive"})
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 12, "val": 3, "test": 5}
    assert dm.spec.classes == ["negative", "positive"]


def test_bad_inputs_name_the_file_and_row(tmp_path: Path) -> None:
    missing = SentimentDataModule(path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="nope.csv: data.path does not exist"):
        missing.setup()
    bad_column = _write(tmp_path / "c.csv", "text,stars\nfine,1\n")
    with pytest.raises(DataError, match=r"c.csv, row 1, field 'label': no column 'label'.*\['text', 'stars'\]"):
        SentimentDataModule(path=str(bad_column)).setup()
    empty_label = _write(tmp_path / "e.csv", "text,label\nfine,1\nokay,\n")
    with pytest.raises(DataError, match=r"e.csv, row 3, field 'label': empty or missing label"):
        SentimentDataModule(path=str(empty_label)).setup()
    latin1 = tmp_path / "l.txt"
    latin1.write_bytes("1 caf\xe9 good\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l.txt, row 1: not valid UTF-8"):
        SentimentDataModule(path=str(latin1)).setup()
    # after a UTF-8 byte-order mark the offset is still the file's (utf-8-sig counted it after the mark)
    latin1.write_bytes(b"\xef\xbb\xbf" + "text,label\ncaf\xe9 good,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l.txt, row 2: not valid UTF-8 \(byte 0xe9 at offset 17, 'é' in Windows-1252"):
        read_labelled_text(latin1, fmt="csv")
    _write(tmp_path / "empty.tsv", "  \n")
    with pytest.raises(DataError, match="file is empty"):
        SentimentDataModule(path=str(tmp_path / "empty.tsv")).setup()


def test_unknown_label_in_test_split_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "train.txt", "0 bad\n1 good\n0 awful\n1 great\n")
    _write(tmp_path / "dev.txt", "0 bad\n")
    _write(tmp_path / "test.txt", "1 good\n2 meh\n")
    with pytest.raises(DataError, match=r"test.txt, row 2, field 'label': label '2' is not one of the classes"):
        SentimentDataModule(path=str(tmp_path)).setup()


def test_bucketing_covers_every_example_once_and_cuts_padding() -> None:
    dm = SentimentDataModule(num_examples=800, batch_size=16, bucketing=True)
    dm.setup()
    dataset = dm.splits["train"]
    sampler = BucketBatchSampler(range(len(dataset)), 16, False, lengths=dataset.lengths)
    seen = [i for batch in sampler for i in batch]
    assert sorted(seen) == list(range(len(dataset)))

    def padding(loader) -> int:
        return sum(int(b.inputs.numel() - b.lengths.sum()) for b in loader)

    plain = SentimentDataModule(num_examples=800, batch_size=16, bucketing=False)
    plain.setup()
    assert padding(dm.train_dataloader()) < 0.5 * padding(plain.train_dataloader())


def test_real_sst2_files_load_with_their_splits() -> None:
    root = shared_data("sentiment")
    dm = SentimentDataModule(path=str(root), tokenizer="whitespace", label_names={0: "negative", 1: "positive"})
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6920, "val": 872, "test": 1821}
    assert dm.spec.classes == ["negative", "positive"]


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = run_notebook("sentiment", tmp_path, monkeypatch)
    assert list(tmp_path.glob("logs/sentiment/runs/*/plots/confusion_matrix.png"))
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "test/acc" in text and "the acting was truly wonderful" in text


def test_word_dropout_hides_whole_words_in_training_only() -> None:
    spec = DataSpec(input_kind="tokens", vocab=[PAD, UNK, *"abcdefgh"], pad_id=0)
    encoder = EmbeddingEncoder(spec, dim=4, word_dropout=0.3)
    ids = torch.randint(2, 10, (64, 50))
    ids[:, 40:] = 0  # padding
    lengths = torch.full((64,), 40)
    torch.manual_seed(0)
    out, _ = encoder.train()(ids, lengths)
    unk, pad = encoder.embedding.weight[1], encoder.embedding.weight[0]
    hidden = (out == unk).all(-1)
    assert 0.25 < hidden[:, :40].float().mean() < 0.35  # about 30 % of the words
    assert not hidden[:, 40:].any() and (out[:, 40:] == pad).all()  # padding is never replaced
    evaluated, _ = encoder.eval()(ids, lengths)
    assert torch.equal(evaluated, encoder.embedding(ids))
    with pytest.raises(ConfigError, match=r"needs an <unk> token"):
        EmbeddingEncoder(DataSpec(input_kind="tokens", vocab=[PAD, "a"], pad_id=0), word_dropout=0.1)
    with pytest.raises(ConfigError, match=r"word_dropout must be in \[0, 1\)"):
        EmbeddingEncoder(spec, word_dropout=1.0)


def test_embedding_init_std() -> None:
    spec = DataSpec(input_kind="tokens", vocab=[PAD, UNK, *[f"w{i}" for i in range(500)]], pad_id=0)
    torch.manual_seed(0)
    weight = EmbeddingEncoder(spec, dim=64, init_std=0.05).embedding.weight
    assert abs(float(weight[1:].std()) - 0.05) < 0.002 and torch.equal(weight[0], torch.zeros(64))
    assert abs(float(EmbeddingEncoder(spec, dim=64).embedding.weight[1:].std()) - 1.0) < 0.05  # PyTorch's default
    with pytest.raises(ConfigError, match="init_std must be > 0"):
        EmbeddingEncoder(spec, init_std=0.0)


def test_label_prefixed_lines_split_at_any_whitespace_and_jsonl_text_is_a_string(tmp_path: Path) -> None:
    from lstmkit.data.text import read_labelled_text

    tabbed = tmp_path / "reviews.txt"
    tabbed.write_text("0\tthe plot drags\n1  the cast shines \n")
    assert read_labelled_text(tabbed) == [(1, "the plot drags", "0"), (2, "the cast shines", "1")]
    numbers = tmp_path / "reviews.jsonl"
    numbers.write_text('{"text": "fine", "label": 1}\n{"text": 123, "label": 0}\n')
    with pytest.raises(DataError, match=r"reviews\.jsonl, row 2, field 'text': expected a string, found int 123"):
        read_labelled_text(numbers)
    booleans = tmp_path / "flags.jsonl"  # JSON's booleans are the classes "True" / "False", as checkpoints hold them
    booleans.write_text('{"text": "fine", "label": true}\n{"text": "dull", "label": false}\n')
    assert read_labelled_text(booleans) == [(1, "fine", "True"), (2, "dull", "False")]


def test_a_line_that_lost_its_label_is_refused_and_a_single_example_class_is_named(tmp_path: Path, caplog) -> None:
    """SST-2 with one line's leading "0 " removed trained without a word: "you" became a third class of
    one example (found by a new user)."""
    import logging

    lines = [f"{i % 2} review number {i} was {'good' if i % 2 else 'bad'}" for i in range(300)]
    lines[100] = "you will love it"
    (tmp_path / "stsa.binary.train").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"stsa\.binary\.train, row 101, field 'label': label 'you' is not a number, "
                                         r"unlike the file's other labels \(0, 1\); is this line missing its label"):
        read_labelled_text(tmp_path / "stsa.binary.train")
    # labels that are words everywhere: a class of one training example is named, with its row
    rows = ["text,label"] + [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(300)] + ["odd one,neutral"]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SentimentDataModule(path=str(tmp_path / "reviews.csv"), val_fraction=0.0, test_fraction=0.0).setup()
    assert "class 'neutral' has a single training example" in caplog.text and "row 302" in caplog.text


def test_resuming_from_a_run_with_another_vocabulary_is_refused(make_cfg, tmp_path: Path) -> None:
    """Same vocabulary size, another order: Lightning would load it and pair rows with other words."""
    from hydra.utils import instantiate

    from lstmkit.checkpoints import check_resumable
    from lstmkit.commands.train import build_model
    from lstmkit.errors import CheckpointError

    def model(n: int):
        cfg = make_cfg([f"data.num_examples={n}", "model.hidden_size=8", "encoder.dim=8"])
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup("fit")
        return build_model(cfg, datamodule)

    small, large = model(300), model(2000)
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, path)
    check_resumable(path, small)  # the same run: fine
    assert sorted(small.hparams["spec"]["vocab"]) == sorted(large.hparams["spec"]["vocab"])  # the case in point
    with pytest.raises(CheckpointError, match=r"small\.ckpt: cannot resume this run from it, .*vocab \(\d+ entries in "
                                              r"another order\)"):
        check_resumable(path, large)
    # batching and reading options may change; float statistics may differ in their last bits
    spec = {**small.hparams["spec"], "tokenizer": {**small.hparams["spec"]["tokenizer"], "max_length": 7}}
    spec["extra"] = {**spec.get("extra", {}), "bptt": 99}
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": {**dict(small.hparams), "spec": spec}}, path)
    check_resumable(path, small)


def test_a_label_map_must_name_every_training_label(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(20)))
    module = SentimentDataModule(path=str(data), label_names={"0": "negative"})
    with pytest.raises(DataError, match=r"label_names maps \['0'\], but the training labels \['1'\] are not"):
        module.setup("fit")
    module = SentimentDataModule(path=str(data), label_names={0: "negative", 1: "positive"})
    module.setup("fit")
    assert module.spec.classes == ["negative", "positive"]


def test_trailing_empty_csv_fields_are_not_extra_fields(tmp_path: Path) -> None:
    from lstmkit.data.text import read_labelled_text

    data = tmp_path / "reviews.csv"
    data.write_text('text,label\ngood film,1,\n"a long, slow film",0,,\n')
    assert read_labelled_text(data) == [(2, "good film", "1"), (3, "a long, slow film", "0")]


def test_spaces_around_header_names_are_not_part_of_them(tmp_path: Path) -> None:
    """``text, label`` (a space after the comma, as headers are typed) was refused: no column 'label',
    the header has ['text', ' label']."""
    from lstmkit.data.text import read_labelled_text

    data = tmp_path / "reviews.csv"
    data.write_text("text, label \ngood film,1\n")
    assert read_labelled_text(data) == [(2, "good film", "1")]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_column_names_are_matched_in_any_case(tmp_path: Path, suffix: str) -> None:
    """``data.text_column=text`` did not find a header ``Text`` (the stock reader matches any case). A
    name written exactly so wins over another case of it; two other cases of it are an error."""
    from lstmkit.data.text import read_labelled_text

    def table(header: list[str], rows: list[list[str]]) -> Path:
        path = tmp_path / f"reviews{suffix}"
        if suffix == ".jsonl":
            path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows))
        else:
            sep = "," if suffix == ".csv" else "\t"
            path.write_text("".join(sep.join(line) + "\n" for line in [header, *rows]))
        return path

    first = 1 if suffix == ".jsonl" else 2
    assert read_labelled_text(table(["Text", "LABEL"], [["good film", "1"]])) == [(first, "good film", "1")]
    exact = table(["TEXT", "text", "Label"], [["not this", "good film", "1"]])
    assert read_labelled_text(exact) == [(first, "good film", "1")]
    assert read_labelled_text(exact, text_column="TEXT") == [(first, "not this", "1")]
    with pytest.raises(DataError, match=r"reviews\.\w+, row 1, field 'text': (column|key)s 'Text'.* and 'TEXT'.* both "
                                        r"match 'text' .*set data\.text_column / data\.label_column to its exact name"):
        read_labelled_text(table(["Text", "TEXT", "label"], [["a", "b", "1"]]))


def test_pasted_typographic_quotes_and_combining_accents_read_as_typed_text() -> None:
    from lstmkit.data.text import tokenize

    assert tokenize("It\u2019s a \u201cgreat\u201d cafe\u0301") == tokenize('it\'s a "great" caf\u00e9')
    assert tokenize("it\u2019s", level="char") == list("it's")


def test_compressed_files_and_json_arrays_say_what_they_are(tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "reviews.csv.gz"
    packed.write_bytes(gzip.compress(b"text,label\ngreat,1\n"))
    with pytest.raises(DataError, match=r"reviews\.csv\.gz: a gzip archive, not a text file; decompress it first"):
        read_labelled_text(packed, fmt="csv")
    array = tmp_path / "reviews.jsonl"  # JSON Lines by name, one array inside
    array.write_text('[{"text": "great", "label": 1},\n {"text": "dull", "label": 0}]\n')
    with pytest.raises(DataError, match=r"reviews\.jsonl, row 1: invalid JSON .*looks like one JSON array: write one "
                                        r"object per line \(JSON Lines\), or name it \.json"):
        read_labelled_text(array)
    array.write_text('[{"text": "great", "label": 1}, {"text": "dull", "label": 0}]\n')
    with pytest.raises(DataError, match=r"expected a JSON object per line \(JSON Lines\), found list; the file looks"):
        read_labelled_text(array)
    # a .json file that is one array (json.dump of a list) is read: its objects are the rows
    named = tmp_path / "reviews.json"
    named.write_text('[{"Text": "great", "label": 1},\n {"Text": "dull", "label": 0}]\n')
    assert read_labelled_text(named) == [(1, "great", "1"), (2, "dull", "0")]
    named.write_text('[{"text": "great", "label": 1}, ["dull", 0]]')
    with pytest.raises(DataError, match=r"reviews\.json, row 2: expected a JSON object in the JSON array, found list"):
        read_labelled_text(named)
    # one object holding the records under a key (an API export) names the key, on one line or many
    for indent in (None, 2):
        named.write_text(json.dumps({"meta": {"n": 2}, "data": [{"text": "great", "label": 1}, {"text": "x", "label": 0}]},
                                    indent=indent))
        with pytest.raises(DataError, match=r"reviews\.json: expected a JSON array of objects .*found one object whose "
                                            r"key 'data' \(2 objects\) holds the records"):
            read_labelled_text(named)


def test_a_column_named_twice_in_the_header_is_refused(tmp_path: Path) -> None:
    """csv.DictReader keeps the last of two same-named columns: ids in a second "text" column
    were trained on as the text, with no word."""
    twice = tmp_path / "reviews.csv"
    twice.write_text("text,label,text\ngreat film,1,id0\ndull,0,id1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews\.csv, row 1.*column 'text' 2 times \(columns 1, 3\)"):
        read_labelled_text(twice)
    twice.write_text("text,label,id,id\ngreat film,1,a,b\n", encoding="utf-8")  # columns not read may repeat
    assert read_labelled_text(twice) == [(2, "great film", "1")]


def test_a_quoted_csv_field_keeps_its_newline_and_rows_are_first_file_lines(tmp_path: Path) -> None:
    from lstmkit.data.text import read_labelled_text

    data = tmp_path / "reviews.csv"
    data.write_text('text,label\n"first line\nsecond line",1\nplain,0\n,1\n')
    with pytest.raises(DataError, match=r"reviews\.csv, row 5, field 'text': empty or missing text"):
        read_labelled_text(data)
    data.write_text('text,label\n"first line\nsecond line",1\nplain,0\n')
    assert read_labelled_text(data) == [(2, "first line\nsecond line", "1"), (4, "plain", "0")]


def _rows(n: int, start: int = 0) -> str:
    return "text,label\n" + "".join(f"review number {i} {'good' if i % 2 else 'bad'},{i % 2}\n"
                                    for i in range(start, start + n))


def test_a_folder_with_train_and_test_carves_only_val_and_loses_no_row(tmp_path: Path, caplog) -> None:
    import logging

    (tmp_path / "train_reviews.csv").write_text(_rows(100))  # a whole name part, not the whole stem
    (tmp_path / "test_reviews.csv").write_text(_rows(20, start=100))
    (tmp_path / "pretrain.csv").write_text(_rows(4, start=500))  # "pretrain" is not "train"
    (tmp_path / "README.md").write_text("notes")  # a folder's notes: not data, no warning
    dm = SentimentDataModule(path=str(tmp_path), seed=0)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm.setup()
    assert "1 file(s) not read, having no train / valid|val|dev / test part in their names: pretrain.csv" in caplog.text
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 90, "val": 10, "test": 20}  # all 100 training rows are used
    whole = SentimentDataModule(path=str(tmp_path), seed=0, whole=True, spec=dm.spec.to_dict())
    whole.setup("test")
    assert len(whole.splits["test"]) == 120  # split=all: every row of the files
    (tmp_path / "train.csv").write_text(_rows(10))
    with pytest.raises(DataError, match=r"several files look like the train split: \['train.csv', 'train_reviews.csv'\]"):
        SentimentDataModule(path=str(tmp_path)).setup()


def test_tsv_is_unquoted_unless_quoted_throughout_and_rows_count_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text('text\tlabel\n"a film\t1\nthe plot was dull\t0\nthe "twist\t1\n')
    assert read_labelled_text(tmp_path / "q.tsv") == [(2, '"a film', "1"), (3, "the plot was dull", "0"),
                                                     (4, 'the "twist', "1")]
    # quoted throughout, as pandas' to_csv(sep="\t") writes a text with quotes or a newline: read quoted (read
    # unquoted, the doubled quotes stayed and the newline cut a row off its label: "row 3, empty label")
    import pandas as pd

    pd.DataFrame({"text": ['he said "hi" and left', "two\nlines", '"Twist" ending', "plain"], "label": [1, 0, 1, 0]}
                 ).to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    assert read_labelled_text(tmp_path / "pandas.tsv") == [(2, 'he said "hi" and left', "1"), (3, "two\nlines", "0"),
                                                         (5, '"Twist" ending', "1"), (6, "plain", "0")]
    # a tab inside a quoted field (pandas quotes it): read quoted, as read unquoted the row is a field too wide
    pd.DataFrame({"text": ["a\ttabbed text", "plain"], "label": [1, 0]}).to_csv(tmp_path / "tab.tsv", sep="\t", index=False)
    assert read_labelled_text(tmp_path / "tab.tsv") == [(2, "a\ttabbed text", "1"), (3, "plain", "0")]
    (tmp_path / "paired.tsv").write_text('text\tlabel\n"a film\t1\nthe plot" was dull\t0\n')  # unpaired: as written
    assert read_labelled_text(tmp_path / "paired.tsv") == [(2, '"a film', "1"), (3, 'the plot" was dull', "0")]
    # quotes no writer needed: GLUE's text, kept as written (they were stripped when the file parsed quoted)
    (tmp_path / "glue.tsv").write_text('text\tlabel\n"the best film of the year"\t1\nawful "comedy"\t0\n')
    assert read_labelled_text(tmp_path / "glue.tsv") == [(2, '"the best film of the year"', "1"), (3, 'awful "comedy"', "0")]
    (tmp_path / "blank.csv").write_text("text,label\ngood film,1\n\n\nbad film,\n")
    with pytest.raises(DataError, match=r"blank\.csv, row 5, field 'label': empty or missing label"):
        read_labelled_text(tmp_path / "blank.csv")


def test_a_file_in_another_format_than_its_name_says_points_to_data_format(tmp_path: Path) -> None:
    (tmp_path / "as.txt").write_text("text,label\ngood film,1\nbad film,0\n")
    with pytest.raises(DataError, match=r"as\.txt, row 1, field 'text': empty or missing text; the file is read as "
                                         r"'<label> <text>' lines .*set data\.format=csv, tsv or jsonl"):
        read_labelled_text(tmp_path / "as.txt")
    assert len(read_labelled_text(tmp_path / "as.txt", fmt="csv")) == 2
    (tmp_path / "tabs.csv").write_text("text\tlabel\ngood film\t1\n")
    with pytest.raises(DataError, match=r"the header holds tabs: set data\.format=tsv"):
        read_labelled_text(tmp_path / "tabs.csv")


def test_an_unknown_label_in_eval_data_names_the_files_first_such_row(tmp_path: Path) -> None:
    """Every row is bad: the error named the first bad row of whichever split came first (row 44)."""
    trained = SentimentDataModule(num_examples=120)
    trained.setup()  # classes ['negative', 'positive']
    rows = "".join(f"good film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60))
    (tmp_path / "b.csv").write_text("text,label\n" + rows)
    dm = SentimentDataModule(path=str(tmp_path / "b.csv"), spec=trained.spec.to_dict())
    with pytest.raises(DataError, match=r"b\.csv, row 2, field 'label': label 'neg' is not one of the classes "
                                        r"\['negative', 'positive'\] \(the checkpoint's\); 60 row\(s\) have such labels"):
        dm.setup("test")


def test_eval_scores_a_folder_that_holds_only_a_test_file(tmp_path: Path) -> None:
    """The vocabulary and classes are the checkpoint's: a held-out folder needs no training file."""
    trained = SentimentDataModule(num_examples=120)
    trained.setup()
    folder = tmp_path / "held_out"
    folder.mkdir()
    (folder / "test_reviews.csv").write_text("text,label\n" + "".join(
        f"good film {i},{'positive' if i % 2 else 'negative'}\n" for i in range(30)))
    dm = SentimentDataModule(path=str(folder), spec=trained.spec.to_dict())
    dm.setup("test")
    assert len(dm.splits["test"]) == 30 and len(dm.splits["train"]) == 0  # every row scored, none carved
    with pytest.raises(DataError, match=r"folder has no training file"):  # training still needs one
        SentimentDataModule(path=str(folder)).setup()


def test_labels_that_differ_only_in_case_are_named(tmp_path: Path, caplog) -> None:
    """" Positive " beside "positive" trained as two classes without a word (found by a new user)."""
    import logging

    rows = ["text,label"] + [f"review {i},{('Positive' if i % 10 == 1 else 'positive') if i % 2 else 'negative'}"
                             for i in range(300)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SentimentDataModule(path=str(tmp_path / "reviews.csv"), val_fraction=0.0, test_fraction=0.0)
        dm.setup()
    assert dm.spec.classes == ["Positive", "negative", "positive"]
    assert "labels ['Positive', 'positive'] differ only in upper/lower case" in caplog.text


def test_labels_that_are_the_same_number_are_named(tmp_path: Path, caplog) -> None:
    """1 beside 1.0 (a label column pandas once held a NaN in writes floats) trained as two classes without a
    word (found by a new user); 1 beside 10 or 2 is not a spelling of one label."""
    import logging

    labels = ["1" if i % 10 == 1 else "1.0" if i % 2 else "0" for i in range(300)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "".join(f"review {i},{y}\n" for i, y in enumerate(labels)))
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SentimentDataModule(path=str(tmp_path / "reviews.csv"), val_fraction=0.0, test_fraction=0.0)
        dm.setup()
    assert dm.spec.classes == ["0", "1", "1.0"]
    assert "labels ['1', '1.0'] are the same number, so each is a class of its own (120 examples of '1.0'" in caplog.text
    caplog.clear()
    (tmp_path / "reviews.csv").write_text("text,label\n" + "".join(f"review {i},{i % 3 * 5}\n" for i in range(300)))
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SentimentDataModule(path=str(tmp_path / "reviews.csv"), val_fraction=0.0, test_fraction=0.0).setup()
    assert "same number" not in caplog.text


def test_a_semicolon_or_headerless_csv_gets_a_hint_that_fits(tmp_path: Path) -> None:
    """Both used to be told "set data.text_column / data.label_column", which cannot fix either."""
    (tmp_path / "semi.csv").write_text("text;label\ngood film;1\nbad film;0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"semi\.csv, row 1.*a ';'-separated file.*set 'data\.delimiter=\";\"'"):
        read_labelled_text(tmp_path / "semi.csv")
    assert read_labelled_text(tmp_path / "semi.csv", delimiter=";") == [(2, "good film", "1"), (3, "bad film", "0")]
    (tmp_path / "bare.csv").write_text("a truly good film,1\nbad film,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bare\.csv, row 1.*the first line looks like data, not a header"):
        read_labelled_text(tmp_path / "bare.csv")


def test_a_delimiter_reads_semicolon_and_pipe_files(tmp_path: Path) -> None:
    """data.delimiter: a ';' file from a spreadsheet, or '|' in a .txt, read as CSV (quoting kept)."""
    (tmp_path / "semi.csv").write_text('text;label\n"a film; long";1\ndull;0\n', encoding="utf-8")
    (tmp_path / "pipes.txt").write_text("text|label\ngreat|1\nbad|0\n", encoding="utf-8")
    assert read_labelled_text(tmp_path / "pipes.txt", delimiter="|") == [(2, "great", "1"), (3, "bad", "0")]
    dm = SentimentDataModule(path=str(tmp_path / "semi.csv"), delimiter=";", val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    assert len(dm.splits["train"]) == 2 and dm.spec.classes == ["0", "1"]
    for bad in ("", ";;", "a", '"'):
        with pytest.raises(ConfigError, match=r"data\.delimiter=.*expected one character between fields"):
            SentimentDataModule(path=str(tmp_path / "semi.csv"), delimiter=bad)
    with pytest.raises(ConfigError, match=r"data\.format=jsonl has no delimiter"):
        read_labelled_text(tmp_path / "semi.csv", fmt="jsonl", delimiter=";")
    # a ',' file read with ';': the header is one column holding commas, and the hint says so
    (tmp_path / "comma.csv").write_text("text,label\ngood,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"comma\.csv, row 1.*the header holds commas: set data\.delimiter"):
        read_labelled_text(tmp_path / "comma.csv", delimiter=";")


def test_a_stray_quote_is_an_error_not_two_examples_merged(tmp_path: Path) -> None:
    """Read unstrictly, '"great movie,1' swallowed the next line: one text of both, the second's label."""
    (tmp_path / "m.csv").write_text('text,label\n"great movie,1\n"bad" movie,0\nok film,1\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.csv, row 3: bad CSV quoting \(',' expected after '\"'\)"):
        read_labelled_text(tmp_path / "m.csv")
    # a quote never closed: named at the row it opened on, not at the end of the file the reader reached
    (tmp_path / "end.csv").write_text('text,label\ngood,1\n"unclosed,0\n\nfine,1\nalso fine,1\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"end\.csv, row 3: a quote opened on this row is never closed: the rest of "
                                        r"the file \(4 line\(s\)\) was read as one field \('\"unclosed,0'\)"):
        read_labelled_text(tmp_path / "end.csv")
    # blank lines above the header: the header is the first line with text ("the header has []" before)
    (tmp_path / "top.csv").write_text('\n\r\ntext,label\ngood,1\n"open,0\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"top\.csv, row 5: a quote opened on this row"):
        read_labelled_text(tmp_path / "top.csv")
    (tmp_path / "top.csv").write_text('\n\ntext,label\ngood,1\nbad,0\n', encoding="utf-8")
    assert read_labelled_text(tmp_path / "top.csv") == [(4, "good", "1"), (5, "bad", "0")]
    # Excel's first line "sep=;" declares the delimiter (it was read as the header: "no column 'text'")
    (tmp_path / "excel.csv").write_text('"sep=;"\ntext;label\ngood, really;1\nbad;0\n', encoding="utf-8")
    assert read_labelled_text(tmp_path / "excel.csv") == [(3, "good, really", "1"), (4, "bad", "0")]
    (tmp_path / "excel.csv").write_text(' \nsep=;\n\t\ntext;label\ngood, really;1\n"bad;0\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"excel\.csv, row 6: a quote opened on this row is never closed"):
        read_labelled_text(tmp_path / "excel.csv")  # blank (and blank-looking) lines around it are skipped too
    (tmp_path / "ok.csv").write_text('text,label\n"a ""quoted"" word",1\n"two\nlines",0\n', encoding="utf-8")
    assert read_labelled_text(tmp_path / "ok.csv") == [(2, 'a "quoted" word', "1"), (3, "two\nlines", "0")]


def test_subwords_with_max_length_encode_no_known_piece_as_unk() -> None:
    """The known pieces were counted in whole texts and the vocabulary in texts cut to max_length: a piece
    seen only past the cut was never split again yet had no row, so it was <unk> (18 ids of train here)."""
    from lstmkit.data.text import Subwords, tokenize

    modules = []
    for max_length in (None, 4):
        dm = SentimentDataModule(num_examples=300, subwords=150, min_count=3, max_length=max_length)
        dm.setup("fit")
        index = {token: i for i, token in enumerate(dm.spec.vocab)}
        settings = {k: v for k, v in dm.spec.tokenizer.items() if k != "max_length"}
        unk = ("<unk>", "##<unk>")
        for split in ("train", "val", "test"):
            texts = [t for *_, t, _ in dm._read_splits()[split]]
            for text, ids in zip(texts, dm.splits[split].inputs, strict=True):
                tokens = tokenize(text, **settings)[: max_length or None]
                # <unk> only where the tokenizer says <unk> (a character no known piece holds)
                assert ids.tolist() == [1 if t in unk else index.get(t, f"no row for {t}") for t in tokens], (split, text)
        modules.append(dm)
    for dm in modules:  # every known piece has a row
        assert set(Subwords.from_json(dm.spec.tokenizer["subwords"]).known_pieces()) <= set(dm.spec.vocab)


def test_lone_carriage_returns_end_lines_as_newlines_do(tmp_path: Path) -> None:
    """A file with classic Mac line ends (a lone \\r) was read as one line without a word: one labelled
    row (its first label and every other line's text), one language-model sentence."""
    from lstmkit.data.language_model import NextWordDataModule
    from lstmkit.data.text import read_text

    lines = [f"{i % 2} a {'good' if i % 2 else 'dull'} film number {i}" for i in range(40)]
    for end in ("\r", "\r\n"):
        path = tmp_path / "mac.txt"
        path.write_bytes(end.join(lines).encode() + end.encode())
        assert read_text(path) == "\n".join(lines) + "\n"
        assert [row for row, *_ in read_labelled_text(path)] == list(range(1, 41))
        lm = NextWordDataModule(path=str(path), skip_fields=1, tokenizer="whitespace", batch_size=2, bptt=3)
        lm.setup()
        eos = lm.spec.vocab.index("<eos>")
        assert sum(int((lm.splits[s].ids == eos).sum()) for s in ("train", "val", "test")) == 40
    (tmp_path / "bad.txt").write_bytes(b"1 fine\r0 fine\r1 bad \xff byte\r")
    with pytest.raises(DataError, match=r"bad\.txt, row 3: not valid UTF-8"):
        read_text(tmp_path / "bad.txt")


# -- tokenizer versions ------------------------------------------------------------------------
# The tokens of the tokenizer before versions (version 1), written down from it: a checkpoint without a
# version must keep reading text exactly so, whatever later versions change.
TEXTS_V1 = {
    "The 'twist' was bad, don't you think?": ["the", "'twist'", "was", "bad", ",", "don't", "you", "think", "?"],
    "'A big twist' in the students' film": ["'a", "big", "twist'", "in", "the", "students'", "film"],
    "it 's a film that does n't work ; `` the rock '' is": ["it", "'s", "a", "film", "that", "does", "n't", "work",
                                                          ";", "`", "`", "the", "rock", "''", "is"],
    "'em 'til rock 'n' roll , the '70s": ["'em", "'til", "rock", "'n'", "roll", ",", "the", "'70s"],
    "\u2018twist\u2019 ##tag": ["'twist'", "#", "#", "tag"],
}
TEXTS_V2 = {
    "The 'twist' was bad, don't you think?": ["the", "'", "twist", "'", "was", "bad", ",", "don't", "you", "think",
                                              "?"],
    "'A big twist' in the students' film": ["'", "a", "big", "twist", "'", "in", "the", "students", "'", "film"],
    "it 's a film that does n't work ; `` the rock '' is": TEXTS_V1["it 's a film that does n't work ; `` the rock '' is"],
    "'em 'til rock 'n' roll , the '70s": TEXTS_V1["'em 'til rock 'n' roll , the '70s"],
    "\u2018twist\u2019 ##tag": ["'", "twist", "'", "#", "#", "tag"],
}


def test_tokenizer_version_2_splits_quotes_off_words_and_keeps_contractions() -> None:
    from lstmkit.data.text import TOKENIZER_VERSION, tokenize

    assert TOKENIZER_VERSION == 2
    for text, tokens in TEXTS_V1.items():
        assert tokenize(text) == tokens and tokenize(text, version=1) == tokens, text  # no version: 1
        assert tokenize(text, version=2) == TEXTS_V2[text], text
    # whitespace level (pre-tokenized text) splits nothing more in either version
    assert tokenize("a 'twist' ending", level="whitespace", version=2) == ["a", "'twist'", "ending"]
    assert tokenize("'em 'tis '53 'em' ''quoted'' goin'", version=2) == [
        "'em", "'tis", "'53", "'", "em", "'", "''", "quoted", "''", "goin", "'"]


def test_a_spec_records_its_tokenizer_version_and_an_old_spec_reads_text_as_before(tmp_path: Path) -> None:
    data = _write(tmp_path / "reviews.csv", "text,label\n" + "the 'twist' was great,1\nthe twist was dull,0\n" * 20)
    new = SentimentDataModule(path=str(data), batch_size=4)
    new.setup("fit")
    assert new.spec.tokenizer["version"] == 2
    assert "twist" in new.spec.vocab and "'twist'" not in new.spec.vocab and "'" in new.spec.vocab
    old = SentimentDataModule(path=str(data), batch_size=4, tokenizer_version=1)
    old.setup("fit")
    assert "'twist'" in old.spec.vocab and "'" not in old.spec.vocab
    # a checkpoint written before versions: its spec has none, and is read as version 1 (eval, predict)
    before = old.spec.to_dict()
    before["tokenizer"] = {k: v for k, v in before["tokenizer"].items() if k != "version"}
    evaluated = SentimentDataModule(path=str(data), batch_size=4, spec=before)  # data.tokenizer_version: 2
    evaluated.setup("test")
    for split in ("train", "val", "test"):  # the same ids as the version-1 run's
        assert [x.tolist() for x in evaluated.splits[split].inputs] == [x.tolist() for x in old.splits[split].inputs]
    vocab = evaluated.spec.vocab
    ids = SentimentDataModule.make_predict_batch(DataSpec.from_dict(before), ["the 'twist'"]).inputs[0].tolist()
    assert [vocab[i] for i in ids] == ["the", "'twist'"]
    ids = SentimentDataModule.make_predict_batch(new.spec, ["the 'twist'"]).inputs[0].tolist()
    assert [new.spec.vocab[i] for i in ids] == ["the", "'", "twist", "'"]
    with pytest.raises(ConfigError, match=r"data.tokenizer_version=3: expected one of \[1, 2\]"):
        SentimentDataModule(tokenizer_version=3)


def test_sst2_reads_the_same_in_both_tokenizer_versions() -> None:
    """SST-2 is PTB-tokenized: its recipes' whitespace tokenizer reads every file alike in versions 1 and 2;
    at word level version 2 changes 3 of its 196,272 tokens ("ol'" -> "ol", "'", twice in test)."""
    from lstmkit.data.text import tokenize

    folder = shared_data("sentiment")
    changed: dict[str, int] = {}
    for split in ("train", "dev", "test"):
        texts = [text for _, text, _ in read_labelled_text(folder / f"stsa.binary.{split}")]
        assert all(tokenize(t, level="whitespace", version=2) == tokenize(t, level="whitespace") for t in texts)
        pairs = [(tokenize(t), tokenize(t, version=2)) for t in texts]
        changed[split] = sum(v1.count("ol'") for v1, v2 in pairs if v1 != v2)
        assert all(v2 == [p for w in v1 for p in (["ol", "'"] if w == "ol'" else [w])] for v1, v2 in pairs)
    assert changed == {"train": 1, "dev": 0, "test": 2}


def test_resuming_a_run_of_another_tokenizer_version_names_the_setting(make_cfg, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from lstmkit.checkpoints import check_resumable
    from lstmkit.commands.train import build_model
    from lstmkit.errors import CheckpointError

    cfg = make_cfg(["data.num_examples=300", "model.hidden_size=8", "encoder.dim=8"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    spec = dict(model.hparams["spec"])  # as a checkpoint from before versions stores it: without one
    spec["tokenizer"] = {k: v for k, v in spec["tokenizer"].items() if k != "version"}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**dict(model.hparams), "spec": spec}}, path)
    with pytest.raises(CheckpointError, match=r"another tokenizer version \(1 against 2; data.tokenizer_version=1 "
                                              r"reads the text as it did\)"):
        check_resumable(path, model)
    spec["tokenizer"]["version"] = 2
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**dict(model.hparams), "spec": spec}}, path)
    check_resumable(path, model)


def test_class_folders_of_texts_read_as_imdb_and_keras_lay_them_out(tmp_path: Path) -> None:
    """aclImdb/train/pos/*.txt (and Keras' text_dataset_from_directory: one folder per class) was "folder has
    no training file ... found []"."""
    from lstmkit.data.sentiment import SentimentDataModule

    imdb = tmp_path / "aclImdb"
    for split, count in (("train", 30), ("test", 10)):
        for label, word in (("pos", "great"), ("neg", "awful")):
            (imdb / split / label).mkdir(parents=True)
            for i in range(count):
                (imdb / split / label / f"{i}_7.txt").write_text(f"A {word} film.<br /><br />Really {word} {i}.")
    (imdb / "train" / "unsup").mkdir()
    (imdb / "train" / "unsup" / "0_0.txt").write_text("no label here")
    (imdb / "train" / "labeledBow.feat").write_text("0 0:1\n")
    (imdb / "imdb.vocab").write_text("the\n")
    dm = SentimentDataModule(path=str(imdb), val_fraction=0.1)
    dm.setup()
    assert dm.spec.classes == ["neg", "pos"]
    assert {k: len(v) for k, v in dm.splits.items()} == {"val": 6, "test": 20, "train": 54}  # unsup left out
    from lstmkit.data.sentiment import class_folders

    rows = class_folders(imdb)["test"]
    assert rows[0][2] == "A awful film.  Really awful 0." and rows[0][3] == "neg"  # IMDB's <br /> are spaces
    flat = tmp_path / "flat"  # Keras' layout: class folders only, the splits carved by fraction
    for label in ("pos", "neg"):
        (flat / label).mkdir(parents=True)
        for i in range(20):
            (flat / label / f"{i}.txt").write_text(f"{label} text {i}")
    dm = SentimentDataModule(path=str(flat), val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    assert sum(len(v) for v in dm.splits.values()) == 40 and dm.spec.classes == ["neg", "pos"]
    # split files beside a folder of vectors (glove/*.txt) are read as before, not as a class layout
    mixed = tmp_path / "mixed"
    (mixed / "glove").mkdir(parents=True)
    (mixed / "glove" / "glove.6B.50d.txt").write_text("the 0.1 0.2\n")
    (mixed / "train.csv").write_text("text,label\n" + "".join(f"fine film {i},{i % 2}\n" for i in range(40)))
    dm = SentimentDataModule(path=str(mixed), val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    assert dm.spec.classes == ["0", "1"]
    (imdb / "test" / "neg").rename(imdb / "test" / "negatives_elsewhere")
    (imdb / "test" / "negatives_elsewhere" / "0_7.txt").rename(imdb / "test" / "stray.txt")
    for file in (imdb / "test" / "negatives_elsewhere").iterdir():
        file.unlink()
    with pytest.raises(DataError, match=r"aclImdb/test: expected one subfolder of \.txt files per class"):
        SentimentDataModule(path=str(imdb)).setup()


def test_odd_labels_that_may_be_meant_are_warned_about_not_refused(tmp_path: Path, caplog) -> None:
    """'unrated' beside 1-5 stars, or 'nan' (Min Nan's language code) among words, are real classes."""
    import logging

    stars = tmp_path / "stars.csv"
    stars.write_text("text,label\n" + "".join(f"film {i},{i % 5 + 1}\n" for i in range(300)) + "no rating,unrated\n")
    with caplog.at_level(logging.WARNING):
        rows = read_labelled_text(stars)
    assert rows[-1][2] == "unrated"
    assert "row 302, field 'label': label 'unrated' is not a number, unlike the file's other labels" in caplog.text
    languages = tmp_path / "lang.csv"
    languages.write_text("text,label\n" + "".join(f"words {i},{('eng', 'nan', 'deu')[i % 3]}\n" for i in range(30)))
    assert {y for *_, y in read_labelled_text(languages)} == {"eng", "nan", "deu"}


def test_a_row_may_leave_off_columns_that_are_not_read(tmp_path: Path) -> None:
    """'text,label,' (a header ending in a comma) and a 'notes' column some rows lack were read before the
    short-row refusal, which counted every column: only the columns read must be there."""
    trailing = tmp_path / "t.csv"
    trailing.write_text("text,label,\n" + "".join(f"fun {i},{i % 2}\n" for i in range(10)))
    assert len(read_labelled_text(trailing)) == 10
    notes = tmp_path / "n.csv"
    notes.write_text("text,label,notes\nhello,1\nbye,0,seen twice\n")
    assert read_labelled_text(notes) == [(2, "hello", "1"), (3, "bye", "0")]


def test_a_bad_split_file_beside_class_folders_keeps_its_own_error(tmp_path: Path) -> None:
    """A split file's bad row was caught as "no split files" and the folder read as class folders instead."""
    from lstmkit.data.sentiment import SentimentDataModule

    for label in ("pos", "neg"):
        (tmp_path / label).mkdir()
        for i in range(5):
            (tmp_path / label / f"{i}.txt").write_text(f"{label} {i}")
    (tmp_path / "train.csv").write_text("text,label\nfine,1\ncut off\n")
    with pytest.raises(DataError, match=r"train\.csv, row 3: 1 field\(s\), but the header has 2"):
        SentimentDataModule(path=str(tmp_path)).setup()


def test_text_tab_label_lines_without_a_header_are_found(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """UCI's "Sentiment Labelled Sentences" (imdb_labelled.txt: '<text><TAB><label>', no header) was read as
    '<label> <text>': every first word a class, 238 warnings, then an unknown label (tester-2); as .tsv, the
    hint said "the header holds commas: set data.format=csv"."""
    rng = random.Random(0)
    words = ["good", "bad", "film", "movie", "plot", "acting", "great", "awful", "the", "a", "was", "is", "very", "not"]
    lines = "".join(" ".join(rng.choice(words) for _ in range(6)).capitalize() + f" , fine  \t{i % 2}\n"
                    for i in range(300))
    (tmp_path / "imdb_labelled.txt").write_text(lines)
    rows = read_labelled_text(tmp_path / "imdb_labelled.txt")
    assert len(rows) == 300 and {label for *_, label in rows} == {"0", "1"} and rows[0][1].endswith(", fine")
    dm = SentimentDataModule(path=str(tmp_path / "imdb_labelled.txt"))
    dm.setup()
    assert dm.spec.classes == ["0", "1"] and dm.spec.extra["read_as"] == ["suffixed"]
    (tmp_path / "imdb_labelled.tsv").write_text(lines)
    with pytest.raises(DataError, match=r"the first line looks like data, not a header.*; a file of '<text><TAB><label>' "
                                        r"lines without a header reads with data\.format=suffixed") as err:
        read_labelled_text(tmp_path / "imdb_labelled.tsv")
    assert "the header holds commas" not in str(err.value)
    assert len(read_labelled_text(tmp_path / "imdb_labelled.tsv", fmt="suffixed")) == 300
    # a '<label> <text>' file of many one-example classes (a layout misread) warns a few times, then counts
    many = "".join(f"w{i} a fine film\n" for i in range(150)) + "".join(f"{('neg', 'pos')[i % 2]} a film\n" for i in range(150))
    (tmp_path / "odd.txt").write_text(many)
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        SentimentDataModule(path=str(tmp_path / "odd.txt"), val_fraction=0.0, test_fraction=0.0).setup()
    assert caplog.text.count("has a single training example") == 5
    assert "145 more classes have a single training example (150 of 152 classes in all)" in caplog.text


def test_glue_sst2_folder_as_downloaded_leaves_its_unlabelled_test_file_out(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """GLUE's SST-2 folder holds train.tsv and dev.tsv (sentence, label) and an unlabelled test.tsv (index,
    sentence): it was refused with "no column 'label' ... Set data.label_column" (tester-2)."""
    folder = tmp_path / "SST-2"
    folder.mkdir()
    rows = "".join(f"{'a fine film' if i % 2 else 'a dull film'} {i}\t{i % 2}\n" for i in range(60))
    (folder / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "".join(rows.splitlines(keepends=True)[:20]))
    (folder / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\ta film {i}\n" for i in range(10)))
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        dm = SentimentDataModule(path=str(folder), text_column="sentence", test_fraction=0.1)
        dm.setup()
    assert "test.tsv: the test file has no 'label' column (GLUE's test.tsv is unlabelled): left out" in caplog.text
    assert len(dm.splits["test"]) == 6 and len(dm.splits["train"]) == 54
    # eval with the model's spec still refuses it: there is nothing to score
    with pytest.raises(DataError, match=r"test\.tsv, row 1, field 'label': no column 'label'"):
        SentimentDataModule(path=str(folder), text_column="sentence", spec=dm.spec.to_dict()).setup("test")
