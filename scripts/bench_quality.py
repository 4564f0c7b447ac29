#!/usr/bin/env python
"""Quality benchmark (issue #6, "Quality"): train every task on its real dataset, record the test metric.

For each requested task this runs ``lstmkit train experiment=<task>_real`` as a subprocess (the
installed console script, or ``python -m lstmkit``), once per seed, with any extra Hydra overrides
passed through. It reads the run directory from the log line ``run directory: ...``, takes the
final metrics from that directory's ``metrics.json`` (the best checkpoint evaluated on the test
split), the epochs run from the run's CSV log, the best epoch from ``checkpoints/best.ckpt`` and the
parameter count from the model rebuilt from it, and writes

``<out>`` is a new ``bench/runs/<UTC time>/`` unless ``--out`` names another folder (never the curated
``bench/results/quality.md``, which has no JSON beside it: that is refused before anything trains).

* ``<out>/quality.json``: one record per run (task, metric, value, split, epochs, wall time,
  parameters, seed, commit, every test metric; for ``stock`` the persistence baseline) and a
  summary per task (mean / std / min / max over seeds, the target, whether it was met);
* ``<out>/quality.md``: the same as a Markdown table, beside the published reference numbers.

With ``--ensemble`` it also evaluates, per task (and fold), the ensemble of its seeds' best checkpoints
(``lstmkit eval ckpt_path=[...]``: the mean of their predictive distributions, see
``lstmkit.ensemble``) on the same test split, and reports it beside the single runs' mean.

The recipes are ``conf/experiment/<task>_real.yaml``; each states its CPU budget and what it is
expected to reach. The real datasets are read from ``--data-root`` (``paths.data_root``).

    .venv/bin/python scripts/bench_quality.py                          # every task, seed from the recipe (42)
    .venv/bin/python scripts/bench_quality.py ecg ecg_unsupervised --seeds 1 2 3 4 5
    .venv/bin/python scripts/bench_quality.py stock optimizer.lr=1e-3  # extra overrides go to every run
    .venv/bin/python scripts/bench_quality.py ecg --seeds 1 2 3 --merge --out bench/runs/<folder>  # replace only ecg there
    .venv/bin/python scripts/bench_quality.py --merge-from /tmp/ptb/quality.json  # add a run made with --out /tmp/ptb
    .venv/bin/python scripts/bench_quality.py sentiment --seeds 1 2 3 4 5 --ensemble  # and their ensemble
    .venv/bin/python scripts/bench_quality.py sentiment --seeds 1 2 3 4 5 --pretrained logs/sentiment_lm/runs/<date>
    .venv/bin/python scripts/bench_quality.py --quick                  # smoke check: seconds per task
    nice -n 10 .venv/bin/python scripts/bench_quality.py --threads 1 speech

Full runs take the budgets stated in the recipes (on 2 CPU cores: next_word about 45 min, speech about
20 min, speech_loso 6 folds of 2-6 min, sentiment 12 min once for its language model, the others a few
minutes per seed);
``--quick`` limits every run to one epoch of 3 train / 2 val /
2 test batches (and the first fold only of tasks with folds), so its numbers only check the plumbing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def quick_folder(bench: str) -> Path:
    """Where a ``--quick`` (or dry) run writes: a temp folder of this user's own.

    Why: its figures are a smoke check, not results, so they stay out of the repository; one fixed
    ``/tmp/lstmkit_bench_speed`` was shared by every user of a machine, and the second could not write it.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's bare uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"lstmkit_{bench}_{re.sub(r'[^A-Za-z0-9_.-]', '_', user)}"


@dataclass(frozen=True)
class Task:
    """What the benchmark reads from one task's run and what it compares it with."""

    experiment: str
    dataset: str
    metric: str  # key in metrics.json
    higher_is_better: bool
    target: float  # the goal of issue #6 for this task
    target_text: str
    reference: str  # published numbers (Markdown), or a dash with the reason
    extra_metrics: tuple[str, ...] = ()
    folds: tuple[tuple[str, str], ...] = ()  # (label, override): one run per fold and seed
    pretrain: str | None = None  # experiment run once first (its recipe's seed); best.ckpt -> init_from.ckpt_path
    strict: bool = False  # the target is a strict bound (< rather than <=)
    per_series: bool = False  # the target holds for every series (each run's ``per_ticker``) as well as overall


FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
TASKS: dict[str, Task] = {
    "next_word": Task(
        "next_word_real", "PTB (Mikolov), 10k vocab", "test/perplexity", False, 100.0, "≤ 100",
        "Zaremba et al. 2014: small (2×200) 114.5, medium (2×650, dropout 0.5) 82.7, large (2×1500) 78.4",
        ("test/acc",),
    ),
    "sentiment": Task(
        "sentiment_real", "SST-2 sentences (6,920 / 872 / 1,821)", "test/acc", True, 0.84, "≥ 84 %",
        "Kim 2014 CNN-rand 82.7; Tai et al. 2015 LSTM 84.9, bi-LSTM 87.5 (both with GloVe and "
        "phrase-level labels)",
        ("test/f1",),
        pretrain="sentiment_lm",  # a language model over the training sentences, then the classifier from it
    ),
    "speech": Task(
        "speech_real", "FSDD v1.0.9, official split", "test/cer", False, 0.015, "≤ 1.5 %",
        "— (FSDD results are published as digit-classification accuracy, not CER)",
        ("test/wer",),
    ),
    "speech_loso": Task(
        "speech_loso_real", "FSDD v1.0.9, leave one speaker out (6 folds)", "test/cer", False, 0.10,
        "≤ 10 % (mean of the folds)",
        "— (FSDD results are published as digit-classification accuracy, not CER)",
        ("test/wer",),
        tuple((name, f"data.holdout_speakers=[{name}]") for name in FSDD_SPEAKERS),
    ),
    "stock": Task(
        "stock_real", "20 S&P 500 tickers, test 2017-09-01..2018-02-07", "test/mase", False, 1.0,
        "< 1.0, overall and per ticker",
        "persistence (next close = last close): MASE 1.0 by definition; no standard benchmark",
        ("test/mae", "test/naive_mae", "test/mape", "test/naive_mape"),
        strict=True, per_series=True,
    ),
    "ecg": Task(
        "ecg_real", "ECG5000 TRAIN file (500 beats), stratified 60/20/20", "test/auroc", True, 0.995,
        "AUROC ≥ 0.995, F1 ≥ 0.97",
        "— (published ECG5000 results use the official 500 / 4,500 split and 5-class accuracy)",
        ("test/f1", "test/auprc"),
    ),
    "ecg_unsupervised": Task(
        "ecg_unsupervised_real", "ECG5000 TRAIN file, trained on normal beats only", "test/auroc", True, 0.97,
        "AUROC ≥ 0.97",
        "— (published ECG5000 results use the official 500 / 4,500 split)",
        ("test/f1", "test/auprc"),
    ),
}
PERCENT = {"test/acc", "test/cer", "test/wer", "test/mape", "test/naive_mape"}  # shown as percentages
# anomaly heads calibrate a threshold to each model's own scores, so lstmkit does not average them
NO_ENSEMBLE = {"ecg", "ecg_unsupervised"}
SECONDARY_TARGETS = {"ecg": ("test/f1", 0.97, True)}  # also part of the goal (mean of seeds)

QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.max_time=null",
]
RUN_DIR = re.compile(r"run directory: (.+?)\s*$", re.MULTILINE)
METRICS_FILE = re.compile(r"metrics written to (.+?)\s*$", re.MULTILINE)  # what `lstmkit eval` logs
# Lightning's model summary: "Total params: 134 K" (rich) or "134 K     Total params" (plain)
SUMMARY_LINE = re.compile(r"Total params:\s*([\d.]+\s*[KMGT]?)|([\d.]+\s*[KMGT]?)\s+Total params")


# -- running --------------------------------------------------------------------------------------
def lstmkit_command(python: str | None) -> list[str]:
    """The console script beside this interpreter or in the repo's venv, else ``python -m lstmkit``."""
    if python:
        return [python, "-m", "lstmkit"]
    for candidate in (Path(sys.executable).parent / "lstmkit", REPO / ".venv" / "bin" / "lstmkit"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("lstmkit")
    return [found] if found else [sys.executable, "-m", "lstmkit"]


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None}


def train_subprocess(cmd: list[str], args: argparse.Namespace, record: dict[str, Any]
                     ) -> tuple[str, int | None, Path | None]:
    """Run one ``lstmkit train`` command; its output, exit code and run directory (None if not found)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=args.timeout, check=False)
        output, returncode = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        returncode = None
        record["error"] = f"timed out after {args.timeout} s"
    record["wall_time_s"] = round(time.perf_counter() - start, 1)
    record["returncode"] = returncode
    if args.verbose:
        print(output, flush=True)
    found = RUN_DIR.findall(output)
    run_dir = Path(found[-1]) if found else None
    if run_dir is not None and not run_dir.is_absolute():
        run_dir = REPO / run_dir
    record["run_dir"] = str(run_dir) if run_dir else None
    return output, returncode, run_dir


def base_command(experiment: str, seed: int | None, args: argparse.Namespace) -> list[str]:
    cmd = [*lstmkit_command(args.python), "train", f"experiment={experiment}",
           f"paths.data_root={args.data_root}", "trainer.enable_progress_bar=false"]
    if args.log_dir:
        cmd.append(f"paths.log_dir={args.log_dir}")
    if seed is not None:
        cmd.append(f"seed={seed}")
    return cmd


def pretrain_one(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Step 1 of a two-step recipe: train ``TASKS[task].pretrain`` (once per invocation, by
    :func:`main`, with its recipe's own seed); every seed of the task then starts from its best.ckpt
    (so the seeds measure the second step's variance). The record names the checkpoint."""
    from lstmkit.commands.common import read_metrics  # metrics.json: a diverged metric's null as NaN

    experiment = TASKS[task].pretrain
    assert experiment is not None
    cmd = base_command(experiment, None, args) + (QUICK if args.quick else [])
    record: dict[str, Any] = {"experiment": experiment, "command": " ".join(cmd), "checkpoint": None}
    print(f"[bench_quality] {task}: pretraining: {' '.join(cmd)}", flush=True)
    output, returncode, run_dir = train_subprocess(cmd, args, record)
    best = run_dir / "checkpoints" / "best.ckpt" if run_dir else None
    if returncode != 0 or best is None or not best.exists():
        record.setdefault("error", f"exit code {returncode}; no checkpoints/best.ckpt")
        record["log_tail"] = "\n".join(output.strip().splitlines()[-15:])
        return record
    record["checkpoint"] = str(best)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        record["metrics"] = read_metrics(metrics_file)
    return record


def reuse_pretrained(task: str, run_dir: Path) -> dict[str, Any]:
    """Step 1 of a two-step recipe taken from an earlier run (``--pretrained``) instead of trained again:
    a language model costs as much as several seeds of the classifier, and training is deterministic,
    so a re-run would give the same weights. The record says where it came from; its training time
    was spent elsewhere and is not added to this report's."""
    from lstmkit.commands.common import read_metrics

    record: dict[str, Any] = {"experiment": TASKS[task].pretrain, "command": f"reused: {run_dir}",
                              "checkpoint": str(run_dir / "checkpoints" / "best.ckpt"), "run_dir": str(run_dir),
                              "reused": True, "wall_time_s": None}
    if (run_dir / "metrics.json").exists():
        record["metrics"] = read_metrics(run_dir / "metrics.json")
    print(f"[bench_quality] {task}: pretraining reused: {record['checkpoint']}", flush=True)
    return record


