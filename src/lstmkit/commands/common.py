"""Helpers shared by the commands: plain configs, loggers, the final metrics table."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import UnionType
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lstmkit.build import locate
from lstmkit.errors import ConfigError, LstmkitError
from lstmkit.files import json_text, write_atomic
from lstmkit.resume import override_key

log = logging.getLogger("lstmkit")


def int_option(cfg: Any, key: str, minimum: int = 0) -> int | None:
    """``cfg[key]`` as an int of at least ``minimum`` (``None`` stays ``None``), or a one-line ConfigError.

    Why: ``seed=abc`` or ``batch_size=0`` otherwise fail deep inside Lightning or ``range()``.
    """
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected a whole number >= {minimum}")
    return value


def bool_option(cfg: Any, key: str, default: bool = False) -> bool:
    """``cfg[key]`` as a bool (missing or null: ``default``); ``adapt=no`` is the string 'no', which Python
    takes for true, so anything but true / false is a ConfigError naming the option."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def check_output_file(value: Any, option: str = "output", inputs: Sequence[tuple[str, Any]] = ()) -> Path:
    """``option=value`` as the path of a file to write, checked before any work is done.

    Why: ``predict ... output=<folder>`` printed every prediction and only then failed to write them
    (and a file standing where a folder of the path should be failed the same way, late). A folder
    missing on the way is fine: it is made when the file is written. Nothing is created here.
    ``inputs`` (option name, path) are the files the command reads: ``output=`` naming one of them
    (``input_file=reviews.txt output=reviews.txt``, the checkpoint itself) replaced it with the
    results, silently, so it is refused.
    """
    output = Path(str(value)).expanduser()
    if output.is_dir():
        raise ConfigError(f"{option}={value}: is a folder; expected the path of the file to write")
    if output.exists():
        for name, path in inputs:
            source = Path(os.path.expanduser(str(path)))  # Path.expanduser raises on "~so bad" (no such user)
            with contextlib.suppress(OSError):  # not a file: a text input, a missing path
                if source.is_file() and os.path.samefile(source, output):
                    raise ConfigError(f"{option}={value}: is the file {name}={path} that this command reads; writing "
                                      f"there would replace it; expected the path of another file")
    folder = output.absolute().parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that is there
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{option}={value}: cannot write it ({folder} is a file, not a folder); "
                          "expected the path of a file in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}={value}: cannot write it (the folder {folder} is not writable); "
                          "expected the path of a file in a folder you can write to")
    return output


