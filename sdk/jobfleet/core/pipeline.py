"""Pipelines: stages that start one another as each ends.

A kick-off names what follows it (`then=[Stage(...), ...]`). Each stage is an ordinary
orchestration that carries the stages still to come; when it ends, whoever announces
its end starts the next one (jobfleet.pipelines), with an id derived from the finished
stage's, so that however many times the end is delivered, the next stage starts once.
The rules here are pure: what a stage is, when it runs, what its id is.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jobfleet.core import params as param_sets
from jobfleet.core.models import (
    Failure,
    JsonObject,
    OrchestrationSnapshot,
    RunOptions,
    Status,
    Success,
)
from jobfleet.core.options import check_options
from jobfleet.core.registry import declared_in, find_function, get_job
from jobfleet.errors import InvalidOption, JobfleetError

STAGE_NAMESPACE = uuid.UUID("0c6f3b8e-2d4a-4b7e-8f1c-5a9d3e7b2c14")
PIPELINE_TAG = "pipeline"  # the first stage's id, on every stage of the pipeline
STAGE_TAG = "stage"  # the stage's position, from 1
MAX_STAGES = 100


class When(StrEnum):
    """When the next stage runs."""

    COMPLETED = "completed"  # only when the stage before ended Completed
    ALWAYS = "always"  # on any end: Completed, Errored or Cancelled


@dataclass(frozen=True, slots=True)
class StageResults:
    """What a stage's params function receives: the finished stage and its outcomes."""

    stage: OrchestrationSnapshot
    successes: list[Success]
    failures: list[Failure]


StageParams = Callable[[StageResults], Iterable[Any]]
_FUNCTIONS: dict[str, StageParams] = {}


@dataclass(frozen=True, slots=True)
class Stage:
    """A stage to come: its job, its parameter sets (a fixed list, or a function of the
    previous stage's results, called when that stage ends) and its options."""

    job: str
    # A list, a function, or a function's name ("module:function", "file.py:function").
    params: list[Any] | StageParams | str | None = None
    when: When | str = When.COMPLETED
    parallelism: int | None = None
    retries: int | None = None
    timeout: float | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The stage as the store keeps it: a function is kept by its registered name,
        with the modules a starter imports to find it and the job."""
        definition = get_job(self.job)
        sources = [definition.source] if definition.source else []
        fixed: list[Any] | None = None
        function: str | None = None
        if isinstance(self.params, str):  # a function by name, from the CLI or the API
            where, _, qualname = self.params.rpartition(":")
            if where.endswith(".py"):  # found again from any working folder
                where = os.path.abspath(where)
            function = f"{where}:{qualname}"
            try:
                find_function(function)
            except LookupError as exc:
                raise InvalidOption(f"params function {self.params!r}: {exc}") from None
            where = function.rpartition(":")[0]
            if where not in sources:
                sources.append(where)
        elif callable(self.params):
            function = register(self.params)
            where, _ = declared_in(self.params)
            if where and where not in sources:
                sources.append(where)
        elif self.params is not None:
            fixed = [param_sets.check(definition, index, one)
                     for index, one in enumerate(self.params)]
        options = RunOptions(
            retries=0 if self.retries is None else self.retries, backoff=definition.backoff,
            timeout=self.timeout, parallelism=1 if self.parallelism is None else self.parallelism,
        )
        check_options(options, dict(self.tags))
        return {
            "job": self.job, "params": fixed, "params_from": function,
            "when": When(self.when).value, "parallelism": self.parallelism,
            "retries": self.retries, "timeout": self.timeout, "tags": dict(self.tags),
            "sources": sources,
        }


def register(fn: StageParams) -> str:
    """A stage's params function, by the name of where it is declared; refused when no
    other process could find it by that name (see `find_function`)."""
    where, _ = declared_in(fn)
    qualname = getattr(fn, "__qualname__", "")
    if not where or not qualname or "<" in qualname:
        raise InvalidOption(
            f"a stage's params function must be declared at module level in an importable "
            f"module or script file (got {qualname or fn!r}): the process that starts the "
            "stage finds it by name"
        )
    name = f"{where}:{qualname}"
    _FUNCTIONS[name] = fn
    return name


def stage_params(spec: JsonObject, results: StageResults) -> list[Any]:
    """The next stage's parameter sets: its fixed list, or its function's answer."""
    if spec.get("params") is not None:
        return list(spec["params"])
    name = spec["params_from"]
    if name not in _FUNCTIONS:
        try:
            _FUNCTIONS[name] = find_function(name)
        except LookupError as exc:
            raise JobfleetError(f"the next stage's params function: {exc}") from None
    return list(_FUNCTIONS[name](results))


def check_stages(stages: list[Stage]) -> list[JsonObject]:
    """The stages as the store keeps them; InvalidOption naming the first wrong one."""
    if len(stages) > MAX_STAGES:
        raise InvalidOption(f"a pipeline has at most {MAX_STAGES} stages after the first")
    out = []
    for position, stage in enumerate(stages, start=2):
        if not isinstance(stage, Stage):
            raise InvalidOption(f"stage {position} must be a jobfleet.Stage, got {stage!r}")
        try:
            When(stage.when)
        except ValueError:
            raise InvalidOption(
                f"stage {position}: when must be 'completed' or 'always', got {stage.when!r}"
            ) from None
        empty = isinstance(stage.params, list | tuple) and not stage.params
        if stage.params is None or empty:
            raise InvalidOption(
                f"stage {position} ({stage.job}) needs params: a non-empty list, or a "
                "function of the previous stage's results"
            )
        try:
            out.append(stage.to_json())
        except JobfleetError as exc:  # an unknown job, bad params or options
            raise InvalidOption(f"stage {position} ({stage.job}): {exc}") from None
    return out


def next_stage_id(orchestration_id: str) -> str:
    """The id of the stage that follows `orchestration_id`: the same for every starter."""
    return str(uuid.uuid5(STAGE_NAMESPACE, orchestration_id))


def runs_next(spec: JsonObject, ended: Status) -> bool:
    return When(spec["when"]) is When.ALWAYS or ended is Status.COMPLETED
