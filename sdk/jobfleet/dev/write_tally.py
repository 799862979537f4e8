"""Writes per document, counted from the Firestore emulator's trigger events.

Firestore sustains about one write per second to a document, and the emulator neither
enforces nor reports that. A tally is a trigger on every document of a project
(`{path=**}`, every write) that the relay registers like a route but relays nowhere: it
records, per document, the commit time of each write (the new document's update time,
which the emulator sets when it commits; a deletion, which has none, counts when its
event arrives). `summary` then gives, per kind of document (the path with its ids
replaced by `*`), the busiest document over a one-second window and over a longer one.
A few writes at once to one document (an instance claimed then finished, an
orchestration flipped then announced) are a burst Firestore absorbs; what it does not
sustain is a rate kept up, which the longer window (`SUSTAINED_WINDOW`) measures.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from jobfleet.dev.eventarc import EventDataPb

SUSTAINED_WINDOW = 10.0  # seconds


def kind_of(path: str) -> str:
    """`jobfleet_orchestrations/abc/shards/3` -> `jobfleet_orchestrations/*/shards/*`."""
    parts = path.split("/")
    return "/".join("*" if n % 2 else part for n, part in enumerate(parts))


def most_in_window(times: list[float], width: float) -> int:
    """The most of the sorted `times` that fall in any window [t, t + width)."""
    most, start = 0, 0
    for end, when in enumerate(times):
        while when - times[start] >= width:
            start += 1
        most = max(most, end - start + 1)
    return most


@dataclass(eq=False)
class WriteTally:
    trigger_id: str
    project: str
    documents: str = "{path=**}"  # the trigger's path pattern
    started: float = field(default_factory=time.time)
    _writes: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list), repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, emulator_body: bytes) -> None:
        """One trigger request from the emulator; ValueError if it is not one."""
        try:
            data = EventDataPb.FromString(base64.b64decode(emulator_body))
        except (binascii.Error, DecodeError) as exc:
            raise ValueError(f"not a base64 DocumentEventData: {exc}") from exc
        if data.HasField("value"):
            document = data.value
            when = document.update_time.seconds + document.update_time.nanos / 1e9
        elif data.HasField("old_value"):
            document, when = data.old_value, time.time()
        else:
            raise ValueError("the event names no document")
        path = document.name.partition("/documents/")[2]
        with self._lock:
            self._writes[path].append(when)

    def summary(self, window: float = SUSTAINED_WINDOW) -> dict[str, Any]:
        """Writes per kind of document, and each kind's busiest document: the most writes
        in any 1 s window (`peak_1s`), and the most in any `window` seconds divided by
        `window` (`sustained_per_s`)."""
        with self._lock:
            writes = {path: sorted(times) for path, times in self._writes.items()}
        kinds: dict[str, dict[str, Any]] = {}
        for path, times in writes.items():
            kind = kinds.setdefault(kind_of(path), {
                "documents": 0, "writes": 0, "peak_1s": 0, "peak_1s_document": None,
                "sustained_per_s": 0.0, "sustained_document": None,
            })
            kind["documents"] += 1
            kind["writes"] += len(times)
            peak = most_in_window(times, 1.0)
            if peak > kind["peak_1s"]:
                kind["peak_1s"], kind["peak_1s_document"] = peak, path
            sustained = most_in_window(times, window) / window
            if sustained > kind["sustained_per_s"]:
                kind["sustained_per_s"], kind["sustained_document"] = sustained, path
        return {
            "trigger_id": self.trigger_id, "project": self.project,
            "documents": self.documents, "window": window,
            "writes": sum(k["writes"] for k in kinds.values()),
            "peak_1s": max((k["peak_1s"] for k in kinds.values()), default=0),
            "sustained_per_s": max((k["sustained_per_s"] for k in kinds.values()), default=0.0),
            "kinds": kinds,
        }
