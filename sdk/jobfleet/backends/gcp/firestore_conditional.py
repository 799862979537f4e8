"""One document written on condition that it is as it was read: the loop behind every
claim and record of a fire or a webhook delivery.

`decide(doc, raced)` reads the snapshot and either answers (anything but a `Write`) or
asks for a `Write`, made only if the document did not change since the read (created,
when it did not exist). A lost race pauses and reads again, with `raced` true: a write
of ours that landed although its answer was lost then shows in the document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core import exceptions
from google.cloud import firestore

from jobfleet.backends.gcp.firestore_documents import EXPIRE_AT, Snapshot
from jobfleet.backends.gcp.firestore_worker import CONFLICT_ATTEMPTS, pause_after_race
from jobfleet.core.models import JsonObject
from jobfleet.errors import JobfleetError


@dataclass(frozen=True, slots=True)
class Write:
    data: JsonObject
    answer: Any  # what the caller gets once the write is made
    create: bool = False  # the document did not exist


def write_unless_changed(
    client: firestore.Client, ref: firestore.DocumentReference,
    decide: Callable[[Snapshot, bool], Any], *, what: str, expires: datetime,
) -> Any:
    """`expires` is the `expire_at` a created document gets (its history's TTL)."""
    raced = False
    for _ in range(CONFLICT_ATTEMPTS):
        doc = ref.get()
        decision = decide(doc, raced)
        if not isinstance(decision, Write):
            return decision
        try:
            if decision.create:
                ref.create({**decision.data, EXPIRE_AT: expires})
            else:
                ref.update(decision.data,
                           option=client.write_option(last_update_time=doc.update_time))
        except (exceptions.Conflict, exceptions.FailedPrecondition):
            raced = True
            pause_after_race()
            continue
        return decision.answer
    raise JobfleetError(
        f"could not {what}: it changed {CONFLICT_ATTEMPTS} times in a row while being read; "
        "try again"
    )
