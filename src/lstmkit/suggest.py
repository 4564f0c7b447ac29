""""Did you mean ...?" for command-line overrides Hydra rejects.

Hydra names the bad override and, for a mistyped key, proposes ``+key=value`` (which would add
the typo to the config). After Hydra has failed, this module replays the overrides one by one
against the packaged configs to find the first one that does not compose, and proposes the
closest existing key or config-group option instead. It runs only on that failure path.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _first_value(override: Any) -> str:
    """``key=a,b`` (a sweep) -> ``key=a``: enough to check that the key exists."""
    if override.is_sweep_override():
        text = next(iter(override.sweep_string_iterator()), "")
    else:
        text = override.get_value_element_as_str()
    return f"{override.get_key_element()}={text}"


def _close(word: str, options: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return matches[0] if matches else None


# configs beside or instead of lstmkit's (hydra.searchpath=[file://my_conf] encoder=mine, --config-dir)
_OTHER_CONFIGS = frozenset({"hydra.searchpath", "+hydra.searchpath", "++hydra.searchpath", "-cd", "--config-dir",
                            "-cp", "--config-path", "-cn", "--config-name"})


def suggest_override(config_dir: str, config_name: str, args: list[str]) -> str | None:
    """A hint for the first override in ``args`` that does not compose, or ``None``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.split("=", 1)[0] in _OTHER_CONFIGS for a in args):
        return None  # the user's own config groups, which lstmkit's configs alone would call typos: Hydra's message
    parser = OverridesParser.create()
    given = overrides_in(args)
    try:
        overrides = parser.parse_overrides(given)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message says where; we say how to quote
        return _quoting_hint(parser, given)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=config_dir):
            loader = GlobalHydra.instance().config_loader()
            accepted: list[str] = []
            cfg: DictConfig = compose(config_name=config_name, overrides=[])
            for override in overrides:
                if override.is_hydra_override():
                    continue
                unknown = _unknown_sweep_choice(override, loader.get_group_options)
                if unknown:  # -m optimizer=adamw,sgdd: the first choice composes, a later one does not
                    return unknown
                candidate = _first_value(override)
                try:
                    cfg = compose(config_name=config_name, overrides=[*accepted, candidate])
                except Exception:  # noqa: BLE001 - this is the override Hydra rejected
                    from_checkpoint = _from_the_checkpoint(config_name, override, cfg, loader.get_group_options)
                    if from_checkpoint:
                        return from_checkpoint
                    if _is_known_option(override, loader.get_group_options):
                        # a valid choice (task=next_word) that an earlier override does not fit
                        return _earlier_misfit(config_name, candidate, accepted, overrides, loader.get_group_options)
                    # (the checkpoint is read only here, on the failure path)
                    stored = _stored_data_keys(overrides) if config_name == "eval" else None
                    return _hint(override, cfg, loader.get_group_options, stored)
                accepted.append(candidate)
    except Exception:  # noqa: BLE001 - a hint is best effort; Hydra's message already stands
        return None
    finally:
        GlobalHydra.instance().clear()
    return None


# The top-level keys of conf/eval.yaml, predict.yaml and export.yaml and their groups: the settings those
# commands apply; every other one (task, model, head, callbacks...) is the checkpoint's. (hydra: a config
# composed with return_hydra_config, the tests'.) Beside them, the lists their refusals print.
EVAL_KEYS = ("task_name", "seed", "ckpt_path", "split", "adapt", "self_train", "data", "tags", "decode", "trainer", "logger",
             "paths", "hydra")
PREDICT_KEYS = ("task_name", "ckpt_path", "input", "input_file", "output", "batch_size", "device", "generate",
                "temperature", "seed", "data", "decode", "paths", "hydra")
EXPORT_KEYS = ("task_name", "ckpt_path", "format", "output", "tolerance", "paths", "hydra")
KEYS = {"eval": EVAL_KEYS, "predict": PREDICT_KEYS, "export": EXPORT_KEYS}
EVAL_TAKES = "ckpt_path, split, adapt, self_train.*, seed, tags, data.*, decode.*, trainer=/trainer.*, logger=/logger.*"
PREDICT_TAKES = ("ckpt_path, input, input_file, output, batch_size, device, generate, temperature, seed, "
                 "data.* (how input files are read), decode.*")
EXPORT_TAKES = "ckpt_path, format, output, tolerance"
TAKES = {"eval": EVAL_TAKES, "predict": PREDICT_TAKES, "export": EXPORT_TAKES}


