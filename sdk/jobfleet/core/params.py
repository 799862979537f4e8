"""Checking parameter sets before anything is created, and streaming them in batches."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from jobfleet.core import payloads
from jobfleet.core.models import JsonObject, NewInstance
from jobfleet.core.registry import JobDefinition
from jobfleet.errors import InvalidParams

BATCH_SIZE = 500


def _pydantic_model(definition: JobDefinition) -> Any:
    """The job's pydantic params model, without importing pydantic for jobs that have none."""
    pydantic = sys.modules.get("pydantic")
    tp = definition.params_type
    if pydantic is None or not isinstance(tp, type):
        return None
    return tp if issubclass(tp, pydantic.BaseModel) else None


def check(definition: JobDefinition, index: int, params: Any) -> JsonObject:
    """Refuse a parameter set that is not a JSON object, that fails the job's schema, or
    that cannot be stored (too deep, NaN or Infinity, over the size limit: core/payloads)."""
    if not isinstance(params, dict):
        raise InvalidParams(
            f"expected a JSON object, got {type(params).__name__} {_short(params)}", index
        )
    try:  # before the schema: pydantic would recurse into a value nested without bound
        payloads.to_json_text(params, payloads.MAX_PARAMS_BYTES, "parameter set")
    except payloads.PayloadProblem as exc:
        raise InvalidParams(str(exc), index) from None
    model = _pydantic_model(definition)
    if model is not None:
        from pydantic import ValidationError

        try:
            model.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidParams(f"does not fit {model.__name__}: {problems}", index) from None
    return params


def to_argument(definition: JobDefinition, params: JsonObject) -> Any:
    """What the job receives: its pydantic model when it declares one, else the dict."""
    model = _pydantic_model(definition)
    return model.model_validate(params) if model is not None else params


def instance_batches(
    definition: JobDefinition, params: Iterable[Any], shards: int, size: int = BATCH_SIZE,
    *, indexes: Iterable[int] | None = None, ids_from: str | None = None,
) -> Iterator[list[NewInstance]]:
    """Check and number parameter sets lazily; a bad one raises mid-stream.

    The i-th parameter set belongs to shard i % shards, the share of task i % shards.
    Its index is i, or the i-th of `indexes` (a re-run keeps its instances' original
    indexes). Instance ids are random, or derived from `ids_from` and the index (a
    pipeline stage: see core/pipeline.py). No parameter set at all is refused too.
    """
    batch: list[NewInstance] = []
    position = -1
    numbers = iter(indexes) if indexes is not None else None
    for position, item in enumerate(params):
        index = position if numbers is None else next(numbers)
        checked = check(definition, index, item)
        job_id = str(uuid.uuid4()) if ids_from is None else str(
            uuid.uuid5(uuid.UUID(ids_from), str(index)))
        batch.append(NewInstance(job_id, index, position % shards, checked))
        if len(batch) >= size:
            yield batch
            batch = []
    if position < 0:
        raise InvalidParams("no parameter sets: give at least one")
    if batch:
        yield batch


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def params_schema(definition: JobDefinition) -> JsonObject:
    """The JSON schema of a job's parameter sets, from its params annotation."""
    tp = definition.params_type
    if tp is None or tp is Any:
        return {"type": "object"}
    from pydantic import TypeAdapter

    try:
        schema: JsonObject = TypeAdapter(tp).json_schema()
    except Exception:  # an annotation pydantic cannot describe
        return {"type": "object"}
    return schema
