"""The JSON an instance stores: its parameter set, its result and its error. One rule for
both backends, so that whatever the local store accepts, Firestore accepts too.

Firestore refuses a document over 1 MiB (1,048,576 bytes), and one job document holds
the parameter set, the result and the error side by side. The budget per document:

    parameter set, JSON text      256 KiB   (MAX_PARAMS_BYTES)
    result, JSON text             256 KiB   (MAX_RESULT_BYTES)
    error message, UTF-8           16 KiB   (MAX_ERROR_MESSAGE_BYTES, truncated to fit)
    error traceback, UTF-8         64 KiB   (MAX_TRACEBACK_BYTES, truncated to fit)
    ids, status, owner, times      < 4 KiB
    -----------------------------------------
                                  < 596 KiB, well under 1,024 KiB even with Firestore's
                                  per-field and document-name overhead.

Sizes are those of the text the stores write: `json.dumps` with its defaults, whose
output is ASCII, so characters and bytes are the same.

Nesting is bounded too (MAX_DEPTH), and checked without recursion, so that a value nested
10,000 deep is refused by name instead of raising RecursionError somewhere downstream.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jobfleet.core.models import ErrorInfo
from jobfleet.errors import InvalidResult

KIB = 1024
MAX_PARAMS_BYTES = 256 * KIB
MAX_RESULT_BYTES = 256 * KIB
MAX_ERROR_MESSAGE_BYTES = 16 * KIB
MAX_TRACEBACK_BYTES = 64 * KIB
MAX_DEPTH = 100  # levels of objects and lists; far from Python's recursion limit

TRUNCATED = "\n... (truncated by jobfleet) ...\n"


class PayloadProblem(ValueError):
    """Why a value cannot be stored; the caller words it as InvalidParams or InvalidResult."""


def size_text(size: int) -> str:
    if size < KIB:
        return f"{size} bytes"
    if size < KIB * KIB:
        return f"{size / KIB:.1f} KiB".replace(".0 KiB", " KiB")
    return f"{size / (KIB * KIB):.1f} MiB".replace(".0 MiB", " MiB")


def _path(keys: list[Any]) -> str:
    return "".join(f"[{k!r}]" for k in keys)


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise PayloadProblem when objects and lists nest deeper than `limit` (a value that
    contains itself nests without end). Iterative: it never recurses itself."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            raise PayloadProblem(
                f"is nested deeper than {limit} levels of objects and lists "
                "(or contains itself); flatten it"
            )
        stack.extend((child, depth + 1) for child in children)


def _non_finite(value: Any) -> str | None:
    """Where a NaN or infinite float sits in `value`, if anywhere."""
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack:
        item, keys = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"it contains {item!r} at {_path(keys)}" if keys else f"it is {item!r}"
        if isinstance(item, dict):
            stack.extend((v, [*keys, k]) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, [*keys, i]) for i, v in enumerate(item))
    return None


def to_json_text(value: Any, limit: int, what: str) -> str:
    """The JSON text a store writes for `value`, or PayloadProblem saying what is wrong:
    too deep, NaN or Infinity (JSON has neither), not JSON at all, or over `limit` bytes."""
    check_depth(value)
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError as exc:
        where = _non_finite(value) or f"it contains {exc}"
        raise PayloadProblem(
            f"is not JSON-serialisable: {where} (JSON has no NaN or Infinity); "
            "use null or a string instead"
        ) from None
    except (TypeError, RecursionError) as exc:
        raise PayloadProblem(f"is not JSON-serialisable: {exc}") from None
    if len(text) > limit:
        raise PayloadProblem(
            f"is {size_text(len(text))} ({len(text):,} bytes) of JSON, over the limit of "
            f"{size_text(limit)} per {what}; store large data elsewhere (a file or Cloud "
            "Storage) and pass a reference to it"
        )
    return text


def result_json(result: Any) -> Any:
    """A job's return value as stored: a pydantic model becomes its JSON form. Raises
    InvalidResult when it cannot be stored, which fails the attempt (retries apply)."""
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        result = dump(mode="json")
    try:
        to_json_text(result, MAX_RESULT_BYTES, "result")
    except PayloadProblem as exc:
        raise InvalidResult(str(exc)) from None
    return result


def truncate(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, keeping its head and its tail (the end
    of a traceback says where it was raised)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    keep = max_bytes - len(TRUNCATED.encode())
    head = data[: keep // 2].decode("utf-8", "ignore")
    tail = data[len(data) - (keep - keep // 2):].decode("utf-8", "ignore")
    return head + TRUNCATED + tail


def error_info(exc: BaseException, traceback: str) -> ErrorInfo:
    """An attempt's error, its message and traceback truncated to fit the document."""
    info = ErrorInfo.from_exception(exc, traceback)
    return ErrorInfo(
        type=info.type[:200],
        message=truncate(info.message, MAX_ERROR_MESSAGE_BYTES),
        traceback=truncate(info.traceback, MAX_TRACEBACK_BYTES),
    )
