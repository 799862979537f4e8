"""Choosing the adapters behind the ports from the settings."""

from __future__ import annotations

import os
from dataclasses import dataclass

from jobfleet.config import Settings
from jobfleet.core.ports import EventBus, Launcher, Store
from jobfleet.errors import ConfigurationError

GCP_DEFAULT_PARALLELISM = 10
GCP_EXTRA = 'the gcp backend needs the Google Cloud libraries: pip install "jobfleet[gcp]"'


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
        self.bus.close()


def open_store(settings: Settings) -> Store:
    if settings.backend == "local":
        from jobfleet.backends.local.store import SqliteStore

        return SqliteStore(settings.database)
    try:
        from jobfleet.backends.gcp.firestore_store import FirestoreStore
    except ImportError as exc:
        raise ConfigurationError(f"{GCP_EXTRA} ({exc})") from None
    return FirestoreStore(project=settings.require_project())


def open_bus(settings: Settings) -> EventBus:
    if settings.backend == "local":
        from jobfleet.backends.local.events import LocalEventLog

        return LocalEventLog(settings.database)
    try:
        from jobfleet.backends.gcp.pubsub import PubSubEventBus
    except ImportError as exc:
        raise ConfigurationError(f"{GCP_EXTRA} ({exc})") from None
    return PubSubEventBus(settings.require_project(), settings.topic)


def open_backend(settings: Settings) -> Backend:
    store = open_store(settings)
    if settings.backend == "local":
        from jobfleet.backends.local.launcher import ProcessLauncher

        return Backend(
            store=store,
            launcher=ProcessLauncher(settings),
            bus=open_bus(settings),
            default_parallelism=os.cpu_count() or 2,
        )
    from jobfleet.backends.gcp.cloud_run import CloudRunLauncher

    return Backend(
        store=store,
        launcher=CloudRunLauncher(settings),
        bus=open_bus(settings),
        default_parallelism=GCP_DEFAULT_PARALLELISM,
        worker_settles=False,
    )