def run_one(task: str, seed: int | None, args: argparse.Namespace, overrides: list[str],
            fold: tuple[str, str] | None = None, pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one recipe once (on one fold, for tasks that have folds) and read back what it wrote.

    ``pretrained``: for a task with a ``pretrain`` experiment, :func:`pretrain_one`'s record (run
    once, with none of ``overrides``); this run starts from its checkpoint (``init_from.ckpt_path``).
    The record's wall time is this run's; the summary adds the pretraining once.
    """
    from lstmkit.commands.common import read_metrics  # metrics.json: a diverged metric's null as NaN

    spec = TASKS[task]
    cmd = base_command(spec.experiment, seed, args)
    if fold is not None:
        cmd.append(fold[1])
    if args.quick:
        cmd += QUICK
    cmd += overrides
    if pretrained is not None and pretrained["checkpoint"]:
        cmd.append(f"init_from.ckpt_path={pretrained['checkpoint']}")
    record: dict[str, Any] = {
        "task": task, "experiment": spec.experiment, "dataset": spec.dataset, "metric": spec.metric,
        "split": "test", "higher_is_better": spec.higher_is_better, "value": None, "seed": seed,
        "quick": args.quick, "command": " ".join(cmd), "fold": fold[0] if fold else None,
    }
    label = "the recipe's" if seed is None else seed  # progress lines; the record gets the resolved seed below
    if pretrained is not None:
        record["pretrain"] = pretrained
        if not pretrained["checkpoint"]:
            record.update(error=f"pretraining ({pretrained['experiment']}) failed: {pretrained.get('error')}",
                          wall_time_s=0.0, run_dir=pretrained.get("run_dir"))
            print(f"[bench_quality] {task} seed={label} FAILED "
                  f"({record['error']}):\n{pretrained.get('log_tail', '')}", flush=True)
            return record
    print(f"[bench_quality] {task} seed={label}{f' fold={fold[0]}' if fold else ''}: {' '.join(cmd)}", flush=True)
    output, returncode, run_dir = train_subprocess(cmd, args, record)
    metrics_file = run_dir / "metrics.json" if run_dir else None
    if returncode != 0 or metrics_file is None or not metrics_file.exists():
        tail = "\n".join(output.strip().splitlines()[-15:])
        record.setdefault("error", f"exit code {returncode}; no metrics.json" if metrics_file is None
                          or not metrics_file.exists() else f"exit code {returncode}")
        record["log_tail"] = tail
        where = f"seed={label}{f' fold={fold[0]}' if fold else ''}"
        print(f"[bench_quality] {task} {where} FAILED ({record['error']}):\n{tail}", flush=True)
        return record
    assert run_dir is not None
    metrics = read_metrics(metrics_file)
    record["metrics"] = {k: v for k, v in metrics.items() if k.startswith("test/")}
    record["value"] = metrics.get(spec.metric)
    record["val_best"] = next((v for k, v in metrics.items() if k.endswith("_best")), None)
    record.update(checkpoint_facts(run_dir, output))
    if seed is None:  # the recipe's own seed, as the run resolved it
        resolved = run_dir / ".hydra" / "config.yaml"
        match = re.search(r"^seed: (\d+)$", resolved.read_text(), re.MULTILINE) if resolved.exists() else None
        record["seed"] = int(match.group(1)) if match else None
    if task == "stock":
        record["naive_baseline"] = {
            "forecast": "persistence (next close = last close)",
            "mase": 1.0,
            **{k.removeprefix("test/naive_"): metrics[k] for k in ("test/naive_mae", "test/naive_rmse",
                                                                   "test/naive_mape") if k in metrics},
        }
        if "test/drift_mase" in metrics:  # the second naive forecast: persistence grown by the train days' drift
            record["drift_baseline"] = {"forecast": "persistence with drift (last close x the train days' mean "
                                                    "return, pooled over the tickers)", "mase": metrics["test/drift_mase"]}
    if task == "stock" and (run_dir / "checkpoints" / "best.ckpt").exists():
        try:
            record["per_ticker"], record["against_persistence"] = stock_per_ticker(
                run_dir / "checkpoints" / "best.ckpt")
        except Exception as err:  # noqa: BLE001 - an extra; the run's overall metric is what matters
            record["per_ticker"] = {"error": f"{type(err).__name__}: {err}"}
    if task in ("ecg", "ecg_unsupervised") and (run_dir / "checkpoints" / "best.ckpt").exists():
        try:
            record["template_baseline"] = ecg_template_baseline(run_dir / "checkpoints" / "best.ckpt")
        except Exception as err:  # noqa: BLE001 - a baseline is an extra; the run's metric is what matters
            record["template_baseline"] = {"error": f"{type(err).__name__}: {err}"}
    value = record["value"]
    print(f"[bench_quality] {task} seed={record['seed']}: {spec.metric} = {value} in {record['wall_time_s']} s "
          f"({record.get('epochs')} epochs)", flush=True)
    return record


def test_time_overrides(run_dir: str) -> tuple[str, ...] | None:
    """How a run's test was adapted to the test inputs, as eval overrides: ``adapt=true`` (its normalisation)
    and ``self_train.*`` (its weights; epochs 0 = none), from its Hydra config; ``None`` when the run folder
    has no config to tell (``hydra.output_subdir=null``)."""
    from omegaconf import OmegaConf

    config = Path(run_dir) / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    cfg = OmegaConf.load(config)
    overrides = ["adapt=true"] if OmegaConf.select(cfg, "adapt", default=False) else []
    tuned = OmegaConf.select(cfg, "self_train", default=None)
    if tuned is not None and tuned.get("epochs"):
        overrides += [f"self_train.{key}={value}" for key, value in tuned.items()]
    return tuple(overrides)


def ensemble_one(task: str, fold: str | None, members: list[dict[str, Any]], args: argparse.Namespace
                 ) -> dict[str, Any]:
    """Evaluate the ensemble of ``members`` (runs of one task and fold) on its test split with
    ``lstmkit eval ckpt_path=[...]``; the record has the same metric keys as a run's."""
    from lstmkit.commands.common import read_metrics  # metrics.json: a diverged metric's null as NaN

    spec = TASKS[task]
    ckpts = [str(Path(r["run_dir"]) / "checkpoints" / "best.ckpt") for r in members]
    # Hydra's quoted strings: a backslash is an escape only before a quote or at the end
    quoted = ",".join("'" + re.sub(r"(\\+)(?='|$)", r"\1\1", c).replace("'", "\\'") + "'" for c in ckpts)
    cmd = [*lstmkit_command(args.python), "eval", f"ckpt_path=[{quoted}]",
           "trainer.enable_progress_bar=false"]
    # scored as its members' tests were (adapt: true, self_train.*)
    adapts = {test_time_overrides(r["run_dir"]) for r in members} - {None}
    if len(adapts) == 1:
        cmd += list(next(iter(adapts)))
    if args.quick:  # the members were tested on QUICK's test batches: so is their ensemble
        cmd += [o for o in QUICK if o.startswith("trainer.limit_test_batches")]
    if args.log_dir:
        cmd.append(f"paths.log_dir={args.log_dir}")
    record: dict[str, Any] = {"task": task, "fold": fold, "metric": spec.metric, "value": None, "split": "test",
                              "seeds": [r.get("seed") for r in members], "command": " ".join(cmd),
                              "commit": git_commit()["commit"],  # of the evaluation; the members' below
                              "member_commits": [r.get("commit") for r in members],
                              "params": sum(int(r.get("params") or 0) for r in members),
                              "epochs": [r.get("epochs") for r in members]}
    where = f"{task}{f' fold={fold}' if fold else ''}"
    if len(adapts) > 1:  # (runs merged from reports of two recipes)
        record["error"] = ("its runs' tests were adapted differently (adapt, self_train: "
                           + " / ".join(" ".join(a) or "none" for a in sorted(adapts)) + "): no one way to score their ensemble")
        print(f"[bench_quality] {where} ensemble not evaluated: {record['error']}", flush=True)
        return record
    print(f"[bench_quality] {where}: ensemble of {len(ckpts)}: {' '.join(cmd)}", flush=True)
    output, returncode, _ = train_subprocess(cmd, args, record)
    found = METRICS_FILE.findall(output)
    if returncode != 0 or not found:
        record["error"] = f"exit code {returncode}" + ("" if found else "; no metrics.json")
        record["log_tail"] = "\n".join(output.strip().splitlines()[-15:])
        print(f"[bench_quality] {where} ensemble FAILED ({record['error']}):\n{record['log_tail']}", flush=True)
        return record
    metrics = read_metrics(Path(found[-1]))
    record["metrics"] = {k: v for k, v in metrics.items() if k.startswith("test/")}
    record["value"] = metrics.get(spec.metric)
    print(f"[bench_quality] {where}: ensemble {spec.metric} = {record['value']}", flush=True)
    return record