def check_device(cfg: Any) -> None:
    """Say plainly when the config asks for a GPU this machine does not have."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in {"gpu", "cuda"} and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"trainer.accelerator={accelerator} asks for a CUDA GPU, but none is available "
            f"(torch {torch.__version__}, {build}); use trainer=cpu (or trainer.accelerator=auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps asks for Apple's GPU, which is not available; use trainer=cpu")


def check_torch_device(device: Any) -> None:
    """Say plainly when ``device=`` names an accelerator this machine does not have."""
    name = str(device or "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA GPU is available on this machine; use device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: Apple's GPU is not available; use device=cpu")


# the class a group without a _target_ builds (SequenceModel builds the LSTM core itself)
GROUP_CLASSES = {"model": "lstmkit.core.LSTMCore"}
TYPED_GROUPS = ("data", "encoder", "model", "head", "optimizer", "scheduler")
SCALARS = {int: "a whole number", float: "a number", bool: "true or false"}


def check_option_types(groups: dict[str, dict[str, Any] | None]) -> None:
    """Refuse an option of ``{group: options}`` whose value cannot be the scalar its class annotates.

    Why: ``data.batch_size=abc`` failed as "'<' not supported between instances of 'str' and
    'int'", and ``data.batch_size=2.5`` as a traceback from inside the sampler once training
    began; neither named the option. Only options annotated with scalars (``int``, ``float``,
    ``bool``, optionally ``None`` or a tensor, as ``torch.optim``'s ``lr``) are checked: a string,
    a fraction for a whole number, or a list for a scalar. Options annotated otherwise are left
    to the class. Annotations of the base classes' ``__init__`` count too (options passed on
    through ``**kwargs``).
    """
    for group, options in groups.items():
        if not isinstance(options, dict):
            continue
        try:
            target = locate(str(options.get("_target_") or GROUP_CLASSES[group]))
        except Exception:  # noqa: BLE001, S112 - an unknown target is reported when it is built
            continue
        hints = _init_hints(target)
        for key, value in options.items():
            problem = _scalar_mismatch(hints.get(key), value) if not key.startswith("_") else None
            if problem:
                raise ConfigError(f"{group}.{key}={value!r}: expected {problem} ({target.__name__}'s {key})")


def _init_hints(target: Any) -> dict[str, Any]:
    """``__init__``'s resolved annotations of a class and its bases (the class's own first)."""
    hints: dict[str, Any] = {}
    for owner in getattr(target, "__mro__", (target,)):
        init = owner.__dict__.get("__init__") if isinstance(owner, type) else owner
        try:
            found = typing.get_type_hints(init) if init is not None else {}
        except Exception:  # noqa: BLE001 - an unresolvable annotation: nothing to check against
            found = {}
        hints = {**found, **hints}
    return hints


def _scalar_mismatch(annotation: Any, value: Any) -> str | None:
    """What a scalar-annotated option expects, when ``value`` cannot be it; else None."""
    if annotation is None or value is None:
        return None
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, UnionType) \
        else (annotation,)
    scalars = [t for t in allowed if t in SCALARS]
    if not scalars or any(t not in SCALARS and t not in (type(None), torch.Tensor) for t in allowed):
        return None
    expected = " or ".join(SCALARS[t] for t in scalars)
    if isinstance(value, (str, list, dict)):
        return expected
    if isinstance(value, float) and float not in scalars and not value.is_integer():
        return expected
    return None


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (safe to store in checkpoints)."""
    if node is None:
        return None
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def apply_decoding(model: torch.nn.Module, decode: DictConfig | dict[str, Any] | None) -> None:
    """``decode.decoder / beam_size / lexicon / rescore`` from the command line, for heads that decode (CTC).

    A loaded model decodes as it was trained unless one of them is set; the head's
    ``use_decoder`` resolves the combination (a lexicon implies beam search,
    ``decode.lexicon=none`` decodes a lexicon-trained model without it).
    """
    options = {k: v for k, v in (plain(decode) or {}).items() if v is not None}
    if not options:
        return
    head = getattr(model, "head", None)
    use_decoder = getattr(head, "use_decoder", None)
    if use_decoder is None:
        raise ConfigError(f"decode.{'/'.join(sorted(options))}: this model's head ({type(head).__name__}) has no "
                          "decoder to switch (only CTC speech models have one)")
    unknown = sorted(set(options) - {"decoder", "beam_size", "lexicon", "rescore"})
    if unknown:
        raise ConfigError(f"decode.{unknown[0]}: expected decode.decoder, decode.beam_size, decode.lexicon "
                          "or decode.rescore")
    beam = options.get("beam_size")
    if beam is not None and (isinstance(beam, bool) or not isinstance(beam, int) or beam < 1):
        raise ConfigError(f"decode.beam_size={beam!r}: expected a whole number >= 1")
    try:
        use_decoder(**options)  # what is not given is kept
    except ConfigError as err:  # the head names its own options; on the command line they are decode.*
        raise ConfigError(str(err).replace("head.", "decode.")) from None
    if options.get("lexicon") is not None and getattr(head, "lexicon", None) and getattr(head, "spec", None):
        # the beam decoder reads its lexicon on first use: a missing file failed mid-eval, named head.lexicon=
        head.lexicon_option = "decode.lexicon"
        from lstmkit.heads.ctc import read_lexicon

        read_lexicon(head.lexicon, head.spec, "decode.lexicon")
    for key in ("beam_size", "rescore"):
        if options.get(key) is not None and head.decoder != "beam":
            log.warning("decode.%s=%s is not used: this model decodes greedily (add decode.decoder=beam)",
                        key, options[key])
    log.info("decoding with %s", {k: getattr(head, k) for k in ("decoder", "beam_size", "lexicon", "rescore")})


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks / logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, (int, float)):
            out[key] = float(value)
    return dict(sorted(out.items()))


