"""scripts/bench_quality.py and the experiment=<task>_real recipes it runs (issue #6, "Quality")."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lstmkit.cli import config_dir

from .conftest import REPO, SHARED_DATA, shared_data

SCRIPT = REPO / "scripts" / "bench_quality.py"
REAL = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*_real.yaml"))
DATA_FOLDER = {"next_word": "lm", "sentiment": "sentiment", "speech": "speech", "speech_loso": "speech", "stock": "stocks", "ecg": "ecg",
               "ecg_unsupervised": "ecg"}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_every_task_has_a_documented_real_recipe() -> None:
    bench = load_bench()
    assert {f"{task}_real" for task in bench.TASKS} == set(REAL)
    for name in REAL:
        text = (Path(config_dir()) / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert "${paths.data_root}/" in text, f"{name} must read its data through paths.data_root"
        assert "budget" in text.lower() and "expected" in text.lower(), f"{name} must state its budget and expectation"


# settings a recipe's comment and the README's figures name as chosen (on val); a change must re-measure them
RECIPE_CHOICES: dict[str, dict[str, object]] = {
    "stock_real": {"head.zero_init": True, "optimizer.lr": 1e-4, "head.loss": "huber", "model.hidden_size": 32},
}


@pytest.mark.parametrize("experiment", REAL)
def test_real_recipes_compose(make_cfg, experiment) -> None:
    task = experiment.removesuffix("_real")
    cfg = make_cfg([f"experiment={experiment}", "paths.data_root=/data/root"])
    assert cfg.task_name == experiment
    assert str(cfg.data.path).startswith(f"/data/root/{DATA_FOLDER[task]}")
    assert cfg.trainer.max_epochs >= 1 and cfg.seed is not None
    assert cfg.test is True  # every recipe ends on the held-out test split
    for key, value in RECIPE_CHOICES.get(experiment, {}).items():  # what the recorded figures were measured with
        assert OmegaConf.select(cfg, key) == value, f"{experiment}: {key}"


def test_quick_bench_writes_complete_finite_records(tmp_path: Path) -> None:
    shared_data("")  # skips with a clear reason when ../shared/data is missing
    for folder in set(DATA_FOLDER.values()):
        shared_data(folder)
    bench = load_bench()
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data-root", str(SHARED_DATA), "--out", str(out),
         "--log-dir", str(tmp_path / "logs"), "--timeout", "300"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, f"bench_quality failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "quality.json").read_text())
    assert report["quick"] is True and "commit" in report and "dirty" in report
    assert set(report["summary"]) == set(bench.TASKS)
    assert len(report["runs"]) == len(bench.TASKS)  # --quick: one fold of the fold tasks
    sentiment = next(r for r in report["runs"] if r["task"] == "sentiment")  # two steps: LM, then classifier
    assert sentiment["pretrain"]["experiment"] == "sentiment_lm" and sentiment["pretrain"]["checkpoint"]
    assert f"init_from.ckpt_path={sentiment['pretrain']['checkpoint']}" in sentiment["command"]
    assert sentiment["wall_time_s"] > 0 and sentiment["pretrain"]["wall_time_s"] > 0
    loso = next(r for r in report["runs"] if r["task"] == "speech_loso")
    assert loso["fold"] == bench.FSDD_SPEAKERS[0] and f"data.holdout_speakers=[{loso['fold']}]" in loso["command"]
    for run in report["runs"]:
        task = run["task"]
        assert run["metric"] == bench.TASKS[task].metric and run["split"] == "test"
        assert isinstance(run["value"], float) and math.isfinite(run["value"]), run
        assert all(math.isfinite(v) for v in run["metrics"].values()), run
        assert run["epochs"] == 1 and run["best_epoch"] == 1
        assert isinstance(run["params"], int) and run["params"] > 0
        assert run["wall_time_s"] > 0 and isinstance(run["seed"], int) and run["commit"] == report["commit"]
        assert Path(run["run_dir"], "metrics.json").exists()
        assert str(tmp_path / "logs") in run["run_dir"]
    stock = next(r for r in report["runs"] if r["task"] == "stock")
    assert stock["naive_baseline"]["mase"] == 1.0 and stock["naive_baseline"]["mae"] > 0
    assert stock["per_ticker"] and all(0 < t["mase"] < 10 and t["naive_mae"] > 0 for t in stock["per_ticker"].values())
    assert all(0 <= t["dm_p"] <= 1 for t in stock["per_ticker"].values())  # against persistence, per ticker
    assert 0.9 < stock["drift_baseline"]["mase"] < 1.1 and all(0.9 < t["drift_mase"] < 1.1 for t in stock["per_ticker"].values())
    assert stock["against_persistence"]["days"] > 0 and 0 <= stock["against_persistence"]["p"] <= 1
    for task in ("ecg", "ecg_unsupervised"):  # the parameter-free template baseline beside the model
        baseline = next(r for r in report["runs"] if r["task"] == task)["template_baseline"]
        assert 0.5 < baseline["auroc"] <= 1.0 and 0.0 < baseline["f1"] <= 1.0, baseline
    for summary in report["summary"].values():
        assert summary["ok"] == 1 and math.isfinite(summary["mean"]) and isinstance(summary["target_met"], bool)
    md = (out / "quality.md").read_text()
    assert "--quick" in md and "published reference" in md
    assert "114.5" in md and "82.7" in md and "84.9" in md  # Zaremba et al. 2014, Kim 2014, Tai et al. 2015
    assert "ecg_unsupervised baseline on the same splits" in md and "Stock per ticker (test MASE" in md
    for task in bench.TASKS:
        assert f"| {task} |" in md
    assert "| nan" not in md.lower()


def test_bad_task_and_missing_data_root_are_refused(tmp_path: Path) -> None:
    for args in (["no_such_task"], ["--data-root", str(tmp_path / "missing")]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 2 and "error:" in proc.stderr


def test_tasks_and_overrides_are_read_anywhere_on_the_line(tmp_path: Path) -> None:
    """``--seeds 1 2 model.dropout=0.1`` was "invalid int value", and ``--quick model.x=1`` "unrecognized
    arguments" (found by a tester); an option's own value stays the option's."""
    bench = load_bench()
    root = ["--data-root", str(tmp_path)]
    args, tasks, overrides = bench.parse_args(["ecg", "--seeds", "1", "2", "model.dropout=0.1", "stock", *root])
    assert (args.seeds, tasks, overrides) == ([1, 2], ["ecg", "stock"], ["model.dropout=0.1"])
    args, tasks, overrides = bench.parse_args(["--quick", "ecg", "--out", str(tmp_path / "a=b"), "model.x=1", *root])
    assert (args.quick, args.out, tasks, overrides) == (True, str(tmp_path / "a=b"), ["ecg"], ["model.x=1"])