# Hydra's flags whose value is the next argument (which may hold an "=": -sc install=bash)
_FLAGS_WITH_VALUES = frozenset({"-sc", "--shell-completion", "-cd", "--config-dir", "-cn", "--config-name", "-cp",
                                "--config-path", "-p", "--package", "-c", "--cfg", "--experimental-rerun"})


_INFO_TOPICS = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})  # --info [topic]


# Hydra's long options (its argparse parser's, which takes any unambiguous prefix of one: --config-d)
_LONG_FLAGS = ("--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
               "--shell-completion", "--config-path", "--config-name", "--config-dir", "--info", "--experimental-rerun")


def _flag_name(arg: str) -> str:
    """A flag as Hydra's parser reads it: ``--cfg=job`` is ``--cfg``, ``--config-d`` is ``--config-dir``."""
    name = arg.split("=", 1)[0]
    if name.startswith("--") and name not in _LONG_FLAGS:
        matches = [flag for flag in _LONG_FLAGS if flag.startswith(name)]
        return matches[0] if len(matches) == 1 else name
    return name


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """A command line's Hydra flags (with their values, in order) and its overrides, apart.

    A flag's value is the next argument unless given with ``=`` (``--cfg=job``); abbreviated long flags
    (``--config-d``) are known as Hydra's parser knows them; every argument after ``--`` is an override."""
    flags: list[str] = []
    overrides: list[str] = []
    takes_value = ""
    for i, arg in enumerate(args):
        if takes_value and (takes_value != "--info" or arg in _INFO_TOPICS):
            flags.append(arg)
            takes_value = ""
            continue
        takes_value = ""
        if arg == "--":  # argparse's end of options: the rest are overrides, whatever they start with
            overrides.extend(args[i + 1:])
            break
        if arg.startswith("-"):
            flags.append(arg)
            name = "--info" if _flag_name(arg) in {"-i", "--info"} else _flag_name(arg)
            takes_value = name if "=" not in arg and (name in _FLAGS_WITH_VALUES or name == "--info") else ""
        else:
            overrides.append(arg)
    return flags, overrides


def overrides_in(args: list[str]) -> list[str]:
    """The overrides among a command line's arguments: Hydra's flags and their values left out.

    Why: ``--cfg job ~head.class_weights`` read ``job`` as an override, which did not parse, so the
    hint the same override gets without ``--cfg`` was lost to Hydra's message."""
    return split_flags(args)[1]


# settings of eval (and of train's test) that predict and export do not have: not the checkpoint's either
_TEST_TIME = {"adapt": "test-time adaptation of the normalisation", "self_train": "self-training on the scored data"}


def _self_train_leaves(key: str, arg: str) -> list[str]:
    """The settings a ``self_train`` override names: ``self_train.keep=...`` -> keep; the whole node,
    ``self_train={epochs:1,kep:0.5}`` -> its keys (Hydra's block, then a hint naming self_train itself)."""
    if "." in key:
        return [key.split(".", 1)[1]]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_overrides([arg])[0].value()
    except Exception:  # noqa: BLE001 - a syntax error is Hydra's to report
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []


def _eval_data_keys(config_dir: str) -> list[str]:
    """eval.yaml's own ``data`` keys (data.path=...), read as YAML: no composition on the common path."""
    return [str(k) for k in OmegaConf.load(f"{config_dir}/eval.yaml").get("data") or {}]


