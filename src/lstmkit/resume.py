"""Where ``resume=true`` (``ckpt_path=last``) continues from: the rules, tried in order.

"Earlier run" means one with the same overrides (less the run length and the resume options),
read from its ``.hydra/overrides.yaml``: so each job of a resumed sweep continues *its* job of the
earlier sweep, never a sibling with other hyperparameters or a job of the sweep now running. Each
rule below says, with its reason, when it decides: a checkpoint to continue, or that the run starts
afresh; a rule that does not apply passes to the next. The last always decides. README, Resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from lstmkit.errors import ConfigError
from lstmkit.sweeps import MIXED_SWEEP

log = logging.getLogger("lstmkit")

# overrides a resumed run may change, so left out when resume=true looks for the earlier run: how long it
# trains, its early-stopping patience (give a stopped run more epochs; lstmkit.callbacks.RunEarlyStopping
# uses the new one), how its test adapts (adapt: the trained weights do not depend on it), and the resume
# options themselves. Without the patience, `... patience=10 resume=true`
# found no run of its overrides and resumed the task's newest last.ckpt, another run's. README, Resume.
RESUME_OVERRIDES = {"resume", "ckpt_path", "trainer.max_epochs", "trainer.max_steps", "trainer.max_time",
                    "callbacks.early_stopping.patience", "adapt",
                    # how a run is shown and logged, and whether it is tested at its end: not its weights (a sweep
                    # resumed with logger=tensorboard or test=false started every job afresh)
                    "test", "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps"}
RESUME_GROUPS = {"logger"}  # logger=..., logger.wandb.project=...: every key under them


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+model.hidden_size=3`` -> ``model.hidden_size``.

    Hydra's prefixes (``+``, ``++``, ``~``) and the value are dropped; an override without ``=``
    (``~callbacks.early_stopping``) is its key.
    """
    return override.lstrip("+~").split("=", 1)[0]


