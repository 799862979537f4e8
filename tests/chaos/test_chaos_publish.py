"""Exactly one publish per orchestration, counted raw: a bus that records every publish
call before the local event log (which would drop a second copy of the same event id)
sees it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import chaos_support
import pytest
from chaos_support import (
    RecordingBus,
    chaos_fleet,
    events_for,
    finished_orchestration,
    publishes,
)

from conftest import eventually
from jobfleet import JobFleet, Status
from jobfleet.core import completion
from jobfleet.core.completion import settle
from jobfleet.core.sweep import ANNOUNCED, Ports, sweep

pytestmark = pytest.mark.slow

ROUNDS = 20
THREADS = 8
PROCESSES = 4


@pytest.fixture
def fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFleet]:
    yield from chaos_fleet(home, monkeypatch)


def settled_everywhere(signals: Path, n: int) -> bool:
    """Every racing process has settled the n-th orchestration."""
    return len(list(signals.glob(f"done-{n}-*"))) == PROCESSES


def test_concurrent_settles_publish_each_event_exactly_once(
    fleet: JobFleet, tmp_path: Path
) -> None:
    """20 finished, unsettled orchestrations. For each in turn, 8 threads of this process
    and 4 other processes (each with its own store and event log) call settle at the same
    moment: the flip and the publish are raced by 12 callers. Exactly one raw publish
    per orchestration."""
    record, signals = tmp_path / "publishes", tmp_path / "signals"
    signals.mkdir()
    ids = [finished_orchestration(fleet) for _ in range(ROUNDS)]
    bus = RecordingBus(fleet.backend.bus, record)
    store = fleet.backend.store
    racers = [
        subprocess.Popen([
            sys.executable, chaos_support.__file__, str(fleet.settings.database), str(record),
            str(signals), *ids,
        ])
        for _ in range(PROCESSES)
    ]
    try:
        assert eventually(lambda: len(list(signals.glob("ready-*"))) == PROCESSES, 60)
        with ThreadPoolExecutor(THREADS) as pool:
            for n, oid in enumerate(ids):
                barrier = threading.Barrier(THREADS + 1)

                def race(oid: str = oid, barrier: threading.Barrier = barrier) -> None:
                    barrier.wait()
                    settle(store, bus, oid)

                calls = [pool.submit(race) for _ in range(THREADS)]
                (signals / f"go-{n}").touch()
                barrier.wait()
                for call in calls:
                    call.result()
                assert eventually(partial(settled_everywhere, signals, n), 60)
        assert [racer.wait(timeout=60) for racer in racers] == [0] * PROCESSES
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()

    counted = Counter(oid for oid, _ in publishes(record))
    assert counted == Counter(dict.fromkeys(ids, 1))
    for oid in ids:
        snap = store.get_orchestration(oid)
        assert snap.status is Status.COMPLETED and snap.event_published
        assert events_for(fleet, oid) == [Status.COMPLETED]


def test_a_publisher_that_died_after_claiming_is_replaced_once_its_hold_runs_out(
    fleet: JobFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher took the publish claim and died before publishing (the claim is taken
    through the store and nothing is published). Settles that come while the claim is
    held leave it to that publisher; once the hold has run out, the next settle (here 8
    threads racing, again and again) or sweep publishes the event, once."""
    monkeypatch.setattr(completion, "PUBLISH_HOLD_SECONDS", 2.0)
    hold = completion.PUBLISH_HOLD_SECONDS
    record = tmp_path / "publishes"
    bus = RecordingBus(fleet.backend.bus, record)
    store = fleet.backend.store
    claimed_at: dict[str, float] = {}
    by_settle, by_sweep = finished_orchestration(fleet), finished_orchestration(fleet)
    for oid in (by_settle, by_sweep):
        assert store.finish_orchestration(oid, Status.COMPLETED, time.time())
        claimed_at[oid] = time.time()
        assert store.claim_publish(oid, now=claimed_at[oid], hold=hold)  # ... and dies

    def settle_until_published(barrier: threading.Barrier) -> None:
        barrier.wait()
        deadline = time.monotonic() + 60
        while not settle(store, bus, by_settle).event_published:
            assert time.monotonic() < deadline, "never published"
            time.sleep(0.01)

    barrier = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        for call in [pool.submit(settle_until_published, barrier) for _ in range(THREADS)]:
            call.result()

    ports = Ports(store, fleet.backend.launcher, bus)
    assert eventually(lambda: sweep(ports)[ANNOUNCED] == 1, timeout=60)
    assert sweep(ports) == Counter()  # nothing left unsettled

    for oid in (by_settle, by_sweep):
        [(_, published_at)] = [p for p in publishes(record) if p[0] == oid]
        assert published_at > claimed_at[oid] + hold  # not while the dead one held it
        assert events_for(fleet, oid) == [Status.COMPLETED]
