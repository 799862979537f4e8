"""Fixtures of the unit suite: a clean job registry, and a real SQLite store in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobfleet.backends.local.events import LocalEventLog
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core import registry


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs a test declares disappear with it, and jobs declared elsewhere are not seen."""
    monkeypatch.setattr(registry, "_REGISTRY", {})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobfleet.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path)
    yield opened
    opened.close()


@pytest.fixture
def bus(store: SqliteStore, db_path: Path) -> Iterator[LocalEventLog]:
    # The store creates the events table, so it is opened first.
    log = LocalEventLog(db_path)
    yield log
    log.close()