def refuse_before_hydra(config_dir: str, command: str, args: list[str]) -> str | None:
    """The refusal of the first override that ``command`` does not apply, or ``None``.

    Checked before Hydra composes anything: ``eval ... model.hidden_size=3`` printed Hydra's seven-line
    "Could not override ... To append to your config use +model.hidden_size=3" block (advice the command
    then refuses) above lstmkit's one line. For eval, predict and export a key whose first part is none of
    the command's is refused whatever its prefix; ``self_train.<typo>`` (train and eval) is refused by
    name; eval's ``data.<key>`` without a ``+`` that eval.yaml lacks gets :func:`suggest_override`'s line
    (the checkpoint's own data keys). Anything else is left to Hydra.
    """
    keys = KEYS.get(command)
    flag_value = False
    for arg in args:
        if flag_value or arg.startswith("-") or "=" not in arg:  # -m, --cfg job, -sc install=bash: Hydra's flags
            flag_value = arg in _FLAGS_WITH_VALUES
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        root = key.split("@", 1)[0].split(".", 1)[0].split("/", 1)[0]
        if root == "self_train" and command in {"train", "eval"}:
            from lstmkit.self_train import SETTINGS

            for leaf in _self_train_leaves(key, arg):
                if leaf not in SETTINGS:
                    guess = _close(leaf, list(SETTINGS))
                    return (f"self_train.{leaf}: no such setting" + (f"; did you mean self_train.{guess}?" if guess else "")
                            + f" (self_train takes {', '.join(SETTINGS)})")
        if keys is None:
            continue
        if root and root not in keys:
            if root in _TEST_TIME:  # predict / export adapt=true: eval's, not the checkpoint's
                return (f"{command} does not apply {key}: {root} is {_TEST_TIME[root]}, which lstmkit eval (and "
                        f"train's test) does; {command} takes {TAKES[command]}")
            # (cutoff 0.75: "adapt" is 0.67 like "data", and predict adapt=true is no typo of data)
            close = difflib.get_close_matches(root, [k for k in keys if k not in {"task_name", "paths", "hydra"}],
                                              n=1, cutoff=0.75)
            guess = close[0] if close else None
            if guess:  # self_trian.epochs=2: a typo of the command's own setting, not the checkpoint's
                return f"{key} is no {command} setting: did you mean {guess}{key[len(root):]}? ({command} takes {TAKES[command]})"
            others = [other for other in ("predict", "eval", "export") if other != command and root in KEYS[other]
                      and root not in {"task_name", "paths", "hydra"}]
            if others:  # eval input=hi: predict's input, not a setting of the checkpoint's
                return (f"{command} does not apply {key}: it is a setting of lstmkit {' and '.join(others)}; "
                        f"{command} takes {TAKES[command]}")
            return suggest_override(config_dir, command, [arg]) or (
                f"{command} does not apply {key} (the task, model, head and training settings are the "
                f"checkpoint's); {command} takes {TAKES[command]}")
        if (command == "eval" and root == "data" and "." in key and not arg.startswith("+")
                and key.split(".")[1] not in _eval_data_keys(config_dir)):
            # data.holdout_speaker=[x]: Hydra's block, then the line naming the checkpoint's +data.holdout_speakers
            ckpt = [a for a in args if a.lstrip("+").startswith("ckpt_path=")]
            hint = suggest_override(config_dir, command, [*ckpt[:1], arg])
            if hint:
                return hint
    return None


def _from_the_checkpoint(config_name: str, override: Any, cfg: DictConfig, group_options_of: Any) -> str | None:
    """A setting that ``eval`` / ``predict`` / ``export`` do not have (the checkpoint's): one line saying so.

    ``eval ... task=ecg`` got Hydra's "No match in the defaults list. To append use +task=ecg",
    ``eval ... model.hidden_size=3`` its "use +model.hidden_size=3": advice that the command then refused,
    and ``predict ... adapt=true`` was told "did you mean data?" (a close spelling is still proposed).
    """
    key = override.get_key_element().lstrip("+~")
    root = key.split(".", 1)[0]
    if config_name not in TAKES or root in cfg or override.is_delete():
        return None
    given = f"{key}={override.get_value_element_as_str()}"
    takes = f"{config_name} takes {TAKES[config_name]}"
    if "." not in key and group_options_of(key):  # a training config group (task=, callbacks=)
        return (f"{given}: {config_name} takes the task, model and training settings from the checkpoint "
                f"(ckpt_path=), so drop {given}; {takes}")
    # (a close spelling only: "adapt" is 0.67 like "data", which said "did you mean data?")
    guess = next(iter(difflib.get_close_matches(root, [str(k) for k in cfg if k != "hydra"], n=1, cutoff=0.75)),
                 None)
    return (f"{config_name} does not apply {key} (the task, model, head and training settings are the "
            "checkpoint's)" + (f"; did you mean {guess}?" if guess and "." not in key else "") + f"; {takes}")


def _unknown_sweep_choice(override: Any, group_options_of: Any) -> str | None:
    """The hint for a config-group sweep (``task=ecg,stok``) with a choice that is no option."""
    key = override.key_or_group
    if not override.is_sweep_override() or "." in key or override.is_delete():
        return None
    options = group_options_of(key)
    if not options:
        return None
    for choice in override.sweep_string_iterator():
        if choice not in options:
            guess = _close(choice, options)
            return (f"{key}={choice} in the sweep is no {key} choice"
                    + (f": did you mean {key}={guess}?" if guess else "") + f" ({key} options: {', '.join(options)})")
    return None