def test_folds_select_a_subset_of_a_tasks_folds(tmp_path: Path) -> None:
    bench = load_bench()
    args, _, _ = bench.parse_args(["speech_loso", "--folds", "theo", "george", "--data-root", str(tmp_path)])
    labels = [label for label, _ in bench.selected_folds(bench.TASKS["speech_loso"], args)]
    assert sorted(labels) == ["george", "theo"]
    assert bench.selected_folds(bench.TASKS["ecg"], args) == ()  # tasks without folds run once
    everything, _, _ = bench.parse_args(["speech_loso", "--data-root", str(tmp_path)])
    assert len(bench.selected_folds(bench.TASKS["speech_loso"], everything)) == 6
    with pytest.raises(SystemExit):
        bench.parse_args(["speech_loso", "--folds", "nobody", "--data-root", str(tmp_path)])


def test_summary_targets_and_markdown_from_records() -> None:
    bench = load_bench()

    def run(task: str, seed: int, value: float, **metrics: float) -> dict:
        return {"task": task, "seed": seed, "value": value, "metrics": {bench.TASKS[task].metric: value, **metrics},
                "epochs": 3, "best_epoch": 2, "params": 1000, "wall_time_s": 1.0, "run_dir": "/x"}

    ecg = [run("ecg", 1, 0.999, **{"test/f1": 0.99}), run("ecg", 2, 0.997, **{"test/f1": 0.94})]
    summary = bench.summarise("ecg", ecg)
    assert summary["mean"] == pytest.approx(0.998) and summary["mean_test/f1"] == pytest.approx(0.965)
    assert summary["target_met"] is False  # AUROC reached, F1 (mean 0.965 < 0.97) not
    assert bench.summarise("stock", [run("stock", 1, 0.999)])["target_met"] is None  # per ticker not measured
    assert bench.summarise("stock", [run("stock", 1, 1.0)])["target_met"] is False  # MASE must be < 1
    tickers = [{**run("stock", seed, 0.99), "per_ticker": {"A": {"mase": 0.98}, "B": {"mase": b}}}
               for seed, b in ((1, 0.99), (2, 1.02))]  # B's mean over the seeds: 1.005
    stock_summary = bench.summarise("stock", tickers)
    assert stock_summary["target_met"] is False and stock_summary["tickers_meeting_target"] == "1/2"  # per ticker too
    assert bench.summarise("stock", tickers[:1])["target_met"] is True
    assert bench.ticker_means(tickers) == {"A": pytest.approx(0.98), "B": pytest.approx(1.005)}
    assert bench.summarise("next_word", [run("next_word", 1, 100.0)])["target_met"] is True
    failed = {"task": "speech", "seed": 1, "value": None, "error": "exit code 1", "wall_time_s": 2.0}
    assert bench.summarise("speech", [failed])["ok"] == 0
    good = {"task": "speech", "seed": 2, "value": 0.01, "metrics": {"test/cer": 0.01}, "wall_time_s": 2.0}
    assert bench.summarise("speech", [good])["target_met"] is True
    assert bench.summarise("speech", [good, failed])["target_met"] is False  # a failed run is not a pass
    report = {"generated": "now", "commit": "abc", "dirty": False, "quick": False, "overrides": [],
              "host": {"cpus": 2, "torch": "2", "omp_num_threads": "1"}, "merged_from_earlier": [],
              "summary": {"ecg": summary, "speech": bench.summarise("speech", [failed])}, "runs": [*ecg, failed]}
    md = bench.markdown(report)
    assert "| ecg |" in md and "0.9980 ± 0.0014" in md and "f1 0.9650" in md
    assert "| speech |" in md and "failed" in md
    stock = {**run("stock", 1, 1.003), "naive_baseline": {"mae": 1.6}, "against_persistence": {
        "days": 110, "mean": 2e-5, "t": 0.8, "p": 0.42}, "per_ticker": {
        "AAPL": {"mase": 1.01, "dm_p": 0.01, "drift_mase": 0.995}, "GE": {"mase": 0.99, "dm_p": None,  # None: NaN
        "drift_mase": 1.004}, "KO": {"mase": 1.2, "dm_p": 0.0, "drift_mase": 0.998}},  # p underflows to 0 for a large t
        "drift_baseline": {"mase": 0.9972}}
    md = bench.markdown({**report, "summary": {"stock": bench.summarise("stock", [stock])}, "runs": [stock]})
    assert "over the 110 test days" in md and ("seed 1: 0.0020 % of the close (t 0.80, p 0.42), per ticker at p < 0.05 better on none, "
                                                 "worse on AAPL, KO") in md
    assert "persistence with drift (the last close grown by the train days' mean return, pooled over the tickers; " in md
    assert "test MASE 0.9972, against lstmkit's 1.0030" in md
    assert "Persistence with drift per ticker (the pooled drift; test MASE): 2 of 3 tickers below 1.0: AAPL 0.9950, GE 1.0040, KO 0.9980." in md
    assert "1/2 tickers below 1" in bench.markdown({**report, "summary": {"stock": stock_summary}, "runs": tickers})


