"""Choosing the adapters behind the ports from the settings."""

from __future__ import annotations

import os
from dataclasses import dataclass

from jobfleet.config import Settings
from jobfleet.core.ports import EventBus, Launcher, Store
from jobfleet.errors import ConfigurationError


@dataclass(slots=True)
class Backend:
    store: Store
    launcher: Launcher
    bus: EventBus
    default_parallelism: int
    # Locally the worker announces completion itself; on Google Cloud the
    # Firestore-triggered function does, and workers only write their instances.
    worker_settles: bool = True

    def close(self) -> None:
        self.store.close()


def open_store(settings: Settings) -> Store:
    if settings.backend == "local":
        from jobfleet.backends.local.store import SqliteStore

        return SqliteStore(settings.database)
    raise ConfigurationError(f"the {settings.backend!r} backend is not available yet; use local")


def open_backend(settings: Settings) -> Backend:
    store = open_store(settings)
    from jobfleet.backends.local.events import LocalEventLog
    from jobfleet.backends.local.launcher import ProcessLauncher

    return Backend(
        store=store,
        launcher=ProcessLauncher(settings),
        bus=LocalEventLog(settings.database),
        default_parallelism=os.cpu_count() or 2,
    )
