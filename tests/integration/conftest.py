"""Store fixtures: one parametrised `store` over every Store adapter; the Cloud
Scheduler stand-in, on a fast clock; and keys that sign ID tokens, with the stand-in
that serves Google's certificates of them.

Each entry in STORE_BACKENDS is a factory that opens connections to one fresh, shared
state: a SQLite file in the test's folder, or a Firestore emulator project of its own.
`open_store(kind, address)` opens the same state from another process.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from id_token_support import KID, CertsServer
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.ports import Store
from jobfleet.dev.cloud_scheduler import CloudSchedulerStandIn
from jobfleet.dev.id_tokens import SigningKey, make_key

SCHEDULER_PROJECT, SCHEDULER_REGION = "jobfleet-test", "europe-west1"
# One scheduler minute per wall-clock second: `* * * * *` fires every second.
SCHEDULER_CLOCK_SPEED = 60.0


def open_store(kind: str, address: str) -> Store:
    """A store of kind `kind` ("sqlite": a file's path; "firestore": an emulator project)."""
    if kind == "sqlite":
        return SqliteStore(Path(address))
    from jobfleet.backends.gcp.firestore_store import FirestoreStore

    return FirestoreStore(address)


class StoreFactory:
    """Opens stores that all see the same state, as separate processes' connections would;
    `address` is what another process passes to `open_store` to do the same."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._opened: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.name, self.address)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            with contextlib.suppress(Exception):  # a test may have closed it already
                store.close()


def _sqlite(request: pytest.FixtureRequest) -> StoreFactory:
    path = request.getfixturevalue("tmp_path") / "jobfleet.db"
    return StoreFactory("sqlite", str(path))


def _firestore(request: pytest.FixtureRequest) -> StoreFactory:
    """A project of its own on the session's emulator, which keeps projects apart."""
    request.getfixturevalue("gcp_env")  # FIRESTORE_EMULATOR_HOST, read by the client
    return StoreFactory("firestore", f"jobfleet-{uuid.uuid4().hex[:16]}")


STORE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], StoreFactory]] = {
    "sqlite": _sqlite,
    "firestore": _firestore,
}


@pytest.fixture(params=sorted(STORE_BACKENDS))
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    factory = STORE_BACKENDS[request.param](request)
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory.open()


@pytest.fixture
def cloud_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudSchedulerStandIn]:
    """The Cloud Scheduler stand-in, its clock 60 times faster than the wall clock."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with CloudSchedulerStandIn(
        project=SCHEDULER_PROJECT, region=SCHEDULER_REGION, clock_speed=SCHEDULER_CLOCK_SPEED
    ) as standin:
        yield standin


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return make_key("securetoken.test")


@pytest.fixture(scope="module")
def rogue_key() -> SigningKey:
    return make_key("attacker.test")


@pytest.fixture
def certs_server(google_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[CertsServer]:
    """`google_key`'s certificate, served as Google serves its own (under `KID`)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = CertsServer({KID: google_key.certificate_pem})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