def test_diebold_mariano_is_harvey_leybourne_newbolds_corrected_statistic() -> None:
    import numpy as np
    from scipy import stats

    bench = load_bench()
    rng = np.random.default_rng(0)
    noise = rng.normal(size=400)
    n = len(noise)
    one = bench.diebold_mariano(noise + 0.5)  # h = 1: the mean over its standard error, times sqrt((n - 1) / n)
    assert one["t"] == pytest.approx((noise.mean() + 0.5) / (noise.std() / np.sqrt(n)) * np.sqrt((n - 1) / n))
    assert one["p"] < 1e-6
    assert bench.diebold_mariano(-noise)["t"] == pytest.approx(-bench.diebold_mariano(noise)["t"])
    assert bench.diebold_mariano(noise)["p"] > 0.05  # no difference, and the test does not see one
    overlapping = noise[1:] + noise[:-1] + 0.1  # two-step forecasts' errors share a day: autocorrelated
    c, m = overlapping - overlapping.mean(), len(overlapping)
    variance = c @ c / m + 2 * (c[1:] @ c[:-1]) / m  # autocovariances to lag h - 1, unweighted
    t = overlapping.mean() / np.sqrt(variance / m) * np.sqrt((m + 1 - 4 + 2 / m) / m)
    two = bench.diebold_mariano(overlapping, horizon=2)
    assert two["t"] == pytest.approx(t) and two["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=m - 1))
    # lag-1 autocovariance below -gamma0 / 2: the unweighted variance is negative, Bartlett's keeps it positive
    alternating = np.tile([1.0, -1.0], 50) + 0.01 * rng.normal(size=100)
    c = alternating - alternating.mean()
    assert c @ c + 2 * (c[1:] @ c[:-1]) < 0
    bartlett = (c @ c + (c[1:] @ c[:-1])) / 100
    assert bench.diebold_mariano(alternating, horizon=2)["t"] == pytest.approx(
        alternating.mean() / np.sqrt(bartlett / 100) * np.sqrt((100 + 1 - 4 + 2 / 100) / 100))
    assert math.isnan(bench.diebold_mariano([0.1])["p"]) and math.isnan(bench.diebold_mariano([0.1, 0.1])["p"])


def test_merge_from_re_renders_runs_of_other_reports(tmp_path: Path, capsys) -> None:
    bench = load_bench()

    def report(*runs: dict) -> dict:
        return {"quick": False, "runs": list(runs)}

    def run(task: str, value: float) -> dict:
        return {"task": task, "seed": 1, "value": value, "metrics": {bench.TASKS[task].metric: value},
                "epochs": 1, "best_epoch": 1, "params": 10, "wall_time_s": 1.0, "run_dir": "/x", "overrides": []}

    out, other = tmp_path / "out", tmp_path / "ptb"
    out.mkdir(), other.mkdir()
    (out / "quality.json").write_text(json.dumps(report(run("stock", 0.99), run("next_word", 150.0))))
    (other / "quality.json").write_text(json.dumps(report(run("next_word", 118.0))))
    (tmp_path / "seed2.json").write_text(json.dumps(report(run("next_word", 122.0))))
    code = bench.main(["--out", str(out), "--data-root", str(tmp_path), "--merge-from", str(other / "quality.json"),
                       str(tmp_path / "seed2.json")])
    assert code == 0
    merged = json.loads((out / "quality.json").read_text())
    assert sorted((r["task"], r["value"]) for r in merged["runs"]) == [
        ("next_word", 118.0), ("next_word", 122.0), ("stock", 0.99)]  # the old 150.0 is replaced
    assert merged["summary"]["next_word"]["mean"] == pytest.approx(120.0)
    assert "| next_word |" in (out / "quality.md").read_text()
    (other / "quality.json").write_text(json.dumps({"quick": True, "runs": [run("ecg", 0.9)]}))
    assert bench.main(["--out", str(out), "--data-root", str(tmp_path), "--merge-from",
                       str(other / "quality.json")]) == 2  # quick and full results are not mixed
    with pytest.raises(SystemExit):
        bench.main(["--data-root", str(tmp_path), "--merge-from", str(tmp_path / "missing.json")])
    hand = tmp_path / "hand"  # a report without its JSON (assembled by hand) is never overwritten, and
    hand.mkdir()            # a run is refused before it trains, not after
    (hand / "quality.md").write_text("# by hand\n")
    for extra in (["--merge-from", str(tmp_path / "seed2.json")], ["ecg"]):
        with pytest.raises(SystemExit) as refused:
            bench.main(["--out", str(hand), "--data-root", str(tmp_path), *extra])
        assert refused.value.code == 2
    assert "its quality.md has no quality.json beside it" in capsys.readouterr().err
    assert (hand / "quality.md").read_text() == "# by hand\n" and not (hand / "quality.json").exists()
    with pytest.raises(SystemExit):  # --merge alone: into which report?
        bench.main(["ecg", "--merge", "--data-root", str(tmp_path)])
    assert "--merge keeps the other tasks of an earlier report: name its folder with --out" in capsys.readouterr().err


def test_merge_from_drops_an_ensemble_whose_runs_were_replaced(tmp_path: Path) -> None:
    bench = load_bench()

    def run(task: str, seed: int, value: float) -> dict:
        return {"task": task, "seed": seed, "value": value, "metrics": {bench.TASKS[task].metric: value},
                "epochs": 1, "best_epoch": 1, "params": 10, "wall_time_s": 1.0, "run_dir": "/x", "overrides": []}

    def ensemble(task: str, seeds: list[int], value: float) -> dict:
        return {"task": task, "fold": None, "seeds": seeds, "value": value, "metric": bench.TASKS[task].metric,
                "metrics": {f"test/{bench.TASKS[task].metric}": value}}

    out, new, lm = tmp_path / "out", tmp_path / "new.json", tmp_path / "lm.json"
    out.mkdir()
    (out / "quality.json").write_text(json.dumps({"quick": False, "runs": [run("stock", 1, 0.98), run("stock", 2, 0.99)],
                                                  "ensembles": [ensemble("stock", [1, 2], 0.97)]}))
    lm.write_text(json.dumps({"quick": False, "runs": [run("next_word", 1, 118.0)]}))
    assert bench.main(["--out", str(out), "--data-root", str(tmp_path), "--merge-from", str(lm)]) == 0
    kept = json.loads((out / "quality.json").read_text())
    assert [e["seeds"] for e in kept["ensembles"]] == [[1, 2]]  # its runs are still the report's: it stays
    new.write_text(json.dumps({"quick": False, "runs": [run("stock", 3, 1.2), run("stock", 4, 1.3)]}))
    assert bench.main(["--out", str(out), "--data-root", str(tmp_path), "--merge-from", str(new)]) == 0
    merged = json.loads((out / "quality.json").read_text())
    assert sorted(r["seed"] for r in merged["runs"] if r["task"] == "stock") == [3, 4]
    assert not merged["ensembles"]  # the ensemble of seeds 1 and 2 no longer describes these runs


def test_ensemble_of_seeds_is_evaluated_and_reported(tmp_path: Path) -> None:
    shared_data("stocks")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "stock", "--quick", "--seeds", "1", "2", "--ensemble", "--data-root",
         str(SHARED_DATA), "--out", str(out), "--log-dir", str(tmp_path / "logs"), "--timeout", "300"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"bench_quality failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads((out / "quality.json").read_text())
    (ensemble,) = report["ensembles"]
    assert ensemble["task"] == "stock" and ensemble["seeds"] == [1, 2]
    assert "trainer.limit_test_batches=2" in ensemble["command"]  # --quick: scored like its members
    assert "adapt=true" not in ensemble["command"]  # the stock recipe's test does not adapt
    assert math.isfinite(ensemble["value"]) and ensemble["value"] == ensemble["metrics"]["test/mase"]
    single = [r["value"] for r in report["runs"]]
    assert ensemble["value"] not in single  # the mean forecast is its own model, not a copy of one
    summary = report["ensemble_summary"]["stock"]
    assert summary["value"] == ensemble["value"] and isinstance(summary["target_met"], bool)
    assert "| stock | mase |" in (out / "quality.md").read_text()


def test_an_ensemble_adapts_when_its_members_tests_did(tmp_path: Path) -> None:
    """speech_loso_real's test adapts its normalisation to the held-out speaker (adapt: true), and may tune its
    weights (self_train.*): its ensembles are scored the same way, read from the members' own Hydra configs."""
    bench = load_bench()
    for name, text in (("yes", "adapt: true\n"), ("no", "adapt: false\nself_train:\n  epochs: 0\n  keep: 0.7\n"),
                       ("tuned", "adapt: true\nself_train:\n  epochs: 10\n  keep: 0.7\n  lr: 0.001\n")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"task_name: speech_loso_real\n{text}")
    assert bench.test_time_overrides(str(tmp_path / "yes")) == ("adapt=true",)
    assert bench.test_time_overrides(str(tmp_path / "no")) == ()
    assert bench.test_time_overrides(str(tmp_path / "tuned")) == (
        "adapt=true", "self_train.epochs=10", "self_train.keep=0.7", "self_train.lr=0.001")
    assert bench.test_time_overrides(str(tmp_path / "missing")) is None  # no config to tell: not counted either way


def test_ensemble_summary_averages_folds() -> None:
    bench = load_bench()
    folds = [{"task": "speech_loso", "fold": f, "seeds": [1, 2, 3], "value": v,
              "metrics": {"test/cer": v, "test/wer": 2 * v}} for f, v in (("theo", 0.05), ("george", 0.13))]
    summary = bench.summarise_ensembles("speech_loso", folds)
    assert summary["value"] == pytest.approx(0.09) and summary["target_met"] is True
    assert summary["mean_test/wer"] == pytest.approx(0.18) and summary["folds"] == ["theo", "george"]
    failed = {**folds[0], "value": None, "metrics": {}}
    assert bench.summarise_ensembles("speech_loso", [failed, folds[1]])["target_met"] is False
    assert bench.summarise_ensembles("speech_loso", []) is None
    stock = [{"task": "stock", "seeds": [1, 2], "value": value, "metrics": {"test/mase": value}} for value in (0.998,)]
    assert bench.summarise_ensembles("stock", stock)["target_met"] is None  # per ticker: not measured, not claimed
    assert bench.summarise_ensembles("stock", [{**stock[0], "value": 1.001}])["target_met"] is False


def test_a_run_whose_every_job_failed_writes_no_report(tmp_path: Path, monkeypatch, capsys) -> None:
    """A timed-out run rewrote the report with nothing but its failures."""
    bench = load_bench()
    monkeypatch.setattr(bench, "run_one", lambda task, seed, *a: {"task": task, "seed": seed, "value": None,
                                                                   "error": "timed out"})
    out = tmp_path / "out"
    assert bench.main(["ecg", "--out", str(out), "--data-root", str(tmp_path)]) == 1
    assert not out.exists() and "every run failed (1); no report written" in capsys.readouterr().err


def test_a_diverged_run_is_written_as_strict_json(tmp_path: Path, monkeypatch) -> None:
    """A run whose metric is NaN (metrics.json's null, read back as NaN) made quality.json hold ``NaN``."""
    bench = load_bench()
    nan = float("nan")
    monkeypatch.setattr(bench, "run_one", lambda task, seed, *a: {
        "task": task, "seed": seed, "value": nan if seed == 1 else 0.9, "metrics": {"test/auroc": nan},
        "epochs": 1, "best_epoch": 1, "params": 10, "wall_time_s": 1.0, "run_dir": "/x"})
    out = tmp_path / "out"
    bench.main(["ecg", "--seeds", "1", "2", "--out", str(out), "--data-root", str(tmp_path)])

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    report = json.loads((out / "quality.json").read_text(), parse_constant=refuse)
    assert [r["value"] for r in report["runs"]] == [None, 0.9]
    assert report["runs"][0]["metrics"] == {"test/auroc": None}


def test_a_report_with_a_null_metric_can_be_merged(tmp_path: Path, monkeypatch) -> None:
    """quality.json writes a NaN metric as null; --merge read it back as None, and the summary's mean of
    an extra metric (ecg's test/f1) stopped with a TypeError, where the NaN it held before was averaged."""
    bench = load_bench()
    monkeypatch.setattr(bench, "run_one", lambda task, seed, *a: {
        "task": task, "seed": seed, "value": 0.99, "metrics": {"test/auroc": 0.99, "test/f1": float("nan") if seed == 1
                                                               else 0.9, "test/auprc": 0.9},
        "epochs": 1, "best_epoch": 1, "params": 10, "wall_time_s": 1.0, "run_dir": "/x"})
    out = tmp_path / "out"
    assert bench.main(["ecg", "--seeds", "1", "2", "--out", str(out), "--data-root", str(tmp_path)]) == 0
    assert json.loads((out / "quality.json").read_text())["runs"][0]["metrics"]["test/f1"] is None
    assert bench.main(["ecg_unsupervised", "--seeds", "1", "--merge", "--out", str(out),
                       "--data-root", str(tmp_path)]) == 0
    summary = json.loads((out / "quality.json").read_text())["summary"]
    assert set(summary) == {"ecg", "ecg_unsupervised"} and summary["ecg"]["mean_test/f1"] is None  # NaN, as before


def test_a_pretraining_run_is_reused_and_a_wrong_one_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--pretrained``: the seeds start from an earlier run of the first step, which is not trained again."""
    bench = load_bench()
    lm = tmp_path / "sentiment_lm" / "runs" / "x"
    (lm / "checkpoints").mkdir(parents=True)
    (lm / ".hydra").mkdir()
    (lm / ".hydra" / "config.yaml").write_text("task_name: sentiment_lm\nseed: 42\n")
    common = ["--data-root", str(tmp_path), "--out", str(tmp_path / "out"), "--pretrained", str(lm)]
    with pytest.raises(SystemExit):  # no checkpoint yet
        bench.parse_args(["sentiment", *common])
    assert "no checkpoints/best.ckpt" in capsys.readouterr().err
    (lm / "checkpoints" / "best.ckpt").write_bytes(b"")
    (lm / "metrics.json").write_text(json.dumps({"val/perplexity": 195.8}))
    with pytest.raises(SystemExit):  # ecg has no first step
        bench.parse_args(["ecg", *common])
    assert "exactly one task with a first step" in capsys.readouterr().err
    (lm / ".hydra" / "config.yaml").write_text("task_name: next_word_real\n")
    with pytest.raises(SystemExit):
        bench.parse_args(["sentiment", *common])
    assert "task_name 'next_word_real'" in capsys.readouterr().err
    (lm / ".hydra" / "config.yaml").write_text("task_name: sentiment_lm\n")

    def trained_again(*a):
        raise AssertionError("the first step was trained again")

    seen = []
    monkeypatch.setattr(bench, "pretrain_one", trained_again)
    monkeypatch.setattr(bench, "run_one", lambda task, seed, args, overrides, fold, pretrained: seen.append(
        pretrained) or {"task": task, "seed": seed, "value": 0.84, "metrics": {"test/acc": 0.84}, "epochs": 1,
                        "best_epoch": 1, "params": 10, "wall_time_s": 1.0, "run_dir": "/x", "pretrain": pretrained})
    assert bench.main(["sentiment", "--seeds", "1", "2", *common]) == 0
    assert [p["checkpoint"] for p in seen] == [str((lm / "checkpoints" / "best.ckpt").resolve())] * 2
    assert seen[0]["reused"] and seen[0]["metrics"] == {"val/perplexity": 195.8}
    md = (tmp_path / "out" / "quality.md").read_text()
    assert "`experiment=sentiment_lm` (reused from an earlier run; val/perplexity 195.8" in md


def test_quick_runs_write_to_a_temp_folder_of_the_users_own(monkeypatch) -> None:
    """One fixed /tmp/lstmkit_bench_speed was shared by every user of a machine: the second could not write it."""
    import getpass
    import tempfile

    bench = load_bench()
    monkeypatch.setattr(getpass, "getuser", lambda: "ann lee")
    assert bench.quick_folder("bench_speed") == Path(tempfile.gettempdir()) / "lstmkit_bench_speed_ann_lee"

    def no_login() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_login)  # a container's bare uid
    assert bench.quick_folder("bench_gpu").name == f"lstmkit_bench_gpu_{os.getuid()}"