def _is_known_option(override: Any, group_options_of: Any) -> bool:
    key = override.key_or_group
    value = _first_value(override).split("=", 1)[1]  # a sweep's first choice
    return "." not in key and not override.is_delete() and value in group_options_of(key)


def _earlier_misfit(config_name: str, choice: str, accepted: list[str], overrides: list[Any],
                    group_options_of: Any) -> str | None:
    """The hint for the earlier override that ``choice`` (a config-group option) makes invalid."""
    from hydra import compose

    by_text = {_first_value(o): o for o in overrides}
    cfg: DictConfig = compose(config_name=config_name, overrides=[choice])
    kept: list[str] = []
    for text in accepted:
        try:
            cfg = compose(config_name=config_name, overrides=[choice, *kept, text])
        except Exception:  # noqa: BLE001 - the earlier override that no longer composes
            hint = _hint(by_text[text], cfg, group_options_of)
            return f"{text} does not apply with {choice}" + (f": {hint}" if hint else "")
        kept.append(text)
    return None


def _hint(override: Any, cfg: DictConfig, group_options_of: Any, stored: list[str] | None = None) -> str | None:
    """The closest config-group option or key for a rejected override (``stored``: eval's checkpoint's
    data keys, when it could be read)."""
    key = override.key_or_group
    group_options = group_options_of(key) if "." not in key else []
    if group_options and not override.is_delete():
        guess = _close(str(override.value()), group_options)
        if guess:
            return f"did you mean {key}={guess}? ({key} options: {', '.join(group_options)})"
        return f"{key}={override.value()}: no such {key} option ({key} options: {', '.join(group_options)})"
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not isinstance(parent, DictConfig):
        root, _, rest = key.partition(".")
        guess = _close(root, [str(k) for k in cfg if k != "hydra"]) if root not in cfg else None
        # optimzer.lr=0.1, self_trian.epochs=2: the first part is the typo
        return f"did you mean {guess}.{rest}? ({root} is not a config key)" if guess else None
    keys = [str(k) for k in parent]
    if override.is_delete() and leaf in keys:  # Hydra reads a null value as no key: "does not exist"
        return (f"~{key}: Hydra cannot delete a key whose value is null, and {key} is null already (unset); drop "
                f"the ~, or give the key a value ({key}=...)") if parent[leaf] is None else None
    if leaf in keys and override.is_add():  # `+key=value` for a key the config already has
        return f"{key} is already a config key: drop the + ({key}={override.get_value_element_as_str()})"
    guess = _close(leaf, keys)
    if parent_path == "data" and "input" in cfg:  # predict: data.* only says how input files are read
        return (f"predict's data.* settings say how input files are read ({', '.join(keys)}); the model's own "
                "settings stay the checkpoint's" + (f" (did you mean data.{guess}?)" if guess else ""))
    if parent_path == "data" and "split" in cfg:  # eval: the checkpoint's data settings
        value = override.get_value_element_as_str()
        if stored:  # the checkpoint's own keys, not eval.yaml's generic ones (label_column for speech)
            near = leaf if leaf in stored else _close(leaf, stored)
            if near in keys:  # one of eval.yaml's own data keys: set without a +
                return f"did you mean data.{near}? (data.{near}={value})"
            if near:
                return (f"the checkpoint's data settings other than eval's own are overridden with a +: "
                        f"+data.{near}={value}" + ("" if near == leaf else f" (did you mean data.{near}?)"))
            return (f"data.{leaf} is no data setting of this checkpoint (its data keys: {', '.join(stored)}); "
                    f"a datamodule option it did not store is added with a +: +{key}={value}")
        # (before the close match: data.eval_batch_size is a datamodule option, not a typo of batch_size)
        return (f"the checkpoint's other data settings are overridden with a +: "
                f"+{key}={value}"
                + (f" (or did you mean data.{guess}?)" if guess else "") + f"; data has the keys: {', '.join(keys)}")
    if guess:
        full = f"{parent_path}.{guess}" if parent_path else guess
        return f"did you mean {full}? ({key} is not a config key)"
    elsewhere = [path for path in _paths(cfg) if path.rpartition(".")[2] == leaf and path != key]
    if elsewhere:  # `hidden_size=32` for model.hidden_size: the key lives in a group
        return f"did you mean {' or '.join(elsewhere[:3])}? ({key} is not a config key)"
    return f"{key} is not a config key; {parent_path} has the keys: {', '.join(keys)}" if parent_path else None