def ensembles(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One ensemble per task and fold that has at least two finished runs with a best checkpoint."""
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in runs:
        usable = r.get("value") is not None and r.get("run_dir") and r["task"] not in NO_ENSEMBLE
        if usable and (Path(r["run_dir"]) / "checkpoints" / "best.ckpt").exists():
            groups.setdefault((r["task"], r.get("fold")), []).append(r)
    return [ensemble_one(task, fold, members, args) for (task, fold), members in groups.items()
            if len(members) >= 2]


def meets(task: str, value: float) -> bool:
    """Whether ``value`` reaches the task's target."""
    spec = TASKS[task]
    if spec.higher_is_better:
        return value >= spec.target
    return value < spec.target if spec.strict else value <= spec.target


def shown_path(path: str | None) -> str:
    """A run directory as the committed Markdown shows it: relative to the repo, never this machine's path."""
    if not path:
        return "—"
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return str(Path(*Path(path).parts[-3:]))  # <task>/runs/<date>


def checkpoint_facts(run_dir: Path, output: str) -> dict[str, Any]:
    """Epochs run (from the CSV log), the best epoch and the parameter count (from ``best.ckpt``).

    ``last.ckpt`` cannot tell the epochs run: with a monitored metric, Lightning 2.6 rewrites it only
    in epochs that also wrote a top-k checkpoint, so after early stopping it holds the best epoch.
    """
    facts: dict[str, Any] = {"epochs": epochs_logged(run_dir), "best_epoch": None, "params": None}
    best = run_dir / "checkpoints" / "best.ckpt"
    try:
        import torch

        if best.exists():
            ckpt = torch.load(best, map_location="cpu", weights_only=True)
            facts["best_epoch"] = int(ckpt.get("epoch", -1)) + 1  # Lightning stores the 0-based epoch
            from lstmkit.checkpoints import load_model

            facts["params"] = sum(p.numel() for p in load_model(best).parameters())  # tied weights once
    except Exception as err:  # noqa: BLE001 - the counts are extras; the metric is what matters
        facts["checkpoint_error"] = f"{type(err).__name__}: {err}"
    if facts["params"] is None:  # Lightning's model summary, e.g. "Total params: 134 K"
        match = SUMMARY_LINE.search(output)
        if match:
            facts["params_approx"] = (match.group(1) or match.group(2)).replace(" ", "")
    return facts


def ecg_template_baseline(checkpoint: Path) -> dict[str, Any]:
    """A parameter-free baseline on the run's own splits: each beat's distance to the average normal beat.

    Why: ECG5000's beats are aligned (R peak at the same sample), so the mean squared distance of a
    z-normalised beat to the mean of the normal *training* beats already ranks anomalies well; a
    learnt model is worth its cost only above it. Scored as the heads are: AUROC on test, F1 on test
    at the threshold that maximises F1 on val.
    """
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_f1_score

    from lstmkit.build import build
    from lstmkit.checkpoints import load_model
    from lstmkit.heads.anomaly import f1_threshold

    model = load_model(checkpoint).eval()
    datamodule = build(dict(model.hparams["data"]))
    datamodule.setup("fit")
    encoder = model.encoder  # the model's own view of a beat: z-normalised over its valid samples

    def beats(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = datamodule.splits[split]
        x = torch.stack([rows[i][0] for i in range(len(rows))])  # (N, T, 1)
        with torch.no_grad():
            signal = encoder(x, torch.full((len(rows),), x.shape[1]))[0][..., : encoder.signal_channels]
        return signal.flatten(1).double(), torch.stack([rows[i][1] for i in range(len(rows))])

    train, train_labels = beats("train")
    template = train[train_labels == 0].mean(0)
    (val, val_labels), (test, test_labels) = beats("val"), beats("test")
    val_scores, test_scores = ((val - template) ** 2).mean(1), ((test - template) ** 2).mean(1)
    threshold = f1_threshold(val_scores, val_labels)  # the anomaly heads' rule (head.threshold=f1)
    return {"baseline": "mean squared distance to the average normal training beat (z-normalised)",
            "auroc": float(binary_auroc(test_scores.float(), test_labels)),
            "f1": float(binary_f1_score((test_scores >= threshold).long(), test_labels)),
            "val_auroc": float(binary_auroc(val_scores.float(), val_labels))}


def stock_per_ticker(checkpoint: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Test MASE (and MAE against persistence's) of every ticker alone, from the run's best checkpoint,
    and whether the model's errors differ from persistence's by more than chance (:func:`diebold_mariano`).

    The issue asks for MASE < 1 per ticker as well as overall. The head's own metrics are updated
    with one ticker's test windows at a time, so the figures are computed exactly as the overall ones.
    The test's loss differential is the one MASE sums (the head's ``loss_differential``): each window's absolute error minus persistence's,
    relative to its last close, averaged over the horizon. Per ticker it is tested over that ticker's
    windows; overall over test *days* (each day's mean over the tickers), because the tickers of one day
    move together and are not independent draws.
    """
    import numpy as np
    import torch

    from lstmkit.build import build
    from lstmkit.checkpoints import load_model
    from lstmkit.types import Batch

    model = load_model(checkpoint).eval()
    datamodule = build(dict(model.hparams["data"]), spec=model.hparams.spec)
    datamodule.setup("test")
    test = datamodule.splits["test"]
    out: dict[str, dict[str, float]] = {}
    by_day: dict[Any, list[float]] = {}
    for k, series in enumerate(datamodule.series):
        rows = (test.anchors[:, 0] == k).nonzero().flatten().tolist()  # this ticker's test windows
        if not rows:
            continue
        metrics = model.head.metrics().clone(prefix="test/")
        differentials = []
        with torch.no_grad():
            for start in range(0, len(rows), 256):
                items = [test[i] for i in rows[start : start + 256]]
                inputs, targets = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
                lengths = torch.full((len(items),), inputs.shape[1])
                outputs, _ = model(inputs, lengths)
                batch = Batch(inputs, lengths, targets)
                model.head.update_metrics(metrics, outputs, lengths, batch)
                differentials += model.head.loss_differential(outputs, batch).tolist()
        for i, d in zip(rows, differentials):  # by the day the forecast is made (the window's last)
            by_day.setdefault(series.dates[int(test.anchors[i, 1])], []).append(d)
        computed = {key: float(value) for key, value in metrics.compute().items()}
        out[series.ticker] = {key.removeprefix("test/"): computed[key]
                              for key in ("test/mase", "test/mae", "test/naive_mae", "test/drift_mase")
                              if key in computed}
        out[series.ticker]["dm_p"] = diebold_mariano(np.array(differentials), test.horizon)["p"]
    days = sorted(by_day)
    overall = diebold_mariano(np.array([np.mean(by_day[day]) for day in days]), test.horizon)
    return out, {"days": len(days), **overall}


def diebold_mariano(differential: Any, horizon: int = 1) -> dict[str, float]:
    """Diebold & Mariano (1995) with Harvey, Leybourne & Newbold's (1997) small-sample correction, as R's
    ``forecast::dm.test`` computes it (the same figures at the recipe's horizon of 1; for h > 1 R falls back to
    h = 1 where the variance is <= 0, this to Bartlett's weights): is the mean loss differential (model minus
    baseline, in time order) zero?

    The statistic is the mean over its standard error; the variance sums the autocovariances up to lag
    ``horizon - 1`` (an h-step forecast's errors overlap for h - 1 steps), rescaled by
    ``sqrt((n + 1 - 2h + h(h - 1) / n) / n)`` and read against Student's t with n - 1 degrees of freedom,
    two-sided. Where those autocovariances sum to a variance <= 0 (possible for h > 1), the Bartlett
    weights of Newey & West keep it positive. ``mean`` > 0: the model's errors are the larger.
    ``p`` near 1: no evidence either way.
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(differential, dtype=np.float64)
    n = len(d)
    if n < 2:
        return {"mean": float(d.mean()) if n else math.nan, "t": math.nan, "p": math.nan}
    centred = d - d.mean()
    lags = range(1, min(horizon, n))
    covariances = [centred @ centred / n] + [centred[lag:] @ centred[:-lag] / n for lag in lags]
    variance = covariances[0] + 2 * sum(covariances[1:])
    if variance <= 0:
        variance = covariances[0] + 2 * sum((1 - lag / horizon) * covariances[lag] for lag in lags)
    if variance <= 0:
        return {"mean": float(d.mean()), "t": math.nan, "p": math.nan}
    correction = math.sqrt(max(n + 1 - 2 * horizon + horizon * (horizon - 1) / n, 1e-12) / n)
    t = float(d.mean() / math.sqrt(variance / n) * correction)
    return {"mean": float(d.mean()), "t": t, "p": float(2 * stats.t.sf(abs(t), df=n - 1))}


def epochs_logged(run_dir: Path) -> int | None:
    """Training epochs in the run's CSV log (``logger=csv``, the default): the last epoch with
    train or val rows, plus one. ``None`` without a CSV log."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return None
    last = -1
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            fitting = any(v not in (None, "") for k, v in row.items() if k and k.startswith(("train/", "val/")))
            if fitting and (row.get("epoch") or "").isdigit():
                last = max(last, int(row["epoch"]))
    return last + 1 if last >= 0 else None


# -- summarising ----------------------------------------------------------------------------------
def unique_pretraining(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pretraining steps the runs started from, each once (runs share one per invocation)."""
    steps = {json.dumps(r["pretrain"].get("run_dir")): r["pretrain"] for r in runs if r.get("pretrain")}
    return list(steps.values())


def nan_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A run or ensemble record read back from ``quality.json``: its metrics' ``null`` (a non-finite value,
    written as strict JSON) as NaN again, as the run's own ``metrics.json`` reads (``read_metrics``): the
    summary's means would otherwise meet ``None`` (``--merge`` stopped with a TypeError)."""
    if isinstance(record.get("metrics"), dict):
        record["metrics"] = {k: math.nan if v is None else v for k, v in record["metrics"].items()}
    return record


def summarise_ensembles(task: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task's ensembles: their metric (the mean over folds), and whether it reaches the target."""
    if not records:
        return None
    values = [r["value"] for r in records if isinstance(r.get("value"), float) and math.isfinite(r["value"])]
    summary: dict[str, Any] = {"ensembles": len(records), "members": [len(r["seeds"]) for r in records],
                               "folds": [r["fold"] for r in records if r.get("fold")]}
    if values:
        summary["value"] = statistics.fmean(values)
        summary["target_met"] = meets(task, summary["value"]) and len(values) == len(records)
        if TASKS[task].per_series:  # its target holds per series too, which is not measured for the ensemble
            summary["target_met"] = None if summary["target_met"] else False
        for key in TASKS[task].extra_metrics:
            others = [r["metrics"][key] for r in records if key in r.get("metrics", {})]
            if others:
                summary[f"mean_{key}"] = statistics.fmean(others)
    return summary


def measured_tickers(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``per_ticker`` figures of the stock runs that measured them (not an ``{"error": ...}``)."""
    return [r["per_ticker"] for r in runs if isinstance(r.get("per_ticker"), dict) and "error" not in r["per_ticker"]]


def ticker_means(runs: list[dict[str, Any]], key: str = "mase") -> dict[str, float]:
    """Each ticker's ``key`` (test MASE), the mean over the runs that measured it (stock's ``per_ticker``)."""
    tickers = measured_tickers(runs)
    names = sorted(set().union(*tickers)) if tickers else []
    return {n: statistics.mean(t[n][key] for t in tickers if t.get(n, {}).get(key) is not None) for n in names
            if any(t.get(n, {}).get(key) is not None for t in tickers)}


def summarise(task: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = TASKS[task]
    values = [r["value"] for r in runs if isinstance(r.get("value"), float) and math.isfinite(r["value"])]
    summary: dict[str, Any] = {
        "experiment": spec.experiment, "dataset": spec.dataset, "metric": spec.metric, "split": "test",
        "higher_is_better": spec.higher_is_better, "runs": len(runs), "ok": len(values),
        "target": spec.target_text, "reference": spec.reference,
        "seeds": [r.get("seed") for r in runs],
        "folds": [r["fold"] for r in runs if r.get("fold")],
        "wall_time_s": round(sum(r.get("wall_time_s") or 0.0 for r in runs)
                             + sum(p.get("wall_time_s") or 0.0 for p in unique_pretraining(runs)), 1),
    }
    if values:
        mean = statistics.fmean(values)
        summary.update(mean=mean, std=statistics.stdev(values) if len(values) > 1 else 0.0,
                       min=min(values), max=max(values))
        met = meets(task, mean)
        for key, goal, higher in [SECONDARY_TARGETS[task]] if task in SECONDARY_TARGETS else []:
            others = [r["metrics"][key] for r in runs if key in r.get("metrics", {})]
            if others:
                summary[f"mean_{key}"] = statistics.fmean(others)
                met = met and (summary[f"mean_{key}"] >= goal if higher else summary[f"mean_{key}"] <= goal)
        per_ticker = ticker_means(runs) if spec.per_series else {}
        if per_ticker:  # the target holds per ticker as well as overall
            summary["tickers_meeting_target"] = f"{sum(meets(task, v) for v in per_ticker.values())}/{len(per_ticker)}"
            met = met and all(meets(task, v) for v in per_ticker.values())
        summary["target_met"] = met and len(values) == len(runs)  # a failed seed or fold is not a pass
        if spec.per_series and not per_ticker and summary["target_met"]:
            summary["target_met"] = None  # overall only: the per-ticker half was not measured, so not claimed
        for key in spec.extra_metrics:
            others = [r["metrics"][key] for r in runs if key in r.get("metrics", {})]
            if others:
                summary[f"mean_{key}"] = statistics.fmean(others)
    return summary


def fmt(value: float | None, percent: bool = False, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if percent:
        return f"{100 * value:.2f} %"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(report: dict[str, Any]) -> str:
    host = report["host"]
    dirty = " (with uncommitted changes)" if report["dirty"] else ""
    lines = [
        "# lstmkit quality benchmark",
        "",
        (f"Generated {report['generated']} by `scripts/bench_quality.py` at commit "
         f"`{(report['commit'] or 'unknown')[:12]}`{dirty}; {host['cpus']} CPUs, torch {host.get('torch') or '?'}, "
         f"OMP_NUM_THREADS={host.get('omp_num_threads') or 'unset'}. Every value is on the held-out test split, "
         "from the best checkpoint (chosen on val)."),
        "",
    ]
    if report["quick"]:
        lines += [("**`--quick` run: one epoch of 3 train / 2 val / 2 test batches per task. These numbers check "
                   "the plumbing only; they say nothing about quality.**"), ""]
    if report["overrides"]:
        lines += [f"Extra overrides: `{' '.join(report['overrides'])}`", ""]
    elif report["overrides"] is None:
        lines += ["The runs differ in their extra overrides; see `command` in quality.json.", ""]
    if report.get("merged_from_earlier"):
        lines += [(f"Merged report (`--merge`): the runs of {', '.join(report['merged_from_earlier'])} come from an "
                   "earlier invocation; each run's commit and command are in quality.json."), ""]
    lines += [
        ("| task | data | metric | lstmkit (mean ± std) | seeds | epochs (best) | wall time / run | parameters "
         "| target | met | published reference |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, summary in report["summary"].items():
        spec = TASKS[task]
        runs = [r for r in report["runs"] if r["task"] == task]
        percent = spec.metric in PERCENT
        if "mean" in summary:
            value = fmt(summary["mean"], percent)
            if summary["ok"] > 1:
                value += f" ± {fmt(summary['std'], percent)}"
        else:
            value = "failed"
        extras = [f"{k.removeprefix('test/')} {fmt(summary[f'mean_{k}'], k in PERCENT)}"
                  for k in spec.extra_metrics if f"mean_{k}" in summary]
        if "tickers_meeting_target" in summary:
            extras.append(f"{summary['tickers_meeting_target']} tickers below 1")
        if extras:
            value += f" ({', '.join(extras)})"
        epochs = "/".join(str(r.get("epochs") or "—") for r in runs)
        best = "/".join(str(r.get("best_epoch") or "—") for r in runs)
        params = next((r.get("params") or r.get("params_approx") for r in runs
                       if r.get("params") or r.get("params_approx")), None)
        params_text = f"{params:,}" if isinstance(params, int) else (params or "—")
        seeds = ", ".join(dict.fromkeys("?" if s is None else str(s) for s in summary["seeds"]))
        if summary.get("folds"):
            seeds += f" × {len(set(summary['folds']))} folds"
        wall = duration(sum(r.get("wall_time_s") or 0.0 for r in runs) / max(len(runs), 1))
        met = {True: "yes", False: "no"}.get(summary.get("target_met"), "—")
        lines.append(
            f"| {task} | {spec.dataset} | {spec.metric.removeprefix('test/')} | {value} | {seeds} | {epochs} ({best}) "
            f"| {wall} | {params_text} | {spec.target_text} | {met} | {spec.reference} |"
        )
    if report.get("ensemble_summary"):
        lines += ["", ("Ensembles (`--ensemble`): each task's seeds evaluated together on the same test split "
                       "(`lstmkit eval ckpt_path=[...]`, the mean of their predictive distributions; per fold for "
                       "tasks with folds, then the mean over folds), beside the single runs' mean."), "",
                  "| task | metric | ensemble | members | single runs (mean) | target | met |",
                  "|---|---|---|---|---|---|---|"]
        for task, ens in report["ensemble_summary"].items():
            spec = TASKS[task]
            percent = spec.metric in PERCENT
            value = fmt(ens.get("value"), percent) if "value" in ens else "failed"
            extras = [f"{k.removeprefix('test/')} {fmt(ens[f'mean_{k}'], k in PERCENT)}"
                      for k in spec.extra_metrics if f"mean_{k}" in ens]
            if extras:
                value += f" ({', '.join(extras)})"
            members = "/".join(str(n) for n in dict.fromkeys(ens["members"]))
            if ens.get("folds"):
                members += f" × {len(ens['folds'])} folds"
            single = fmt(report["summary"].get(task, {}).get("mean"), percent)
            met = {True: "yes", False: "no"}.get(ens.get("target_met"), "—")
            lines.append(f"| {task} | {spec.metric.removeprefix('test/')} | {value} | {members} | {single} "
                         f"| {spec.target_text} | {met} |")
    stock = [r for r in report["runs"] if r["task"] == "stock" and r.get("naive_baseline")]
    if stock:
        naive = stock[0]["naive_baseline"]
        lines += ["", (f"Stock baseline (persistence on the same test days): MAE {fmt(naive.get('mae'))} $, RMSE "
                       f"{fmt(naive.get('rmse'))} $, MAPE {fmt(naive.get('mape'), percent=True)}; "
                       "MASE = model MAE / persistence MAE, each window's errors relative to its last close "
                       "(scale free: every ticker counts alike).")]
        drifts = [r["drift_baseline"]["mase"] for r in stock if (r.get("drift_baseline") or {}).get("mase") is not None]
        if drifts:
            mine = [r["value"] for r in stock if r.get("value") is not None]
            lines += ["", (f"Stock against persistence with drift (the last close grown by the train days' mean "
                           f"return, pooled over the tickers; no parameters fitted to the test days): test MASE {fmt(statistics.mean(drifts))}, "
                           f"against lstmkit's {fmt(statistics.mean(mine)) if mine else '—'}; a model that does not "
                           "beat it has learnt no more than the mean return.")]
        means = ticker_means(stock)
        if means:
            seeds = len(measured_tickers(stock))
            below = sum(value < 1.0 for value in means.values())
            lines += ["", (f"Stock per ticker (test MASE, mean of {seeds} seeds): {below} of {len(means)} "
                           "tickers below 1.0: " + ", ".join(f"{n} {fmt(v)}" for n, v in means.items()) + ".")]
            drift = ticker_means(stock, "drift_mase")  # the same for every seed: no parameters
            if drift:
                lines += ["", (f"Persistence with drift per ticker (the pooled drift; test MASE): {sum(v < 1.0 for v in drift.values())} "
                               f"of {len(drift)} tickers below 1.0: "
                               + ", ".join(f"{n} {fmt(v)}" for n, v in drift.items()) + ".")]
        tests = [(r["seed"], r["against_persistence"], r.get("per_ticker") or {}) for r in stock
                 if (r.get("against_persistence") or {}).get("days")]
        if tests:
            def tickers(per: dict[str, Any], better: bool) -> str:  # p < 0.05, on either side of persistence
                names = [n for n, v in sorted(per.items()) if v.get("dm_p") is not None and v["dm_p"] < 0.05
                         and v.get("mase") is not None and (v["mase"] < 1) == better]  # None: a NaN read back
                return ", ".join(names) or "none"

            seeds = "; ".join(
                f"seed {seed}: {fmt(None if t['mean'] is None else t['mean'] * 100)} % of the close (t "
                f"{fmt(t['t'], digits=2)}, p {fmt(t['p'], digits=2)}), per ticker at p < 0.05 better on "
                f"{tickers(per, True)}, worse on {tickers(per, False)}"  # None: a NaN written as null
                for seed, t, per in tests)
            lines += ["", ("Stock against persistence (Diebold-Mariano, two-sided; the differential is each "
                           "window's absolute error minus persistence's relative to its last close, > 0 where the "
                           f"model is worse; overall over the {tests[0][1]['days']} test days, each day's mean "
                           f"over the tickers): {seeds}.")]
    for task in ("ecg", "ecg_unsupervised"):
        baselines = [r["template_baseline"] for r in report["runs"]
                     if r["task"] == task and "auroc" in (r.get("template_baseline") or {})]
        if baselines:
            mine = [r["value"] for r in report["runs"] if r["task"] == task and r.get("value") is not None]
            lines += ["", (f"{task} baseline on the same splits (each beat's mean squared distance to the average "
                           f"normal training beat, no parameters): test AUROC "
                           f"{fmt(statistics.mean(b['auroc'] for b in baselines))}, F1 "
                           f"{fmt(statistics.mean(b['f1'] for b in baselines))} (threshold chosen on val), mean of "
                           f"{len(baselines)} seeds, against lstmkit's AUROC {fmt(statistics.mean(mine))}.")]
    for task in dict.fromkeys(r["task"] for r in report["runs"] if r.get("pretrain")):
        for step in unique_pretraining([r for r in report["runs"] if r["task"] == task]):
            metrics = step.get("metrics") or {}
            keys = [k for k in metrics if "perplexity" in k] or [k for k in metrics if k.startswith("test/")]
            shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in keys)
            cost = ("reused from an earlier run" if step.get("reused") else
                    f"trained once, {fmt(step.get('wall_time_s'), digits=1)} s, not in the runs' wall time")
            lines += ["", (f"{task}: every run starts from `experiment={step['experiment']}` ({cost}; "
                           f"{shown or 'no metrics'}; `{shown_path(step.get('run_dir'))}`).")]
    lines += ["", "## Runs", "",
              "| task | seed | value | other test metrics | epochs (best) | wall time (s) | parameters | run directory |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        spec = TASKS[r["task"]]
        if r.get("value") is not None:
            value = fmt(r["value"], spec.metric in PERCENT)
        else:
            value = f"failed: {r.get('error')}"
        others = ", ".join(f"{k.removeprefix('test/')} {fmt(r['metrics'][k], k in PERCENT)}"
                           for k in spec.extra_metrics if k in r.get("metrics", {}))
        seed = r["seed"] if r["seed"] is not None else "?"
        if r.get("fold"):
            seed = f"{seed}, fold {r['fold']}"
        lines.append(f"| {r['task']} | {seed} | {value} | {others or '—'} | {r.get('epochs') or '—'} "
                     f"({r.get('best_epoch') or '—'}) | {r.get('wall_time_s')} | "
                     f"{r.get('params') or r.get('params_approx') or '—'} | `{shown_path(r.get('run_dir'))}` |")
    lines += [
        "",
        "## References",
        "",
        ("- Zaremba, Sutskever & Vinyals (2014), *Recurrent Neural Network Regularization*, arXiv:1409.2329, "
         "Table 1 (PTB test perplexity)."),
        "- Kim (2014), *Convolutional Neural Networks for Sentence Classification*, EMNLP, Table 2 (SST-2).",
        ("- Tai, Socher & Manning (2015), *Improved Semantic Representations From Tree-Structured LSTM "
         "Networks*, ACL, Table 2 (SST binary; GloVe vectors, trained on phrase-level labels)."),
        ("- FSDD (Jakobovski, free-spoken-digit-dataset v1.0.9): no published CER; the official split "
         "(recordings 0-4 of every speaker = test) is not speaker-independent."),
        ("- ECG5000 (UCR archive, Dau et al. 2018): only the 500-beat TRAIN file is available here "
         "(`shared/data/ecg/SOURCE.txt`), so results on a split of it are not comparable with published ones."),
        "- Stock: MASE (Hyndman & Koehler 2006) against the persistence forecast on the same test days.",
        "",
    ]
    return "\n".join(lines)


def host_info(threads: int | None) -> dict[str, Any]:
    """The machine, and the OMP_NUM_THREADS the runs got (``--threads``, else the inherited value)."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "omp_num_threads": str(threads) if threads else os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str], list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"tasks: {', '.join(TASKS)} (default: all). Any key=value is passed to every run as a Hydra "
               "override.")
    parser.add_argument("items", nargs="*", metavar="TASK|OVERRIDE",
                        help="tasks to run, and Hydra overrides (key=value) for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="repeat each task with these seeds (default: the recipe's seed)")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch of 3 train / 2 val / 2 test batches per run: checks the plumbing in seconds")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                        help="folder with lm/, sentiment/, speech/, stocks/, ecg/ (paths.data_root; "
                             "default: ../shared/data beside the checkout)")
    parser.add_argument("--out", default=None,
                        help="folder for quality.json and quality.md (default: a new bench/runs/<UTC time>/; with "
                             "--quick a temporary folder). Never a folder whose quality.md has no quality.json "
                             "beside it, such as the curated bench/results/quality.md")
    parser.add_argument("--log-dir", default=None,
                        help="paths.log_dir for the runs (default: the recipes' logs/ in the repository)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the runs (with OMP_WAIT_POLICY=PASSIVE); default: inherited")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    parser.add_argument("--python", default=None,
                        help="run `PYTHON -m lstmkit` instead of the installed console script")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other tasks' runs of an existing <out>/quality.json and replace only "
                             "the tasks run now")
    parser.add_argument("--merge-from", nargs="+", default=[], metavar="JSON",
                        help="also take the runs of these quality.json files (e.g. long runs written with "
                             "another --out; seeds run apart add up), replacing those tasks' runs of "
                             "<out>/quality.json; implies --merge. With no task named, nothing is run: the "
                             "report is re-rendered")
    parser.add_argument("--folds", nargs="+", default=None, metavar="LABEL",
                        help="run only these folds of tasks that have folds (e.g. --folds george theo), so that "
                             "folds can run in parallel invocations and join with --merge-from")
    parser.add_argument("--ensemble", action="store_true",
                        help="also evaluate each task's (and fold's) seeds together as an ensemble (lstmkit eval "
                             "with their best checkpoints: the mean of their predictive distributions)")
    parser.add_argument("--pretrained", default=None, metavar="RUN_DIR",
                        help="for a two-step task (sentiment): start every seed from this earlier run of its first "
                             "step (e.g. logs/sentiment_lm/runs/<date>, with checkpoints/best.ckpt) instead of "
                             "training it again")
    parser.add_argument("--verbose", action="store_true", help="print every run's log")
    # tasks and overrides anywhere on the line: after an option of several values (--seeds 1 2 model.x=1),
    # argparse gave them to the option ("invalid int value: 'model.x=1'"); an option's own value is never one
    argv = list(sys.argv[1:] if argv is None else argv)
    one_value = {o for action in parser._actions if action.nargs is None for o in action.option_strings}
    moved = {i for i, a in enumerate(argv) if not a.startswith("-") and ("=" in a or a in TASKS)
             and not (i and argv[i - 1] in one_value)}
    args = parser.parse_args([argv[i] for i in sorted(moved)] + [a for i, a in enumerate(argv) if i not in moved])
    tasks = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    unknown = [t for t in tasks if t not in TASKS]
    labels = {label for task in TASKS.values() for label, _ in task.folds}
    if args.folds and set(args.folds) - labels:
        parser.error(f"--folds: unknown fold(s) {sorted(set(args.folds) - labels)}; folds are {sorted(labels)}")
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    data_root = Path(args.data_root).expanduser()
    if not data_root.is_dir():
        parser.error(f"--data-root {data_root} is not a folder (expected lm/, sentiment/, speech/, stocks/, ecg/)")
    args.data_root = str(data_root.resolve())
    # resolved, and a file named twice counts once
    args.merge_from = list(dict.fromkeys(Path(p).expanduser().resolve() for p in args.merge_from))
    missing = [str(p) for p in args.merge_from if not p.is_file()]
    if missing:
        parser.error(f"--merge-from: no such file(s) {missing}")
    if args.merge and not args.merge_from and args.out is None:
        parser.error("--merge keeps the other tasks of an earlier report: name its folder with --out")
    args.merge = args.merge or bool(args.merge_from)
    if args.out is None:
        args.out = str(quick_folder("bench_quality") if args.quick else
                       REPO / "bench" / "runs" / dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S"))
    out = Path(args.out).expanduser()
    if (out / "quality.md").exists() and not (out / "quality.json").exists():
        # checked before hours of training: the report would be rewritten from these runs alone, and
        # a curated report's other tasks and hand-written sections lost
        parser.error(f"--out {out}: its quality.md has no quality.json beside it (a curated report, such as "
                     "bench/results/quality.md), so writing there would replace it with these runs alone; give "
                     "another --out (the default is a new folder under bench/runs/) and carry the figures over")
    if not tasks and args.merge_from:
        return args, [], overrides  # re-render only
    if args.pretrained:
        args.pretrained = check_pretrained(parser, Path(args.pretrained).expanduser(), tasks or list(TASKS))
    if args.log_dir:
        args.log_dir = str(Path(args.log_dir).expanduser().resolve())
    return args, tasks or list(TASKS), overrides


def check_pretrained(parser: argparse.ArgumentParser, run_dir: Path, tasks: list[str]) -> Path:
    """``--pretrained``: one selected task with a first step, and a run of that step's experiment
    (its ``.hydra/config.yaml`` says which) with a best checkpoint; refused by name before any training."""
    steps = [task for task in tasks if TASKS[task].pretrain]
    if len(steps) != 1:
        parser.error(f"--pretrained needs exactly one task with a first step among those run ({steps or 'none'}; "
                     f"such tasks: {[t for t in TASKS if TASKS[t].pretrain]})")
    expected = TASKS[steps[0]].pretrain
    if not (run_dir / "checkpoints" / "best.ckpt").is_file():
        parser.error(f"--pretrained {run_dir}: no checkpoints/best.ckpt there (expected a run folder of "
                     f"experiment={expected})")
    config = run_dir / ".hydra" / "config.yaml"
    from omegaconf import OmegaConf

    name = OmegaConf.select(OmegaConf.load(config), "task_name", default=None) if config.is_file() else None
    if name != expected:
        parser.error(f"--pretrained {run_dir}: its .hydra/config.yaml has task_name {name!r}; "
                     f"{steps[0]} starts from experiment={expected}")
    return run_dir.resolve()


def selected_folds(task: Task, args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The folds to run: all, those named by ``--folds``, or the first one with ``--quick``."""
    folds = tuple(f for f in task.folds if args.folds is None or f[0] in args.folds)
    return folds[:1] if args.quick else folds


def main(argv: list[str] | None = None) -> int:
    args, tasks, overrides = parse_args(argv)
    seeds: list[int | None] = list(args.seeds) if args.seeds else [None]
    commit = git_commit()
    pretrained = {task: reuse_pretrained(task, args.pretrained) if args.pretrained else pretrain_one(task, args)
                  for task in tasks if TASKS[task].pretrain}
    runs = [run_one(task, seed, args, overrides, fold, pretrained.get(task))
            for task in tasks for seed in seeds
            for fold in selected_folds(TASKS[task], args) or (None,)]
    for run in runs:
        run.update(commit=commit["commit"], overrides=overrides, threads=args.threads)
    made_ensembles: list[dict[str, Any]] = []
    out = Path(args.out).expanduser()
    previous = out / "quality.json"
    made = bool(runs)
    previous_host = host_info(args.threads)
    if runs and all(r.get("value") is None for r in runs) and not args.merge:
        print(f"[bench_quality] every run failed ({len(runs)}); no report written to {out}", file=sys.stderr)
        return 1
    loaded: dict[Path, list[dict[str, Any]]] = {}
    loaded_ensembles: dict[Path, list[dict[str, Any]]] = {}
    for source in ([previous] if args.merge and previous.exists() else []) + list(args.merge_from):
        old = json.loads(source.read_text())
        if bool(old.get("quick")) != args.quick:
            print(f"[bench_quality] --merge: {source} is {'a' if old.get('quick') else 'not a'} --quick report; "
                  "not merging quick and full results", file=sys.stderr)
            return 2
        loaded[source] = [nan_metrics(r) for r in old.get("runs", []) if r.get("task") in TASKS]
        loaded_ensembles[source] = [nan_metrics(r) for r in old.get("ensembles", []) if r.get("task") in TASKS]
        previous_host = old.get("host") or previous_host
    # the --merge-from files' runs (all of them: seeds run apart add up) replace those tasks of the
    # existing report; the runs made now replace everything of their tasks
    merged = [r for source in args.merge_from for r in loaded.get(source, [])]
    replaced = {r["task"] for r in merged}
    kept = [r for r in loaded.get(previous, []) if r["task"] not in replaced] + merged
    kept = [r for r in kept if r["task"] not in tasks]
    runs = kept + runs
    if not runs:
        print("[bench_quality] nothing to report: no runs made and none to merge", file=sys.stderr)
        return 2
    done = [task for task in TASKS if any(r["task"] == task for r in runs)]
    if args.ensemble:  # of every task's runs now in the report, the merged ones included
        made_ensembles = ensembles(runs, args)
    recomputed = {r["task"] for r in made_ensembles} | set(tasks)
    def members_present(ensemble: dict[str, Any]) -> bool:
        """An earlier ensemble stays only while the runs it combined are the report's runs of its fold."""
        seeds = [r.get("seed") for r in runs if r["task"] == ensemble["task"] and r.get("fold") == ensemble.get("fold")]
        return sorted(map(str, ensemble.get("seeds") or [])) == sorted(map(str, seeds))

    earlier_ensembles = [r for source in loaded_ensembles for r in loaded_ensembles[source]
                         if r["task"] not in recomputed and r["task"] in done and members_present(r)]
    all_ensembles = list({(r["task"], r.get("fold")): r for r in earlier_ensembles + made_ensembles}.values())
    shared = {json.dumps(r.get("overrides", [])) for r in runs}
    report: dict[str, Any] = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **commit,
        "host": host_info(args.threads) if made else previous_host,  # a re-render keeps the runs' machine
        "quick": args.quick,
        "data_root": args.data_root,
        "overrides": overrides if len(shared) == 1 else None,  # None: they differ per run (merged reports)
        "merged_from_earlier": sorted({r["task"] for r in kept}),
        "summary": {task: summarise(task, [r for r in runs if r["task"] == task]) for task in done},
        "ensemble_summary": {task: summary for task in done if (summary := summarise_ensembles(
            task, [r for r in all_ensembles if r["task"] == task])) is not None},
        "ensembles": sorted(all_ensembles, key=lambda r: (done.index(r["task"]), r.get("fold") or "")),
        "runs": sorted(runs, key=lambda r: done.index(r["task"])),
    }
    from lstmkit.files import json_text  # strict JSON: a NaN value (a diverged run) as null

    out.mkdir(parents=True, exist_ok=True)
    previous.write_text(json_text(report, indent=2) + "\n")
    text = markdown(report)
    (out / "quality.md").write_text(text)
    print(text)
    print(f"[bench_quality] wrote {previous} and {out / 'quality.md'}")
    return 0 if all(r.get("value") is not None for r in runs + made_ensembles) else 1


if __name__ == "__main__":
    sys.exit(main())
