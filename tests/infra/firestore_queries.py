"""The Firestore queries the SDK makes, as Firestore sees them, and the rules for which
of them need a composite index.

`QueryRecorder` wraps the client's `BaseQuery._to_protobuf`, through which every query,
aggregation and listener passes on its way to the server, and keeps each
StructuredQuery with the SDK function that ran it. The queries still run (on the
emulator); nothing is replaced.

Firestore's rules (docs: index types, index merging), for a query on one collection:
- equality-like filters only (==, in, array-contains), however many fields: the
  single-field indexes, merged;
- one field filtered by a range and/or ordered, and nothing else: its single-field index;
- equality-like filters on some fields and a range or order on another, or orders on
  two fields: a composite index, the equality fields first (in any order), then the
  order fields in the query's order and direction, then range fields it does not order
  by, ascending.
A collection group query has no automatic single-field indexes: whatever it filters on
needs an index of collection-group scope.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1 import base_query

SDK = Path(__file__).resolve().parents[2] / "sdk" / "jobfleet"
EQUALITY = {"EQUAL", "IN", "ARRAY_CONTAINS", "IS_NULL", "IS_NAN"}
ARRAY = {"ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}
NAME = "__name__"


@dataclass(frozen=True)
class QueryShape:
    collection: str
    group: bool  # a collection group query
    equality: frozenset[str]
    arrays: frozenset[str]  # the equality fields filtered with array-contains
    ranges: tuple[str, ...]  # fields with <, <=, >, >=, !=, not-in
    orders: tuple[tuple[str, str], ...]  # (field, ASCENDING | DESCENDING)

    @property
    def sorted_by(self) -> tuple[tuple[str, str], ...]:
        """The orders, then each range field they do not name, ascending."""
        named = {f for f, _ in self.orders}
        return self.orders + tuple((f, "ASCENDING") for f in self.ranges if f not in named)

    @property
    def fields(self) -> set[str]:
        return set(self.equality) | {f for f, _ in self.sorted_by}

    @property
    def needs_composite(self) -> bool:
        if self.group:
            return bool(self.fields)
        sorted_fields = {f for f, _ in self.sorted_by}
        return bool(sorted_fields) and (bool(self.equality) or len(sorted_fields) > 1)

    def served_by(self, index: IndexShape) -> bool:
        """Whether the index has this query's equality fields first, then its order."""
        if (index.collection, index.group) != (self.collection, self.group):
            return False
        head, tail = index.fields[: len(self.equality)], index.fields[len(self.equality):]
        wanted_head = {(f, "CONTAINS" if f in self.arrays else None) for f in self.equality}
        have_head = {(f, "CONTAINS" if mode == "CONTAINS" else None) for f, mode in head}
        return have_head == wanted_head and tail == self.sorted_by


@dataclass(frozen=True)
class IndexShape:
    name: str
    collection: str
    group: bool
    fields: tuple[tuple[str, str], ...]  # (field, ASCENDING | DESCENDING | CONTAINS)


@dataclass(frozen=True)
class RecordedQuery:
    shape: QueryShape
    callers: tuple[str, ...]  # the SDK functions on the stack, "file.py:function"


def shape_of(query: Any) -> QueryShape:
    """A StructuredQuery protobuf as the fields that decide its index."""
    [source] = query.from_
    equality: set[str] = set()
    arrays: set[str] = set()
    ranges: list[str] = []
    for field, op in _filters(query.where):
        if op in EQUALITY:
            equality.add(field)
            if op in ARRAY:
                arrays.add(field)
        elif field != NAME:
            ranges.append(field)
    orders = tuple(
        (o.field.field_path, o.direction.name)
        for o in query.order_by if o.field.field_path != NAME
    )
    return QueryShape(
        source.collection_id, bool(source.all_descendants), frozenset(equality),
        frozenset(arrays), tuple(dict.fromkeys(ranges)), orders,
    )


def _filters(where: Any) -> Iterator[tuple[str, str]]:
    kind = where._pb.WhichOneof("filter_type")
    if kind == "composite_filter":
        for inner in where.composite_filter.filters:
            yield from _filters(inner)
    elif kind == "field_filter":
        yield where.field_filter.field.field_path, where.field_filter.op.name
    elif kind == "unary_filter":
        yield where.unary_filter.field.field_path, where.unary_filter.op.name


class QueryRecorder:
    def __init__(self) -> None:
        self.queries: list[RecordedQuery] = []

    @staticmethod
    def _callers() -> tuple[str, ...]:
        return tuple(
            f"{Path(frame.filename).name}:{frame.name}"
            for frame in traceback.extract_stack()
            if Path(frame.filename).is_relative_to(SDK)
        )

    @contextmanager
    def recording(self) -> Iterator[QueryRecorder]:
        original = base_query.BaseQuery._to_protobuf
        recorder = self

        def observed(query: Any) -> Any:
            built = original(query)
            recorder.queries.append(RecordedQuery(shape_of(built), recorder._callers()))
            return built

        base_query.BaseQuery._to_protobuf = observed  # type: ignore[method-assign, assignment]
        try:
            yield self
        finally:
            base_query.BaseQuery._to_protobuf = original  # type: ignore[method-assign]

    @property
    def callers(self) -> set[str]:
        return {c for q in self.queries for c in q.callers}

    @property
    def shapes(self) -> set[QueryShape]:
        return {q.shape for q in self.queries}