def _stored_data_keys(overrides: list[Any]) -> list[str] | None:
    """The data keys stored in the first checkpoint that ``ckpt_path=`` names, or ``None`` (unreadable, none)."""
    from lstmkit.checkpoints import checkpoint_paths, read_checkpoint

    try:
        given = next(o.value() for o in overrides if o.get_key_element().lstrip("+") == "ckpt_path")
        data = read_checkpoint(checkpoint_paths(given)[0]).get("hyper_parameters", {}).get("data") or {}
    except Exception:  # noqa: BLE001 - a hint is best effort: no ckpt_path, a missing or broken file
        return None
    return sorted(str(k) for k in data if not str(k).startswith("_")) or None


def _paths(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of ``node`` as a dotted path (nested dicts included, ``hydra`` left out)."""
    paths: list[str] = []
    for key in node:
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        paths.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            paths.extend(_paths(child, f"{path}."))
    return paths


# the characters Hydra's override grammar does not take in an unquoted value (besides non-ASCII ones)
_SYNTAX = set("!\"#&'(),;<=>[]^`{}~")


def _quoted(text: str) -> str:
    """``text`` as a double-quoted Hydra value. Inside quotes Hydra reads a backslash as an escape only
    before a quote or at the end (``C:\\clips`` stays as it is), so only those are doubled."""
    escaped = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', text)
    return '"' + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + '"'


def _troubles(value: str) -> str:
    """What in ``value`` Hydra cannot read unquoted, in words: ``! ' and non-ASCII characters (é)``."""
    syntax = list(dict.fromkeys(c for c in value if c in _SYNTAX))
    foreign = list(dict.fromkeys(c for c in value if not c.isascii()))
    said = [" ".join(syntax)] if syntax else []
    if foreign:
        said.append(f"non-ASCII characters ({''.join(foreign[:5])}{'...' if len(foreign) > 5 else ''})")
    return " and ".join(said) or "quotes, commas, brackets, ! or spaces"


def _quoting_hint(parser: Any, args: list[str]) -> str | None:
    """``input=it's good``: Hydra's LexerNoViableAltException points at the quote, but not at the way out.
    Its override grammar reads quotes, commas, brackets, ``!`` (and more) as syntax and takes only ASCII
    unquoted, so free text needs double quotes inside the shell's (the README's
    ``'input="it'\\''s great, really!"'``). A list (``input=[great film!,awful]``) has each item quoted, not
    the whole: quoted whole, it would be one text with brackets, read without a word of warning. The
    suggestion is parsed back before it is offered."""
    for arg in args:
        try:
            parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - this is the override Hydra could not read
            key, equals, value = arg.partition("=")
            if not equals or value.startswith(('"', "'")):
                return None
            items = [item.strip() for item in value[1:-1].split(",")] if value.startswith("[") and \
                value.endswith("]") else None
            if items is not None and any(c in item for item in items for c in "[]"):
                items = None  # "[SPOILER] loved it, 9/10 [imdb]": a text with brackets, not a list
            if items is not None and not any('"' in item or "'" in item for item in items):
                fixed = f"{key}=[" + ",".join(_quoted(item) if {*item} & _SYNTAX or not item.isascii() else item
                                             for item in items) + "]"
                how = "put each item of the list in double quotes"
            elif items is not None:  # items with quotes of their own: quoted whole, the list would be one text
                return None
            else:
                fixed, how = f"{key}={_quoted(value)}", "put the value in double quotes"
            try:
                (parsed,) = parser.parse_overrides([fixed])
                read = parsed.value()
            except Exception:  # noqa: BLE001 - no form to offer that Hydra reads back
                return None
            if read != (value if items is None else items):  # offered only if Hydra reads back what was meant
                return None
            shell = "'" + fixed.replace("'", "'\\''") + "'"
            troubles = _troubles("".join(items) if items is not None else value)
            return (f"{arg}: Hydra's override grammar takes {troubles} in a value only in quotes; "
                    f"{how}, inside the shell's quotes: {shell}"
                    + (" (or give the texts one per line with input_file=)" if key.lstrip("+") == "input" else ""))
    return None
