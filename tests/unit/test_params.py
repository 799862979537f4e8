"""Checking parameter sets before anything is created, and streaming them in batches."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from jobfleet.core.params import check, instance_batches, to_argument
from jobfleet.core.registry import JobDefinition
from jobfleet.errors import InvalidParams


class Thumbnail(BaseModel):
    url: str
    width: int


def make_thumbnail(params: Thumbnail) -> str:
    return f"{params.url}@{params.width}"


class ThumbnailJob:
    def run(self, params: Thumbnail) -> str:
        return params.url


def echo(params: dict[str, Any]) -> dict[str, Any]:
    return params


PLAIN = JobDefinition(name="echo", target=echo)
TYPED_FUNCTION = JobDefinition(name="thumbnail", target=make_thumbnail)
TYPED_CLASS = JobDefinition(name="thumbnail-class", target=ThumbnailJob)


@pytest.mark.parametrize(
    ("bad", "type_name"), [(["a", 1], "list"), ("url=a.png", "str"), (42, "int"), (None, "None")]
)
def test_a_parameter_set_that_is_not_an_object_is_refused_by_index(
    bad: Any, type_name: str
) -> None:
    expected = rf"parameter set 3: expected a JSON object, got {type_name}"
    with pytest.raises(InvalidParams, match=expected):
        check(PLAIN, 3, bad)


def test_the_refused_index_is_the_position_in_the_stream() -> None:
    params: list[Any] = [{"n": 0}, {"n": 1}, "oops", {"n": 3}]
    with pytest.raises(InvalidParams) as info:
        list(instance_batches(PLAIN, params, shards=2))
    assert info.value.index == 2
    assert str(info.value).startswith("parameter set 2:")


@pytest.mark.parametrize("definition", [TYPED_FUNCTION, TYPED_CLASS], ids=lambda d: d.name)
def test_a_pydantic_annotation_validates_and_names_index_and_field(
    definition: JobDefinition,
) -> None:
    with pytest.raises(InvalidParams, match=r"parameter set 4: does not fit Thumbnail: width"):
        check(definition, 4, {"url": "a.png", "width": "wide"})
    with pytest.raises(InvalidParams, match=r"parameter set 0: .*url: Field required"):
        check(definition, 0, {"width": 10})


def test_parameters_that_fit_the_model_are_kept_as_given() -> None:
    params = {"url": "a.png", "width": 64}
    assert check(TYPED_FUNCTION, 0, params) == {"url": "a.png", "width": 64}


def test_the_job_receives_its_model_or_the_plain_dict() -> None:
    typed = to_argument(TYPED_FUNCTION, {"url": "a.png", "width": 64})
    assert typed == Thumbnail(url="a.png", width=64)
    assert to_argument(PLAIN, {"n": 1}) == {"n": 1}


@pytest.mark.parametrize(
    "value",
    [datetime.date(2024, 1, 1), {1, 2}, object(), b"bytes", float("nan"), float("inf")],
    ids=repr,
)
def test_a_value_that_is_not_json_serialisable_is_refused(value: Any) -> None:
    with pytest.raises(InvalidParams, match="parameter set 1: is not JSON-serialisable"):
        check(PLAIN, 1, {"value": value})


def test_batches_stream_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[dict[str, int]]:
        nonlocal pulled
        for n in itertools.count():
            pulled += 1
            yield {"n": n}

    batches = instance_batches(PLAIN, endless(), shards=3, size=10)
    assert pulled == 0
    first = next(batches)
    assert len(first) == 10
    assert pulled == 10  # no more than one batch is held at a time


def test_a_bad_set_raises_only_when_its_batch_is_reached() -> None:
    params: list[Any] = [{"n": n} for n in range(25)]
    params[15] = ["not", "an", "object"]
    batches = instance_batches(PLAIN, params, shards=1, size=10)

    assert [i.index for i in next(batches)] == list(range(10))
    with pytest.raises(InvalidParams, match="parameter set 15"):
        next(batches)


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_instances_are_numbered_in_order_and_sharded_by_index(shards: int) -> None:
    params = [{"n": n} for n in range(25)]

    batches = list(instance_batches(PLAIN, params, shards=shards, size=10))

    assert [len(b) for b in batches] == [10, 10, 5]
    instances = [i for b in batches for i in b]
    assert [i.index for i in instances] == list(range(25))
    assert [i.params for i in instances] == params
    assert all(i.shard == i.index % shards for i in instances)
    assert len({i.job_id for i in instances}) == 25


def test_no_parameter_sets_are_refused_before_any_batch() -> None:
    # Refused while streaming, so that kick-off refuses it before opening the store.
    with pytest.raises(InvalidParams, match="no parameter sets: give at least one"):
        next(instance_batches(PLAIN, [], shards=2))
