"""The small part of YAML that YOLO data files use, read without PyYAML (not a dependency of fpn).

    path: ../datasets/shapes    # a comment
    train: images/train         # a scalar, or an inline list [images/a, images/b], or a block list:
    val:
      - images/val
    names:                      # a block mapping (index: name), or an inline / block list of names
      0: circle
      1: 'square box'
    nc: 2
    download: |                 # a block scalar (| or >): kept as text, never run
      python code ...

Read: top-level `key: value` lines; values that are plain scalars (int, float, true/false, null/~/empty, text),
quoted strings ('...' with '' for a quote, "..." with backslash escapes), inline lists of scalars, and, under a key
with no value, one indented block of `- item` lines or of `key: value` lines; `#` comments (at a line's start or
after a space, outside quotes). Anything else (deeper nesting, flow mappings `{...}`, anchors, tags, several
documents) is an InputError `file:line: ...` naming what was met.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from fpn.errors import InputError

_Line = Tuple[int, int, str]  # (line number from 1, indent in spaces, text without comment or trailing space)
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


def read_yaml_subset(path: Path) -> Dict[str, Any]:
    """The top-level mapping of a YOLO data YAML file.

    Args:
        path: the .yaml / .yml file.
    Returns:
        {key: value}: values are str, int, float, bool, None, lists of scalars or {scalar: scalar} dicts.
    Raises:
        InputError: "<path>:<line>: <what>" for anything outside the subset (see the module docstring).
        OSError: the file cannot be read.
    """
    lines = _lines(path, Path(path).read_text(encoding="utf-8-sig"))
    result: Dict[str, Any] = {}
    i = 0
    while i < len(lines):
        number, indent, text = lines[i]
        where = f"{path}:{number}"
        if indent:
            raise InputError(f"{where}: unexpected indentation (only one level, under a key with no value, is read)")
        if text.startswith("- "):
            raise InputError(f"{where}: a list item with no key above it")
        key, value = _key_value(text, where)
        if key in result:
            raise InputError(f"{where}: {key!r} is given twice")
        i += 1
        if value in ("|", ">", "|-", ">-", "|+", ">+"):  # a block scalar: its more-indented lines, as text
            block = []
            while i < len(lines) and lines[i][1] > 0:
                block.append(lines[i][2])
                i += 1
            result[key] = "\n".join(block)
        elif value == "":
            block_lines = []
            while i < len(lines) and (lines[i][1] > 0 or lines[i][2].startswith("- ") or lines[i][2] == "-"):
                block_lines.append(lines[i])
                i += 1
            result[key] = _block(block_lines, path) if block_lines else None
        else:
            result[key] = _value(value, where)
    return result


def _lines(path: Path, text: str) -> List[_Line]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise InputError(f"{path}:{number}: a tab in the indentation (YAML indents with spaces)")
        stripped = _drop_comment(raw).rstrip()
        if not stripped.strip():
            continue
        if stripped.strip() in ("---", "..."):
            if lines:
                raise InputError(f"{path}:{number}: several YAML documents in one file")
            continue
        lines.append((number, len(stripped) - len(stripped.lstrip(" ")), stripped.strip()))
    return lines


def _unquoted(text: str) -> Iterator[Tuple[int, str]]:
    """(index, character) of every character of `text` outside '...' and "..." strings."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        else:
            yield i, char


def _drop_comment(line: str) -> str:
    """`line` up to its comment (a # at the start or after whitespace, outside quotes)."""
    for i, char in _unquoted(line):
        if char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _key_value(text: str, where: str) -> Tuple[Any, str]:
    """(key, value text) of a `key: value` line."""
    if text[0] in "'\"":
        end = _closing_quote(text, where)
        key_text, rest = text[: end + 1], text[end + 1:]
        if not rest.startswith(":"):
            raise InputError(f"{where}: expected 'key: value', got {text!r}")
        value = rest[1:]
    else:
        match = re.search(r":(\s|$)", text)
        if match is None:
            raise InputError(f"{where}: expected 'key: value', got {text!r}")
        key_text, value = text[: match.start()], text[match.start() + 1:]
    key = _scalar(key_text.strip(), where)
    if isinstance(key, (list, dict)) or key is None:
        raise InputError(f"{where}: a key must be a plain value, got {key_text.strip()!r}")
    return key, value.strip()


def _block(lines: List[_Line], path: Path) -> Any:
    """The list or mapping of the indented lines under a key."""
    indent = lines[0][1]
    is_list = lines[0][2] == "-" or lines[0][2].startswith("- ")
    items: List[Any] = []
    mapping: Dict[Any, Any] = {}
    for number, line_indent, text in lines:
        where = f"{path}:{number}"
        if line_indent != indent:
            raise InputError(f"{where}: nested blocks are not read (one indented list or mapping per key)")
        if is_list != (text == "-" or text.startswith("- ")):
            raise InputError(f"{where}: a block mixes '- item' lines and 'key: value' lines")
        if is_list:
            items.append(_value(text[1:].strip(), where, nested=True))
        else:
            key, value = _key_value(text, where)
            if value == "":
                raise InputError(f"{where}: nested blocks are not read (one indented list or mapping per key)")
            if key in mapping:
                raise InputError(f"{where}: {key!r} is given twice")
            mapping[key] = _value(value, where, nested=True)
    return items if is_list else mapping


def _value(text: str, where: str, nested: bool = False) -> Any:
    """A scalar or an inline list of scalars."""
    if text.startswith("[") and not nested:
        if not text.endswith("]"):
            raise InputError(f"{where}: an inline list must close on its line: {text!r}")
        inner = text[1:-1].strip()
        return [_scalar(item.strip(), where) for item in _split_commas(inner, where)] if inner else []
    return _scalar(text, where)


def _split_commas(text: str, where: str) -> List[str]:
    items, start = [], 0
    for i, char in _unquoted(text):
        if char == ",":
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    if any(not item.strip() for item in items):
        raise InputError(f"{where}: an empty item in an inline list")
    return items


def _scalar(text: str, where: str) -> Any:
    if text == "" or text in ("~", "null", "Null", "NULL"):
        return None
    if text[0] in "'\"":
        end = _closing_quote(text, where)
        if end != len(text) - 1:
            raise InputError(f"{where}: text after a quoted string: {text!r}")
        if text[0] == "'":
            return text[1:-1].replace("''", "'")
        try:
            return json.loads(text)  # YAML's double-quoted escapes are JSON's for the common ones
        except ValueError:
            raise InputError(f"{where}: an escape that is not read in {text!r}") from None
    if text[0] in "[]{}&*!|>%@`" or text.startswith("- "):
        raise InputError(f"{where}: {text!r} is outside the YAML subset read here (scalars, [a, b] lists, "
                         "one block list or mapping per key)")
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _closing_quote(text: str, where: str) -> int:
    """The index of the quote that closes the string opening `text`."""
    quote, i = text[0], 1
    while i < len(text):
        if text[i] == "\\" and quote == '"':
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1: i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    raise InputError(f"{where}: an unclosed quote in {text!r}")
