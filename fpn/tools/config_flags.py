"""Command-line flags generated from the dataclass configs: one flag per field of `TrainingPreset` (`--iters`,
`--steps 600,750`) and of the nested model config (`--backbone.depth 18`, `--input.train-min-sizes 640,800`), whose
help is the field's `# comment` in its source and the chosen preset's value. Flags default to "not given", so only
what was typed overrides the preset.
"""
from __future__ import annotations

import argparse
import copy
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from fpn.config import FasterRCNNConfig
from fpn.detectors.build import ARCHITECTURES
from fpn.engine.presets import PRESETS, TrainingPreset


def preset_name_in(argv: Sequence[str], default: str) -> str:
    """The `--preset` value of a command line, or `default` when it has none.

    The flags' help shows the chosen preset's values, so the preset must be known before the parser is built.
    An unknown name gives `default` here: the full parser (choices=PRESETS) then reports it.
    """
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default=default)
    name = early.parse_known_args(list(argv))[0].preset
    return name if name in PRESETS else default


def arch_in(argv: Sequence[str], default: str) -> str:
    """The `--arch` value of a command line, or `default` (the preset's architecture) when it has none; like
    `preset_name_in`, read before the parser is built since the model flags depend on it. An unknown name gives
    `default` here and is reported by the full parser."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--arch", default=default)
    name = early.parse_known_args(list(argv))[0].arch
    return name if name in ARCHITECTURES else default


def add_preset_flags(parser: argparse.ArgumentParser, preset: TrainingPreset, *, name: str = "",
                     chosen: bool = True) -> None:
    """Add one flag per training field of TrainingPreset (all but `model`): `--iters 800`, `--steps 600,750`.

    The help of each flag is the field's comment and `preset`'s value, e.g. "training iterations (one optimiser
    step each) (default: 800)". Flags default to "not given" (argparse.SUPPRESS), so `apply_preset_flags` changes
    only what was typed. Tuples are comma-separated lists, optionals accept "none".

    Args:
        name: the preset's name, shown in the group's title.
        chosen: False when the command line named no preset and `preset` only stands in for the help (its
            values are then said to be an example).
    """
    if not name:
        title = "training (defaults: the preset's values)"
    elif chosen:
        title = f"training (defaults: --preset {name}'s values)"
    else:
        title = (f"training (defaults shown: --preset {name}'s, as no --preset was given; "
                 "--preset NAME --help shows another preset's)")
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(TrainingPreset)
    for item in fields(preset):
        if item.name != "model":
            flag, hint = _flag((item.name,)), hints[item.name]
            value = getattr(preset, item.name)
            switch = {"nargs": "?", "const": True} if hint is bool else {}  # `--tensorboard` alone means true
            group.add_argument(flag, dest=item.name, type=_parser_for(hint, flag), default=argparse.SUPPRESS,
                               metavar=_metavar(hint), help=_help(TrainingPreset, item.name, value), **switch)


def apply_preset_flags(preset: TrainingPreset, args: argparse.Namespace) -> TrainingPreset:
    """A copy of `preset` with the training fields given on the command line (see `add_preset_flags`) set.

    The model config is left as it is: `apply_config_flags(preset.model, args)` applies the model flags.
    """
    preset = copy.deepcopy(preset)
    given = vars(args)
    for item in fields(preset):
        if item.name != "model" and item.name in given:
            setattr(preset, item.name, given[item.name])
    return preset


def add_config_flags(parser: argparse.ArgumentParser, config: FasterRCNNConfig) -> None:
    """Add one flag per field of the nested model config: `--backbone.depth 18`, `--input.train-min-sizes 640,800`.

    A field of a section is `--section.field`, a top-level field `--field` (e.g. `--channels-last false`), in
    one help group per section. Each help is the field's comment in fpn/config.py and its value in `config` (pass
    the chosen preset's model config, so the help shows the defaults that apply). Flags default to "not given"
    (argparse.SUPPRESS), so `apply_config_flags` changes only what was typed. Tuples are comma-separated lists,
    booleans true/false, optionals "none".
    """
    groups = {}
    for path, owner, hint, value in _config_leaves(config):
        section = path[0] if len(path) > 1 else ""
        if section not in groups:
            where = f"--{_flag((section,))[2:]}.FIELD, {type(owner).__name__}" if section else type(config).__name__
            groups[section] = parser.add_argument_group(f"model config: {where} in fpn/config.py")
        flag = _flag(path)
        groups[section].add_argument(flag, dest="model." + ".".join(path), type=_parser_for(hint, flag),
                                     default=argparse.SUPPRESS, metavar=_metavar(hint),
                                     help=_help(type(owner), path[-1], value))


def apply_config_flags(config: FasterRCNNConfig, args: argparse.Namespace) -> FasterRCNNConfig:
    """A copy of `config` with the values of the config flags present in `args` set."""
    config = copy.deepcopy(config)
    for key, value in vars(args).items():
        if key.startswith("model."):
            *sections, name = key.split(".")[1:]
            owner = config
            for section in sections:
                owner = getattr(owner, section)
            setattr(owner, name, value)
    return config


def field_comments(cls: type) -> Dict[str, str]:
    """{field name: its comment} of a dataclass, read from the source of the class (and of its dataclass bases).

    A field's comment is the `# ...` text within its statement: the trailing comment of its line or, for a
    statement spread over several lines, the comments on those lines joined by spaces. Comment-only lines are
    not part of any field. Fields without a comment are absent; so is everything when the source is not
    available (a class defined in an interactive session). Read once per class.

    Raises:
        ValueError: `cls` is not a dataclass.
    """
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise ValueError(f"field_comments needs a dataclass, got {cls!r}")
    return dict(_field_comments(cls))


@functools.lru_cache(maxsize=None)
def _field_comments(cls: type) -> Tuple[Tuple[str, str], ...]:
    comments: Dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if "__dataclass_fields__" in vars(base):
            comments.update(_comments_in_body(base))
    names = {item.name for item in fields(cls)}
    return tuple((name, text) for name, text in comments.items() if name in names)


def _comments_in_body(cls: type) -> Dict[str, str]:
    """{name: comment} of the annotated statements `name: type ...` directly in the body of `cls`."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: Dict[str, str] = {}
    depth, statement = 0, []  # indentation depth (1: the class body) and the tokens of the current statement
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.INDENT, tokenize.DEDENT):
            depth += 1 if token.type == tokenize.INDENT else -1
        elif depth != 1:
            continue
        elif token.type == tokenize.NEWLINE:  # the end of a logical line, however many physical lines it spans
            code = [t for t in statement if t.type != tokenize.COMMENT]
            if len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":":
                text = " ".join(t.string.lstrip("#").strip() for t in statement if t.type == tokenize.COMMENT)
                if text:
                    comments[code[0].string] = text
            statement = []
        elif token.type == tokenize.NL:
            if all(t.type == tokenize.COMMENT for t in statement):
                statement = []  # a comment-only line belongs to no field
        else:
            statement.append(token)
    return comments


