"""The Firestore store's schedules and fires (the Store port's schedule half).

    jobfleet_schedules/{name}                        one per schedule
    jobfleet_schedules/{name}/fires/{scheduled_at}   one per scheduled time (repr of the float)

A fire's document id is its scheduled time, so every delivery of the same time lands on
the same document, and a claim reads it, applies `may_claim`, and writes on condition
that it is unchanged since read: of concurrent deliveries, one wins. Optimistic rather
than a transaction, for the reason `FirestoreStore.finish_orchestration` gives: on the
emulator, 16 transactions on one document lock each other out until they give up.

Deleting a schedule leaves its `fires` subcollection, as history, under the missing
document (Firestore deletes no subcollection with its parent). Parameter sets are JSON
text, as an instance's are.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from google.api_core import exceptions
from google.cloud import firestore

from jobfleet.backends.gcp.firestore_conditional import Write, write_unless_changed
from jobfleet.backends.gcp.firestore_documents import Snapshot, expire_at
from jobfleet.core.models import JsonObject
from jobfleet.core.schedules import Fire, Schedule, claimed_fire, may_claim, may_finish
from jobfleet.errors import InvalidSchedule, ScheduleExists, UnknownSchedule

SCHEDULES = "jobfleet_schedules"
FIRES = "fires"


def fire_id(scheduled_at: float) -> str:
    """The exact time, so that two times apart by less than a millisecond (manual
    triggers) stay two fires, as they are in SQLite; 60 and 60.0 are one."""
    return repr(float(scheduled_at))


def schedule_document(schedule: Schedule) -> JsonObject:
    data = schedule.to_json()
    data["params"] = None if schedule.params is None else json.dumps(schedule.params)
    return data


def schedule_from(doc: Snapshot) -> Schedule:
    data = doc.to_dict() or {}
    if data.get("params") is not None:
        data["params"] = json.loads(data["params"])
    return Schedule.from_json(data)


def fire_from(doc: Snapshot) -> Fire | None:
    return Fire.from_json(doc.to_dict() or {}) if doc.exists else None


class FirestoreSchedules:
    """Mixed into FirestoreStore, which provides the client."""

    _client: firestore.Client
    _retention: timedelta

    @property
    def _schedules(self) -> firestore.CollectionReference:
        return self._client.collection(SCHEDULES)

    def _fires(self, schedule: str) -> firestore.CollectionReference:
        fires: firestore.CollectionReference = self._schedules.document(schedule).collection(FIRES)
        return fires

    def _fire_ref(self, schedule: str, scheduled_at: float) -> firestore.DocumentReference:
        return self._fires(schedule).document(fire_id(scheduled_at))

    # -- schedules ------------------------------------------------------------------------

    def save_schedule(self, schedule: Schedule, *, create: bool) -> None:
        ref = self._schedules.document(schedule.name)
        data = schedule_document(schedule)
        try:
            if create:
                ref.create(data)
            else:
                ref.set(data)
        except exceptions.Conflict:  # AlreadyExists, from create()
            raise ScheduleExists(schedule.name) from None
        except exceptions.InvalidArgument as exc:
            raise InvalidSchedule(
                f"schedule {schedule.name!r} does not fit in a Firestore document (1 MiB): "
                f"give it a params provider instead of a long params list ({exc.message})"
            ) from None

    def get_schedule(self, name: str) -> Schedule:
        doc = self._schedules.document(name).get()
        if not doc.exists:
            raise UnknownSchedule(name)
        return schedule_from(doc)

    def list_schedules(self) -> list[Schedule]:
        return [schedule_from(doc) for doc in self._schedules.order_by("name").stream()]

    def delete_schedule(self, name: str) -> bool:
        try:
            self._schedules.document(name).delete(option=self._client.write_option(exists=True))
        except exceptions.NotFound:
            return False
        return True

    # -- fires ----------------------------------------------------------------------------

    def claim_fire(self, fire: Fire, *, now: float) -> tuple[bool, Fire]:
        """A write on condition that the fire is as read: created if there was none, else
        updated if unchanged since. A claimant that loses reads again, and `may_claim`
        then refuses it the winner's claim. The `claimant` token recognises a claim of
        ours that landed although its answer was lost (the client retries a commit, and
        the retry fails on the first try's write)."""
        token = uuid.uuid4().hex

        def decide(doc: Snapshot, raced: bool) -> tuple[bool, Fire] | Write:
            existing = fire_from(doc)
            if existing is not None and (doc.to_dict() or {}).get("claimant") == token:
                return True, existing
            if not may_claim(existing, now):
                assert existing is not None
                return False, existing
            claimed = claimed_fire(fire, existing)
            return Write({**claimed.to_json(), "claimant": token}, (True, claimed),
                         create=existing is None)

        answer: tuple[bool, Fire] = write_unless_changed(
            self._client, self._fire_ref(fire.schedule, fire.scheduled_at), decide,
            what=f"claim schedule {fire.schedule!r} at {fire.scheduled_at}",
            expires=expire_at(fire.scheduled_at, self._retention),
        )
        return answer

    def finish_fire(self, fire: Fire) -> bool:
        """Conditional as a claim is; an outcome found already written after a lost race
        is ours, since only the holder of `fire.attempt` writes one with that attempt."""

        def decide(doc: Snapshot, raced: bool) -> bool | Write:
            existing = fire_from(doc)
            if raced and existing == fire:
                return True
            if not may_finish(existing, fire):
                return False
            return Write(fire.to_json(), True)

        done: bool = write_unless_changed(
            self._client, self._fire_ref(fire.schedule, fire.scheduled_at), decide,
            what=f"record the fire of schedule {fire.schedule!r} at {fire.scheduled_at}",
            expires=expire_at(fire.scheduled_at, self._retention),
        )
        return done

    def get_fire(self, schedule: str, scheduled_at: float) -> Fire | None:
        return fire_from(self._fire_ref(schedule, scheduled_at).get())

    def list_fires(self, schedule: str, *, limit: int = 20) -> list[Fire]:
        if limit <= 0:
            return []
        query = (
            self._fires(schedule)
            .order_by("scheduled_at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [Fire.from_json(doc.to_dict() or {}) for doc in query.stream()]
