"""What an instance may store: nesting, NaN and Infinity, and the size limits that keep a
job document under Firestore's 1 MiB."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import BaseModel

from jobfleet.core import payloads
from jobfleet.core.params import check
from jobfleet.core.registry import JobDefinition
from jobfleet.errors import InvalidParams, InvalidResult


class Shape(BaseModel):
    name: str
    inner: dict[str, Any]


def echo(params: dict[str, Any]) -> dict[str, Any]:
    return params


def typed(params: Shape) -> str:
    return params.name


PLAIN = JobDefinition(name="echo", target=echo)
TYPED = JobDefinition(name="typed", target=typed)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("definition", [PLAIN, TYPED], ids=["plain", "pydantic"])
def test_params_nested_10000_deep_are_refused_by_index_not_recursion(
    definition: JobDefinition,
) -> None:
    with pytest.raises(InvalidParams, match="parameter set 3: is nested deeper than 100") as e:
        check(definition, 3, {"name": "x", "inner": nested(10_000)})
    assert e.value.index == 3


def test_the_depth_limit_is_100_levels() -> None:
    assert check(PLAIN, 0, nested(100)) == nested(100)
    with pytest.raises(InvalidParams, match="nested deeper than 100 levels"):
        check(PLAIN, 0, nested(101))
    lists: Any = {"l": []}
    for _ in range(200):
        lists = [lists]
    with pytest.raises(InvalidParams, match="nested deeper"):
        check(PLAIN, 0, {"l": lists})


def test_a_parameter_set_that_contains_itself_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidParams, match="contains itself"):
        check(PLAIN, 0, loop)


def test_nan_in_params_is_refused_with_where_it_is() -> None:
    with pytest.raises(InvalidParams, match=r"parameter set 2: .*nan at \['x'\]\[1\]"):
        check(PLAIN, 2, {"x": [1.0, math.nan]})
    with pytest.raises(InvalidParams, match=r"-inf at \['y'\]"):
        check(PLAIN, 2, {"y": -math.inf})


def test_a_parameter_set_over_256_kib_is_refused_with_size_and_limit() -> None:
    overhead = len(json.dumps({"blob": ""}))
    at_limit = {"blob": "x" * (payloads.MAX_PARAMS_BYTES - overhead)}
    assert check(PLAIN, 0, at_limit) is at_limit
    over = {"blob": "x" * (payloads.MAX_PARAMS_BYTES - overhead + 1)}
    with pytest.raises(
        InvalidParams,
        match=r"parameter set 7: is 256 KiB \(262,145 bytes\) of JSON, over the limit of "
              r"256 KiB per parameter set; store large data elsewhere",
    ):
        check(PLAIN, 7, over)


def test_the_size_is_that_of_the_stored_text_escapes_included() -> None:
    # The stores write json.dumps' ASCII text: each "é" takes six characters there.
    with pytest.raises(InvalidParams, match="over the limit of 256 KiB"):
        check(PLAIN, 0, {"text": "é" * (payloads.MAX_PARAMS_BYTES // 6 + 1)})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=repr)
def test_a_nan_or_infinite_result_is_refused(bad: float) -> None:
    with pytest.raises(InvalidResult, match=rf"the job's result .*{bad!r} at \['score'\]"):
        payloads.result_json({"score": bad})


def test_a_result_over_256_kib_is_refused_with_size_and_limit() -> None:
    assert payloads.result_json("x" * 1000) == "x" * 1000
    with pytest.raises(
        InvalidResult, match=r"the job's result is 1 MiB \(1,048,578 bytes\) of JSON, over the "
                             r"limit of 256 KiB per result",
    ):
        payloads.result_json("x" * (1024 * 1024))


def test_results_too_deep_or_not_json_are_refused() -> None:
    with pytest.raises(InvalidResult, match="the job's result is nested deeper"):
        payloads.result_json(nested(10_000))
    with pytest.raises(InvalidResult, match="the job's result is not JSON-serialisable"):
        payloads.result_json({"when": object()})


def test_a_pydantic_result_is_stored_as_its_json_form() -> None:
    assert payloads.result_json(Shape(name="a", inner={"n": 1})) == {"name": "a",
                                                                      "inner": {"n": 1}}


def test_a_job_document_fits_firestores_1_mib() -> None:
    fields = 4 * 1024  # ids, status, owner, times
    budget = (payloads.MAX_PARAMS_BYTES + payloads.MAX_RESULT_BYTES
              + payloads.MAX_ERROR_MESSAGE_BYTES + payloads.MAX_TRACEBACK_BYTES + fields)
    assert budget < 1024 * 1024


def test_errors_are_truncated_to_fit_keeping_head_and_tail() -> None:
    exc = RuntimeError("m" * 100_000 + "END")
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 50_000 + "RuntimeError: END"
    info = payloads.error_info(exc, tb)
    assert info.type == "RuntimeError"
    assert len(info.message.encode()) <= payloads.MAX_ERROR_MESSAGE_BYTES
    assert len(info.traceback.encode()) <= payloads.MAX_TRACEBACK_BYTES
    assert info.message.endswith("END") and "truncated by jobfleet" in info.message
    assert info.traceback.startswith("Traceback") and info.traceback.endswith("RuntimeError: END")
    short = payloads.error_info(ValueError("small"), "tb")
    assert (short.message, short.traceback) == ("small", "tb")


def test_truncation_never_splits_a_character() -> None:
    cut = payloads.truncate("é" * 10_000, 1001)
    assert len(cut.encode()) <= 1001
    assert set(cut.replace(payloads.TRUNCATED, "")) == {"é"}
