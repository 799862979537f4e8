"""How runs link to one another, read for the CLI and the API: a pipeline stage's
place in its pipeline, and a run's re-runs and what it re-runs.

One read of the pipeline's stages (by their `pipeline` tag) and one of the re-runs (by
their `rerun_of` tag) answer everything here; the rules that make the links are in
core/pipeline.py and fleet.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobfleet.core.models import JsonObject, OrchestrationSnapshot
from jobfleet.core.pipeline import PIPELINE_TAG, STAGE_TAG
from jobfleet.fleet import RERUN_TAG

if TYPE_CHECKING:
    from jobfleet.fleet import JobFleet


def stage_number(snap: OrchestrationSnapshot) -> int:
    return int(snap.tags.get(STAGE_TAG, "1"))


@dataclass(frozen=True, slots=True)
class RunLinks:
    """Where one orchestration sits among others."""

    snap: OrchestrationSnapshot
    stages: list[OrchestrationSnapshot]  # the pipeline's stages started so far, in order
    reruns: list[OrchestrationSnapshot]  # this run's own re-runs, oldest first

    @property
    def is_stage(self) -> bool:
        return PIPELINE_TAG in self.snap.tags

    @property
    def pipeline(self) -> str | None:
        return self.snap.tags.get(PIPELINE_TAG)

    @property
    def stage(self) -> int | None:
        return stage_number(self.snap) if self.is_stage else None

    @property
    def stages_total(self) -> int | None:
        """The stages the pipeline has if every one runs: this stage's position and the
        stages still to come after it."""
        return stage_number(self.snap) + len(self.snap.then or []) if self.is_stage else None

    @property
    def next(self) -> str | None:
        """The stage started after this one, once it has been."""
        return next((s.id for s in self.stages if s.parent == self.snap.id), None)

    @property
    def rerun_of(self) -> str | None:
        return self.snap.tags.get(RERUN_TAG)

    def to_json(self) -> JsonObject:
        """The shape `jobfleet status --json` (as `links`) and the API's
        `GET /v1/orchestrations/{id}` (inside its `links`) give."""
        return {
            "parent": self.snap.parent,
            "next": self.next,
            "next_note": self.snap.next_note or None,
            "pipeline": self.pipeline,
            "stage": self.stage,
            "stages_total": self.stages_total,
            "stages": [stage_json(s) for s in self.stages] if self.is_stage else [],
            "rerun_of": self.rerun_of,
            "reruns": [s.id for s in self.reruns],
        }


def stage_json(snap: OrchestrationSnapshot) -> dict[str, Any]:
    return {
        "id": snap.id, "job_name": snap.job_name, "status": str(snap.status),
        "stage": stage_number(snap), "next_note": snap.next_note or None,
    }


def links_of(fleet: JobFleet, snap: OrchestrationSnapshot) -> RunLinks:
    handle = fleet.handle(snap.id)
    stages = handle.stages() if PIPELINE_TAG in snap.tags else []
    return RunLinks(snap=snap, stages=stages, reruns=handle.reruns())


def rerun_tree(fleet: JobFleet, orchestration_id: str) -> list[OrchestrationSnapshot]:
    """The run, then its re-runs and theirs, breadth first: the runs whose outcomes
    `Orchestration.merged_results` lays over one another."""
    found = [fleet.handle(orchestration_id).status()]
    position = 0
    while position < len(found):
        found.extend(fleet.handle(found[position].id).reruns())
        position += 1
    return found