def _help(cls: type, name: str, value: Any) -> str:
    """The help of a field's flag: its comment (`a_field` written --a-field) and "(default: <value>)"."""
    comment = field_comments(cls).get(name, "")
    siblings = {item.name for item in fields(cls)}
    comment = re.sub(r"`(\w+)`", lambda m: _flag((m[1],)) if m[1] in siblings else m[0], comment)
    text = f"{comment} (default: {_show(value)})" if comment else f"default: {_show(value)}"
    return text.replace("%", "%%")  # argparse %-formats help strings


def _flag(path: Tuple[str, ...]) -> str:
    return "--" + ".".join(part.replace("_", "-") for part in path)


def _config_leaves(config: Any, prefix: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Any, Any, Any]]:
    """(field path, owning dataclass instance, type hint, value) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(type(config))
    leaves = []
    for item in fields(config):
        value = getattr(config, item.name)
        if is_dataclass(value):
            leaves.extend(_config_leaves(value, prefix + (item.name,)))
        else:
            leaves.append((prefix + (item.name,), config, hints[item.name], value))
    return leaves


def _show(value: Any) -> str:
    """A value as it is typed on the command line: 600,750 / none / true."""
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value).lower() if value is None or isinstance(value, bool) else str(value)


def _metavar(hint: Any) -> str:
    """INT, FLOAT, STR, BOOL; Optional[X]: X; Tuple[int, ...]: INT,...; Tuple[float, float]: FLOAT,FLOAT."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return _metavar(next(p for p in params if p is not type(None)))
    if origin is tuple:
        return f"{_metavar(params[0])},..." if params[-1] is Ellipsis else ",".join(_metavar(p) for p in params)
    return getattr(hint, "__name__", "VALUE").upper()


def _parser_for(hint: Any, flag: str) -> Callable[[str], Any]:
    """A string -> value converter for a field type: int, float, str, bool, Optional[X], Tuple[X, ...]."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in params:
        inner = _parser_for(next(p for p in params if p is not type(None)), flag)
        return lambda text: None if text.lower() == "none" else inner(text)
    if origin is tuple:
        item = _parser_for(params[0], flag)
        length = None if (len(params) == 2 and params[1] is Ellipsis) else len(params)

        def parse_tuple(text: str) -> tuple:
            values = tuple(item(part) for part in text.split(",") if part.strip())
            if length is not None and len(values) != length:
                raise argparse.ArgumentTypeError(f"{flag} needs {length} comma-separated values, got {text!r}")
            return values

        return parse_tuple
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return hint
    raise TypeError(f"field {flag} has a type {hint} with no command-line parser")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
