"""ECG anomaly detection: generated beats, UCR/CSV loaders and their errors, encoder, heads, CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection

from lstmkit.checkpoints import load_model
from lstmkit.commands.train import train
from lstmkit.data.ecg import (
    BeatInput,
    EcgDataModule,
    generate_beats,
    read_beats,
    stratified_split,
    write_beats,
)
from lstmkit.encoders.beat import BeatEncoder
from lstmkit.errors import ConfigError, DataError
from lstmkit.heads.anomaly import AnomalyHead, ReconstructionHead, f1_threshold, select_threshold
from lstmkit.module import SequenceModel
from lstmkit.types import Batch, DataSpec

from .conftest import QUICK, run_cli, run_here, run_notebook, shared_data

SPEC = DataSpec(input_kind="features", num_features=1, classes=["normal", "anomaly"],
                extra={"samples_per_beat": 140, "label_column": "first", "format": "auto",
                       "train_counts": {"normal": 30, "anomaly": 10}})
BEAT = {"_target_": "lstmkit.encoders.beat.BeatEncoder"}


# -- generated beats ----------------------------------------------------------------------------------
def test_generated_beats_are_deterministic_and_labelled() -> None:
    beats, kinds = generate_beats(200, anomaly_fraction=0.3, samples_per_beat=140, seed=3)
    again, kinds_again = generate_beats(200, anomaly_fraction=0.3, samples_per_beat=140, seed=3)
    np.testing.assert_array_equal(beats, again)
    np.testing.assert_array_equal(kinds, kinds_again)
    assert not np.array_equal(generate_beats(200, seed=4)[0], beats)
    assert beats.shape == (200, 140) and beats.dtype == np.float32 and np.isfinite(beats).all()
    assert (kinds != 1).sum() == 60 and set(np.unique(kinds)) == {1, 2, 3, 4, 5}


def test_generated_anomalies_change_the_beat_shape() -> None:
    beats, kinds = generate_beats(800, anomaly_fraction=0.5, seed=0)
    z = (beats - beats.mean(1, keepdims=True)) / beats.std(1, keepdims=True)
    r_peak = z.argmax(1)
    assert np.median(r_peak[kinds == 1]) == pytest.approx(0.38 * 140, abs=3)  # R peak where the model puts it
    t_wave = slice(int(0.60 * 140), int(0.72 * 140))
    normal_t, inverted_t = z[kinds == 1, t_wave].mean(), z[kinds == 4, t_wave].mean()
    assert normal_t > 0.3 and inverted_t < normal_t - 0.4
    # PVCs have no P wave and a wide QRS: fewer samples above half the R height than normal beats
    def width(rows: np.ndarray) -> float:
        return float((rows > rows.max(1, keepdims=True) / 2).sum(1).mean())

    assert width(z[kinds == 2]) > 1.5 * width(z[kinds == 1])


# -- reading files --------------------------------------------------------------------------------------
def _ucr(path: Path, n: int = 20, seed: int = 0, length: int = 140) -> Path:
    beats, kinds = generate_beats(n, anomaly_fraction=0.4, samples_per_beat=length, seed=seed)
    return write_beats(path, beats, kinds)


def test_ucr_and_csv_files_read_back(tmp_path: Path) -> None:
    beats, kinds = generate_beats(12, anomaly_fraction=0.5, seed=1)
    table = read_beats(write_beats(tmp_path / "X_TRAIN.txt", beats, kinds))
    np.testing.assert_allclose(table.samples, beats, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(table.labels, kinds)
    lines = ["s" + ",s".join(str(i) for i in range(140)) + ",label"]  # header, label last
    lines += [",".join(f"{v:.6f}" for v in b) + f",{k}" for b, k in zip(beats, kinds)]
    (tmp_path / "beats.csv").write_text("\n".join(lines) + "\n")
    table = read_beats(tmp_path / "beats.csv", label_column="last")
    np.testing.assert_allclose(table.samples, beats, atol=1e-5)
    np.testing.assert_array_equal(table.labels, kinds)
    assert table.rows[0] == 2  # row numbers count the header
    with pytest.raises(ConfigError, match="label_column=none"):
        read_beats(tmp_path / "beats.csv", label_column="none")
    # the UCR archive's ARFF: its header says where the class is (last); quoted nominal values, % comments
    arff = ["@relation ECG5000", *(f"@attribute att{i + 1} numeric" for i in range(140)),
            "@attribute target {'1','2','3','4','5'}", "", "@data", "% a comment"]
    arff += [",".join(f"{v:.6f}" for v in b) + f",'{k}'" for b, k in zip(beats, kinds)]
    (tmp_path / "X_TRAIN.arff").write_text("\n".join(arff) + "\n")
    table = read_beats(tmp_path / "X_TRAIN.arff")
    np.testing.assert_allclose(table.samples, beats, atol=1e-5)
    np.testing.assert_array_equal(table.labels, kinds)
    assert table.rows[0] == 146  # the file's own line numbers
    # Weka's '?' class: an instance to classify; predict reads the beats, training refuses the missing label
    unlabelled = [*arff[:145], *(",".join(f"{v:.6f}" for v in b) + ",?" for b in beats[:3])]
    (tmp_path / "new.arff").write_text("\n".join(unlabelled) + "\n")
    np.testing.assert_allclose(read_beats(tmp_path / "new.arff", samples_per_beat=140, labels_required=False).samples,
                               beats[:3], atol=1e-5)
    with pytest.raises(DataError, match=r"new\.arff, row 146, field 'class': class '\?': a missing label"):
        read_beats(tmp_path / "new.arff")
    (tmp_path / "bad.arff").write_text("\n".join([*arff[:146], "0.1,?,0.3"]) + "\n")
    with pytest.raises(DataError, match=r"bad\.arff, row 147, field 'column 1': expected a number, found '\?'"):
        read_beats(tmp_path / "bad.arff")
    # an unpacked UCR archive: X_TRAIN.txt beside X_TRAIN.arff is one split, read once (it was two TRAIN files)
    from lstmkit.data.ecg import EcgDataModule

    ucr = tmp_path / "ucr"
    ucr.mkdir()
    more, more_kinds = generate_beats(80, anomaly_fraction=0.5, seed=2)
    write_beats(ucr / "X_TRAIN.txt", more, more_kinds)
    (ucr / "X_TRAIN.arff").write_text("\n".join(arff) + "\n")  # (other beats: which one is read shows)
    dm = EcgDataModule(path=str(ucr), batch_size=4)
    dm.setup()
    assert sum(len(split) for split in dm.splits.values()) == len(more)
    write_beats(ucr / "X_TRAIN.csv", more, more_kinds)  # two text files of one name: which? an error, as before
    with pytest.raises(DataError, match=r"expected one \*_TRAIN file"):
        EcgDataModule(path=str(ucr), batch_size=4).setup()
    # a trailing comma on every row (as spreadsheets write) is no value; a ';'-separated file says so
    (tmp_path / "trailing.csv").write_text("\n".join(line + "," for line in lines) + "\n")
    np.testing.assert_allclose(read_beats(tmp_path / "trailing.csv", label_column="last").samples, beats, atol=1e-5)
    euro = [line.replace(",", ";").replace(".", ",") for line in lines]
    (tmp_path / "euro.csv").write_text("\n".join(euro) + "\n")
    with pytest.raises(DataError, match=r"euro\.csv, row 1: found 's0;s1;s2;.{31}': the file looks ';'-separated"):
        read_beats(tmp_path / "euro.csv", label_column="last")
    # predict, a beat of 139 values: "expected 141 (first one is the label)" said nothing of the 140 it accepts
    (tmp_path / "short.txt").write_text(" ".join(["0.1"] * 139) + "\n")
    with pytest.raises(DataError, match=r"row 1: row has 139 values; expected the model's 140 samples of a beat, "
                                        r"or 141 with its label first"):
        read_beats(tmp_path / "short.txt", samples_per_beat=140, labels_required=False)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ragged", r"row 3: row has 101 values, expected 141 .* as in row 1"),
        ("word", r"row 2, field 'column 5': expected a number, found 'abc'"),
        ("nan", r"row 2, field 'column 7': found 'nan'; every value must be a finite number"),
        ("inf", r"row 1, field 'column 3': found 'inf'"),
        ("label", r"row 2, field 'column 0': class label 7 is not a known class; expected one of \[1, 2, 3, 4, 5\]"),
        ("fraction", r"row 1, field 'column 0': class label 1.5 is not a whole number"),
        ("empty", r"file is empty"),
    ],
)
def test_bad_files_raise_errors_naming_file_and_row(tmp_path: Path, case: str, expected: str) -> None:
    path = _ucr(tmp_path / "bad.txt", n=4)
    rows = [line.split() for line in path.read_text().splitlines()]
    if case == "ragged":
        rows[2] = rows[2][:101]
    elif case == "word":
        rows[1][5] = "abc"
    elif case == "nan":
        rows[1][7] = "nan"
    elif case == "inf":
        rows[0][3] = "inf"
    elif case == "label":
        rows[1][0] = "7"
    elif case == "fraction":
        rows[0][0] = "1.5"
    path.write_text("" if case == "empty" else "\n".join(" ".join(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=expected) as err:
        EcgDataModule(path=str(path)).setup()
    assert str(path) in str(err.value)


def test_stratified_split_keeps_class_proportions(tmp_path: Path) -> None:
    labels = np.array([1] * 70 + [2] * 20 + [4] * 10)
    parts = stratified_split(labels, {"val": 0.2, "test": 0.2}, seed=5)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))  # a partition
    assert {k: len(v) for k, v in parts.items()} == {"train": 60, "val": 20, "test": 20}
    for index in parts.values():
        assert np.bincount(labels[index], minlength=5)[[1, 2, 4]].tolist() in ([42, 12, 6], [14, 4, 2])
    assert all(np.array_equal(parts[k], stratified_split(labels, {"val": 0.2, "test": 0.2}, 5)[k]) for k in parts)


def test_single_file_is_split_60_20_20_and_train_on_normal_drops_train_anomalies(tmp_path: Path) -> None:
    path = _ucr(tmp_path / "beats.txt", n=100)
    dm = EcgDataModule(path=str(path), batch_size=8)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 60, "val": 20, "test": 20}
    unsup = EcgDataModule(path=str(path), train_on="normal", batch_size=8)
    unsup.setup()
    assert int(torch.stack(unsup.splits["train"].targets).sum()) == 0 and len(unsup.splits["train"]) == 36
    for split in ("val", "test"):  # both kinds kept for AUROC
        assert set(torch.stack(unsup.splits[split].targets).tolist()) == {0, 1}
    assert unsup.spec.extra["train_counts"] == {"normal": 36, "anomaly": 0}
    batch = next(iter(unsup.val_dataloader()))
    assert batch.inputs.shape == (8, 140, 1) and batch.lengths.tolist() == [140] * 8


def test_folder_keeps_its_test_file_and_carves_val_from_train(tmp_path: Path) -> None:
    _ucr(tmp_path / "ECG_TRAIN.txt", n=50, seed=1)
    _ucr(tmp_path / "ECG_TEST.txt", n=30, seed=2)
    (tmp_path / "SOURCE.txt").write_text("where the data came from\n")
    dm = EcgDataModule(path=str(tmp_path))
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 40, "val": 10, "test": 30}
    _ucr(tmp_path / "ECG_TEST.txt", n=5, seed=2, length=120)
    with pytest.raises(DataError, match=r"ECG_TEST.txt, row 1: row has 121 values, expected 141"):
        EcgDataModule(path=str(tmp_path)).setup()


def test_eval_reuses_the_stored_beat_length(tmp_path: Path) -> None:
    path = _ucr(tmp_path / "short.txt", n=10, length=100)
    with pytest.raises(DataError, match="expected 141 .* the model's 140 samples per beat"):
        EcgDataModule(path=str(path), spec=SPEC.to_dict()).setup()


def test_real_ecg5000_train_file() -> None:
    folder = shared_data("ecg")
    dm = EcgDataModule(path=str(folder), batch_size=32)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 500 and sizes["val"] == sizes["test"] == 99  # 20 % of each class, rounded
    anomalies = sum(int(torch.stack(d.targets).sum()) for d in dm.splits.values())
    assert anomalies == 500 - 292  # SOURCE.txt: 292 normal beats (class 1)
    assert dm.spec.extra["samples_per_beat"] == 140


# -- encoder ----------------------------------------------------------------------------------------------
def test_beat_encoder_normalises_each_beat_over_its_valid_samples() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 50, 1) * torch.tensor([1.0, 5.0, 0.1])[:, None, None] + 7.0
    lengths = torch.tensor([50, 30, 10])
    out, out_lengths = BeatEncoder(SPEC, difference=True)(x, lengths)
    assert out.shape == (3, 50, 2) and torch.equal(out_lengths, lengths)
    for row, n in enumerate(lengths.tolist()):
        valid = out[row, :n, 0]
        assert abs(float(valid.mean())) < 1e-5 and float(valid.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        assert torch.all(out[row, n:] == 0)  # padding stays zero
        torch.testing.assert_close(out[row, 1:n, 1], valid[1:] - valid[:-1])
    same, _ = BeatEncoder(SPEC)(3.0 * x[:, :, 0] - 2.0, lengths)  # (B, T) input, other gain and offset
    torch.testing.assert_close(same, out[..., :1], atol=1e-4, rtol=1e-4)
    flat, _ = BeatEncoder(SPEC)(torch.ones(1, 20, 1), torch.tensor([20]))
    assert torch.all(flat == 0)


def test_beat_encoder_augments_only_in_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 40, 1).cumsum(1)
    lengths = torch.tensor([40, 40, 25, 40])
    encoder = BeatEncoder(SPEC, jitter=0.1, shift=3).eval()
    clean, _ = encoder(x, lengths)
    torch.testing.assert_close(clean, BeatEncoder(SPEC)(x, lengths)[0])  # eval: no augmentation
    encoder.train()
    noisy, _ = encoder(x, lengths)
    assert not torch.equal(noisy, clean) and torch.all(noisy[2, 25:] == 0)  # padding stays zero
    assert 0.05 < float((noisy - clean)[:, 8:20].std()) < 1.0
    shifted, _ = BeatEncoder(SPEC, shift=3).train()(x, lengths)
    for row, n in enumerate(lengths.tolist()):
        matches = [k for k in range(-3, 4)
                   if torch.equal(shifted[row, max(k, 0):n + min(k, 0)], clean[row, max(-k, 0):n - max(k, 0)])]
        assert matches, f"row {row} is not a shift of the clean beat by at most 3 samples"
        k = matches[0]  # the gap is filled with the edge value
        if k > 0:
            assert torch.all(shifted[row, :k] == clean[row, 0])
        if k < 0:
            assert torch.all(shifted[row, n + k:n] == clean[row, n - 1])
    with pytest.raises(ConfigError, match="encoder.jitter"):
        BeatEncoder(SPEC, jitter=-0.1)
    with pytest.raises(ConfigError, match="encoder.shift"):
        BeatEncoder(SPEC, shift=-1)


# -- heads --------------------------------------------------------------------------------------------------
def test_threshold_rules() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.9])
    labels = torch.tensor([0, 0, 0, 1, 0, 1, 1])
    # flagging >= 0.35 catches all 3 anomalies with one false alarm: F1 = 6/7 beats 0.8 (>= 0.8 only)
    assert f1_threshold(scores, labels) == pytest.approx(0.325)
    assert select_threshold(scores, labels, "f1") == pytest.approx(0.325)
    assert f1_threshold(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.35)  # ties stay whole
    assert select_threshold(scores, labels, "quantile", 0.5) == pytest.approx(0.25)  # normals 0.1 .. 0.4
    assert select_threshold(scores, torch.zeros(7), "f1", 0.99) == pytest.approx(float(torch.quantile(scores, 0.99)))
    assert select_threshold(scores, torch.ones(7), "quantile") is None


def test_threshold_between_adjacent_float32_scores_excludes_the_lower() -> None:
    """A saturated sigmoid puts an anomaly and a normal beat on adjacent float32 values: the cut
    chosen between them must stay above the normal one once stored (found by a review: the
    float64 midpoint rounded onto the normal score, which was then flagged: F1 0.667, not 1)."""
    from lstmkit.types import DataSpec as Spec

    high = torch.tensor(0.99999994, dtype=torch.float32)
    low = torch.nextafter(high, torch.tensor(0.0))  # 0.99999988, the next float32 down
    scores, labels = torch.stack([high, low, torch.tensor(0.2), torch.tensor(0.1)]), torch.tensor([1, 0, 0, 0])
    head = AnomalyHead(Spec(input_kind="features", num_features=1), in_features=2)
    val = head.metrics().clone(prefix="val/")
    for metric in val.values(copy_state=False):
        metric.choose = True
    val.update(scores, labels)
    result = {k: float(v) for k, v in val.compute().items()}
    assert result["val/f1"] == 1.0 and result["val/precision"] == 1.0, result
    assert low < head.threshold <= high
    assert (scores >= head.threshold).tolist() == [True, False, False, False]
    doubles = scores.double()  # float64 scores (precision=64) keep the plain midpoint
    assert f1_threshold(doubles, labels) == pytest.approx((float(high) + float(low)) / 2, abs=0)


def _metrics(head: AnomalyHead | ReconstructionHead) -> tuple[MetricCollection, MetricCollection]:
    collection = head.metrics()
    return collection.clone(prefix="val/"), collection.clone(prefix="test/")


def test_anomaly_head_threshold_is_chosen_on_val_and_reused_on_test() -> None:
    head = AnomalyHead(SPEC, in_features=4, pos_weight="auto")
    assert float(head.pos_weight) == pytest.approx(3.0)
    logits = torch.tensor([-3.0, -2.0, -1.0, 0.5, 2.0, 3.0])
    targets = torch.tensor([0, 0, 1, 0, 1, 1])
    batch = Batch(torch.zeros(6, 5, 1), torch.full((6,), 5), targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=torch.tensor(3.0))
    torch.testing.assert_close(head.loss(logits, batch.lengths, batch), expected)
    assert head(torch.randn(6, 4), batch.lengths).shape == (6,)

    val, test = _metrics(head)
    head.update_metrics(val, logits, batch.lengths, batch)
    result = {k: float(v) for k, v in val.compute().items()}
    chosen = float(head.threshold)
    assert result["val/threshold"] == pytest.approx(chosen)
    # best F1 (6/7) flags the scores from sigmoid(-1) up: the cut lies midway to the next lower score
    assert chosen == pytest.approx(float(torch.sigmoid(torch.tensor([-1.0, -2.0])).mean()))
    assert result["val/recall"] == 1.0 and result["val/precision"] == pytest.approx(0.75)
    assert result["val/auroc"] == pytest.approx(8 / 9)
    # test never moves the threshold, whatever its scores
    head.update_metrics(test, torch.tensor([5.0, 6.0]), torch.full((2,), 5), Batch(torch.zeros(2, 5, 1),
                        torch.full((2,), 5), torch.tensor([0, 1])))
    assert float(test.compute()["test/threshold"]) == pytest.approx(chosen) == float(head.threshold)
    decoded = head.decode(torch.tensor([-3.0, 3.0]), torch.full((2,), 5))
    assert [d["anomaly"] for d in decoded] == [False, True]
    assert set(decoded[0]) == {"score", "anomaly", "threshold"} and decoded[1]["threshold"] == round(chosen, 6)
    # beats of one kind only (an eval of other data): AUROC / AUPRC are undefined, NaN, not a "perfectly wrong" 0
    _, only = _metrics(head)
    head.update_metrics(only, torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 5),
                        Batch(torch.zeros(3, 5, 1), torch.full((3,), 5), torch.tensor([1, 1, 1])))
    one_kind = {k: float(v) for k, v in only.compute().items()}
    assert math.isnan(one_kind["test/auroc"]) and math.isnan(one_kind["test/auprc"])
    assert one_kind["test/recall"] == 1.0  # the other statistics count the one kind there is


@pytest.mark.parametrize("target", ["next", "same"])
def test_reconstruction_head_scores_its_encoders_signal(target: str) -> None:
    torch.manual_seed(0)
    model = SequenceModel(spec=SPEC.to_dict(), encoder={**BEAT, "difference": True}, core={"hidden_size": 8},
                          head={"_target_": "lstmkit.heads.anomaly.ReconstructionHead", "target": target,
                                "decoder_size": 8})
    x = torch.randn(4, 30, 1)
    lengths = torch.tensor([30, 30, 20, 12])
    outputs, _ = model(x, lengths)
    assert outputs.shape == (4, 30, 2)  # prediction and target (the normalised signal) side by side
    signal, _ = model.encoder(x, lengths)
    goal = signal[:, 1:, :1] if target == "next" else signal[..., :1]
    torch.testing.assert_close(outputs[:, : goal.shape[1], 1:], goal)
    scores = model.head.scores(outputs, lengths)
    loss = model.head.loss(outputs, lengths, Batch(x, lengths, torch.zeros(4)))
    shift = 1 if target == "next" else 0
    manual = [((outputs[i, : n - shift, 0] - outputs[i, : n - shift, 1]) ** 2).mean() for i, n in enumerate(lengths)]
    torch.testing.assert_close(scores, torch.stack(manual))
    assert loss.requires_grad and math.isfinite(float(loss))
    perfect = torch.cat([outputs[..., 1:], outputs[..., 1:]], dim=-1)
    assert torch.all(model.head.scores(perfect, lengths) == 0)
    assert model.head.decode(outputs, lengths)[0]["threshold"] is None  # until validation chooses one
    with pytest.raises(RuntimeError, match="needs its encoder's output"):
        ReconstructionHead(SPEC, in_features=8)(torch.zeros(1, 3, 8), torch.tensor([3]))


def test_predict_says_a_missing_beat_file_or_a_folder_is_one(tmp_path: Path) -> None:
    """input=/missing/file.txt was read as a beat: "field 'column 0': expected a number, found '/missing/..."."""
    missing = str(tmp_path / "missing" / "beats.txt")
    for given, expected in [(missing, "file not found"), ("beats.csv", "file not found"),
                            (str(tmp_path), "a folder, expected a beat file")]:
        with pytest.raises(DataError, match=re.escape(f"{given}: {expected}")) as err:
            EcgDataModule.make_predict_batch(SPEC, [given])
        assert "expected a number" not in str(err.value)
    with pytest.raises(DataError, match="expected a number"):  # a line of numbers with a bad cell is still a beat
        EcgDataModule.make_predict_batch(SPEC, [" ".join(["0.1"] * 139 + ["abc"])])


def test_an_input_file_of_beats_is_one_input_and_a_list_of_beat_files_is_a_list(tmp_path: Path) -> None:
    """predict's input_file: a file of beats is read as a beat file (its header skipped); a list of beat
    files stays a list, even when its first file is missing (said so, not "expected a number")."""
    beats, _ = generate_beats(2, seed=4)
    write_beats(tmp_path / "b.txt", beats)
    (tmp_path / "headed.csv").write_text("t0,t1\n0.1,0.2\n")
    (tmp_path / "list.txt").write_text("b.txt\n")
    (tmp_path / "missing_first.txt").write_text("nope.txt\nb.txt\n")
    (tmp_path / "commented.txt").write_text("# my beats\nb.txt\n")
    one = EcgDataModule.predict_file_is_one_input
    assert one(tmp_path / "b.txt") and one(tmp_path / "headed.csv")
    assert not any(one(tmp_path / name) for name in ("list.txt", "missing_first.txt", "commented.txt", "none.txt"))


def test_predict_batch_accepts_files_lines_and_optional_labels(tmp_path: Path) -> None:
    beats, kinds = generate_beats(3, seed=2)
    labelled = write_beats(tmp_path / "with_labels.txt", beats, kinds)
    unlabelled = write_beats(tmp_path / "no_labels.txt", beats)
    items = EcgDataModule.predict_items(SPEC, [str(labelled), str(unlabelled)])
    assert [str(i) for i in items] == [f"{labelled}:{r}" for r in (1, 2, 3)] + [f"{unlabelled}:{r}" for r in (1, 2, 3)]
    batch = EcgDataModule.make_predict_batch(SPEC, items)
    assert batch.inputs.shape == (6, 140, 1)
    torch.testing.assert_close(batch.inputs[:3], batch.inputs[3:])
    line = labelled.read_text().splitlines()[1]
    single = EcgDataModule.make_predict_batch(SPEC, [line, " ".join(line.split()[1:])])
    torch.testing.assert_close(single.inputs[0], single.inputs[1])
    assert isinstance(items[0], BeatInput) and json.dumps(items[0]) == json.dumps(str(items[0]))
    with pytest.raises(DataError, match="row 1: expected a beat of 140 samples"):
        EcgDataModule.make_predict_batch(SPEC, ["1 2 3"])
    # a labelled row that lost one value is not read as an unlabelled beat (its label as a sample)
    lines = labelled.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:50] + lines[1].split()[51:])
    damaged = tmp_path / "one_value_missing.txt"
    damaged.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 2.*141 \(first one is the label\) as in row 1 \(a label and 140"):
        EcgDataModule.predict_items(SPEC, [str(damaged)])
    lines = unlabelled.read_text().splitlines()
    lines[2] = "1 " + lines[2]  # and an unlabelled file with a stray label
    damaged.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 3.*as in row 1 \(a beat without its label\)"):
        EcgDataModule.predict_items(SPEC, [str(damaged)])


@pytest.mark.parametrize("label_column", ["first", "last"])
def test_a_labelled_beat_one_sample_short_is_said(tmp_path: Path, caplog, label_column: str) -> None:
    """It has exactly the model's samples, so it is read as a beat without its label, the label a
    sample: a known class number exactly where the label goes is said (no recorded sample is one)."""
    spec = DataSpec.from_dict({**LABELLED.to_dict(), "extra": {**LABELLED.extra, "label_column": label_column}})
    beats, kinds = generate_beats(3, anomaly_fraction=0.5, seed=5)  # classes 2, 3, 1: no row index
    short = [[float(k), *b[1:]] if label_column == "first" else [*b[:-1], float(k)] for b, k in zip(beats, kinds)]
    path = tmp_path / "short.txt"
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in beat) for beat in short) + "\n")
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        EcgDataModule.predict_items(spec, [str(path)])
    assert re.search(rf"short\.txt: 3 beat\(s\) read without a label \(e\.g\. row 1\) have a class number .* as "
                     rf"their {label_column} value", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lstmkit"):
        EcgDataModule.make_predict_batch(spec, [" ".join(f"{v:.6f}" for v in beats[0]), " ".join(map(str, short[1]))])
    assert re.search(r"input: 1 beat\(s\) read without a label \(e\.g\. row 2\)", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lstmkit"):  # recorded beats without labels: nothing to say
        EcgDataModule.make_predict_batch(spec, [" ".join(f"{v:.6f}" for v in b) for b in beats])
    assert "read without a label" not in caplog.text


LABELLED = DataSpec(input_kind="features", num_features=1, classes=["normal", "anomaly"],
                    extra={**SPEC.extra, "normal_labels": [1], "anomaly_labels": [2, 3, 4, 5]})


@pytest.mark.parametrize("label_column", ["first", "last"])
def test_predict_lines_check_their_label_as_files_do(tmp_path: Path, label_column: str) -> None:
    spec = DataSpec.from_dict({**LABELLED.to_dict(), "extra": {**LABELLED.extra, "label_column": label_column}})
    beats, kinds = generate_beats(2, anomaly_fraction=0.5, seed=4)
    first = [" ".join(f"{v:.6f}" for v in [float(k), *b]) for b, k in zip(beats, kinds)]  # UCR: label first
    last = [" ".join(f"{v:.6f}" for v in [*b, float(k)]) for b, k in zip(beats, kinds)]
    right, wrong = (first, last) if label_column == "first" else (last, first)
    bare = EcgDataModule.make_predict_batch(spec, [" ".join(f"{v:.6f}" for v in b) for b in beats]).inputs
    torch.testing.assert_close(EcgDataModule.make_predict_batch(spec, right).inputs, bare)  # label dropped
    column = 0 if label_column == "first" else 140
    # the other layout: its label is no sample, and its first / last sample is no label
    with pytest.raises(DataError, match=rf"^<input>, row 2, field 'column {column}': class label -?[\d.]+ is not a "
                                        rf"whole number \(this model reads a beat of 141 values as its label in the "
                                        rf"{label_column} column"):
        EcgDataModule.make_predict_batch(spec, [right[0], wrong[1]])
    unknown = right[0].split()
    unknown[column] = "7"  # a whole number, but no class of the model
    with pytest.raises(DataError, match=rf"^<input>, row 1, field 'column {column}': class label 7 is not a known "
                                        r"class; expected one of \[1, 2, 3, 4, 5\]"):
        EcgDataModule.make_predict_batch(spec, [" ".join(unknown)])
    # the same beat in a file (input=<file>) is refused the same way, naming the file and its row
    path = tmp_path / "unknown.txt"
    path.write_text("\n".join([right[0], " ".join(unknown)]) + "\n")
    with pytest.raises(DataError, match=rf"^{path}, row 2, field 'column {column}': class label 7 is not a known"):
        EcgDataModule.predict_items(spec, [str(path)])
    path.write_text("\n".join(wrong) + "\n")
    with pytest.raises(DataError, match=rf"^{path}, row 1, field 'column {column}': class label -?[\d.]+ is not a "
                                        "whole number"):
        EcgDataModule.predict_items(spec, [str(path)])


def test_a_whitespace_file_read_as_csv_names_its_first_row(tmp_path: Path) -> None:
    """Its first line was one cell that is no number, taken for a header: the error named row 2."""
    beats, kinds = generate_beats(4, seed=3)
    path = write_beats(tmp_path / "beats.txt", beats, kinds)
    with pytest.raises(DataError, match=r"beats\.txt, row 1: a line of whitespace-separated numbers in a file read "
                                        r"as CSV \(data\.format=csv\); set data\.format=whitespace"):
        read_beats(path, "first", "csv")
    assert len(read_beats(path, "first", "auto").samples) == 4


def test_files_written_by_pandas_with_an_index_are_refused(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    beats, kinds = generate_beats(30, anomaly_fraction=0.4, seed=6)
    frame = pd.DataFrame(beats).assign(label=kinds)
    frame.to_csv(tmp_path / "index.csv", header=False)  # the index left on: 0..29 before every beat
    with pytest.raises(DataError, match=r"index.csv, row 1, field 'column 0': column 0 holds the row numbers "
                                        r"\(0, 1, \.\.\., 29\) of the 30 beats: it looks like a row index.*not a "
                                        r"sample; write the file with df.to_csv\(path, index=False, header=False\)"):
        EcgDataModule(path=str(tmp_path / "index.csv"), label_column="last").setup()
    frame.to_csv(tmp_path / "fine.csv", header=False, index=False)  # as the error says: it reads back
    table = read_beats(tmp_path / "fine.csv", label_column="last")
    np.testing.assert_allclose(table.samples, beats, atol=1e-6)
    np.testing.assert_array_equal(table.labels, kinds)
    # an index numbered from 1 is caught too, also when it sits where the label goes (rows 1-5 read as classes)
    labels_first = pd.DataFrame(np.column_stack([kinds, beats]), index=range(1, 31))
    labels_first.to_csv(tmp_path / "index1.csv", header=False)
    with pytest.raises(DataError, match=r"column 0 holds the row numbers \(1, 2, \.\.\., 30\).*not a label"):
        read_beats(tmp_path / "index1.csv", known_labels={1, 2, 3, 4, 5})
    # a predict file of bare beats with an index: not read as beats of the index and 139 samples
    pd.DataFrame(beats[:4]).to_csv(tmp_path / "predict.csv", header=False)
    with pytest.raises(DataError, match=r"predict.csv, row 1, field 'column 0': column 0 holds the row numbers"):
        EcgDataModule.predict_items(LABELLED, [str(tmp_path / "predict.csv")])
    # what is no index: classes that happen to count up, a first sample of 0 then 1 in two beats
    counting = write_beats(tmp_path / "counting.txt", beats[:3], np.array([1, 2, 3]))
    assert read_beats(counting, known_labels={1, 2, 3, 4, 5}).labels.tolist() == [1, 2, 3]
    two = beats[:2].copy()
    two[:, 0] = [0.0, 1.0]
    assert read_beats(write_beats(tmp_path / "two.txt", two), label_column="none", samples_per_beat=140,
                      labels_required=False).samples[:, 0].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        ({}, (r"row 1, field 'column 0': expected a number, found '' \(the line looks like a header written by pandas "
              r"\(an empty first cell above a row index, then the column numbers\), not a beat; write the file with "
              r"df.to_csv\(path, index=False, header=False\)")),
        ({"index": False}, r"row 1: the line looks like a header written by pandas \(the column numbers 0, 1, 2, "),
        ({"index": False, "named": True}, (r"row 1, field 'column 0': expected a number, found 'label' \(the line "
                                           r"looks like a header written by pandas \(column names and the numbers")),
    ],
)
def test_a_pandas_header_of_column_numbers_is_refused_with_a_hint(
    tmp_path: Path, write: dict[str, bool], expected: str
) -> None:
    pd = pytest.importorskip("pandas")
    beats, kinds = generate_beats(10, anomaly_fraction=0.5, seed=7)
    frame = pd.DataFrame(np.column_stack([kinds, beats]))
    if write.pop("named", False):
        frame = frame.rename(columns={0: "label"})
    frame.to_csv(tmp_path / "beats.csv", **write)
    with pytest.raises(DataError, match=expected):
        EcgDataModule(path=str(tmp_path / "beats.csv")).setup()
    # a predict file of bare beats under a header 0..139: the header is no beat of 0, 1, ..., 139
    pd.DataFrame(beats[:2]).to_csv(tmp_path / "predict.csv", index=False)
    with pytest.raises(DataError, match=r"predict.csv, row 1: the line looks like a header written by pandas"):
        EcgDataModule.predict_items(LABELLED, [str(tmp_path / "predict.csv")])


# -- end to end ---------------------------------------------------------------------------------------------
TINY = ["data.num_beats=240", "data.batch_size=32", "model.hidden_size=16"]


def test_unsupervised_preset_trains_in_process_and_stores_its_threshold(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["task=ecg_unsupervised", *TINY, "head.decoder_size=16", *QUICK, "logger=none"])
    train(cfg)
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(model.head, ReconstructionHead) and math.isfinite(float(model.head.threshold))
    assert model.hparams.data["train_on"] == "normal"
    assert {"score_histogram.png", "roc_curve.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}


def test_the_sanity_check_does_not_choose_the_threshold(make_cfg, tmp_path: Path) -> None:
    """The sanity check's two batches ran as fitting: the untrained model's threshold was stored, and
    kept when no real validation followed (check_val_every_n_epoch, max_time)."""
    cfg = make_cfg(["task=ecg", *TINY, *QUICK, "logger=none", "trainer.num_sanity_val_steps=2",
                    "trainer.check_val_every_n_epoch=2", "test=false"])
    train(cfg)
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert float(model.head.threshold) == 0.5  # the initial one: no validation epoch has chosen one


@pytest.mark.parametrize("pos_weight", [None, 2.0])
def test_anomaly_head_refuses_to_train_on_a_split_of_one_kind(pos_weight: float | None) -> None:
    """Refused when training starts, whatever pos_weight is; such a head still loads (eval of an old
    checkpoint)."""
    features, lengths = torch.zeros(2, 4), torch.tensor([1, 1])
    batch = Batch(inputs=torch.zeros(2, 1, 1), lengths=lengths, targets=torch.tensor([0, 0]))
    for counts, missing in (({"normal": 30, "anomaly": 0}, "anomalous"), ({"normal": 0, "anomaly": 10}, "normal")):
        spec = DataSpec(input_kind="features", num_features=1, classes=["normal", "anomaly"],
                        extra={**SPEC.extra, "train_counts": counts})
        head = AnomalyHead(spec, in_features=4, pos_weight=pos_weight)
        assert head(features, lengths).shape == (2,)
        with pytest.raises(ConfigError, match=rf"the supervised AnomalyHead needs normal and anomalous beats.*no "
                                              rf"{missing} beats.*use task=ecg_unsupervised"):
            head.training_loss(features, lengths, batch)
    head = AnomalyHead(SPEC, in_features=4, pos_weight=pos_weight)  # both kinds: fine
    assert torch.isfinite(head.training_loss(features, lengths, batch))


def test_supervised_training_on_normal_beats_only_is_refused(make_cfg) -> None:
    cfg = make_cfg(["task=ecg", "data.train_on=normal", *TINY, *QUICK, "logger=none"])
    with pytest.raises(ConfigError, match=r"train split has no anomalous beats \(train counts \{'normal': \d+, "
                                          r"'anomaly': 0\}.*data.train_on=normal.*task=ecg_unsupervised"):
        train(cfg)


def test_train_then_predict_through_the_console_script(tmp_path: Path) -> None:
    """Train and predict through the console script; predict's refusals in this process (``run_here``)."""
    run_cli("train", "task=ecg", *TINY, *QUICK, cwd=tmp_path)
    run = max((tmp_path / "logs" / "ecg" / "runs").iterdir())
    ckpt = run / "checkpoints" / "last.ckpt"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and "test/f1" in metrics
    for plot in ("score_histogram.png", "roc_curve.png"):
        assert (run / "plots" / plot).stat().st_size > 0
    # the threshold chosen on val is in the checkpoint, and test used it
    threshold = float(torch.load(ckpt, weights_only=True)["state_dict"]["head.threshold"])
    with open(next(run.glob("csv/**/metrics.csv"))) as fh:
        logged = [float(r["val/threshold"]) for r in csv.DictReader(fh) if r.get("val/threshold")]
    assert threshold == pytest.approx(logged[-1]) and metrics["test/threshold"] == pytest.approx(threshold)

    beats, _ = generate_beats(4, seed=9)
    beats_file = write_beats(tmp_path / "beats.txt", beats)  # no label column
    out = run_cli("predict", f"ckpt_path={ckpt}", f"input_file={beats_file}", cwd=tmp_path)
    lines = [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]
    assert len(lines) == 4
    for line in lines:
        assert 0.0 <= line["score"] <= 1.0 and line["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert line["anomaly"] == (line["score"] >= line["threshold"])
    # an input_file with a header line is read as input=<file> is (its header was scored as a beat: "expected
    # a number", tester-2), rows named by their line
    headed = tmp_path / "headed.csv"
    headed.write_text(",".join(f"t{i}" for i in range(len(beats[0]))) + "\n"
                      + "".join(",".join(f"{v:.6g}" for v in beat) + "\n" for beat in beats))
    as_file = [json.loads(line) for line in run_here("predict", f"ckpt_path={ckpt}", f"input_file={headed}",
                                                       cwd=tmp_path).stdout.strip().splitlines()]
    given = [json.loads(line) for line in run_here("predict", f"ckpt_path={ckpt}", f"input={headed}",
                                                     cwd=tmp_path).stdout.strip().splitlines()]
    assert [r["score"] for r in as_file] == [r["score"] for r in given] and len(as_file) == 4
    assert [r["score"] for r in as_file] == pytest.approx([r["score"] for r in lines], abs=1e-5)
    # a bad line names the file and its line (not "<input>, row <position in its batch>")
    bad = tmp_path / "mixed.txt"
    good = beats_file.read_text().splitlines()
    bad.write_text("\n".join([good[0], "", good[1], "the plot was dull"]) + "\n")
    out = run_here("predict", f"ckpt_path={ckpt}", f"input_file={bad}", "batch_size=2", cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert f"{bad}, row 4, field 'column 0': " in out.stderr
    # input_file lines with a label are checked as input=<file> rows are: a label-last line given to this
    # label-first model is refused (it scored before, its first sample dropped and its label read as one)
    labelled = tmp_path / "labelled.txt"
    label_first = " ".join(["1", *good[0].split()])
    label_last = " ".join([*good[1].split(), "2"])
    labelled.write_text(f"{label_first}\n{label_last}\n")
    out = run_here("predict", f"ckpt_path={ckpt}", f"input_file={labelled}", cwd=tmp_path, check=False)
    assert out.returncode != 0 and '"score"' not in out.stdout
    assert f"{labelled}, row 2, field 'column 0': class label " in out.stderr
    assert "is not a whole number (this model reads a beat of 141 values as its label in the first column" in out.stderr
    assert "set data.label_column=last if the label is the last column" in out.stderr
    # ... which predict takes: a label-last file scores as its bare beats do
    labelled.write_text(f"{label_last}\n")
    out = run_here("predict", f"ckpt_path={ckpt}", f"input={labelled}", "data.label_column=last", cwd=tmp_path)
    bare = run_here("predict", f"ckpt_path={ckpt}", f"input={good[1]}", cwd=tmp_path)
    score = [json.loads(line)["score"] for line in out.stdout.splitlines() if line.startswith("{")]
    assert score == [json.loads(line)["score"] for line in bare.stdout.splitlines() if line.startswith("{")]
    # a file and inline beats together: a bad inline beat is named by its item, not by its place in a batch
    mixed = f"input=[{beats_file},'{good[0]}','{good[1]} 0.5 0.25']"
    out = run_here("predict", f"ckpt_path={ckpt}", mixed, "batch_size=3", cwd=tmp_path, check=False)
    assert out.returncode != 0 and "input item 3" in out.stderr, out.stderr[-2000:]


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = run_notebook("ecg", tmp_path, monkeypatch, LSTMKIT_QUICK="1")  # a tiny training run
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert '"anomaly"' in text  # the predictions were printed