def job_overrides(overrides: list[str]) -> list[str]:
    """A run's command-line overrides, less those a resumed run may change, canonical and sorted.

    Canonical: each value as Hydra parses it, so that what a sweeper recorded (``False``, ``0.001``)
    matches what a user types (``false``, ``1e-3``); an override Hydra cannot parse stays as written.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    canonical = []
    for text in map(str, overrides):
        key = override_key(text)
        if key in RESUME_OVERRIDES or key.split(".", 1)[0] in RESUME_GROUPS:
            continue
        try:
            (override,) = parser.parse_overrides([text])
            value = json.dumps(override.value(), sort_keys=True, default=str)
            canonical.append(f"{override.get_key_element()}={value}")  # the key with its +, ++ or ~
        except Exception:  # noqa: BLE001 - kept as written
            canonical.append(text)
    return sorted(canonical)


def without_old_tokenizer(mine: list[str] | None) -> list[str] | None:
    """``mine`` (canonical overrides) less ``data.tokenizer_version=1``; ``None`` if it has none.

    Why: a run from before tokenizer versions read its text as version 1 does without that override,
    and resuming it is refused with the advice to add it; the run so resumed then had other overrides
    than its earlier run, so ``resume=true`` resumed the task's newest ``last.ckpt`` (another run's), and
    each job of a resumed sweep started afresh.
    """
    if not mine:
        return None
    kept = [o for o in mine if o.lstrip("+") != "data.tokenizer_version=1"]
    return kept if len(kept) < len(mine) else None


def before_tokenizer_versions(folder: Path) -> bool:
    """Whether the run in ``folder`` read text (``data.tokenizer``) before tokenizer versions were recorded:
    its ``.hydra/config.yaml`` has no ``data.tokenizer_version``."""
    try:
        data = OmegaConf.select(OmegaConf.load(folder / ".hydra" / "config.yaml"), "data")
    except Exception:  # noqa: BLE001 - no config to tell: not such a run
        return False
    return isinstance(data, DictConfig) and "tokenizer" in data and "tokenizer_version" not in data


def run_files(roots: list[Path]) -> tuple[list[Path], list[Path]]:
    """Every ``checkpoints/last.ckpt`` and ``.hydra/overrides.yaml`` under ``roots``, in one walk of each.

    Why: ``resume=true`` globbed ``**/checkpoints/last.ckpt`` and ``**/.hydra/overrides.yaml`` over two
    roots, listing every folder of a large log tree twice. The files are those the globs found: the
    walk does not descend into linked folders (``**`` does not either), but a ``checkpoints`` or
    ``.hydra`` folder that is a link is read, and a ``last.ckpt`` link that leads nowhere is not one.
    """
    found: dict[str, list[Path]] = {"checkpoints/last.ckpt": [], ".hydra/overrides.yaml": []}
    for root in roots:
        for folder, subfolders, _ in os.walk(root):
            for file, paths in found.items():
                if file.split("/")[0] in subfolders and (Path(folder) / file).exists():
                    paths.append(Path(folder) / file)
    return found["checkpoints/last.ckpt"], found[".hydra/overrides.yaml"]


def job_number(folder: Path) -> int | None:
    """The ``hydra.job.num`` of the sweep job that ran in ``folder`` (its ``.hydra/hydra.yaml``; else the
    folder's name, Hydra's default ``hydra.sweep.subdir``), or ``None``."""
    with contextlib.suppress(Exception):  # an unreadable or partial file: the name decides
        number = OmegaConf.select(OmegaConf.load(folder / ".hydra" / "hydra.yaml"), "hydra.job.num")
        if isinstance(number, int):
            return number
    return int(folder.name) if folder.name.isdigit() else None


def recorded_overrides(folder: Path) -> list[str] | None:
    """The overrides a job recorded in ``folder/result.json`` (``lstmkit.sweeps.write_result``), if any."""
    try:
        recorded = json.loads((folder / "result.json").read_text()).get("overrides")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(o) for o in recorded] if isinstance(recorded, list) else None


class Search:
    """What the rules look at: this run (from Hydra's config) and the earlier runs of its task.

    The log folders are walked once, and only when a rule first asks for the earlier runs.
    """

    def __init__(self, cfg: DictConfig) -> None:
        hydra = HydraConfig.get() if HydraConfig.initialized() else None
        self.hydra = hydra
        self.sweep = hydra is not None and hydra.mode == RunMode.MULTIRUN
        # the folder of the run or sweep now running: nothing under it is an earlier run
        self.now = Path(hydra.sweep.dir if self.sweep else hydra.runtime.output_dir).resolve() if hydra else None
        self.cfg = cfg
        self.runs = Path(cfg.paths.log_dir) / str(cfg.task_name)
        # where earlier runs with these overrides may be: the task's folder, and a sweep over tasks' (whose
        # jobs name their task among their overrides)
        self.roots = [self.runs, Path(cfg.paths.log_dir) / MIXED_SWEEP]
        self.mine = job_overrides(list(hydra.overrides.task)) if hydra else None
        # these overrides as a run from before tokenizer versions had them (data.tokenizer_version=1 implied)
        self.mine_before_versions = without_old_tokenizer(self.mine)
        self.folder = Path(hydra.runtime.output_dir).resolve() if hydra else None  # this run's (job's) own
        left = self.folder / "checkpoints" / "last.ckpt" if self.folder is not None else None
        self.left_here = left if left is not None and left.is_file() else None  # by an earlier attempt in it

    def earlier(self, paths: Iterable[Path]) -> list[Path]:
        """``paths`` less those of this run or this sweep."""
        return [p for p in paths if self.now is None or self.now not in p.resolve().parents]

    @cached_property
    def _files(self) -> tuple[list[Path], list[Path]]:
        return run_files(self.roots)

    @cached_property
    def checkpoints(self) -> list[Path]:
        """Every earlier run's ``last.ckpt``, newest first."""
        return sorted(self.earlier(self._files[0]), key=lambda p: p.stat().st_mtime, reverse=True)

    def same_overrides(self, theirs: list[str], folder: Path | None = None) -> bool:
        """Whether an earlier run's canonical overrides are this run's: the same, or this run's less
        ``data.tokenizer_version=1`` for a run from before tokenizer versions (that of ``folder``; with
        no folder to tell, e.g. this sweep job's own, a run of another version is refused when resumed)."""
        if theirs == self.mine:
            return True
        return (self.mine_before_versions is not None and theirs == self.mine_before_versions
                and (folder is None or before_tokenizer_versions(folder)))

    def same_settings(self, theirs: list[str], folder: Path) -> bool:
        """Whether overrides that differ only name, on one side, what the other run had by default:
        ``logger=csv`` or ``task=sentiment`` given to one run and not to the other.

        Why: the lists were compared as written, so ``task=ecg logger=csv ... resume=true`` found no
        earlier run (that one left ``logger`` at its default) and resumed the task's newest
        ``last.ckpt``, another seed's. A key both runs set (to other values) differs; a key set on one
        side only is the same when the two runs' choices of that config group (``.hydra/hydra.yaml``),
        or their values of it (``.hydra/config.yaml``), are equal, and the two runs are of one task.
        """
        if self.mine is None or self.hydra is None:
            return False
        differing = {override_key(o) for o in set(self.mine) ^ set(theirs)}
        ours_set, theirs_set = {override_key(o) for o in self.mine}, {override_key(o) for o in theirs}
        if any(key in ours_set and key in theirs_set for key in differing):
            return False
        try:
            their_cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
            their_choices = OmegaConf.select(OmegaConf.load(folder / ".hydra" / "hydra.yaml"),
                                             "hydra.runtime.choices") or {}
        except Exception:  # noqa: BLE001 - no record of its settings: not the same
            return False
        if _setting(their_cfg, "task_name") != _setting(self.cfg, "task_name"):
            return False
        our_choices = self.hydra.runtime.choices
        for key in differing:
            if key in our_choices or key in their_choices:
                if our_choices.get(key) != their_choices.get(key):
                    return False
                continue
            ours = _setting(self.cfg, key)
            if ours is _ABSENT or ours != _setting(their_cfg, key):
                return False
        return True

    @cached_property
    def matching(self) -> set[Path]:
        """The folders of the earlier runs with these overrides (each ``overrides.yaml`` read once); for a
        single run with none, those of the same settings (:meth:`same_settings`).

        In tiers: a run of the same overrides always wins over one of the same settings written otherwise,
        and a sweep job matches its overrides only, so that it continues its own job of the earlier sweep
        (with the settings tier, a resumed sweep's twins took another sweep's job, found by a review)."""
        if self.mine is None:
            return set()
        recorded = [(p.parent.parent, job_overrides(list(OmegaConf.load(p)))) for p in self.earlier(self._files[1])]
        exact = {folder for folder, theirs in recorded if self.same_overrides(theirs, folder)}
        if exact or self.sweep:
            return exact
        return {folder for folder, theirs in recorded if self.same_settings(theirs, folder)}

    @cached_property
    def own(self) -> list[Path]:
        """The ``last.ckpt`` of each earlier run with these overrides, newest first."""
        return [c for c in self.checkpoints if c.parent.parent in self.matching]

    @cached_property
    def task_checkpoints(self) -> list[Path]:
        """The ``last.ckpt`` of each earlier run in the task's folder, of any overrides, newest first."""
        return [c for c in self.checkpoints if self.runs.resolve() in c.resolve().parents]


_ABSENT = object()


def _setting(cfg: DictConfig, key: str) -> object:
    """The value of ``key`` in ``cfg`` as written (interpolations unresolved: another run's config has
    Hydra's, which resolve only inside its job), a node as plain containers; ``_ABSENT`` if it has none."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return _ABSENT
    node = parent._get_node(leaf)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node._value() if node is not None else None


@dataclass(frozen=True)
class Decision:
    """A rule's answer: continue ``ckpt``, or start afresh (``None``)."""

    ckpt: str | None


def in_its_own_run_folder(s: Search) -> Decision | None:
    """A run in a fixed folder (``hydra.run.dir``: torchrun's, a scheduler's) continues the ``last.ckpt``
    its earlier attempt left there, in place."""
    if s.sweep or s.left_here is None:
        return None
    log.info("resuming %s (this run folder's own, from an earlier attempt)", s.left_here)
    return Decision(str(s.left_here))


def in_its_own_sweep_job_folder(s: Search) -> Decision | None:
    """A sweep job in a fixed ``hydra.sweep.dir`` (the same command again: the same job number, the
    same folder) continues its folder's ``last.ckpt``, in place.

    Why: the search leaves out the sweep now running, whose folder is then the earlier sweep's too, so
    every job of a resumed fixed-folder sweep "found no earlier run", started afresh beside its earlier
    checkpoints (``best-v1.ckpt``) and continued its CSV log with a second run. Hydra has already
    replaced the folder's ``.hydra/overrides.yaml`` with this job's, so the earlier job's overrides are
    read from its ``result.json`` (written when it ended, failed or was interrupted); a run of other
    overrides (another sweep used the folder) is not continued, and the next rules look elsewhere.
    """
    if not s.sweep or s.left_here is None:
        return None
    recorded = recorded_overrides(s.left_here.parent.parent)
    if recorded is None or s.same_overrides(job_overrides(recorded)):
        log.info("resuming %s (this job's own folder in the sweep folder, from an earlier attempt%s)", s.left_here,
                 "" if recorded is not None else "; it left no result.json to compare its overrides with")
        return Decision(str(s.left_here))
    log.warning("resume: this job's folder %s holds a run of other overrides, %s (the sweep folder was used by "
                "another sweep); looking for an earlier run with these overrides elsewhere", s.folder, recorded)
    return None


def fixed_run_folder_without_checkpoint(s: Search) -> Decision | None:
    """A run in a folder of its own (``hydra.run.dir=...``) that holds no checkpoint yet starts afresh.

    Why: its earlier attempt stopped before its first epoch ended; another run's weights would not
    continue it (the task's newest unrelated run used to be adopted).
    """
    if s.now is None or s.sweep or s.now.parent == (s.runs / "runs").resolve():
        return None
    log.warning("resume: this run's folder %s holds no checkpoints/last.ckpt yet (its earlier attempt stopped "
                "before its first epoch ended, or there was none); this run starts afresh", s.now)
    return Decision(None)


def its_twin_in_the_earlier_sweep(s: Search) -> Decision | None:
    """When the newest earlier sweep with these overrides ran them in several jobs (``-m
    seed=null,null``, repeats of one setting), the job continues the one of its own number
    (``hydra.job.num``), or starts afresh if that one saved no checkpoint or there is none.

    Why: the newest of them was taken by every job, so all continued one and the same run.
    """
    if not s.own or not s.sweep or job_number(s.own[0].parent.parent) is None:
        # (the newest is a single run: the runs beside it in runs/ are no sweep's jobs, and taking them for
        # twins started this job afresh, dropping that run, when two single runs had these overrides)
        return None
    earlier_sweep = s.own[0].parent.parent.parent
    twins = sorted(m for m in s.matching if m.parent == earlier_sweep)
    if len(twins) <= 1:
        return None
    number = int(s.hydra.job.num)
    same = [m for m in twins if job_number(m) == number]
    last = same[0] / "checkpoints" / "last.ckpt" if same else None
    if last is not None and last in s.own:
        log.info("resuming %s (the earlier sweep's job %d, of the %d with these overrides)", last, number,
                 len(twins))
        return Decision(str(last))
    log.info("resume: the earlier sweep %s ran these overrides in %d jobs, %s; its job %d %s, so this job "
             "starts afresh (never a sibling's checkpoint)", earlier_sweep, len(twins),
             ", ".join(m.name for m in twins), number, "saved no checkpoint" if same else "is not among them")
    return Decision(None)


def newest_earlier_run_with_these_overrides(s: Search) -> Decision | None:
    """The usual case: the newest earlier run with these overrides that saved a checkpoint."""
    if not s.own:
        return None
    log.info("resuming %s (the newest earlier run with these overrides)", s.own[0])
    return Decision(str(s.own[0]))


def sweep_job_without_earlier_run(s: Search) -> Decision | None:
    """A sweep job that no earlier run has these overrides of starts afresh: the sweep is resumed where it
    stopped, and a sibling's checkpoint (other hyperparameters) would not continue this job."""
    if not s.sweep:
        return None
    log.info("resume: no earlier run of this task has the overrides %s; this job starts afresh", s.mine)
    return Decision(None)


def earlier_run_without_checkpoint(s: Search) -> Decision | None:
    """A run whose earlier run with these overrides stopped before its first checkpoint starts afresh:
    another run's weights would not continue it."""
    if not s.matching:
        return None
    log.warning("resume: the earlier run with these overrides, %s, saved no checkpoint (it stopped before "
                "its first epoch ended); this run starts afresh", max(s.matching, key=lambda p: p.stat().st_mtime))
    return Decision(None)


def newest_of_the_task(s: Search) -> Decision:
    """The fallback of a single run that no earlier run has these overrides of: the task's newest
    ``last.ckpt``, with a warning that names it (``ckpt_path=`` chooses another); none is an error."""
    if not s.task_checkpoints:
        raise ConfigError(f"ckpt_path=last: no checkpoints/last.ckpt under {s.runs}")
    newest = s.task_checkpoints[0]
    log.warning("resume: no earlier run of this task has the overrides %s; resuming the task's newest "
                "last.ckpt, %s%s (give ckpt_path= to choose)", s.mine, newest, _differences(s.mine, newest, s.cfg))
    return Decision(str(newest))


def _differences(mine: list[str] | None, ckpt: Path, cfg: DictConfig) -> str:
    """What this run sets otherwise than the run of ``ckpt`` did, said: the keys their overrides differ in
    whose values differ in the two composed configs (``head.dropout=0.2``, the default, given: no difference).

    Why: resumed with ``head.dropout=0.5 l1=0.001`` added, another run was continued and the two new
    settings were never named; they apply to its weights from here on.
    """
    folder = ckpt.parent.parent / ".hydra"
    try:
        theirs = job_overrides(list(OmegaConf.load(folder / "overrides.yaml")))
        their_cfg = OmegaConf.load(folder / "config.yaml")
    except Exception:  # noqa: BLE001 - no record of its settings: nothing to compare
        return ""
    said = []
    for key in sorted({override_key(o) for o in set(mine or []) ^ set(theirs)}):
        ours, before = (OmegaConf.select(c, key, default="unset", throw_on_missing=False) for c in (cfg, their_cfg))
        if ours != before:
            said.append(f"{key}={ours} (that run: {before})")
    return f", a run of other settings: this run sets {', '.join(said)}" if said else ""


# tried in this order; the first that decides wins
RULES: tuple[Callable[[Search], Decision | None], ...] = (
    in_its_own_run_folder,
    in_its_own_sweep_job_folder,
    fixed_run_folder_without_checkpoint,
    its_twin_in_the_earlier_sweep,
    newest_earlier_run_with_these_overrides,
    sweep_job_without_earlier_run,
    earlier_run_without_checkpoint,
    newest_of_the_task,
)


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig) -> str | None:
    """``last`` -> the ``last.ckpt`` of the earlier run this one continues (``RULES``), or ``None`` to start
    afresh; a path -> checked."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():
            raise ConfigError(f"ckpt_path={ckpt_path}: file not found")
        return str(ckpt_path)
    search = Search(cfg)
    for rule in RULES:
        decision = rule(search)
        if decision is not None:
            return decision.ckpt
    raise AssertionError("the last rule always decides")