@rank_zero_only
def report(metrics: dict[str, float], out_dir: str | Path | None, title: str = "metrics") -> None:
    """Print the final metrics table and write ``metrics.json`` into the run directory.

    ``metrics.json`` is strict JSON: a non-finite value (a diverged run's nan / inf) is ``null``
    (the table shows ``nan`` / ``inf``); :func:`read_metrics` reads it back as NaN.
    """
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if math.isfinite(value) else str(value))
    console = Console()
    console.print(title, soft_wrap=True, highlight=False)  # a line of its own: a path in it stays copyable
    console.print(table)
    if out_dir is not None:
        path = Path(out_dir) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json_text(metrics, indent=2) + "\n")
        log.info("metrics written to %s", path)


def read_metrics(path: str | Path) -> dict[str, float]:
    """A ``metrics.json`` as ``{name: float}``, its ``null`` values (non-finite when written) as NaN."""
    return {k: float("nan") if v is None else float(v) for k, v in json.loads(Path(path).read_text()).items()}


@contextmanager
def config_stage(what: str) -> Iterator[None]:
    """Turn a type or value error while building ``what`` into one line naming the overrides.

    Why: ``model.hidden_size=-3`` otherwise ends in a traceback from inside ``nn.LSTM`` (and
    ``encoder.dim=-1`` in torch's RuntimeError from ``nn.Embedding``). Errors
    that are already ours (bad data files...) pass through unchanged.
    """
    try:
        yield
    except LstmkitError:
        raise
    # torch: RuntimeError; a target whose module (or one of its imports) is missing: ImportError, which
    # instantiate wraps in an InstantiationException but build() (encoder / head / optimizer) does not
    except (TypeError, ValueError, RuntimeError, ImportError, InstantiationException) as err:
        root: BaseException = err  # the end of the cause chain: an error of ours, or what says why
        while not isinstance(root, LstmkitError) and root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, LstmkitError):
            raise root from None
        inner = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        message = _first_line(inner) + _did_you_mean(_first_line(inner))
        if root is not inner:  # e.g. Hydra's "Error loading 'x.Y':" over the ImportError that says why
            message = f"{message.rstrip(':')}: {type(root).__name__}: {_first_line(root)}"
        overrides = " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""
        raise ConfigError(
            f"cannot build the {what} from the config: {message} "
            f"(command-line overrides: {overrides or 'none'}; --cfg job prints the composed config)"
        ) from err


_UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
# where the classes a config builds live (encoders, the core, heads, datamodules, callbacks)
_BUILT_FROM = ("lstmkit.core", "lstmkit.encoders", "lstmkit.heads", "lstmkit.data", "lstmkit.callbacks")


def _did_you_mean(message: str) -> str:
    """``+model.hiden_size=3``: "LSTMCore.__init__() got an unexpected keyword argument 'hiden_size'" ends
    with "; did you mean hidden_size?" when lstmkit's class of that name has a parameter close to it."""
    found = _UNEXPECTED.search(message)
    if not found:
        return ""
    import difflib
    import importlib
    import inspect
    import pkgutil

    name, given = found.groups()
    for package in _BUILT_FROM:
        module = importlib.import_module(package)
        modules = [module] + [importlib.import_module(f"{package}.{info.name}")
                              for info in pkgutil.iter_modules(getattr(module, "__path__", []))]
        for candidate in modules:
            cls = getattr(candidate, name, None)
            if inspect.isclass(cls):
                close = difflib.get_close_matches(given, list(inspect.signature(cls).parameters), n=1, cutoff=0.6)
                return f"; did you mean {close[0]}?" if close else ""
    return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_command_keys(cfg: DictConfig, command: str, keys: tuple[str, ...], takes: str) -> None:
    """Refuse top-level settings ``command`` (eval, predict, export) does not apply: ``+head.threshold=0.99``,
    ``+model.hidden_size=3``, ``+foo=3`` were accepted with exit 0 and silently ignored, since the model
    and its head are the checkpoint's. The ConfigError names the override(s) and what the command takes."""
    unknown = [key for key in cfg if key not in keys]
    if not unknown:
        return
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    named = [o for o in given if override_key(o).split(".", 1)[0] in unknown]
    what = ", ".join(named) if named else ", ".join(f"{key}.*" for key in unknown)
    raise ConfigError(f"{what}: {command} does not apply {'this setting' if len(named) <= 1 else 'these settings'} "
                      f"(the task, model, head and training settings are the checkpoint's); {command} takes {takes}")
