"""Store fixtures: one parametrised `store` over every Store adapter.

Adding an adapter (Firestore on its emulator) is one more entry in STORE_BACKENDS:
a factory that opens connections to one fresh, shared state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.ports import Store


class StoreFactory:
    """Opens stores that all see the same state, as separate processes' connections would."""

    def __init__(self, name: str, connect: Callable[[], Store]) -> None:
        self.name = name
        self._connect = connect
        self._opened: list[Store] = []

    def open(self) -> Store:
        store = self._connect()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            with contextlib.suppress(Exception):  # a test may have closed it already
                store.close()


def _sqlite(tmp_path: Path) -> StoreFactory:
    path = tmp_path / "jobfleet.db"
    return StoreFactory("sqlite", lambda: SqliteStore(path))


STORE_BACKENDS: dict[str, Callable[[Path], StoreFactory]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORE_BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = STORE_BACKENDS[request.param](tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory.open()
