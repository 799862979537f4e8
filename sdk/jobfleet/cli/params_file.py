"""Reading parameter sets from a file or stdin: a JSON list of objects, or JSON Lines."""

from __future__ import annotations

import json
import sys
from typing import Any

from jobfleet.core import payloads
from jobfleet.errors import InvalidParams


def read_params(source: str) -> list[Any]:
    if source == "-":
        text = sys.stdin.read()
        where = "standard input"
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidParams(f"cannot read params file {source!r}: {exc.strerror}") from None
        where = repr(source)
    return parse_params(text, where)


def parse_params(text: str, where: str = "params") -> list[Any]:
    """Objects are checked against the job later; here only the shape is read."""
    stripped = text.strip()
    if not stripped:
        raise InvalidParams(f"{where} is empty: give a JSON list of objects or JSON Lines")
    if stripped.startswith("["):
        try:
            data = json.loads(text)  # unstripped, so that line numbers are the file's
        except RecursionError:
            raise _too_deep(text, where) from None
        except json.JSONDecodeError as exc:
            raise InvalidParams(
                f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(data, list):
            raise InvalidParams(f"{where} must be a JSON list of objects")
        return data
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except RecursionError:
            raise InvalidParams(f"{TOO_DEEP} ({where} line {number})", len(items)) from None
        except json.JSONDecodeError as exc:
            raise InvalidParams(
                f"{where} line {number} is not valid JSON ({exc.msg}); expected a JSON list "
                "of objects or one JSON object per line"
            ) from None
    if len(items) == 1 and not isinstance(items[0], dict):
        raise InvalidParams(f"{where} must be a JSON list of objects or JSON Lines")
    return items


TOO_DEEP = (
    f"is nested deeper than {payloads.MAX_DEPTH} levels of objects and lists; flatten it"
)


def _too_deep(text: str, where: str) -> InvalidParams:
    """Which element of a JSON list nests too deep for Python's JSON reader: read the list
    one element at a time (only on this rare path, the usual one reads it at once)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    index = 0
    while True:
        position = _skip_space(text, position)
        try:
            _, position = decoder.raw_decode(text, position)
        except RecursionError:
            return InvalidParams(f"{TOO_DEEP} (in {where})", index)
        except json.JSONDecodeError:
            break
        position = _skip_space(text, position)
        if not text.startswith(",", position):
            break
        position += 1
        index += 1
    return InvalidParams(f"{where} {TOO_DEEP}")  # not reached for valid JSON


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position
